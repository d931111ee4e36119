"""How the models run fast at inference: every speed-up of models/gpt.py and models/sovits.py, applied from outside
to a loaded model. The model files hold the computation as the papers write it; this module prepares a model so
that the same computation runs faster (or, for int8 and bfloat16, nearly the same computation).

Entry point (what `models.tts.Synthesizer.prepare` calls):

    plan = prepare_for_inference(sovits, gpt, "exact" | "fast")

    "exact"  float32 as loaded: SoVITS with cached weight-norm weights (and on CPU its decoder channels-last), GPT
             decoding on the float32 weights: on CPU as compiled loops over the row-major matrices in place
             (`NumbaDecoding`, models/kernels.py; without numba's thread-safe pool, oneDNN's inner product,
             `OneDNNDecoding`), elsewhere stored column-major (`FloatDecoding`). The official computation up to
             float rounding (waveform within 1e-5 of the model as loaded; logits within 1e-5, greedy tokens equal).
    "fast"   CPU: bfloat16 SoVITS (same layout) + weight-only int8 GPT decoding steps over an int8 copy of the KV
             cache, the prompt prefilled in bfloat16 where the CPU multiplies it natively (`NumbaInt8Decoding`;
             without numba, torch's dynamic int8, `Int8Decoding`). GPU: bfloat16 SoVITS and GPT, the GPT's decoding step
             replayed as a CUDA graph (`GraphDecoding`). "exact" on a GPU keeps the float32 float step
             (bit-identical to the model's own), not the static one.

GPU decoding (`StaticDecoding`, `GraphDecoding`; `bash bench/gpu.sh` measures it: on one H100, 744-758 tokens/s at
batch 1, 3x the float32 eager step, docs/benchmarks.md). `KVCache.attend` narrows the cache to the positions so far,
so every token has new shapes and a Python-int write position, which a CUDA graph cannot hold. The static step keeps
every shape fixed for a (batch, max length): `StaticKV` attends over the whole preallocated cache with an additive
bias (-inf after the current position, unmasked one position per step in place), writes keys/values with
`index_copy_` at a position held in a device tensor, and reads/writes static (R, C) input/output buffers. Greedy
tokens equal float decoding's; logits differ by the order of float additions (tests: atol 1e-5 on CPU). Batches
round up to 1, 2, 4, 8, 16, 32 (then multiples of 32) rows and cache lengths to multiples of 256, so a few buffer
sets (and graphs) serve every request of `Synthesizer.decode_batch` / the service's batcher; rows that finish early,
and the bucket's padding rows, stay in the static batch computing throw-away values (live rows are addressed by
`KVCache.rows`), so shapes never change within a generation. Each generation copies its prefill into a free buffer
set once; concurrent generations get their own sets. `GraphDecoding` captures a set's step once (warm-up on a side
stream, then `torch.cuda.CUDAGraph`) and replays it per token. The static step also runs on CPU, where it is tested.

Measured effects (2-core AMD EPYC VM, 2 torch threads, full v2 size with random weights; docs/benchmarks.md,
sections "inference at full v2 size" and "Readable models refactor"):

GPT (stage 1), one token per decoding step, a (B, C) row through 24 layers:
  * Column-major weight storage (`store_column_major`). The (out, in) matrices that meet one row at a time (fused
    qkv, out_proj, linear1, the output head) are re-stored as transposed views of contiguous (in, out) tensors:
    same values, shape, Parameter and state-dict key, but x @ W.T becomes a plain matrix product, which float32
    BLAS runs up to 2x faster for one row. A float32 step at ~200 positions: about 28 ms row-major, 21 ms
    column-major. linear2 (input 4C) keeps the usual layout: column-major measured 1.3-1.7x slower there.
  * Compiled step (`numba_decoding`, CPU float32, what "exact" runs there; `numba_int8_decoding` for "fast").
    models/kernels.py runs every layer of the step in one call of numba-compiled loops: each thread takes blocks
    of output rows of a matrix, the input row stays in L1, sums are vectorised; attention, LayerNorm and the
    residuals in the same call, on numpy views of the parameters and of the KV cache. The weights stream at
    about 30 GB/s against 10-17 through torch's kernels, and ~300 torch calls per token go (bench/infer_gpt.py,
    11:42 UTC): float32 12.9 ms per token at 200 positions and 14.8 at 1700, against 18.7 and 21.2 through
    oneDNN; weight-only int8 (float32 activations, one scale per output row) 5.4 and 9.5, against 8.2 and 12.1
    for torch's dynamic int8. Logits within 1e-5 of float decoding (tested). `fast` then also attends over an
    int8 copy of the KV cache and prefills in bfloat16 where the CPU has it, and both modes read two row
    blocks at once: bench/versus.py (14:56 UTC) measured 11.9 / 16.9 ms (float32) and 3.8 / 5.9 ms (int8) per
    step at 200 / 1700 positions.
  * oneDNN step weights (`onednn_decoding`, CPU float32, what "exact" runs without numba). The same four projections
    per layer through `torch.ops.mkldnn._linear_pointwise` on the row-major matrices in place (ReLU fused into
    linear1): the BLAS behind `F.linear` streams a one-row product's weights at 10-16 GB/s on the 2-core AMD VM,
    where a plain read runs at 42; oneDNN's kernels are about 15% faster per decoding step (22-24 against 27-28 ms
    in one run). Float rounding apart the same values: logits within 1e-5 of `FloatDecoding`, greedy tokens equal.
  * Prefetched step weights (`float_decoding`). `LayerStepWeights` names each layer's projections and norms,
    fetched once per `generate` call rather than through nn.Module attribute lookups and calls for every token;
    same kernels in the same order as `Block.step`, so the results are bit-identical; float32 at ~200 positions:
    21.1 ms per step against 21.7 for `Transformer.step` (3%).
  * int8 step weights (`int8_decoding`, CPU). The four projections of every layer run on int8 weights with one
    scale per output channel (symmetric, max|w| / 127), on inputs quantized per call to 8 bits: torch's
    dynamic-quantized fbgemm/x86 kernels, float32 bias inside the pack, int32 accumulation. A step reads about
    4x fewer weight bytes: 21.7 -> 7.7 ms per token at 200 positions, 26.5 -> 11.1 at 1700; 42.5 -> 117.6
    tokens/s for one sentence. Greedy tokens follow float32 on about 92% of steps (bfloat16: 91%). The prefill
    pass, the output head, attention and the KV cache stay in the model dtype / float32. The packed copies (+25%
    of the layer weights) are made on first use and remade whenever a parameter changes value, is replaced,
    loaded or converted; parameters, state dict and training are unaffected.

SoVITS (stage 2), `decode` of 10 s of audio (423 GFLOP, 98% of it in the HiFi-GAN generator's resblocks):
  * Cached weight norm (`prepare_sovits`). Every weight-normalised conv is replaced by a stand-in
    (`CachedWNConv1d`, `CachedWNConvTranspose1d`) that shares the original's parameters and keys but, in eval mode
    without autograd, reuses w = g v / ||v|| instead of recomputing it on every call (the flow's and decoder's
    caches are made at preparation, the training-only posterior encoder's never). The cache is remade when
    weight_g / weight_v change and dropped by `train()`; training recomputes w as the model does.
  * Channels-last decoder (`prepare_sovits(channels_last=True)`, CPU). `ChannelsLastGenerator` runs the
    upsampling stages on (batch, channels, 1, frames) tensors stored channels-last, each 1-D conv as the
    equivalent 2-D conv with a (1, k) kernel, whose oneDNN kernels are much faster on CPU. With the weight-norm
    cache: float32 RTF 0.281 -> 0.246 (1.14x), outputs within 2e-8.
  * bfloat16 ("fast"): RTF 0.117, 2.40x the float32 computation of the official code on the same machine,
    waveform within 7e-4 of float32.

Whole sentence (250 tokens + decode): float32 RTF 0.81-0.86 ("exact"), int8 GPT + bfloat16 SoVITS 0.364 ("fast").
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import kernels
from models.gpt import GPT, Block, GPTConfig, GPTError, KVCache
from models.sovits import (
    Generator,
    SoVITS,
    SoVITSError,
    WNConv1d,
    WNConvTranspose1d,
    _WeightNormMixin,
)
from narrator.errors import NarratorError
from narrator.threads import ThreadGovernor

INFERENCE_MODES = ("exact", "fast")
GPT_DECODINGS = ("model", "float", "onednn", "numba", "numba_int8", "int8", "static", "graph")  # `decoding_mode`


class InferenceError(NarratorError):
    """The models cannot be prepared for inference as asked."""


@dataclass(frozen=True)
class InferencePlan:
    """What `prepare_for_inference` made of the two models."""

    mode: str  # "exact" or "fast"
    device: torch.device
    sovits_dtype: torch.dtype
    sovits_channels_last: bool  # the decoder's upsampling stages run channels-last
    gpt_dtype: torch.dtype
    gpt_decoding: str  # "numba", "onednn", "float", "numba_int8", "int8", "graph"...; see `decoding_mode`

    def __str__(self) -> str:
        layout = "channels-last decoder, " if self.sovits_channels_last else ""
        return (f"{self.mode} on {self.device}: SoVITS {_dtype_name(self.sovits_dtype)} ({layout}cached weight "
                f"norm), GPT {_dtype_name(self.gpt_dtype)} with {self.gpt_decoding} decoding steps")


def prepare_for_inference(sovits: SoVITS, gpt: GPT, mode: str = "exact") -> InferencePlan:
    """Prepare both models in place for the inference mode ("exact" or "fast", see the module docstring).

    The device is the SoVITS model's. Call once after loading (and after moving the models to another device);
    preparing again with the same mode changes nothing. "fast" converts SoVITS (and, on a GPU, the GPT) to
    bfloat16, which "exact" afterwards does not undo: load the models again to go back.
    """
    if mode not in INFERENCE_MODES:
        raise InferenceError(f"inference mode must be one of {', '.join(INFERENCE_MODES)}, got {mode!r}")
    device = next(sovits.parameters()).device
    on_cpu = device.type == "cpu"
    if mode == "fast":
        sovits.to(torch.bfloat16)
        if not on_cpu:
            gpt.to(torch.bfloat16)
    prepare_sovits(sovits, channels_last=on_cpu)
    gpt_on_cuda = next(gpt.parameters()).device.type == "cuda"
    gpt_cpu_float32 = on_cpu and not gpt_on_cuda and _param_dtype(gpt) == torch.float32
    if mode == "fast":
        decoding = ("graph" if gpt_on_cuda else "numba_int8" if gpt_cpu_float32 and kernels_available()
                    else "int8" if on_cpu else "float")
    elif gpt_cpu_float32 and kernels_available():
        decoding = "numba"  # float32 compiled loops: the same values up to float rounding, fastest on CPU
    elif gpt_cpu_float32 and onednn_available():
        decoding = "onednn"  # float32 through oneDNN: the same values up to float rounding, faster on CPU
    else:
        decoding = "float"  # bit-identical to the model's own float32 step, on any device
    prepare_gpt(gpt, decoding=decoding)
    return InferencePlan(mode=mode, device=device, sovits_dtype=_param_dtype(sovits), sovits_channels_last=on_cpu,
                         gpt_dtype=_param_dtype(gpt), gpt_decoding=decoding_mode(gpt))


# ----------------------------------------------------------------------------------------------------------------
# which values a cache was made from


def _fingerprint(params: Sequence[Tensor]) -> tuple[tuple[int, int], ...]:
    """(storage address, in-place version) of each parameter, to tell when a cache made from them is stale.

    An optimizer step, `load_state_dict` or any in-place edit bumps the version; `.to()`, `.float()` or a new
    Parameter brings new storage. Plain integers, so a cache keeps no old tensor alive. Not seen: a conversion round
    trip (float32 -> bfloat16 -> float32) whose final storage lands on the old address; preparing again always
    remakes the caches. Parameters made under `torch.inference_mode()` are inference tensors, which keep no version
    counter (reading `_version` raises): they count as version 0, so an in-place edit of them (possible only inside
    inference mode, e.g. `load_state_dict` there) is not seen either; prepare again after one.
    """
    # inference tensors keep no version counter (and cannot be changed in place outside inference mode)
    return tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in params)


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------------------------
# GPT: projections, per-layer step weights, decoding steps


class Projection:
    """y = x @ W.T + b, optionally followed by ReLU: (B, in) -> (B, out). One of the four matrices of a layer's step."""

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class FloatProjection(Projection):
    """The projection on the model's own parameters (any float dtype)."""

    weight: Tensor  # (out, in)
    bias: Tensor | None  # (out,)
    relu: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        return F.relu(y) if self.relu else y


