"""SoVITS synthesizer of GPT-SoVITS v2 / v2Pro / v2ProPlus (the official `SynthesizerTrn`), written from the
architecture notes in shared/gsv/ARCH.md.

Module names and parameter layouts follow the official state-dict keys exactly, so official weights load
without renaming:

    enc_p     TextEncoder       semantic tokens + phones (+ MRTE timbre) -> prior stats (m_p, logs_p)
    dec       Generator         HiFi-GAN v1 style decoder, z -> 32 kHz waveform
    enc_q     PosteriorEncoder  linear spectrogram -> posterior z (training only)
    flow      ResidualCouplingBlock   z <-> z_p (mean-only affine couplings)
    ref_enc   MelStyleEncoder   reference spectrogram -> global timbre vector ge
    ssl_proj  Conv1d(768, 768, 2, stride 2)   50 Hz HuBERT -> 25 Hz
    quantizer ResidualVectorQuantizer (1 codebook of 1024 x 768)
    sv_emb / prelu / ge_to512   v2Pro/v2ProPlus speaker-verification fusion

Tensor shapes are written `(batch, channels, frames)`; masks are `(batch, 1, frames)` of 0/1 in the
activation dtype. Weight-normalised convs recompute w = g v / ||v|| on every call, as the official model does
in training; the inference speed-ups (w cached, the decoder channels-last) are applied from outside by
models/inference.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from narrator.errors import NarratorError

LRELU_SLOPE = 0.1
SUPPORTED_VERSIONS = ("v2", "v2Pro", "v2ProPlus")


class SoVITSError(NarratorError):
    """The SoVITS model was configured or called in a way it cannot handle."""


# --------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MRTEConfig:
    """Widths of the multi-reference timbre encoder (official hard-codes 192/512/192/4)."""

    content_enc_channels: int = 192
    hidden_size: int = 512
    out_channels: int = 192
    n_heads: int = 4


@dataclass
class SoVITSConfig:
    """Hyper-parameters of `SoVITS`. Defaults are the official v2 values (configs/s2.json)."""

    version: str = "v2"
    spec_channels: int = 1025
    segment_size: int = 32  # decoder training segment, in spectrogram frames (20480 samples / hop 640)
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (10, 8, 2, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 2, 2)
    gin_channels: int = 512
    semantic_frame_rate: str = "25hz"
    freeze_quantizer: bool = True
    mrte: MRTEConfig = field(default_factory=MRTEConfig)
    n_symbols: int = 732
    ssl_dim: int = 768
    codebook_size: int = 1024
    n_codebooks: int = 1
    ref_bins: int = 704
    sv_dim: int = 20480
    ge512_channels: int = 512
    sampling_rate: int = 32000
    hop_length: int = 640

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_VERSIONS:
            raise SoVITSError(
                f"SoVITS version {self.version!r} is not supported; use one of {', '.join(SUPPORTED_VERSIONS)}"
            )
        if isinstance(self.mrte, Mapping):
            self.mrte = MRTEConfig(**dict(self.mrte))
        self.resblock_kernel_sizes = tuple(int(k) for k in self.resblock_kernel_sizes)
        self.resblock_dilation_sizes = tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes)
        self.upsample_rates = tuple(int(r) for r in self.upsample_rates)
        self.upsample_kernel_sizes = tuple(int(k) for k in self.upsample_kernel_sizes)
        if self.semantic_frame_rate not in ("25hz", "50hz"):
            raise SoVITSError(f"semantic_frame_rate must be '25hz' or '50hz', got {self.semantic_frame_rate!r}")

    @property
    def is_pro(self) -> bool:
        return self.version in ("v2Pro", "v2ProPlus")

    @property
    def upsample_factor(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def from_official(cls, hps: Mapping[str, Any], version: str | None = None) -> "SoVITSConfig":
        """Build from the official s2 config (`{"train":…, "data":…, "model":…, ["mrte":…]}` as nested dicts).

        `version` overrides `model.version`; the `mrte` key (written by the golden-vector driver) sets the
        MRTE widths, otherwise the official 192/512/192/4 are used.
        """
        model = dict(hps.get("model", {}))
        data = dict(hps.get("data", {}))
        train = dict(hps.get("train", {}))
        if str(model.get("resblock", "1")) != "1":
            raise SoVITSError("only resblock type '1' (the one every GPT-SoVITS v2 model uses) is implemented")
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in model.items() if k in names}
        kwargs["version"] = version or model.get("version") or "v2"
        hop = int(data.get("hop_length", 640))
        kwargs["hop_length"] = hop
        kwargs["sampling_rate"] = int(data.get("sampling_rate", 32000))
        kwargs["spec_channels"] = int(data.get("filter_length", 2048)) // 2 + 1
        kwargs["segment_size"] = int(train.get("segment_size", 20480)) // hop
        if hps.get("mrte"):
            kwargs["mrte"] = MRTEConfig(**dict(hps["mrte"]))
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """`(batch,)` lengths -> `(batch, max_length)` boolean mask."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def rand_slice_segments(
    x: torch.Tensor, lengths: torch.Tensor, segment_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random `(batch, channels, segment_size)` windows of x, one per item, inside each item's length."""
    b = x.size(0)
    max_start = (lengths - segment_size + 1).clamp(min=1)
    u = torch.rand(b, generator=generator, device=x.device if generator is None else generator.device)
    ids = (u.to(x.device) * max_start.to(x.dtype if x.is_floating_point() else torch.float32)).long()
    return slice_segments(x, ids, segment_size), ids


