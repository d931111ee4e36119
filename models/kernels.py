"""The GPT's one-token decoding step on CPU as compiled loops (numba): every layer of `models.gpt.Block.step` in one
call, reading the weights at the rate the memory delivers them.

Why: a decoding step multiplies one row per sentence by every matrix of the model, so it is bound by how fast the
weights stream from memory (302 MB a token in float32 at v2 size). The BLAS behind `F.linear` streams a one-row
product at 10-16 GB/s on the 2-core development VM, oneDNN at about 17, where a plain read runs at 33-42; and each of
the ~300 torch operations of a step adds a few microseconds. These loops give each thread blocks of output rows
(two blocks half a matrix apart at once: two memory streams per core, which one core reads about 1.5x faster than
one), keep the input row in L1, and sum with vector instructions: about 30 GB/s there (docs/benchmarks.md, "The
compiled CPU decoding step").

Attention reads the float32 cache (`exact`) or an int8 copy of it (`Int8Cache`, `fast`: a quarter of the bytes,
which matter once the context is long: 167 MB a step at 1700 positions in float32). Its softmax exponentials are a
vectorised polynomial (`exp_shifted`, relative error under 5e-7), not a call per score.

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
LOG2_E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693145751953125, 1.428606765330187e-06  # ln 2 in two parts: k * LN2_HI is exact in float32
EXP_FLOOR = -87.0  # exp(x) for x below this is under float32's smallest normal number: taken as 0
TINY_SCALE = 1e-12  # the smallest int8 scale (an all-zero row or column)


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
    """Every layer's decoding weights, indexed by layer: float32 ones as numba typed lists of numpy views of the
    model's parameters (no copies), int8 ones as arrays stacked over the layers (n_layer, ...). Matrices are
    (out, in) row-major, float32 or int8; `*_scale` (out,) float32 multiplies each output (ones for float32)."""

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


class Int8Cache(NamedTuple):
    """The int8 copy of a KV cache that `decode_step` can attend over instead of the float32 one (`fast` mode):

        keys        (n_layer, B*H, hd, L) int8    keys stored transposed, as `KVCache.k`
        key_scale   (n_layer, B*H, L)     float32 one scale per head and position: key ~ int8 * scale
        values      (n_layer, B*H, L, hd) int8
        value_scale (n_layer, B*H, L)     float32

    Empty arrays (`Int8Cache.none()`) mean "attend over the float32 cache"."""

    keys: np.ndarray
    key_scale: np.ndarray
    values: np.ndarray
    value_scale: np.ndarray

    @classmethod
    def empty(cls, n_layer: int, rows_heads: int, head_dim: int, length: int) -> Int8Cache:
        return cls(np.zeros((n_layer, rows_heads, head_dim, length), np.int8),
                   np.zeros((n_layer, rows_heads, length), np.float32),
                   np.zeros((n_layer, rows_heads, length, head_dim), np.int8),
                   np.zeros((n_layer, rows_heads, length), np.float32))

    @classmethod
    def none(cls) -> Int8Cache:
        return cls.empty(0, 0, 0, 0)

    def fits(self, keys: np.ndarray) -> bool:
        """Whether this copy has the sizes of the float32 cache `keys` (n_layer, B*H, hd, L)."""
        n_layer, rows_heads, head_dim, length = keys.shape
        return self.keys.shape == keys.shape and self.values.shape == (n_layer, rows_heads, length, head_dim)


class Scratch(NamedTuple):
    """Per-step work arrays of the attention: scores (B*H, L) float32, bits (B*H, L) int32, acc (B*H, hd)."""

    scores: np.ndarray
    bits: np.ndarray
    acc: np.ndarray


@functools.cache
def _kernels() -> dict[str, object]:
    """Compile (or load from numba's cache) the kernels once per process."""
    numba = _numba()
    njit, prange = numba.njit, numba.prange
    float32 = np.float32

    @njit(parallel=True, fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def project(w, scale, bias, x, y, relu):
        """y (B, out) = (x (B, in) @ w (out, in).T) * scale (out,) + bias (out,), ReLU if `relu`. Each work item
        takes a block of rows and the block half the matrix further on, summing a row of each at once: two memory
        streams per thread, which one core reads about 1.5x faster than one stream (docs/benchmarks.md)."""
        n_out, n_in = w.shape
        rows = x.shape[0]
        blocks = (n_out + ROW_BLOCK - 1) // ROW_BLOCK
        half = (blocks + 1) // 2
        for blk in prange(half):
            for r in range(blk * ROW_BLOCK, min(n_out, (blk + 1) * ROW_BLOCK)):
                far = r + half * ROW_BLOCK
                for i in range(rows):
                    acc = float32(0.0)
                    if far < n_out:
                        acc_far = float32(0.0)
                        for k in range(n_in):
                            xk = x[i, k]
                            acc += float32(w[r, k]) * xk
                            acc_far += float32(w[far, k]) * xk
                        v = acc_far * scale[far] + bias[far]
                        y[i, far] = float32(0.0) if relu and v < 0 else v
                    else:
                        for k in range(n_in):
                            acc += float32(w[r, k]) * x[i, k]
                    v = acc * scale[r] + bias[r]
                    y[i, r] = float32(0.0) if relu and v < 0 else v

    @njit(fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def exp_shifted(s, n, top, bits):
        """s[:n] = exp(s[:n] - top) in place, for s <= top (-inf allowed: gives 0); returns the sum. Vectorised:
        k = round((s - top) / ln 2), a degree-6 polynomial of the remainder, times 2**k built from its float bits
        in `bits` (int32 scratch, n or more). Relative error under 4e-7 (float32's own exp: 1e-7); arguments below
        EXP_FLOOR give 0, as exp does below float32's smallest normal number."""
        for p in range(n):
            x = s[p] - top
            xc = max(x, float32(EXP_FLOOR))
            k = np.floor(xc * float32(LOG2_E) + float32(0.5))
            r = xc - k * float32(LN2_HI) - k * float32(LN2_LO)
            y = float32(1.0 / 720.0)
            y = y * r + float32(1.0 / 120.0)
            y = y * r + float32(1.0 / 24.0)
            y = y * r + float32(1.0 / 6.0)
            y = y * r + float32(0.5)
            y = y * r + float32(1.0)
            y = y * r + float32(1.0)
            s[p] = y if x >= float32(EXP_FLOOR) else float32(0.0)
            bits[p] = (np.int32(k) + np.int32(127)) << np.int32(23)  # 2**k as float32 bits (k >= -126)
        powers = bits[:n].view(np.float32)
        total = float32(0.0)
        for p in range(n):
            e = s[p] * powers[p]
            s[p] = e
            total += e
        return total

    @njit(fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def softmax_weights(s, n, key_bias, bh, bits):
        """Scores s[:n] of head-row `bh` -> unnormalised softmax weights in place (plus the key bias, when there is
        one: (B*H, 1, L)); returns their sum, by which the weighted values are divided."""
        if key_bias.shape[0] > 0:
            b = key_bias[bh, 0, :n]
            for p in range(n):
                s[p] += b[p]
        return exp_shifted(s, n, s.max(), bits)

    @njit(parallel=True, fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def attend(qkv, keys, values, key_bias, t, n_head, scratch, out):
        """One new position per row attends over positions [0, t]: qkv (B, 3C) -> out (B, C). Stores its key and
        value at position t of keys (B*H, hd, L) / values (B*H, L, hd). Each loop runs along contiguous memory
        (keys are stored transposed), so the cache streams once per step. `scratch`: `Scratch`."""
        rows, c3 = qkv.shape
        c = c3 // 3
        hd = c // n_head
        alpha = float32(1.0 / math.sqrt(hd))
        n = t + 1
        for bh in prange(rows * n_head):
            i, h = bh // n_head, bh % n_head
            q0, k0, v0 = h * hd, c + h * hd, 2 * c + h * hd
            head_keys, head_values = keys[bh], values[bh]  # (hd, L), (L, hd)
            for d in range(hd):
                head_keys[d, t] = qkv[i, k0 + d]
                head_values[t, d] = qkv[i, v0 + d]
            s = scratch.scores[bh, :n]  # scores = alpha q . k_p (+ bias_p)
            s[:] = float32(0.0)
            for d in range(hd):
                qd, kd = qkv[i, q0 + d] * alpha, head_keys[d, :n]
                for p in range(n):
                    s[p] += qd * kd[p]
            total = softmax_weights(s, n, key_bias, bh, scratch.bits[bh])
            acc = scratch.acc[bh]
            acc[:] = float32(0.0)
            for p in range(n):
                wp, vp = s[p], head_values[p]
                for d in range(hd):
                    acc[d] += wp * vp[d]
            inv = float32(1.0) / total
            for d in range(hd):
                out[i, q0 + d] = acc[d] * inv

    @njit(parallel=True, fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def attend_int8(qkv, keys, values, keys8, key_scales, values8, value_scales, key_bias, t, n_head, scratch, out):
        """`attend` reading one layer's int8 copy of the cache (the arrays of an `Int8Cache` at one layer: one scale
        per head and position): stores the new key and value in both the float32 cache and the copy, then attends
        over the copy. A quarter of the cache bytes per step; each key and value within half a step of its scale
        (max|.| / 127 over the head)."""
        rows, c3 = qkv.shape
        c = c3 // 3
        hd = c // n_head
        alpha = float32(1.0 / math.sqrt(hd))
        n = t + 1
        for bh in prange(rows * n_head):
            i, h = bh // n_head, bh % n_head
            q0, k0, v0 = h * hd, c + h * hd, 2 * c + h * hd
            head_keys, head_values = keys8[bh], values8[bh]  # (hd, L), (L, hd) int8
            key_scale, value_scale = key_scales[bh], value_scales[bh]  # (L,)
            for d in range(hd):
                keys[bh, d, t] = qkv[i, k0 + d]
                values[bh, t, d] = qkv[i, v0 + d]
            key_scale[t] = _store_int8(qkv[i, k0:k0 + hd], head_keys[:, t])
            value_scale[t] = _store_int8(qkv[i, v0:v0 + hd], head_values[t])
            s = scratch.scores[bh, :n]
            s[:] = float32(0.0)
            d = 0
            while d + 4 <= hd:  # four key rows per pass over the scores: a quarter of the loads and stores of s
                qa, qb = qkv[i, q0 + d] * alpha, qkv[i, q0 + d + 1] * alpha
                qc, qd = qkv[i, q0 + d + 2] * alpha, qkv[i, q0 + d + 3] * alpha
                ka, kb, kc, kd = head_keys[d, :n], head_keys[d + 1, :n], head_keys[d + 2, :n], head_keys[d + 3, :n]
                for p in range(n):
                    s[p] += (qa * float32(ka[p]) + qb * float32(kb[p])) + (qc * float32(kc[p]) + qd * float32(kd[p]))
                d += 4
            while d < hd:
                qa, ka = qkv[i, q0 + d] * alpha, head_keys[d, :n]
                for p in range(n):
                    s[p] += qa * float32(ka[p])
                d += 1
            for p in range(n):
                s[p] *= key_scale[p]
            total = softmax_weights(s, n, key_bias, bh, scratch.bits[bh])
            acc = scratch.acc[bh]
            acc[:] = float32(0.0)
            p = 0
            while p + 4 <= n:  # four positions per pass over the output: a quarter of the loads and stores of acc
                wa, wb = s[p] * value_scale[p], s[p + 1] * value_scale[p + 1]
                wc, wd = s[p + 2] * value_scale[p + 2], s[p + 3] * value_scale[p + 3]
                va, vb, vc, vd = head_values[p], head_values[p + 1], head_values[p + 2], head_values[p + 3]
                for e in range(hd):
                    acc[e] += (wa * float32(va[e]) + wb * float32(vb[e])) + (wc * float32(vc[e]) + wd * float32(vd[e]))
                p += 4
            while p < n:
                wa, va = s[p] * value_scale[p], head_values[p]
                for e in range(hd):
                    acc[e] += wa * float32(va[e])
                p += 1
            inv = float32(1.0) / total
            for e in range(hd):
                out[i, q0 + e] = acc[e] * inv

    @njit(fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def int8_scale(top):
        """The scale of values whose largest magnitude is `top`: top / 127 (at least TINY_SCALE)."""
        return max(top / float32(127.0), float32(TINY_SCALE))

    @njit(fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def to_int8(v, inv):
        """round(v * inv) as int8, within [-127, 127]; inv = 1 / scale."""
        return np.int8(min(max(np.rint(v * inv), float32(-127.0)), float32(127.0)))

    @njit(fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def _store_int8(x, q):
        """q (n,) int8 = round(x (n,) / scale) with scale = max|x| / 127; returns the scale."""
        top = float32(0.0)
        for d in range(x.shape[0]):
            top = max(top, abs(x[d]))
        scale = int8_scale(top)
        inv = float32(1.0) / scale
        for d in range(x.shape[0]):
            q[d] = to_int8(x[d], inv)
        return scale

    @njit(parallel=True, fastmath=FLOAT_FLAGS, cache=True, nogil=True)
    def quantize_cache(keys, values, n, keys8, key_scale, values8, value_scale):
        """The int8 copy of positions [0, n) of the float32 cache keys (n_layer, B*H, hd, L) / values
        (n_layer, B*H, L, hd) into the arrays of an `Int8Cache` of the same sizes (passed one by one: numba's
        parallel loops lose stores made through a tuple's field)."""
        n_layer, bh_count, hd = keys.shape[0], keys.shape[1], keys.shape[2]
        for job in prange(n_layer * bh_count):
            layer, bh = job // bh_count, job % bh_count
            head_keys, head_values = keys[layer, bh], values[layer, bh]
            head_keys8, head_values8 = keys8[layer, bh], values8[layer, bh]
            head_key_scale, head_value_scale = key_scale[layer, bh], value_scale[layer, bh]
            top = np.zeros(n, np.float32)  # keys: along the positions (contiguous), as `_store_int8` per column
            for d in range(hd):
                for p in range(n):
                    top[p] = max(top[p], abs(head_keys[d, p]))
            inv = np.empty(n, np.float32)
            for p in range(n):
                head_key_scale[p] = int8_scale(top[p])
                inv[p] = float32(1.0) / head_key_scale[p]
            for d in range(hd):
                for p in range(n):
                    head_keys8[d, p] = to_int8(head_keys[d, p], inv[p])
            for p in range(n):
                head_value_scale[p] = _store_int8(head_values[p], head_values8[p])

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
    def ffn(h, att, proj, up, w, layer, eps):
        """The rest of layer `layer` after attention: h = norm2(h' + FFN(h')), h' = norm1(h + out(att))."""
        project(w.out[layer], w.out_scale[layer], w.out_bias[layer], att, proj, False)
        add_norm(h, proj, w.norm1_weight[layer], w.norm1_bias[layer], eps)
        project(w.up[layer], w.up_scale[layer], w.up_bias[layer], h, up, True)
        project(w.down[layer], w.down_scale[layer], w.down_bias[layer], up, proj, False)
        add_norm(h, proj, w.norm2_weight[layer], w.norm2_bias[layer], eps)

    @njit(cache=True, nogil=True)
    def step(x, w, keys, values, key_bias, t, n_head, eps, cache8):
        """Every layer of `Block.step` for one new position per row: x (B, C) -> (B, C), a new array. Attention
        reads `cache8` (an `Int8Cache`) when it holds any layer, else the float32 cache."""
        rows, c = x.shape
        h = x.copy()
        qkv = np.empty((rows, w.qkv[0].shape[0]), np.float32)
        att = np.empty((rows, c), np.float32)
        proj = np.empty((rows, c), np.float32)
        up = np.empty((rows, w.up[0].shape[0]), np.float32)
        bh, hd, length = keys.shape[1], keys.shape[2], keys.shape[3]
        scratch = Scratch(np.empty((bh, length), np.float32), np.empty((bh, length), np.int32),
                          np.empty((bh, hd), np.float32))
        quantized = cache8.keys.shape[0] > 0
        for layer in range(keys.shape[0]):
            project(w.qkv[layer], w.qkv_scale[layer], w.qkv_bias[layer], h, qkv, False)
            if quantized:
                attend_int8(qkv, keys[layer], values[layer], cache8.keys[layer], cache8.key_scale[layer],
                            cache8.values[layer], cache8.value_scale[layer], key_bias, t, n_head, scratch, att)
            else:
                attend(qkv, keys[layer], values[layer], key_bias, t, n_head, scratch, att)
            ffn(h, att, proj, up, w, layer, eps)
        return h

    return {"project": project, "attend": attend, "attend_int8": attend_int8, "add_norm": add_norm, "step": step,
            "exp_shifted": exp_shifted, "quantize_cache": quantize_cache}


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
    if int8:  # copies anyway: stacked per field, which numba's dispatcher types at once (lists: ~0.2 ms a call)
        return StepWeights(**{name: np.stack(arrays) for name, arrays in fields.items()})
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
                key_bias: np.ndarray | None, t: int, n_head: int, eps: float, threads: int,
                cache8: Int8Cache | None = None) -> np.ndarray:
    """Every layer of the decoding step at position `t` (shapes in the module docstring); returns (B, C) float32.
    Writes this position's keys and values into `keys` / `values` (and `cache8`, whose copy the attention then
    reads instead of them: `quantize_cache` makes it)."""
    numba = _numba()
    kernels = _kernels()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    bias = _NO_BIAS if key_bias is None else key_bias
    return kernels["step"](x, weights, keys, values, bias, t, n_head, eps, _NO_CACHE8 if cache8 is None else cache8)


def quantize_cache(keys: np.ndarray, values: np.ndarray, length: int, cache8: Int8Cache | None = None) -> Int8Cache:
    """The int8 copy of positions [0, length) of the float32 cache keys (n_layer, B*H, hd, L) / values
    (n_layer, B*H, L, hd): into `cache8` when given (same sizes), else into a new `Int8Cache` of L positions."""
    n_layer, rows_heads, head_dim, positions = keys.shape
    if cache8 is None:
        cache8 = Int8Cache.empty(n_layer, rows_heads, head_dim, positions)
    if not cache8.fits(keys):
        raise KernelError(f"the int8 cache holds {cache8.values.shape} values but the float32 cache "
                          f"{values.shape}; make a new one (kernels.quantize_cache(keys, values, length))")
    _kernels()["quantize_cache"](keys, values, length, *cache8)
    return cache8


_NO_BIAS = np.zeros((0, 1, 0), np.float32)
_NO_CACHE8 = Int8Cache.none()