@dataclass(frozen=True)
class Int8Projection(Projection):
    """The projection on an int8 copy of the weight (CPU, fbgemm/x86): float32 in, float32 out.

    The input is quantized per call to 8 bits (one scale per tensor, 7-bit range as torch's dynamic quantized Linear
    does), products accumulate in int32 and are rescaled per output channel; the float32 bias is in the pack.
    """

    packed: Any  # torch.ops.quantized LinearPackedParams: int8 (out, in), per-output-channel scales, bias (out,)
    relu: bool = False

    @classmethod
    def pack(cls, weight: Tensor, bias: Tensor | None, relu: bool = False) -> "Int8Projection":
        """(out, in) weight -> symmetric per-output-channel int8 (scale = max|w| / 127), bias kept in float32."""
        w = weight.detach().float().contiguous()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        with warnings.catch_warnings():  # torch >= 2.10 marks quantized tensors deprecated (in favour of torchao)
            warnings.simplefilter("ignore", UserWarning)
            q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        b = None if bias is None else bias.detach().float().contiguous()
        return cls(torch.ops.quantized.linear_prepack(q, b), relu)

    def __call__(self, x: Tensor) -> Tensor:
        if self.relu:  # one kernel; equal to relu(linear_dynamic(...))
            return torch.ops.quantized.linear_relu_dynamic(x, self.packed, reduce_range=True)
        return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)