def slice_segments(x: torch.Tensor, ids_start: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Gather `(batch, channels, segment_size)` windows starting at `ids_start` (zero-padded past the end)."""
    if x.size(-1) < segment_size + int(ids_start.max()):
        x = F.pad(x, (0, segment_size + int(ids_start.max()) - x.size(-1)))
    idx = ids_start.view(-1, 1) + torch.arange(segment_size, device=x.device).view(1, -1)
    idx = idx.unsqueeze(1).expand(-1, x.size(1), -1)
    return torch.gather(x, 2, idx)


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return v.norm(2, dim=tuple(range(1, v.dim())), keepdim=True)


def weight_norm(weight_v: torch.Tensor, weight_g: torch.Tensor) -> torch.Tensor:
    """Weight normalisation (Salimans & Kingma, 2016): w = g * v / ||v||, the norm taken over every dim but 0.

    weight_v `(d0, ...)` (a conv weight), weight_g `(d0, 1, ...)` -> w of weight_v's shape.
    """
    return weight_v * (weight_g / _norm_except_dim0(weight_v))


class _WeightNormMixin:
    """A conv whose weight is `weight_norm(weight_v, weight_g)`, computed on every call, with the official key names
    `weight_g` / `weight_v` in place of `weight` (for inference, models/inference.py caches w)."""

    def _init_weight_norm(self) -> None:
        w = self._parameters.pop("weight")
        self.weight_g = nn.Parameter(_norm_except_dim0(w.detach()).clone())
        self.weight_v = nn.Parameter(w.detach().clone())

    def compute_weight(self) -> torch.Tensor:
        return weight_norm(self.weight_v, self.weight_g)


class WNConv1d(_WeightNormMixin, nn.Conv1d):
    """Weight-normalised Conv1d, `(batch, in, frames)` -> `(batch, out, frames')`.

    weight_v `(out, in / groups, kernel)`, weight_g `(out, 1, 1)`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.compute_weight(), self.bias)


