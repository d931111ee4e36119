"""The GPT's one-token decoding step on CPU as compiled loops (numba): every layer of `models.gpt.Block.step` in one
call, reading the weights at the rate the memory delivers them.

Why: a decoding step multiplies one row per sentence by every matrix of the model, so it is bound by how fast the
weights stream from memory (302 MB a token in float32 at v2 size). The BLAS behind `F.linear` streams a one-row
product at 10-16 GB/s on the 2-core development VM, oneDNN at about 17, where a plain read runs at 33-42; and each of
the ~300 torch operations of a step adds a few microseconds. These loops give each thread a block of output rows,
keep the input row in L1, and sum with vector instructions: 27-33 GB/s there (docs/benchmarks.md, "bench/versus.py").

Numbers: float32 everywhere (no bfloat16 in numba). `project` takes float32 or int8 weights (int8: one scale per
output row, the activations stay float32: "weight-only" int8, nearer float32 than quantizing the activations too).
Float sums run in another order than torch's (vectorised partial sums), LayerNorm's mean and variance in float64:
float rounding apart, the values of the model's own step. NaN and infinities keep their meaning (`FLOAT_FLAGS`
leave out numba's no-NaN / no-inf assumptions: the attention bias holds -inf).

Shapes (one layer `l` of `n_layer`, B rows, C = n_embd, H heads of hd = C / H, F = 4C, L cache positions):
    x          (B, C)            the new position's hidden state, float32
    keys       (n_layer, B*H, hd, L)   `KVCache.k` (keys stored transposed), float32, written at position t
    values     (n_layer, B*H, L, hd)   `KVCache.v`
    key_bias   (B*H, 1, L) or (0, 1, 0)  additive attention bias (0 / -inf), or none
    weights    `StepWeights`: per layer qkv (3C, C), out (C, C), up (F, C), down (C, F) + scales and biases,
               norm1 / norm2 weight and bias (C,)

Threads: numba's own pool (`threading_layer()`, OpenMP where the machine has it), as many as the caller says
(`NumbaDecoding` passes torch's count, or one while its `narrator.threads.ThreadGovernor` finds the machine
shared). Compiled on first use (about 5 s per weight type) and cached beside this file or in the user's cache.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import numpy as np

from narrator.errors import NarratorError

ROW_BLOCK = 16  # output rows per parallel work item: enough work per item, enough items for the threads
FLOAT_FLAGS = {"nsz", "arcp", "contract", "afn", "reassoc"}  # vectorised sums; NaN and inf kept meaningful


class KernelError(NarratorError):
    """The compiled step cannot take these weights or cannot run here."""


class KernelUnavailable(KernelError):
    """numba (or a thread-safe threading layer for it) is missing on this machine."""


def _numba():
    try:
        import numba
    except ImportError as error:  # pragma: no cover - numba comes with librosa
        raise KernelUnavailable(f"numba is not installed ({error}); pip install numba") from error
    return numba


class StepWeights(NamedTuple):
    """Every layer's decoding weights as numpy views (no copies of float32 weights), each a numba typed list
    indexed by layer. Matrices are (out, in) row-major, float32 or int8; `*_scale` (out,) float32 multiplies
    each output (ones for float32)."""

    qkv: object
    qkv_scale: object
    qkv_bias: object
    out: object
    out_scale: object
    out_bias: object
    norm1_weight: object
    norm1_bias: object
    up: object
    up_scale: object
    up_bias: object
    down: object
    down_scale: object
    down_bias: object
    norm2_weight: object
    norm2_bias: object


@functools.cache
def _kernels() -> dict[str, object]:
    """Compile (or load from numba's cache) the kernels once per process."""
    numba = _numba()
    njit, prange = numba.njit, numba.prange
    float32 = np.float32

    @njit(parallel=True, fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def project(w, scale, bias, x, y, relu):
        """y (B, out) = (x (B, in) @ w (out, in).T) * scale (out,) + bias (out,), ReLU if `relu`."""
        n_out, n_in = w.shape
        rows = x.shape[0]
        blocks = (n_out + ROW_BLOCK - 1) // ROW_BLOCK
        for blk in prange(blocks):
            for r in range(blk * ROW_BLOCK, min(n_out, (blk + 1) * ROW_BLOCK)):
                for i in range(rows):
                    acc = float32(0.0)
                    for k in range(n_in):
                        acc += float32(w[r, k]) * x[i, k]
                    v = acc * scale[r] + bias[r]
                    y[i, r] = float32(0.0) if relu and v < 0 else v

    @njit(parallel=True, fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def attend(qkv, keys, values, key_bias, t, n_head, scores, out):
        """One new position per row attends over positions [0, t]: qkv (B, 3C) -> out (B, C). Stores its key and
        value at position t of keys (B*H, hd, L) / values (B*H, L, hd); scores (B*H, L) is scratch. Each loop
        runs along contiguous memory (keys are stored transposed), so the cache streams once per step."""
        rows, c3 = qkv.shape
        c = c3 // 3
        hd = c // n_head
        alpha = float32(1.0 / math.sqrt(hd))
        biased = key_bias.shape[0] > 0
        n = t + 1
        for bh in prange(rows * n_head):
            i, h = bh // n_head, bh % n_head
            q0, k0, v0 = h * hd, c + h * hd, 2 * c + h * hd
            head_keys, head_values = keys[bh], values[bh]  # (hd, L), (L, hd)
            for d in range(hd):
                head_keys[d, t] = qkv[i, k0 + d]
                head_values[t, d] = qkv[i, v0 + d]
            q = qkv[i, q0:q0 + hd] * alpha
            s = scores[bh, :n]  # scores = alpha q . k_p (+ bias_p)
            s[:] = q[0] * head_keys[0, :n]
            for d in range(1, hd):
                qd, kd = q[d], head_keys[d, :n]
                for p in range(n):
                    s[p] += qd * kd[p]
            if biased:
                b = key_bias[bh, 0, :n]
                for p in range(n):
                    s[p] += b[p]
            top = s.max()
            total = float32(0.0)
            for p in range(n):
                e = math.exp(s[p] - top)  # float32 in, float32 out; exp(-inf) = 0 for masked keys
                s[p] = e
                total += e
            acc = np.zeros(hd, np.float32)
            for p in range(n):
                wp, vp = s[p], head_values[p]
                for d in range(hd):
                    acc[d] += wp * vp[d]
            inv = float32(1.0) / total
            for d in range(hd):
                out[i, q0 + d] = acc[d] * inv

    @njit(fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def add_norm(x, y, weight, bias, eps):
        """x = LayerNorm(x + y) in place, per row of (B, C); mean and variance in float64."""
        rows, c = x.shape
        for i in range(rows):
            mean = 0.0
            for j in range(c):
                x[i, j] += y[i, j]
                mean += x[i, j]
            mean /= c
            var = 0.0
            for j in range(c):
                var += (x[i, j] - mean) ** 2
            inv = 1.0 / math.sqrt(var / c + eps)
            for j in range(c):
                x[i, j] = float32((x[i, j] - mean) * inv) * weight[j] + bias[j]

    @njit(cache=True, nogil=True)
    def step(x, w, keys, values, key_bias, t, n_head, eps):
        """Every layer of `Block.step` for one new position per row: x (B, C) -> (B, C), a new array."""
        rows, c = x.shape
        h = x.copy()
        qkv = np.empty((rows, w.qkv[0].shape[0]), np.float32)
        att = np.empty((rows, c), np.float32)
        proj = np.empty((rows, c), np.float32)
        up = np.empty((rows, w.up[0].shape[0]), np.float32)
        scores = np.empty((keys.shape[1], keys.shape[3]), np.float32)
        for layer in range(keys.shape[0]):
            project(w.qkv[layer], w.qkv_scale[layer], w.qkv_bias[layer], h, qkv, False)
            attend(qkv, keys[layer], values[layer], key_bias, t, n_head, scores, att)
            project(w.out[layer], w.out_scale[layer], w.out_bias[layer], att, proj, False)
            add_norm(h, proj, w.norm1_weight[layer], w.norm1_bias[layer], eps)
            project(w.up[layer], w.up_scale[layer], w.up_bias[layer], h, up, True)
            project(w.down[layer], w.down_scale[layer], w.down_bias[layer], up, proj, False)
            add_norm(h, proj, w.norm2_weight[layer], w.norm2_bias[layer], eps)
        return h

    return {"project": project, "attend": attend, "add_norm": add_norm, "step": step}


def step_weights(layers: list[dict[str, np.ndarray]], int8: bool = False) -> StepWeights:
    """`StepWeights` from one dict per layer with the float32 arrays qkv, qkv_bias, out, out_bias, up, up_bias,
    down, down_bias (matrices (out, in), C-contiguous: used in place) and norm1_weight, norm1_bias, norm2_weight,
    norm2_bias. With `int8` the four matrices are copied to int8, one scale per output row (`quantize_rows`)."""
    numba = _numba()
    fields: dict[str, list[np.ndarray]] = {name: [] for name in StepWeights._fields}
    for layer in layers:
        for name in ("qkv", "out", "up", "down"):
            w = layer[name]
            if w.dtype != np.float32 or not w.flags.c_contiguous:
                raise KernelError(f"{name}: the compiled step reads float32 row-major (C-contiguous) matrices, got "
                                  f"{w.dtype} {'C-contiguous' if w.flags.c_contiguous else 'strided'}; store the "
                                  "model's matrices row-major first (models.inference.store_row_major)")
            w, scale = quantize_rows(w) if int8 else (w, np.ones(w.shape[0], np.float32))
            fields[name].append(w)
            fields[f"{name}_scale"].append(scale)
            fields[f"{name}_bias"].append(np.ascontiguousarray(layer[f"{name}_bias"], np.float32))
        for name in ("norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias"):
            fields[name].append(np.ascontiguousarray(layer[name], np.float32))
    typed = {}
    for name, arrays in fields.items():
        typed[name] = numba.typed.List()
        for a in arrays:
            typed[name].append(a)
    return StepWeights(**typed)


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(out, in) float32 -> (int8 (out, in), scale (out,) float32): symmetric per row, scale = max|w| / 127, so
    w ~ int8 * scale[:, None]."""
    scale = np.maximum(np.abs(w).max(axis=1) / 127.0, 1e-12).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def available() -> bool:
    """Whether the kernels run here: numba imports and a thread-safe threading layer (OpenMP or TBB) starts. The
    step is called from several threads at once (the service's batcher and stream renders), which numba's
    fallback pool ("workqueue") does not allow. Checked once per process; a run of a tiny parallel loop."""
    return _check() == ""


def unavailable_reason() -> str:
    """Why `available()` is False ("available" when it is not)."""
    return _check() or "available"


@functools.cache
def _check() -> str:
    try:
        numba = _numba()
    except KernelUnavailable as error:
        return str(error)
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"
    try:
        @numba.njit(parallel=True, cache=False)
        def probe(a):
            for i in numba.prange(a.shape[0]):
                a[i] = i
            return a.sum()

        probe(np.zeros(4, np.int64))
        layer = numba.threading_layer()
    except Exception as error:  # noqa: BLE001 - any failure to start the pool means "use another step"
        return f"numba's parallel loops do not start here: {error}"
    if layer not in ("omp", "tbb"):
        return f"numba's threading layer is {layer!r}, which is not thread-safe (install libgomp1 or tbb)"
    return ""


def decode_step(x: np.ndarray, weights: StepWeights, keys: np.ndarray, values: np.ndarray,
                key_bias: np.ndarray | None, t: int, n_head: int, eps: float, threads: int) -> np.ndarray:
    """Every layer of the decoding step at position `t` (shapes in the module docstring); returns (B, C) float32.
    Writes this position's keys and values into `keys` / `values`."""
    numba = _numba()
    kernels = _kernels()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    bias = np.zeros((0, 1, 0), np.float32) if key_bias is None else key_bias
    return kernels["step"](x, weights, keys, values, bias, t, n_head, eps)