@dataclass(frozen=True)
class OneDNNProjection(Projection):
    """The projection on the model's own float32 parameter through oneDNN's inner product (CPU), ReLU fused.

    oneDNN reads the (out, in) matrix as stored (row-major: `store_row_major`) with its own vectorised kernels,
    which stream a one-row product's weights about 15% faster than the BLAS behind `F.linear` on the 2-core
    development VM (docs/benchmarks.md, "bench/versus.py"). Same products, summed in another order: float
    rounding apart, the same values; no copy of the weight.
    """

    weight: Tensor  # (out, in), contiguous
    bias: Tensor | None  # (out,)
    relu: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "relu" if self.relu else "none", [],
                                                  "")


@dataclass(frozen=True)
class Norm:
    """LayerNorm over the last dim: (B, C) -> (B, C)."""

    weight: Tensor  # (C,)
    bias: Tensor  # (C,)
    eps: float

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class LayerStepWeights:
    """One transformer layer as the decoding step uses it, fetched once per `generate` call (models/gpt.py `Block`).

        qkv       self_attn.in_proj_weight / in_proj_bias   (B, C) -> (B, 3C) = [q ; k ; v]
        out       self_attn.out_proj                        (B, C) -> (B, C)
        norm1     norm1
        ffn_up    linear1, then ReLU                        (B, C) -> (B, 4C)
        ffn_down  linear2                                   (B, 4C) -> (B, C)
        norm2     norm2
    """

    n_head: int
    qkv: Projection
    out: Projection
    norm1: Norm
    ffn_up: Projection
    ffn_down: Projection
    norm2: Norm

    @classmethod
    def float_weights(cls, block: Block) -> "LayerStepWeights":
        """The block's own parameters (no copy)."""
        a = block.self_attn
        return cls(
            n_head=a.n_head,
            qkv=FloatProjection(a.in_proj_weight, a.in_proj_bias),
            out=FloatProjection(a.out_proj.weight, a.out_proj.bias),
            norm1=Norm(block.norm1.weight, block.norm1.bias, block.norm1.eps),
            ffn_up=FloatProjection(block.linear1.weight, block.linear1.bias, relu=True),
            ffn_down=FloatProjection(block.linear2.weight, block.linear2.bias),
            norm2=Norm(block.norm2.weight, block.norm2.bias, block.norm2.eps),
        )

    @classmethod
    def onednn_weights(cls, block: Block) -> "LayerStepWeights":
        """The block's own float32 parameters (no copy) through oneDNN; the matrices must be stored row-major."""
        a = block.self_attn
        return dataclasses.replace(
            cls.float_weights(block),
            qkv=OneDNNProjection(a.in_proj_weight, a.in_proj_bias),
            out=OneDNNProjection(a.out_proj.weight, a.out_proj.bias),
            ffn_up=OneDNNProjection(block.linear1.weight, block.linear1.bias, relu=True),
            ffn_down=OneDNNProjection(block.linear2.weight, block.linear2.bias),
        )

    @classmethod
    def int8_weights(cls, block: Block) -> "LayerStepWeights":
        """The four projections packed to int8, the norms in float32 (int8 steps compute in float32)."""
        a = block.self_attn

        def norm(ln: nn.LayerNorm) -> Norm:
            return Norm(ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)

        return cls(
            n_head=a.n_head,
            qkv=Int8Projection.pack(a.in_proj_weight, a.in_proj_bias),
            out=Int8Projection.pack(a.out_proj.weight, a.out_proj.bias),
            norm1=norm(block.norm1),
            ffn_up=Int8Projection.pack(block.linear1.weight, block.linear1.bias, relu=True),
            ffn_down=Int8Projection.pack(block.linear2.weight, block.linear2.bias),
            norm2=norm(block.norm2),
        )

    def step(self, x: Tensor, cache: KVCache, layer: int) -> Tensor:
        """`Block.step` on these weights: x (B, C) -> (B, C); stores this position's key/value in `layer`'s cache."""
        b, c = x.shape
        q, k, v = self.qkv(x).view(b, 3, self.n_head, c // self.n_head).unbind(1)  # (B, H, hd) each
        x = self.norm1(x + self.out(cache.attend(layer, q, k, v)))
        return self.norm2(x + self.ffn_down(self.ffn_up(x)))


class FloatDecoding:
    """`GPT.decoding_step` running `LayerStepWeights.step` on the model's own float weights (bit-identical to
    `Transformer.step`, less per-token Python overhead)."""

    name = "float"
    prefill_dtype = None  # the prompt is prefilled in the model's own dtype

    def bind(self, model: GPT) -> Callable[[Tensor, KVCache], Tensor]:
        return _layer_loop([LayerStepWeights.float_weights(block) for block in model.h.layers], compute_dtype=None)


class OneDNNDecoding:
    """`GPT.decoding_step` running `LayerStepWeights.step` on the model's own float32 weights through oneDNN's inner
    product (CPU; `exact` mode there): float32 throughout, no copies, sums in another order than `F.linear`."""

    name = "onednn"
    prefill_dtype = None  # the prompt is prefilled in the model's own dtype

    def bind(self, model: GPT) -> Callable[[Tensor, KVCache], Tensor]:
        p = next(model.h.parameters())
        if p.device.type != "cpu" or p.dtype != torch.float32:
            raise GPTError(f"oneDNN decoding runs float32 on CPU, but the GPT is {_dtype_name(p.dtype)} on "
                           f"{p.device}; call models.inference.float_decoding(gpt) after moving or converting it")
        return _layer_loop([LayerStepWeights.onednn_weights(block) for block in model.h.layers], compute_dtype=None)


class Int8Decoding:
    """`GPT.decoding_step` running `LayerStepWeights.step` on int8 projections (CPU), computing in float32; the
    packs are made on first use and remade when the transformer's parameters change (see `_fingerprint`)."""

    name = "int8"
    prefill_dtype = None  # the prompt is prefilled in the model's own dtype

    def __init__(self) -> None:
        self._layers: list[LayerStepWeights] = []
        self._made_from: tuple | None = None  # `_fingerprint` of the parameters the packs were made from

    def bind(self, model: GPT) -> Callable[[Tensor, KVCache], Tensor]:
        params = list(model.h.parameters())
        if params[0].device.type != "cpu":
            raise GPTError("int8 decoding runs on CPU only, but the GPT is on "
                           f"{params[0].device}; call models.inference.float_decoding(gpt) after moving it")
        made_from = _fingerprint(params)
        if made_from != self._made_from:
            self._layers = []  # free the old packs first
            self._layers = [LayerStepWeights.int8_weights(block) for block in model.h.layers]
            self._made_from = made_from
        return _layer_loop(self._layers, compute_dtype=torch.float32)

    def forget(self) -> None:
        """Drop the packs; the next `bind` makes them afresh."""
        self._layers, self._made_from = [], None


class NumbaDecoding:
    """`GPT.decoding_step` as compiled loops (`models.kernels.decode_step`, CPU, float32): every layer of the step in
    one call, on numpy views of the model's own row-major float32 matrices (no copies). `exact` mode's CPU step:
    float rounding apart the values of `FloatDecoding` (logits within 1e-5, greedy tokens equal; tested), about
    1.6x faster per step than oneDNN on the 2-core development VM (docs/benchmarks.md, "bench/versus.py").

    Each generation's steps run on torch's thread count, or on one thread while timing shows that the machine is
    shared and one is faster (`narrator.threads.ThreadGovernor`: 3 probe steps at the other count after 16 steps,
    then every 96), so that the step's CPU time per token stays near its quiet figure instead of doubling."""

    name = "numba"
    prefill_dtype: torch.dtype | None = None  # the prompt is prefilled in float32
    int8 = False  # int8 copies of the weights
    int8_cache = False  # attention over an int8 copy of the KV cache

    def __init__(self) -> None:
        self._weights: Any = None  # models.kernels.StepWeights
        self._made_from: tuple | None = None  # `_fingerprint` of the parameters the weights were taken from

    def bind(self, model: GPT) -> Callable[[Tensor, KVCache], Tensor]:
        params = list(model.h.parameters())
        if params[0].device.type != "cpu" or params[0].dtype != torch.float32:
            raise GPTError(f"compiled (numba) decoding runs float32 on CPU, but the GPT is "
                           f"{_dtype_name(params[0].dtype)} on {params[0].device}; call "
                           "models.inference.float_decoding(gpt) after moving or converting it")
        made_from = _fingerprint(params)
        if made_from != self._made_from:
            self._weights = None  # free the old int8 copies first
            self._weights = kernels.step_weights([_layer_arrays(block) for block in model.h.layers], self.int8)
            self._made_from = made_from
        weights, n_head, eps = self._weights, model.cfg.n_head, model.h.layers[0].norm1.eps
        governor = ThreadGovernor(torch.get_num_threads())  # one per generation, its default probing

        int8_cache = self.int8_cache
        copy: dict[str, Any] = {}  # this generation's int8 copy of its cache and the float keys it was made from

        def step(x: Tensor, cache: KVCache) -> Tensor:
            if cache.k.dtype != torch.float32:
                raise GPTError(f"compiled decoding reads a float32 KV cache, got {cache.k.dtype}")
            keys, values = cache.k.numpy(), cache.v.numpy()
            cache8 = None
            if int8_cache:  # (re)made from the float32 cache when new or when `keep_rows` replaced it
                if copy.get("of") is not cache.k:
                    copy["int8"] = kernels.quantize_cache(keys, values, cache.length)
                    copy["of"] = cache.k
                cache8 = copy["int8"]
            bias = None if cache.key_bias is None else cache.key_bias.contiguous().numpy()
            threads = governor.threads()
            start = time.perf_counter()
            out = kernels.decode_step(x.detach().float().contiguous().numpy(), weights, keys, values, bias,
                                      cache.length, n_head, eps, threads, cache8)
            governor.record(threads, time.perf_counter() - start)
            cache.length += 1
            return torch.from_numpy(out).to(x.dtype)

        return step

    def forget(self) -> None:
        """Drop the step weights; the next `bind` takes them afresh."""
        self._weights, self._made_from = None, None


def _layer_arrays(block: Block) -> dict[str, np.ndarray]:
    """A layer's step weights as numpy views of its own parameters (`LayerStepWeights` names them), what
    `models.kernels.step_weights` takes."""
    w = LayerStepWeights.float_weights(block)
    arrays = {}
    for name, projection in (("qkv", w.qkv), ("out", w.out), ("up", w.ffn_up), ("down", w.ffn_down)):
        if not isinstance(projection, FloatProjection) or projection.bias is None:
            raise GPTError(f"compiled decoding needs every layer's {name} projection with a bias")
        arrays[name] = projection.weight.detach().numpy()
        arrays[f"{name}_bias"] = projection.bias.detach().numpy()
    for name, norm in (("norm1", w.norm1), ("norm2", w.norm2)):
        arrays[f"{name}_weight"], arrays[f"{name}_bias"] = norm.weight.detach().numpy(), norm.bias.detach().numpy()
    return arrays


class NumbaInt8Decoding(NumbaDecoding):
    """`NumbaDecoding` on int8 copies of the four matrices of every layer (one scale per output row, symmetric,
    max|w| / 127) with float32 activations ("weight-only" int8): `fast` mode's CPU step. A step reads a quarter
    of the weight bytes; the activations and norms stay float32. The copies (+25% of the layer weights) are remade
    whenever a parameter changes (see `_fingerprint`).

    The attention reads an int8 copy of the KV cache (`models.kernels.Int8Cache`: one scale per head and position),
    a quarter of the cache bytes, made once per generation from the prefilled float32 cache and extended by every
    step, which also keeps writing the float32 cache (so the copy can be made again after `KVCache.keep_rows`)."""

    name = "numba_int8"
    int8 = True
    int8_cache = True

    def __init__(self) -> None:
        super().__init__()
        # the prefill's products in bfloat16 where the CPU multiplies it natively (about 1.8x faster there)
        self.prefill_dtype = torch.bfloat16 if native_bfloat16() else None


def _layer_loop(layers: list[LayerStepWeights],
                compute_dtype: torch.dtype | None) -> Callable[[Tensor, KVCache], Tensor]:
    """The per-token step over prefetched layers: x (B, C) in the model dtype -> (B, C); advances the cache by one."""

    def step(x: Tensor, cache: KVCache) -> Tensor:
        dtype = x.dtype
        if compute_dtype is not None:
            x = x.to(compute_dtype)
        for i, layer in enumerate(layers):
            x = layer.step(x, cache, i)
        cache.length += 1
        return x.to(dtype)

    return step


# ----------------------------------------------------------------------------------------------------------------
# GPT: the static decoding step (every shape fixed), replayed as a CUDA graph on a GPU

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)  # static batch sizes; larger batches round up to a multiple of the last
LENGTH_BUCKET = 256  # static cache lengths are multiples of this many positions
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before a capture (allocator, cuBLAS handles)