class WNConvTranspose1d(_WeightNormMixin, nn.ConvTranspose1d):
    """Weight-normalised ConvTranspose1d, `(batch, in, frames)` -> `(batch, out, frames * stride)` for the
    decoder's upsampling layers.

    weight_v `(in, out / groups, kernel)`, weight_g `(in, 1, 1)`: the norm is over dim 0 = input channels, as in
    the official model.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(
            x, self.compute_weight(), self.bias, self.stride, self.padding, self.output_padding, self.groups,
            self.dilation,
        )


# --------------------------------------------------------------------------------------------------------------
# transformer blocks (VITS attentions)
# --------------------------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of `(batch, channels, frames)` (parameters `gamma`, `beta`)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with 1x1-conv projections and optional windowed relative-position embeddings
    (shared across heads, window `window_size` on each side), as in VITS.

    forward(x `(batch, channels, T_q)`, c `(batch, channels, T_k)`, attn_mask `(batch, 1, T_q, T_k)`)
    -> `(batch, out_channels, T_q)`.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        n_heads: int,
        p_dropout: float = 0.0,
        window_size: int | None = None,
    ) -> None:
        super().__init__()
        if channels % n_heads:
            raise SoVITSError(f"attention channels ({channels}) must be divisible by the head count ({n_heads})")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.p_dropout = p_dropout
        if window_size is not None:
            std = self.k_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        nn.init.xavier_uniform_(self.conv_q.weight)
        nn.init.xavier_uniform_(self.conv_k.weight)
        nn.init.xavier_uniform_(self.conv_v.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        return self.conv_o(self.attention(q, k, v, attn_mask))

    def _band_index(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.window_size
        i = torch.arange(length, device=device)
        offset = torch.arange(-w, w + 1, device=device)
        cols = i.view(-1, 1) + offset.view(1, -1)  # (T, 2w+1): key position of each band slot
        valid = (cols >= 0) & (cols < length)
        return cols.clamp(0, length - 1), valid

    def attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, d, t_k = key.shape
        t_q = query.size(2)
        h, kc = self.n_heads, self.k_channels
        query = query.view(b, h, kc, t_q).transpose(2, 3) * (kc**-0.5)  # (b, h, t_q, kc)
        key = key.view(b, h, kc, t_k).transpose(2, 3)
        value = value.view(b, h, kc, t_k).transpose(2, 3)
        scores = torch.matmul(query, key.transpose(-2, -1))  # (b, h, t_q, t_k)
        if self.window_size is not None:
            if t_q != t_k:
                raise SoVITSError("relative-position attention needs equal query and key lengths")
            cols, valid = self._band_index(t_k, scores.device)
            band = torch.matmul(query, self.emb_rel_k[0].to(query.dtype).t())  # (b, h, t, 2w+1)
            band = band.masked_fill(~valid, 0.0)
            scores = scores.scatter_add(-1, cols.expand(b, h, -1, -1), band)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e4)
        p_attn = self.drop(torch.softmax(scores, dim=-1))
        out = torch.matmul(p_attn, value)
        if self.window_size is not None:
            rel_weights = torch.gather(p_attn, -1, cols.expand(b, h, -1, -1)).masked_fill(~valid, 0.0)
            out = out + torch.matmul(rel_weights, self.emb_rel_v[0].to(out.dtype))
        return out.transpose(2, 3).reshape(b, d, t_q)


class FFN(nn.Module):
    """Position-wise conv feed-forward: conv(k) -> ReLU -> conv(k), masked, `(batch, C, T)` -> `(batch, C_out, T)`."""

    def __init__(
        self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            return x
        return F.pad(x, ((self.kernel_size - 1) // 2, self.kernel_size // 2))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(self._pad(x * x_mask)))
        x = self.conv_2(self._pad(self.drop(x) * x_mask))
        return x * x_mask


class Encoder(nn.Module):
    """Post-norm transformer encoder with relative-position self-attention (window 4) and conv FFN.

    forward(x `(batch, hidden, T)`, x_mask `(batch, 1, T)`) -> `(batch, hidden, T)`.
    """

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 1,
        p_dropout: float = 0.0,
        window_size: int = 4,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size)
            for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = norm1(x + self.drop(attn(x, x, attn_mask)))
            x = norm2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


# --------------------------------------------------------------------------------------------------------------
# text encoder with MRTE
# --------------------------------------------------------------------------------------------------------------


class MRTE(nn.Module):
    """Multi-reference timbre encoder: content frames attend to phones, plus the global timbre vector.

    forward(ssl_enc `(B, content, T)`, ssl_mask `(B, 1, T)`, text `(B, content, L)`, text_mask `(B, 1, L)`,
    ge `(B, hidden, 1)` or None) -> `(B, out, T)`.
    """

    def __init__(
        self,
        content_enc_channels: int = 192,
        hidden_size: int = 512,
        out_channels: int = 192,
        n_heads: int = 4,
    ) -> None:
        super().__init__()
        self.cross_attention = MultiHeadAttention(hidden_size, hidden_size, n_heads)
        self.c_pre = nn.Conv1d(content_enc_channels, hidden_size, 1)
        self.text_pre = nn.Conv1d(content_enc_channels, hidden_size, 1)
        self.c_post = nn.Conv1d(hidden_size, out_channels, 1)

    def forward(
        self,
        ssl_enc: torch.Tensor,
        ssl_mask: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        ge: torch.Tensor | None,
    ) -> torch.Tensor:
        attn_mask = text_mask.unsqueeze(2) * ssl_mask.unsqueeze(-1)
        ssl_enc = self.c_pre(ssl_enc * ssl_mask)
        text_enc = self.text_pre(text * text_mask)
        x = self.cross_attention(ssl_enc * ssl_mask, text_enc * text_mask, attn_mask) + ssl_enc
        if ge is not None:
            x = x + ge
        return self.c_post(x * ssl_mask)


class TextEncoder(nn.Module):
    """Prior encoder `enc_p`: quantized SSL content + phones + timbre -> prior mean/log-std.

    forward(y `(B, 768, T)`, y_lengths `(B,)`, text `(B, L)` ids, text_lengths `(B,)`, ge `(B, mrte_hidden, 1)`,
    speed) -> (x `(B, hidden, T')`, m_p `(B, inter, T')`, logs_p `(B, inter, T')`, y_mask `(B, 1, T')`),
    with `T' = int(T / speed) + 1` when speed != 1.
    """

    def __init__(
        self,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        n_symbols: int = 732,
        ssl_dim: int = 768,
        mrte: MRTEConfig | None = None,
    ) -> None:
        super().__init__()
        mrte = mrte or MRTEConfig()
        self.out_channels = out_channels
        self.ssl_proj = nn.Conv1d(ssl_dim, hidden_channels, 1)
        self.encoder_ssl = Encoder(hidden_channels, filter_channels, n_heads, n_layers // 2, kernel_size, p_dropout)
        self.encoder_text = Encoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.text_embedding = nn.Embedding(n_symbols, hidden_channels)
        self.mrte = MRTE(mrte.content_enc_channels, mrte.hidden_size, mrte.out_channels, mrte.n_heads)
        self.encoder2 = Encoder(hidden_channels, filter_channels, n_heads, n_layers // 2, kernel_size, p_dropout)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self,
        y: torch.Tensor,
        y_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        ge: torch.Tensor | None,
        speed: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        y_mask = sequence_mask(y_lengths, y.size(2)).unsqueeze(1).to(y.dtype)
        y = self.ssl_proj(y * y_mask) * y_mask
        y = self.encoder_ssl(y * y_mask, y_mask)
        text_mask = sequence_mask(text_lengths, text.size(1)).unsqueeze(1).to(y.dtype)
        t = self.text_embedding(text).transpose(1, 2)
        t = self.encoder_text(t * text_mask, text_mask)
        y = self.mrte(y, y_mask, t, text_mask, ge)
        y = self.encoder2(y * y_mask, y_mask)
        if speed != 1:
            y = F.interpolate(y, size=int(y.shape[-1] / speed) + 1, mode="linear")
            y_mask = F.interpolate(y_mask, size=y.shape[-1], mode="nearest")
        stats = self.proj(y) * y_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return y, m, logs, y_mask


# --------------------------------------------------------------------------------------------------------------
# flow, posterior encoder
# --------------------------------------------------------------------------------------------------------------


class WN(nn.Module):
    """WaveNet-style stack of gated dilated convs with global conditioning (weight-normalised).

    forward(x `(B, hidden, T)`, x_mask `(B, 1, T)`, g `(B, gin, 1)` or None) -> `(B, hidden, T)`.
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels:
            self.cond_layer = WNConv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        for i in range(n_layers):
            dilation = dilation_rate**i
            self.in_layers.append(
                WNConv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation,
                         padding=get_padding(kernel_size, dilation))
            )
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(WNConv1d(hidden_channels, out, 1))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden_channels
        output = torch.zeros_like(x)
        g_all = self.cond_layer(g) if g is not None else None
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x)
            if g_all is not None:
                x_in = x_in + g_all[:, i * 2 * h:(i + 1) * 2 * h, :]
            acts = self.drop(torch.tanh(x_in[:, :h]) * torch.sigmoid(x_in[:, h:]))
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * x_mask
                output = output + res_skip[:, h:]
            else:
                output = output + res_skip
        return output * x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: the second half of the channels is shifted by a WN of the first half."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        x0, x1 = torch.split(x, [self.half_channels, x.size(1) - self.half_channels], dim=1)
        h = self.enc(self.pre(x0) * x_mask, x_mask, g=g)
        m = self.post(h) * x_mask
        x1 = (x1 - m) * x_mask if reverse else m + x1 * x_mask
        return torch.cat([x0, x1], dim=1)