def batch_bucket(batch: int) -> int:
    """The static batch size that holds `batch` rows: the next of `BATCH_BUCKETS`, then multiples of the last."""
    if batch < 1:
        raise GPTError(f"a decoding batch needs at least one row, got {batch}")
    for size in BATCH_BUCKETS:
        if batch <= size:
            return size
    return -(-batch // BATCH_BUCKETS[-1]) * BATCH_BUCKETS[-1]


def length_bucket(max_len: int) -> int:
    """The static cache length that holds `max_len` positions: the next multiple of `LENGTH_BUCKET`."""
    return max(1, -(-max_len // LENGTH_BUCKET)) * LENGTH_BUCKET


class StaticKV:
    """The keys and values of the static step, every shape fixed by (rows R, positions L); written in place.

        k         (n_layer, R * n_head, head_dim, L)  keys stored transposed (as `KVCache`)
        v         (n_layer, R * n_head, L, head_dim)
        bias      (R * n_head, 1, L)  additive attention bias: 0 where a key may be seen, -inf elsewhere, in
                  particular at every position after the one being written (so attention runs over all L)
        position  (1,) long, on the device: the position the next step writes

    `attend` writes with `index_copy_` at `position` and `advance` moves it on the device, so a step holds no
    Python integer that changes between tokens: the same kernels on the same addresses every step, which a CUDA
    graph can replay. Buffers start as zeros, so a masked key never meets a NaN (0 weight x NaN would be NaN).
    """

    def __init__(self, cfg: GPTConfig, rows: int, max_len: int, dtype: torch.dtype, device: torch.device):
        bh = rows * cfg.n_head
        self.n_head, self.rows, self.max_len = cfg.n_head, rows, max_len
        self.k = torch.zeros(cfg.n_layer, bh, cfg.head_dim, max_len, dtype=dtype, device=device)
        self.v = torch.zeros(cfg.n_layer, bh, max_len, cfg.head_dim, dtype=dtype, device=device)
        self.bias = torch.full((bh, 1, max_len), float("-inf"), dtype=dtype, device=device)
        self.bias[:, :, 0] = 0.0  # a graph's warm-up steps (position 0) then attend to something
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))

    def load(self, cache: KVCache) -> None:
        """Take over `cache` after its prefill: its `length` positions, for each live row at that row's original
        index (`cache.rows`), its key bias, and the position to write next. Rows that `cache` does not hold (bucket
        padding) see positions [0, length] unmasked and compute throw-away values."""
        t, h = cache.length, self.n_head
        if t + 1 > self.max_len:
            raise GPTError(f"the static KV cache holds {self.max_len} positions but the prefill already fills {t}")
        rows = cache.rows
        k = self.k.view(self.k.shape[0], self.rows, h, *self.k.shape[2:])  # (n_layer, R, H, hd, L)
        v = self.v.view(self.v.shape[0], self.rows, h, *self.v.shape[2:])  # (n_layer, R, H, L, hd)
        k[..., :t].index_copy_(1, rows, cache.k[..., :t].view(k.shape[0], -1, h, k.shape[3], t).to(k.dtype))
        v[:, :, :, :t].index_copy_(1, rows, cache.v[:, :, :t].view(v.shape[0], -1, h, t, v.shape[4]).to(v.dtype))
        self.bias.fill_(float("-inf"))
        self.bias[:, :, : t + 1] = 0.0
        if cache.key_bias is not None:
            bias = self.bias.view(self.rows, h, 1, self.max_len)
            bias[..., :t].index_copy_(0, rows, cache.key_bias[..., :t].view(-1, h, 1, t).to(bias.dtype))
        self.position.fill_(t)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """`KVCache.attend` with fixed shapes: q, k, v (R, n_head, head_dim) -> (R, n_head * head_dim).

        Stores k and v at `position`, then attends over all L positions with the additive bias (the positions
        after `position` are -inf, so weigh exactly 0): the same values as attending over [0, position] up to
        the order of float additions."""
        b, h, hd = q.shape
        keys, values = self.layers[layer]  # (R*H, hd, L), (R*H, L, hd)
        keys.index_copy_(2, self.position, k.reshape(b * h, hd, 1).to(keys.dtype))
        values.index_copy_(1, self.position, v.reshape(b * h, 1, hd).to(values.dtype))
        query = q.reshape(b * h, 1, hd).to(keys.dtype)
        scores = torch.baddbmm(self.bias, query, keys, alpha=hd ** -0.5)  # (R*H, 1, L)
        return torch.bmm(scores.softmax(dim=-1), values).to(q.dtype).view(b, h * hd)

    def advance(self) -> None:
        """Move to the next position, on the device, and unmask it (the next step's token sees itself)."""
        self.position.add_(1)
        self.bias.index_fill_(2, self.position.clamp(max=self.max_len - 1), 0.0)


class _StaticState:
    """One set of static buffers (and on a GPU its CUDA graph) for a (rows, positions, dtype, device) shape:
    x (R, C) in, out (R, C) out, the `StaticKV`. Held by one `generate_batch` at a time (`owner`)."""

    def __init__(self, cfg: GPTConfig, rows: int, max_len: int, model_dtype: torch.dtype, cache_dtype: torch.dtype,
                 device: torch.device):
        self.key = (rows, max_len, model_dtype, cache_dtype, device)
        self.kv = StaticKV(cfg, rows, max_len, cache_dtype, device)
        self.x = torch.zeros(rows, cfg.n_embd, dtype=model_dtype, device=device)
        self.out = torch.zeros(rows, cfg.n_embd, dtype=model_dtype, device=device)
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self.owner: Callable[[], KVCache | None] = lambda: None  # weak reference to the cache decoding with it


class StaticDecoding:
    """`GPT.decoding_step` whose every tensor shape is fixed for a given (batch, max length): `LayerStepWeights.step`
    on the model's float weights, attending through `StaticKV` (whole preallocated cache, additive -inf bias, write
    position as a device tensor) from static input/output buffers. Runs anywhere; on CPU it is the tested reference
    of `GraphDecoding`, which replays the same step as a CUDA graph.

    Shapes are bucketed so that a few buffer sets (and graphs) serve every request: the batch rounds up to
    `batch_bucket` (1, 2, 4, 8, 16, 32, then multiples of 32), the cache length to `length_bucket` (multiples of
    256). Rows beyond the batch, and rows that finished while the rest decode on (`generate_batch` drops them
    with `KVCache.keep_rows`), stay in the static batch computing throw-away values: the live rows are written to
    and read from their original row index (`KVCache.rows`), so the shapes never change within a generation.

    Each generation loads its prefill into a free buffer set (copying the cache once), so buffers and graphs are
    reused across requests; generations running at the same time (threads) each get their own set. At most
    `max_free_states` unused sets are kept. Buffers and graphs are dropped when a transformer parameter gets new
    storage (`.to()`, a replaced Parameter); in-place value changes are read as they are.
    """

    name = "static"
    prefill_dtype = None  # the prompt is prefilled in the model's own dtype
    use_graphs = False

    def __init__(self, max_free_states: int = 8) -> None:
        self.max_free_states = max_free_states
        self._states: list[_StaticState] = []
        self._made_from: tuple[int, ...] | None = None  # data_ptr of every transformer parameter
        self._lock = threading.Lock()

    def bind(self, model: GPT) -> Callable[[Tensor, KVCache], Tensor]:
        params = list(model.h.parameters())
        self._check_device(params[0].device)
        made_from = tuple(p.data_ptr() for p in params)
        with self._lock:
            if made_from != self._made_from:
                self._states, self._made_from = [], made_from
        layers = [LayerStepWeights.float_weights(block) for block in model.h.layers]
        cfg, model_dtype = model.cfg, params[0].dtype
        held: list[_StaticState] = []  # the state this generation decodes with

        def step(x: Tensor, cache: KVCache) -> Tensor:
            if not held or held[0].owner() is not cache:
                held[:] = [self._checkout(cfg, cache, model_dtype, layers)]
            state = held[0]
            if cache.length >= state.kv.max_len:
                raise GPTError(f"the static KV cache holds {state.kv.max_len} positions; decoding past them needs "
                               "a longer cache (generate_batch sizes it from max_steps)")
            full = len(cache.rows) == state.kv.rows  # every static row live: rows are 0..R-1 in order
            if full:
                state.x.copy_(x)
            else:
                state.x.index_copy_(0, cache.rows, x.to(state.x.dtype))
            if state.graph is not None:
                state.graph.replay()
            else:
                self._body(state, layers)
            cache.length += 1
            return (state.out.clone() if full else state.out.index_select(0, cache.rows)).to(x.dtype)

        return step

    def states(self) -> list[tuple]:
        """(rows, positions, model dtype, cache dtype, device) of every buffer set held, for inspection."""
        return [state.key for state in self._states]

    def forget(self) -> None:
        """Drop every buffer set and graph; the next generation makes them afresh."""
        with self._lock:
            self._states, self._made_from = [], None

    def _check_device(self, device: torch.device) -> None:
        pass

    def _checkout(self, cfg: GPTConfig, cache: KVCache, model_dtype: torch.dtype,
                  layers: list[LayerStepWeights]) -> _StaticState:
        key = (batch_bucket(len(cache.rows)), length_bucket(cache.max_len), model_dtype, cache.k.dtype,
               cache.k.device)
        with self._lock:
            free = [s for s in self._states if s.owner() is None]
            state = next((s for s in free if s.key == key), None)
            if state is None:
                extra = len(free) - self.max_free_states + 1
                for old in free[:max(0, extra)]:  # oldest first
                    self._states.remove(old)
                state = _StaticState(cfg, *key)
                self._states.append(state)
            state.owner = weakref.ref(cache)
        if self.use_graphs and state.graph is None:
            self._capture(state, layers)
        state.kv.load(cache)
        return state

    def _body(self, state: _StaticState, layers: list[LayerStepWeights]) -> None:
        """One step on the static buffers: state.x (R, C) -> state.out (R, C); advances `state.kv`."""
        x = state.x
        for i, layer in enumerate(layers):
            x = layer.step(x, state.kv, i)  # type: ignore[arg-type]  # StaticKV serves `attend` as KVCache does
        state.kv.advance()
        state.out.copy_(x)

    def _capture(self, state: _StaticState, layers: list[LayerStepWeights]) -> None:
        raise NotImplementedError  # CUDA only: GraphDecoding


class GraphDecoding(StaticDecoding):
    """`StaticDecoding` replayed as a CUDA graph (inference mode "fast" on a GPU): each buffer set's step is
    captured once, after `GRAPH_WARMUP_STEPS` eager steps on a side stream, and every token is one `replay()`
    instead of ~15 kernel launches per layer from Python. One graph per (batch bucket, length bucket, dtype);
    captured on first use (the first request of a new shape pays the capture)."""

    name = "graph"
    use_graphs = True

    def _check_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise GPTError(f"CUDA-graph decoding needs the GPT on a CUDA device, but it is on {device}; use "
                           "static or float decoding there (models.inference.prepare_gpt(gpt, 'static'))")

    def _capture(self, state: _StaticState, layers: list[LayerStepWeights]) -> None:
        device = state.x.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self._body(state, layers)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the service renders SoVITS in request threads) may use CUDA meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._body(state, layers)
        state.graph = graph  # the warm-up's writes are overwritten by `StaticKV.load`


# ----------------------------------------------------------------------------------------------------------------
# GPT: preparation


def prepare_gpt(gpt: GPT, decoding: str = "float") -> GPT:
    """eval mode, the storage of the decoding matrices that the step reads fastest (row-major for "onednn", else
    column-major), and the decoding step (see `decoding_mode`); returns gpt. Preparing again is harmless (int8
    packs are remade on the next `generate`)."""
    if decoding not in GPT_DECODINGS:
        raise GPTError(f"GPT decoding must be one of {', '.join(map(repr, GPT_DECODINGS))}, got {decoding!r}")
    gpt.eval()
    if decoding in ("onednn", "numba", "numba_int8"):
        store_row_major(gpt)
    else:
        store_column_major(gpt)
    {"model": model_decoding, "float": float_decoding, "onednn": onednn_decoding, "numba": numba_decoding,
     "numba_int8": numba_int8_decoding, "int8": int8_decoding, "static": static_decoding,
     "graph": graph_decoding}[decoding](gpt)
    return gpt


def store_row_major(gpt: GPT) -> GPT:
    """Undo `store_column_major` for the layers' matrices (contiguous (out, in) again, as loaded), which oneDNN reads
    in place; the output head stays column-major (`F.linear` reads that faster). Values unchanged. Returns gpt."""
    with torch.no_grad():
        for block in gpt.h.layers:
            for w in (block.self_attn.in_proj_weight, block.self_attn.out_proj.weight, block.linear1.weight,
                      block.linear2.weight):
                if not w.is_contiguous():
                    w.data = w.data.contiguous()
        head = gpt.ar_predict_layer.weight
        if not head.t().is_contiguous():
            head.data = head.data.t().contiguous().t()
    return gpt


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN's bfloat16 products run
    about twice as fast as float32; elsewhere they are emulated and slower than float32. Linux: /proc/cpuinfo."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def onednn_available() -> bool:
    """Whether this torch build runs oneDNN's fused linear (x86-64 CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def store_column_major(gpt: GPT) -> GPT:
    """Re-store the (out, in) matrices that decoding multiplies by one row at a time as column-major (transposed
    views of contiguous (in, out) tensors), in place: fused qkv, out_proj and linear1 of every layer, and the output
    head. Values, shapes, Parameters and state-dict keys are unchanged; `.to()` keeps the layout; `.contiguous()`
    the state-dict tensors before writing a format that needs it (safetensors). Returns gpt."""
    weights = [gpt.ar_predict_layer.weight]
    for block in gpt.h.layers:
        weights += [block.self_attn.in_proj_weight, block.self_attn.out_proj.weight, block.linear1.weight]
    with torch.no_grad():
        for w in weights:
            if not w.t().is_contiguous():
                w.data = w.data.t().contiguous().t()
    return gpt


def model_decoding(gpt: GPT) -> GPT:
    """Decode with the model's own `Transformer.step` (module calls on the current parameters); returns gpt."""
    gpt.decoding_step = None
    return gpt