class Flip(nn.Module):
    """Reverse the channel order (volume preserving, its own inverse)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """Normalising flow `flow`: n_flows x (coupling, flip). forward maps z -> z_p; reverse maps z_p -> z.

    forward(x `(B, inter, T)`, x_mask `(B, 1, T)`, g `(B, gin, 1)`, reverse) -> `(B, inter, T)`.
    Mean-only couplings have log|det| = 0, so no log-determinant is returned.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        dilation_rate: int = 1,
        n_layers: int = 4,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
            )
            self.flows.append(Flip())

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x


class PosteriorEncoder(nn.Module):
    """`enc_q`: linear spectrogram -> posterior sample z (training only).

    forward(x `(B, spec_channels, T)`, x_lengths `(B,)`, g `(B, gin, 1)`) -> (z, m, logs `(B, inter, T)`,
    x_mask `(B, 1, T)`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        dilation_rate: int = 1,
        n_layers: int = 16,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if g is not None:
            g = g.detach()
        x_mask = sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.pre(x) * x_mask
        x = self.enc(x, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


# --------------------------------------------------------------------------------------------------------------
# decoder (HiFi-GAN generator)
# --------------------------------------------------------------------------------------------------------------


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock1: 3 x (lrelu, dilated conv, lrelu, conv) residual pairs. `(B, C, T)` -> `(B, C, T)`."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilation
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size, 1))
            for _ in dilation
        )
        for conv in list(self.convs1) + list(self.convs2):
            nn.init.normal_(conv.weight_v, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()  # inference: reuse the fresh conv outputs' memory
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            xt = c2(F.leaky_relu_(xt, LRELU_SLOPE) if inplace else F.leaky_relu(xt, LRELU_SLOPE))
            x = xt.add_(x) if inplace else x + xt
        return x


class Generator(nn.Module):
    """`dec`, the HiFi-GAN v1 generator: z `(B, inter, T)` + ge `(B, gin, 1)` -> waveform
    `(B, 1, T * prod(upsample_rates))` in [-1, 1].

        x = conv_pre(z) + cond(ge)                                     (B, 512, T)
        per stage i: x = mean_k resblock_ik(ups_i(lrelu(x)))           (B, 512 / 2^(i+1), T * rates[0..i])
        wav = tanh(conv_post(lrelu(x)))                                (B, 1, T * prod(rates))
    """

    def __init__(
        self,
        initial_channel: int,
        resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
        resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        upsample_rates: Sequence[int] = (10, 8, 2, 2, 2),
        upsample_initial_channel: int = 512,
        upsample_kernel_sizes: Sequence[int] = (16, 16, 8, 2, 2),
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            up = WNConvTranspose1d(
                upsample_initial_channel // 2**i, upsample_initial_channel // 2 ** (i + 1), k, u, padding=(k - u) // 2
            )
            nn.init.normal_(up.weight_v, 0.0, 0.01)
            self.ups.append(up)
        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for i in range(self.num_upsamples):
            ch = upsample_initial_channel // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(ch, k, d))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        self.gradient_checkpointing = False  # training: recompute each upsampling stage in backward
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        inplace = not torch.is_grad_enabled()  # inference: reuse the fresh conv outputs' memory
        for i in range(self.num_upsamples):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(self.upsampling_stage, x, i, False, use_reentrant=False)
            else:
                x = self.upsampling_stage(x, i, inplace)
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as in HiFi-GAN/VITS
        return torch.tanh(x)

    def upsampling_stage(self, x: torch.Tensor, i: int, inplace: bool) -> torch.Tensor:
        """Stage i: `(B, C, T)` -> `(B, C / 2, T * upsample_rates[i])`: leaky ReLU, transposed conv, then the mean
        of the stage's multi-receptive-field resblocks. `inplace` (inference only) reuses the outputs' memory."""
        x = self.ups[i](F.leaky_relu(x, LRELU_SLOPE))
        blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
        xs = blocks[0](x)
        for block in blocks[1:]:
            xs = xs.add_(block(x)) if inplace else xs + block(x)
        return xs.div_(self.num_kernels) if inplace else xs / self.num_kernels


# --------------------------------------------------------------------------------------------------------------
# reference (style) encoder
# --------------------------------------------------------------------------------------------------------------


class LinearNorm(nn.Module):
    """Linear layer held as `.fc` (key layout of the official MelStyleEncoder)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ConvNorm(nn.Module):
    """Conv1d held as `.conv` with 'same' padding. `(B, C_in, T)` -> `(B, C_out, T)`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Conv1dGLU(nn.Module):
    """Residual gated conv: x + dropout(a * sigmoid(b)) with [a, b] = conv(x). `(B, C, T)` -> `(B, C, T)`."""

    def __init__(self, channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = ConvNorm(channels, 2 * channels, kernel_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.conv1(x), self.channels, dim=1)
        return x + self.dropout(a * torch.sigmoid(b))


class StyleAttention(nn.Module):
    """Residual multi-head self-attention of the style encoder, on `(B, T, d_model)`; keys `w_qs/w_ks/w_vs/fc`.

    Scores are scaled by 1/sqrt(d_model) (not per-head width) as in the original StyleSpeech block.
    """

    def __init__(self, n_head: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.d_k = d_model // n_head
        self.temperature = d_model**0.5
        self.w_qs = nn.Linear(d_model, n_head * self.d_k)
        self.w_ks = nn.Linear(d_model, n_head * self.d_k)
        self.w_vs = nn.Linear(d_model, n_head * self.d_k)
        self.fc = nn.Linear(n_head * self.d_k, d_model)
        self.attn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        h, dk = self.n_head, self.d_k
        q = self.w_qs(x).view(b, t, h, dk).transpose(1, 2)
        k = self.w_ks(x).view(b, t, h, dk).transpose(1, 2)
        v = self.w_vs(x).view(b, t, h, dk).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / self.temperature  # (b, h, t, t)
        if key_padding is not None:
            scores = scores.masked_fill(key_padding.view(b, 1, 1, t), float("-inf"))
        attn = self.attn_dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, h * dk)
        return self.dropout(self.fc(out)) + x


class MelStyleEncoder(nn.Module):
    """`ref_enc`: reference spectrogram `(B, bins, T)` (+ mask `(B, 1, T)`) -> timbre vector ge `(B, gin, 1)`.

    spectral (Linear, Mish) x 2 -> temporal Conv1dGLU x 2 -> residual self-attention -> Linear -> masked
    temporal mean.
    """

    def __init__(
        self,
        n_mel_channels: int = 704,
        style_hidden: int = 128,
        style_vector_dim: int = 512,
        style_kernel_size: int = 5,
        style_head: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.spectral = nn.Sequential(
            LinearNorm(n_mel_channels, style_hidden), nn.Mish(), nn.Dropout(dropout),
            LinearNorm(style_hidden, style_hidden), nn.Mish(), nn.Dropout(dropout),
        )
        self.temporal = nn.Sequential(
            Conv1dGLU(style_hidden, style_kernel_size, dropout), Conv1dGLU(style_hidden, style_kernel_size, dropout)
        )
        self.slf_attn = StyleAttention(style_head, style_hidden, dropout)
        self.fc = LinearNorm(style_hidden, style_vector_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, T, bins)
        padding = (mask == 0).squeeze(1) if mask is not None else None  # (B, T) True where padded
        x = self.spectral(x)
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)
        if padding is not None:
            x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        x = self.fc(self.slf_attn(x, padding))
        if padding is None:
            w = x.mean(dim=1)
        else:
            keep = (~padding).unsqueeze(-1).to(x.dtype)
            w = (x * keep).sum(dim=1) / keep.sum(dim=1)
        return w.unsqueeze(-1)


# --------------------------------------------------------------------------------------------------------------
# semantic quantizer
# --------------------------------------------------------------------------------------------------------------


class EuclideanCodebook(nn.Module):
    """One codebook `(bins, dim)` with the EMA bookkeeping buffers of the official quantizer (frozen here)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.randn(codebook_size, dim))
        self.register_buffer("embed_avg", self.embed.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, dim)` -> nearest codeword ids `(N,)` (Euclidean)."""
        embed = self.embed.to(x.dtype)
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1, keepdim=True).t())
        return dist.max(dim=-1).indices

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed)


class VectorQuantization(nn.Module):
    """Holds `_codebook`; encode `(B, dim, T)` -> `(B, T)`, decode `(B, T)` -> `(B, dim, T)`."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, codebook_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, d, t = x.shape
        return self._codebook.encode(x.transpose(1, 2).reshape(b * t, d)).view(b, t)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self._codebook.decode(ids).transpose(1, 2)


class ResidualVectorQuantization(nn.Module):
    def __init__(self, num_quantizers: int, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, codebook_size) for _ in range(num_quantizers))


class ResidualVectorQuantizer(nn.Module):
    """Residual VQ (`quantizer.vq.layers.N._codebook.*`). The codebooks are frozen (no EMA updates here).

    forward(x `(B, dim, T)`) -> (quantized `(B, dim, T)` with straight-through gradient, codes `(n_q, B, T)`,
    commit loss (scalar), per-layer quantized list).
    """

    def __init__(self, dimension: int = 768, n_q: int = 1, bins: int = 1024) -> None:
        super().__init__()
        self.n_q = n_q
        self.vq = ResidualVectorQuantization(n_q, dimension, bins)

    def forward(
        self, x: torch.Tensor, n_q: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        residual = x
        quantized_out = torch.zeros_like(x)
        codes, losses, per_layer = [], [], []
        for layer in self.vq.layers[: n_q or self.n_q]:
            ids = layer.encode(residual)
            q = layer.decode(ids).to(x.dtype)
            losses.append(F.mse_loss(q.detach(), residual))
            q_st = residual + (q - residual).detach()
            residual = residual - q.detach()
            quantized_out = quantized_out + q_st
            codes.append(ids)
            per_layer.append(q)
        return quantized_out, torch.stack(codes), torch.stack(losses).mean(), per_layer

    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """`(B, dim, T)` -> codes `(n_q, B, T)` int64."""
        residual, codes = x, []
        for layer in self.vq.layers[: n_q or self.n_q]:
            ids = layer.encode(residual)
            residual = residual - layer.decode(ids).to(x.dtype)
            codes.append(ids)
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `(n_q, B, T)` -> `(B, dim, T)` (sum over the used codebooks)."""
        out = None
        for i, ids in enumerate(codes):
            q = self.vq.layers[i].decode(ids)
            out = q if out is None else out + q
        return out


# --------------------------------------------------------------------------------------------------------------
# the synthesizer
# --------------------------------------------------------------------------------------------------------------


class SoVITS(nn.Module):
    """GPT-SoVITS stage-2 synthesizer (v2, v2Pro, v2ProPlus), official state-dict layout.

    Inference: `extract_latent(ssl)` -> semantic codes; `decode(codes, phones, [refer_spec], ...)` -> waveform.
    Training: `forward(ssl, spec, spec_lengths, text, text_lengths, sv_emb)`.
    The faster inference layout (cached weight-norm weights, channels-last decoder) is applied from outside by
    `models.inference.prepare_sovits`; the computation written here is the official one.
    """

    def __init__(self, config: SoVITSConfig | None = None) -> None:
        super().__init__()
        cfg = config or SoVITSConfig()
        self.config = cfg
        self.hparams: dict[str, Any] | None = None  # the official config dict this model was loaded from
        self.info: str | None = None  # the checkpoint's "info" string ("<epoch>epoch_<step>iteration")
        self.has_posterior = True  # False when loaded from a file without enc_q.* (then enc_q is untrained)
        mrte_ge = cfg.ge512_channels if cfg.is_pro else cfg.gin_channels
        if cfg.mrte.hidden_size != mrte_ge:
            raise SoVITSError(
                f"MRTE hidden_size ({cfg.mrte.hidden_size}) must equal the timbre width it receives ({mrte_ge}: "
                f"{'ge_to512 output' if cfg.is_pro else 'gin_channels'}); fix the 'mrte' or 'gin_channels' config"
            )
        self.enc_p = TextEncoder(
            cfg.inter_channels, cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size,
            cfg.p_dropout, n_symbols=cfg.n_symbols, ssl_dim=cfg.ssl_dim, mrte=cfg.mrte,
        )
        self.dec = Generator(
            cfg.inter_channels, cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, cfg.upsample_rates,
            cfg.upsample_initial_channel, cfg.upsample_kernel_sizes, gin_channels=cfg.gin_channels,
        )
        self.enc_q = PosteriorEncoder(
            cfg.spec_channels, cfg.inter_channels, cfg.hidden_channels, 5, 1, 16, gin_channels=cfg.gin_channels
        )
        self.flow = ResidualCouplingBlock(
            cfg.inter_channels, cfg.hidden_channels, 5, 1, 4, gin_channels=cfg.gin_channels
        )
        self.ref_enc = MelStyleEncoder(cfg.ref_bins, style_vector_dim=cfg.gin_channels)
        if cfg.semantic_frame_rate == "25hz":
            self.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, 2, stride=2)
        else:
            self.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, 1, stride=1)
        self.quantizer = ResidualVectorQuantizer(cfg.ssl_dim, cfg.n_codebooks, cfg.codebook_size)
        if cfg.is_pro:
            self.sv_emb = nn.Linear(cfg.sv_dim, cfg.gin_channels)
            self.ge_to512 = nn.Linear(cfg.gin_channels, cfg.ge512_channels)
            self.prelu = nn.PReLU(num_parameters=cfg.gin_channels)

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def is_pro(self) -> bool:
        return self.config.is_pro

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def samples_per_code(self) -> int:
        """Waveform samples per 25 Hz semantic token (1280 at 32 kHz)."""
        return self.config.upsample_factor * (2 if self.config.semantic_frame_rate == "25hz" else 1)

    @property
    def gradient_checkpointing(self) -> bool:
        """Training: recompute the decoder's activations stage by stage in backward (less memory, slower)."""
        return self.dec.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.dec.gradient_checkpointing = bool(on)

    def train(self, mode: bool = True) -> "SoVITS":
        super().train(mode)
        if mode and self.config.freeze_quantizer:
            self.ssl_proj.eval()
            self.quantizer.eval()
        return self

    # -- inference ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features `(B, 768, T50)` -> semantic codes `(n_q=1, B, T25)` int64.

        Always computed in float32 (also for a bf16/fp16 model): the nearest-codeword search is sensitive to
        rounding and the codes become the GPT prompt.
        """
        proj = self.ssl_proj
        x = F.conv1d(ssl.float(), proj.weight.float(), None if proj.bias is None else proj.bias.float(), proj.stride)
        return self.quantizer.encode(x)

    def _timbre(self, refer: torch.Tensor, sv_emb: torch.Tensor | None) -> torch.Tensor:
        """One reference spectrogram `(B, 1025, T)` (+ sv vector `(B, 20480)`) -> ge `(B, gin, 1)`."""
        refer = refer.to(self.ref_enc.fc.fc.weight.dtype)
        mask = torch.ones(refer.size(0), 1, refer.size(2), dtype=refer.dtype, device=refer.device)
        ge = self.ref_enc(refer[:, : self.config.ref_bins] * mask, mask)
        if self.is_pro:
            if sv_emb is None:
                raise SoVITSError(
                    f"this is a {self.version} model: pass sv_emb (one (batch, {self.config.sv_dim}) speaker-"
                    "verification vector per reference) to decode"
                )
            ge = ge + self.sv_emb(sv_emb.to(ge.dtype)).unsqueeze(-1)
            ge = self.prelu(ge)
        return ge

    def timbre(
        self, refer: torch.Tensor | Sequence[torch.Tensor], sv_emb: torch.Tensor | Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Global timbre vector ge `(B, gin, 1)`, averaged over the reference spectrograms."""
        refers = [refer] if isinstance(refer, torch.Tensor) else list(refer)
        if not refers:
            raise SoVITSError("decode needs at least one reference spectrogram")
        if sv_emb is None:
            svs: list[torch.Tensor | None] = [None] * len(refers)
        elif isinstance(sv_emb, torch.Tensor):
            svs = [sv_emb] if len(refers) == 1 else list(sv_emb)
        else:
            svs = list(sv_emb)
        if self.is_pro and len(svs) != len(refers):
            raise SoVITSError(
                f"got {len(refers)} reference spectrograms but {len(svs)} sv_emb vectors; pass one per reference"
            )
        ges = [self._timbre(r, s) for r, s in zip(refers, svs)]
        return torch.stack(ges, 0).mean(0)

    def _mrte_ge(self, ge: torch.Tensor) -> torch.Tensor:
        if self.is_pro:
            return self.ge_to512(ge.transpose(1, 2)).transpose(1, 2)
        return ge

    @torch.no_grad()
    def decode(
        self,
        codes: torch.Tensor,
        text: torch.Tensor,
        refer: torch.Tensor | Sequence[torch.Tensor],
        noise_scale: float = 0.5,
        speed: float = 1.0,
        sv_emb: torch.Tensor | Sequence[torch.Tensor] | None = None,
        noise: torch.Tensor | None = None,
        return_intermediates: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Synthesize speech.

        Args:
            codes: semantic tokens `(n_q=1, B, T25)` int64.
            text: phone ids `(B, L)` int64 (v2 symbol table).
            refer: reference linear spectrogram(s) `(B, 1025, T_ref)` from `models.audio.spectrogram`; a list
                averages the timbre over several references.
            noise_scale: std multiplier of the prior sample (0 = the prior mean).
            speed: > 1 speaks faster (content frames resampled to `int(2 * T25 / speed) + 1`).
            sv_emb: v2Pro/v2ProPlus only: one `(B, 20480)` speaker-verification vector per reference.
            noise: optional fixed N(0, 1) tensor `(B, inter, T')` used instead of drawing fresh noise.
            return_intermediates: also return a dict of intermediate tensors (ge, m_p, logs_p, z, ...).
        Returns:
            waveform `(B, 1, samples)` at 32 kHz, `samples = 640 * T'`.
        """
        dtype = self.ssl_proj.weight.dtype
        ge = self.timbre(refer, sv_emb)
        if codes.dim() == 2:
            codes = codes.unsqueeze(0)
        b = codes.size(1)
        quantized = self.quantizer.decode(codes).to(dtype)
        if self.config.semantic_frame_rate == "25hz":
            quantized = F.interpolate(quantized, size=quantized.shape[-1] * 2, mode="nearest")
        y_lengths = torch.full((b,), quantized.size(-1), dtype=torch.long, device=codes.device)
        text_lengths = torch.full((b,), text.size(-1), dtype=torch.long, device=text.device)
        x, m_p, logs_p, y_mask = self.enc_p(quantized, y_lengths, text, text_lengths, self._mrte_ge(ge), speed)
        if noise is None:
            noise = torch.randn_like(m_p) if noise_scale else torch.zeros_like(m_p)
        elif noise.shape != m_p.shape:
            raise SoVITSError(
                f"noise must have shape {tuple(m_p.shape)} (batch, inter_channels, frames), got {tuple(noise.shape)}"
            )
        z_p = m_p + noise.to(m_p.dtype) * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=ge, reverse=True)
        z_masked = z * y_mask
        wav = self.dec(z_masked, g=ge)
        if return_intermediates:
            return wav, {
                "ge": ge, "enc_p_x": x, "m_p": m_p, "logs_p": logs_p, "y_mask": y_mask,
                "z_after_flow_reverse": z, "dec_input_z_masked": z_masked,
            }
        return wav

    # -- training -----------------------------------------------------------------------------------------------

    def forward(
        self,
        ssl: torch.Tensor,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        sv_emb: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Training pass.

        Args:
            ssl: HuBERT features `(B, 768, 2 * T)` (50 Hz, padded), spec: linear spectrogram `(B, 1025, T)`,
            spec_lengths `(B,)`, text `(B, L)`, text_lengths `(B,)`, sv_emb `(B, 20480)` (v2Pro/ProPlus).
        Returns a dict with `y_hat` `(B, 1, segment_size * 640)` (decoded random segment), `ids_slice` `(B,)`
            (segment start frames), `x_mask`/`z_mask` `(B, 1, T)`, `z, z_p, m_p, logs_p, m_q, logs_q`
            `(B, inter, T)` for the KL loss, `commit_loss` (scalar) and `quantized` `(B, 768, T)`.
        """
        y_mask = sequence_mask(spec_lengths, spec.size(2)).unsqueeze(1).to(spec.dtype)
        ge = self.ref_enc(spec[:, : self.config.ref_bins] * y_mask, y_mask)
        if self.is_pro:
            if sv_emb is None:
                raise SoVITSError(f"a {self.version} model needs sv_emb (batch, {self.config.sv_dim}) for training")
            ge = self.prelu(ge + self.sv_emb(sv_emb).unsqueeze(-1))
        if self.config.freeze_quantizer:
            self.ssl_proj.eval()
            self.quantizer.eval()
            with torch.no_grad():
                quantized, codes, commit_loss, _ = self.quantizer(self.ssl_proj(ssl))
        else:
            quantized, codes, commit_loss, _ = self.quantizer(self.ssl_proj(ssl))
        if self.config.semantic_frame_rate == "25hz":
            quantized = F.interpolate(quantized, size=quantized.shape[-1] * 2, mode="nearest")
        if quantized.size(-1) != spec.size(-1):
            quantized = quantized[..., : spec.size(-1)] if quantized.size(-1) > spec.size(-1) else F.pad(
                quantized, (0, spec.size(-1) - quantized.size(-1))
            )
        x, m_p, logs_p, x_mask = self.enc_p(quantized, spec_lengths, text, text_lengths, self._mrte_ge(ge))
        z, m_q, logs_q, z_mask = self.enc_q(spec, spec_lengths, g=ge)
        z_p = self.flow(z, z_mask, g=ge)
        z_slice, ids_slice = rand_slice_segments(z, spec_lengths, self.config.segment_size, generator)
        y_hat = self.dec(z_slice, g=ge)
        return {
            "y_hat": y_hat, "ids_slice": ids_slice, "x_mask": x_mask, "z_mask": z_mask,
            "z": z, "z_p": z_p, "m_p": m_p, "logs_p": logs_p, "m_q": m_q, "logs_q": logs_q,
            "commit_loss": commit_loss, "quantized": quantized, "codes": codes,
        }


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, z_mask: torch.Tensor
) -> torch.Tensor:
    """VITS KL term between the flowed posterior sample z_p and the prior N(m_p, exp(logs_p)), mask-averaged."""
    kl = logs_p - logs_q - 0.5 + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)