def float_decoding(gpt: GPT) -> GPT:
    """Decode with `FloatDecoding`: the same step on prefetched float weights, bit-identical; returns gpt."""
    if not isinstance(gpt.decoding_step, FloatDecoding):
        gpt.decoding_step = FloatDecoding()
    return gpt


def onednn_decoding(gpt: GPT) -> GPT:
    """Decode with `OneDNNDecoding` (float32 on CPU; `prepare_gpt(gpt, "onednn")` also stores the matrices
    row-major, which it reads fastest); returns gpt."""
    if not onednn_available():
        raise GPTError("this torch build has no oneDNN fused linear; use float decoding")
    if not isinstance(gpt.decoding_step, OneDNNDecoding):
        gpt.decoding_step = OneDNNDecoding()
    return gpt


def kernels_available() -> bool:
    """Whether the compiled decoding loops run here (numba with a thread-safe threading layer)."""
    return kernels.available()


def numba_decoding(gpt: GPT) -> GPT:
    """Decode with `NumbaDecoding` (float32 on CPU; `prepare_gpt(gpt, "numba")` also stores the matrices row-major,
    which it reads); returns gpt."""
    return _numba_decoding(gpt, NumbaDecoding)


def numba_int8_decoding(gpt: GPT) -> GPT:
    """Decode with `NumbaInt8Decoding` (CPU; weight-only int8, matrices stored row-major); returns gpt. Switch back
    with `float_decoding` or `model_decoding` for bit-exact float32 decoding."""
    return _numba_decoding(gpt, NumbaInt8Decoding)


def _numba_decoding(gpt: GPT, kind: type[NumbaDecoding]) -> GPT:
    if not kernels.available():
        raise GPTError(f"compiled decoding needs numba with a thread-safe threading layer (OpenMP or TBB), which "
                       f"this machine lacks ({kernels.unavailable_reason()}); use 'onednn', 'int8' or 'float'")
    if type(gpt.decoding_step) is kind:
        gpt.decoding_step.forget()  # preparing again takes the weights afresh
    else:
        gpt.decoding_step = kind()
    return gpt


def int8_decoding(gpt: GPT) -> GPT:
    """Decode with `Int8Decoding` (CPU only): int8 projections in every layer's step; returns gpt.

    Switch back with `float_decoding` or `model_decoding`; both give bit-exact float32 decoding again.
    """
    device = next(gpt.parameters()).device
    if device.type != "cpu":
        raise GPTError(f"int8 decoding runs on CPU only (torch's fbgemm/x86 quantized kernels), but the GPT is on "
                       f"{device}; use inference mode 'fast' there, which runs the GPT in bfloat16")
    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines and "fbgemm" not in engines:
        raise GPTError("this torch build has no x86/fbgemm quantized engine for int8 decoding; install a CPU build "
                       "of torch for x86-64 or use float decoding")
    if isinstance(gpt.decoding_step, Int8Decoding):
        gpt.decoding_step.forget()  # preparing again remakes the packs (see `_fingerprint`)
    else:
        gpt.decoding_step = Int8Decoding()
    return gpt


def static_decoding(gpt: GPT) -> GPT:
    """Decode with `StaticDecoding`: fixed shapes (whole cache, -inf bias, device-side position), any device; greedy
    tokens equal float decoding's, logits up to the order of float additions; returns gpt."""
    if type(gpt.decoding_step) is not StaticDecoding:
        gpt.decoding_step = StaticDecoding()
    return gpt


def graph_decoding(gpt: GPT) -> GPT:
    """Decode with `GraphDecoding`: the static step replayed as a CUDA graph (CUDA only); returns gpt."""
    device = next(gpt.parameters()).device
    if device.type != "cuda":
        raise GPTError(f"CUDA-graph decoding needs the GPT on a CUDA device, but it is on {device}; use "
                       "models.inference.static_decoding(gpt) for the same fixed-shape step without graphs")
    if not isinstance(gpt.decoding_step, GraphDecoding):
        gpt.decoding_step = GraphDecoding()
    else:
        gpt.decoding_step.forget()  # preparing again captures afresh
    return gpt


def decoding_mode(gpt: GPT) -> str:
    """Which step `generate` runs: "model" (`Transformer.step`), "float" (`FloatDecoding`), "onednn"
    (`OneDNNDecoding`), "numba" (`NumbaDecoding`), "numba_int8" (`NumbaInt8Decoding`), "int8" (`Int8Decoding`),
    "static" (`StaticDecoding`) or "graph" (`GraphDecoding`)."""
    return "model" if gpt.decoding_step is None else gpt.decoding_step.name


# ----------------------------------------------------------------------------------------------------------------
# SoVITS: cached weight norm, channels-last decoder

STANDARD = "standard"  # (out, in, k) weight for (batch, channels, frames) inputs
CHANNELS_LAST = "channels_last"  # (out, in, 1, k) channels-last weight for (batch, channels, 1, frames) inputs


class _CachedWeightNorm(_WeightNormMixin):
    """Mixin of the weight-norm stand-ins: at inference (eval mode, autograd off) w = g v / ||v|| is computed once
    per layout and reused while weight_g / weight_v keep their values; otherwise the model's own forward runs."""

    _weight_cache: dict[str, tuple[tuple, Tensor]]  # layout -> (`_fingerprint` of weight_g, weight_v; w)

    def at_inference(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def cached_weight(self, layout: str) -> Tensor:
        params = (self.weight_g, self.weight_v)
        made_from = _fingerprint(params)
        hit = self._weight_cache.get(layout)
        if hit is None or hit[0] != made_from:
            with torch.no_grad():
                w = self.compute_weight()
                if layout == CHANNELS_LAST:
                    w = w.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            hit = (made_from, w)
            self._weight_cache[layout] = hit
        return hit[1]

    def remake_cache(self, layout: str) -> None:
        """Make the cache of `layout` now, afresh, and drop any other (one cached copy of the weights per conv)."""
        self._weight_cache.clear()
        self.cached_weight(layout)

    def train(self, mode: bool = True):
        if mode:
            self._weight_cache.clear()
        return super().train(mode)


class CachedWNConv1d(_CachedWeightNorm, WNConv1d):
    """`WNConv1d` with the inference weight cached. Also takes (batch, in, 1, frames) channels-last inputs: the
    same conv as a 2-D conv with a (1, k) kernel."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.at_inference():
            return super().forward(x)
        if x.dim() == 4:
            return F.conv2d(x, self.cached_weight(CHANNELS_LAST), self.bias, (1, self.stride[0]), (0, self.padding[0]),
                            (1, self.dilation[0]), self.groups)
        return self._conv_forward(x, self.cached_weight(STANDARD), self.bias)


class CachedWNConvTranspose1d(_CachedWeightNorm, WNConvTranspose1d):
    """`WNConvTranspose1d` with the inference weight cached; also takes channels-last (batch, in, 1, frames)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.at_inference():
            return super().forward(x)
        if x.dim() == 4:
            return F.conv_transpose2d(x, self.cached_weight(CHANNELS_LAST), self.bias, (1, self.stride[0]),
                                      (0, self.padding[0]), (0, self.output_padding[0]), self.groups,
                                      (1, self.dilation[0]))
        return F.conv_transpose1d(x, self.cached_weight(STANDARD), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class ChannelsLastGenerator(Generator):
    """`Generator` whose inference runs the upsampling stages channels-last: x (B, C, T) -> (B, C, 1, T) stored as
    (B, T, C), where oneDNN's CPU convolutions are much faster; its convs must be the cached stand-ins above.
    Training (or autograd on) runs the model's own forward."""

    def forward(self, x: Tensor, g: Tensor | None = None) -> Tensor:
        if self.training or torch.is_grad_enabled():
            return super().forward(x, g)
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, C, 1, T)
        for i in range(self.num_upsamples):
            x = self.upsampling_stage(x, i, inplace=True)
        x = x.squeeze(2).contiguous()  # (B, C, T)
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


_CACHED = {WNConv1d: CachedWNConv1d, WNConvTranspose1d: CachedWNConvTranspose1d}
_PLAIN = {CachedWNConv1d: WNConv1d, CachedWNConvTranspose1d: WNConvTranspose1d, ChannelsLastGenerator: Generator}


def prepare_sovits(sovits: SoVITS, channels_last: bool = True) -> SoVITS:
    """eval mode, cached weight-norm weights and (`channels_last`, for CPU) the channels-last decoder; returns sovits.

    The stand-ins share the original modules' parameters, so the state dict, `.parameters()`, optimizers and
    checkpoints see the same tensors under the same keys. The flow's and decoder's caches are made now; call again
    after `.to()` to make them at once (otherwise the first decode remakes them). Preparing again is harmless;
    `channels_last=False` on a channels-last model switches back to the (batch, channels, frames) layout.
    """
    if not isinstance(sovits, SoVITS):
        raise SoVITSError(f"prepare_sovits needs a models.sovits.SoVITS, got {type(sovits).__name__}")
    sovits.eval()
    _swap_classes(sovits, _CACHED)
    if channels_last:
        _swap_classes(sovits, {Generator: ChannelsLastGenerator})
    else:
        _swap_classes(sovits, {ChannelsLastGenerator: Generator})
    decoder = set(sovits.dec.modules())
    for part in (sovits.flow, sovits.dec):
        for m in part.modules():
            if isinstance(m, _CachedWeightNorm):
                m.remake_cache(CHANNELS_LAST if channels_last and m in decoder else STANDARD)
    return sovits


def restore_sovits(sovits: SoVITS) -> SoVITS:
    """Undo `prepare_sovits`: the model's own modules again (weight norm recomputed per call, (batch, channels,
    frames) decoder), sharing the same parameters; returns sovits."""
    _swap_classes(sovits, _PLAIN)
    return sovits


def is_channels_last(sovits: SoVITS) -> bool:
    """Whether `decode` runs the decoder channels-last (`prepare_sovits(channels_last=True)`)."""
    return isinstance(sovits.dec, ChannelsLastGenerator)


def _swap_classes(root: nn.Module, classes: dict[type, type]) -> None:
    """Replace every submodule whose exact type is a key of `classes` by an instance of the mapped class that is the
    same module in all but its class: it shares the parameter, buffer, submodule and hook registries (so keys,
    tensors and hooks are the same) and copies the plain attributes (sizes, strides, training flag)."""
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and type(child) in classes:
                parent._modules[name] = _same_module_as(child, classes[type(child)])


def _same_module_as(module: nn.Module, cls: type) -> nn.Module:
    twin = cls.__new__(cls)
    twin.__dict__.update({k: v for k, v in module.__dict__.items() if k != "_weight_cache"})
    if issubclass(cls, _CachedWeightNorm):
        twin._weight_cache = {}
    return twin
