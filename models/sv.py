"""Speaker-verification (sv) front end of GPT-SoVITS v2Pro: ERes2NetV2 and its 20480-dim embedding.

Written from the facts in shared/gsv/SV.md and manifest_sv_eres2netv2.json. The dataflow for one reference clip:

    wav 32 kHz (B, N) in [-1, 1]
      -> resample_32k_to_16k          (B, ceil(N / 2))            models.audio_sv
      -> kaldi_fbank                  (B, T, 80), T = 1 + (N16 - 400) // 160
      -> ERes2NetV2.forward3          (B, 20480)  = fused stage-4 map, flattened (channel, freq), mean over time

`sv_embedding` runs that chain; the vector is SoVITS' `sv_emb` input (a Linear 20480 -> 1024 there).

Network layout (full size, m_channels 64, feature maps in (B, C, F, T) order, F = 80 mel bins):

    conv1 / bn1 (the stem, 1 -> 64, plain ReLU)              (B,   64, 80, T)
    layer1  3 x Res2NetBlock          stride 1               (B,  256, 80, T)
    layer2  4 x Res2NetBlock          first stride 2         (B,  512, 40, T/2)
    layer3  6 x Res2NetAFFBlock       first stride 2         (B, 1024, 20, T/4)
    layer4  3 x Res2NetAFFBlock       first stride 2         (B, 2048, 10, T/8)
    layer3_ds  3x3 stride-2 conv of layer3                   (B, 2048, 10, T/8)
    fuse34  AttentionalFeatureFusion(layer4, layer3_ds)      (B, 2048, 10, T/8)
    seg_1   Linear(2 * 20480 -> 192) after mean+std pooling  (B, 192)   (`forward` only; forward3 skips it)

Module and parameter names follow the official state-dict keys exactly (1001 entries at full size), so the
official `pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt` loads with `load_sv` unchanged. Inside the
blocks the ReLU is clamped at 20 (Hardtanh(0, 20)); the stem's ReLU is not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_sv import kaldi_fbank, resample_32k_to_16k
from narrator.errors import NarratorError

RELU_CLAMP = 20.0
"""Upper bound of the clamped ReLU used inside every block (and only there)."""

BN_EPS = 1e-5
AFF_REDUCTION = 4
TSTP_EPS = 1e-8  # added to the unbiased variance before the square root in mean+std pooling


class SVError(NarratorError):
    """The sv model was configured or called in a way it cannot handle."""


class SVCheckpointError(SVError):
    """An sv checkpoint is missing, unreadable, not an ERes2NetV2 state_dict, or does not fit the model."""


def clamped_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU clamped at 20 (`Hardtanh(0, 20)`), the activation inside all Res2Net blocks."""
    return F.hardtanh(x, 0.0, RELU_CLAMP)


# --------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------


def _halve(n: int) -> int:
    """Size after a stride-2 conv with kernel 1 (pad 0) or kernel 3 (pad 1): ceil(n / 2)."""
    return (n + 1) // 2


@dataclass
class SVConfig:
    """Hyper-parameters of ERes2NetV2. The defaults are what GPT-SoVITS' sv.py builds
    (`ERes2NetV2(baseWidth=24, scale=4, expansion=4)`, everything else the class default).

    Attributes:
        m_channels: stem width m; stage s has `planes = m * 2**(s-1)` and outputs `planes * expansion` channels.
        feat_dim: mel bins of the input filter bank (the network's "height").
        embedding_size: output of the `seg_1` head used by `forward` (not by `forward3`).
        base_width: Res2Net base width; block width is `floor(planes * base_width / 64)`.
        scale: number of Res2Net channel groups per block.
        expansion: bottleneck expansion of each block's output.
        num_blocks: blocks per stage.
    """

    m_channels: int = 64
    feat_dim: int = 80
    embedding_size: int = 192
    base_width: int = 24
    scale: int = 4
    expansion: int = 4
    num_blocks: tuple[int, int, int, int] = field(default=(3, 4, 6, 3))

    def __post_init__(self) -> None:
        self.num_blocks = tuple(int(n) for n in self.num_blocks)
        if len(self.num_blocks) != 4 or min(self.num_blocks) < 1:
            raise SVError(f"num_blocks must be four positive counts, got {self.num_blocks}")
        if self.scale < 2:
            raise SVError(f"scale must be at least 2, got {self.scale}")
        if min(self.stage_widths) < 1:
            raise SVError(f"base_width {self.base_width} gives a zero block width for m_channels {self.m_channels}")
        if min(self.stage_widths[2:]) < AFF_REDUCTION:
            raise SVError(f"AFF blocks need a block width of at least {AFF_REDUCTION}; widths are {self.stage_widths}")

    @classmethod
    def from_official_kwargs(cls, kwargs: Mapping[str, Any]) -> "SVConfig":
        """Build from the official constructor's keyword names (`m_channels`, `baseWidth`, ... as in the manifest)."""
        known = {"m_channels", "feat_dim", "embedding_size", "baseWidth", "scale", "expansion", "num_blocks"}
        ignored = {"block", "block_fuse", "pooling_func", "two_emb_layer"}
        unknown = set(kwargs) - known - ignored
        if unknown:
            raise SVError(f"unknown ERes2NetV2 arguments: {sorted(unknown)}")
        if kwargs.get("pooling_func", "TSTP") != "TSTP" or kwargs.get("two_emb_layer", False):
            raise SVError("only pooling_func='TSTP' with two_emb_layer=False is supported (what sv.py builds)")
        mapped = {("base_width" if k == "baseWidth" else k): v for k, v in kwargs.items() if k in known}
        if "num_blocks" in mapped:
            mapped["num_blocks"] = tuple(mapped["num_blocks"])
        return cls(**mapped)

    @property
    def stage_planes(self) -> tuple[int, ...]:
        return tuple(self.m_channels * 2**s for s in range(4))

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Per-group width of each stage's blocks (24/48/96/192 at full size)."""
        return tuple(p * self.base_width // 64 for p in self.stage_planes)

    @property
    def stage_out_channels(self) -> tuple[int, ...]:
        """Output channels of each stage (256/512/1024/2048 at full size)."""
        return tuple(p * self.expansion for p in self.stage_planes)

    @property
    def out_freq(self) -> int:
        """Frequency rows after the three stride-2 stages: ceil(feat_dim / 8) (10 for 80 bins)."""
        return _halve(_halve(_halve(self.feat_dim)))

    @property
    def embedding_dim(self) -> int:
        """Length of the `forward3` vector: stage-4 channels x out_freq (20480 at full size)."""
        return self.stage_out_channels[3] * self.out_freq


# --------------------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------------------


class AttentionalFeatureFusion(nn.Module):
    """AFF: blends two equally shaped maps with a learned per-position gate.

    `z = local_att(cat(x, y))` with local_att = 1x1 conv (2C -> C/r, bias) -> BN -> SiLU -> 1x1 conv (C/r -> C, bias)
    -> BN; `a = 1 + tanh(z)` in (0, 2); output `x * a + y * (2 - a)`.

    Shapes: x, y `(B, C, F, T)` -> `(B, C, F, T)`.
    """

    def __init__(self, channels: int, reduction: int = AFF_REDUCTION):
        super().__init__()
        inner = channels // reduction
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, kernel_size=1),
            nn.BatchNorm2d(inner, eps=BN_EPS),
            nn.SiLU(),
            nn.Conv2d(inner, channels, kernel_size=1),
            nn.BatchNorm2d(channels, eps=BN_EPS),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return x * a + y * (2.0 - a)


class Res2NetBlock(nn.Module):
    """Res2Net bottleneck block of ERes2NetV2 (official `BasicBlockERes2NetV2`; stages 1-2).

    1. conv1 1x1 (in -> width * scale, carries the stride) -> bn1 -> clamped ReLU;
    2. split into `scale` groups of `width`; group 0 -> convs[0] (3x3) -> bns[0] -> clamped ReLU; group i >= 1 takes
       `combine(previous output, group i)` (a sum here, AFF in `Res2NetAFFBlock`) -> convs[i] -> bns[i] -> clamped ReLU;
    3. concatenate the `scale` outputs -> conv3 1x1 (-> planes * expansion) -> bn3, add the shortcut, clamped ReLU.

    The shortcut is 1x1 conv (with the stride) + BN when the stride or the channel count changes, else identity.

    Shapes: `(B, in_channels, F, T)` -> `(B, planes * expansion, ceil(F / stride), ceil(T / stride))`.
    """

    uses_aff = False

    def __init__(self, in_channels: int, planes: int, stride: int, width: int, scale: int, expansion: int):
        super().__init__()
        out_channels = planes * expansion
        self.width, self.scale = width, scale
        self.conv1 = nn.Conv2d(in_channels, width * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale, eps=BN_EPS)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False) for _ in range(scale)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(width, eps=BN_EPS) for _ in range(scale))
        if self.uses_aff:
            self.fuse_models = nn.ModuleList(AttentionalFeatureFusion(width) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=BN_EPS),
            )

    def combine(self, i: int, previous: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """Input of group `i >= 1`: previous output + group (plain) or `fuse_models[i-1](previous, group)` (AFF)."""
        if self.uses_aff:
            return self.fuse_models[i - 1](previous, group)
        return previous + group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = clamped_relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, dim=1)
        outputs = []
        previous = None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = groups[i] if previous is None else self.combine(i, previous, groups[i])
            previous = clamped_relu(bn(conv(inp)))
            outputs.append(previous)
        out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
        return clamped_relu(out + self.shortcut(x))


class Res2NetAFFBlock(Res2NetBlock):
    """Res2Net bottleneck block whose groups are joined by attentional fusion (official
    `BasicBlockERes2NetV2AFF`; stages 3-4): group i >= 1 takes `fuse_models[i-1](previous output, group i)`,
    one `AttentionalFeatureFusion(width)` per joint. Shapes as `Res2NetBlock`.
    """

    uses_aff = True


class Res2NetStage(nn.Sequential):
    """One stage (`layer1` .. `layer4`): `n_blocks` blocks, the first with `stride` (and the channel change).

    Shapes: `(B, in_channels, F, T)` -> `(B, planes * expansion, ceil(F / stride), ceil(T / stride))`.
    """

    def __init__(
        self,
        block: type[Res2NetBlock],
        in_channels: int,
        planes: int,
        n_blocks: int,
        stride: int,
        width: int,
        scale: int,
        expansion: int,
    ):
        blocks = []
        for b in range(n_blocks):
            blocks.append(block(in_channels, planes, stride if b == 0 else 1, width, scale, expansion))
            in_channels = planes * expansion
        super().__init__(*blocks)


# --------------------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------------------


class ERes2NetV2(nn.Module):
    """ERes2NetV2 speaker encoder as GPT-SoVITS v2Pro uses it.

    The stem's parameters sit at the top level (`conv1`, `bn1`) because that is where the official checkpoint
    keeps them; `stem()` applies them. Everything is evaluated with BatchNorm in eval mode for inference.
    """

    def __init__(self, config: SVConfig | None = None):
        super().__init__()
        cfg = self.config = config or SVConfig()
        m = cfg.m_channels
        # stem: Conv2d(1 -> m, 3x3, pad 1, no bias) -> BN -> plain (unclamped) ReLU
        self.conv1 = nn.Conv2d(1, m, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m, eps=BN_EPS)
        in_ch = m
        for s in range(4):
            block = Res2NetBlock if s < 2 else Res2NetAFFBlock
            stage = Res2NetStage(
                block,
                in_ch,
                cfg.stage_planes[s],
                cfg.num_blocks[s],
                stride=1 if s == 0 else 2,
                width=cfg.stage_widths[s],
                scale=cfg.scale,
                expansion=cfg.expansion,
            )
            self.add_module(f"layer{s + 1}", stage)
            in_ch = cfg.stage_out_channels[s]
        c3, c4 = cfg.stage_out_channels[2], cfg.stage_out_channels[3]
        self.layer3_ds = nn.Conv2d(c3, c4, kernel_size=3, stride=2, padding=1, bias=False)
        self.fuse34 = AttentionalFeatureFusion(c4, reduction=AFF_REDUCTION)
        self.seg_1 = nn.Linear(2 * cfg.embedding_dim, cfg.embedding_size)

    # -- pieces ------------------------------------------------------------------------------------------------

    def _as_image(self, feat: torch.Tensor) -> torch.Tensor:
        """`(B, T, feat_dim)` fbank -> `(B, 1, feat_dim, T)` (frequency is the height); the input is not modified."""
        if feat.dim() != 3 or feat.shape[-1] != self.config.feat_dim:
            raise SVError(f"expected fbank features (batch, frames, {self.config.feat_dim}), got {tuple(feat.shape)}")
        return feat.permute(0, 2, 1).unsqueeze(1)

    def stem(self, image: torch.Tensor) -> torch.Tensor:
        """`(B, 1, F, T)` -> `(B, m, F, T)`: conv1 -> bn1 -> ReLU (not clamped)."""
        return F.relu(self.bn1(self.conv1(image)))

    def stage_outputs(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every recorded intermediate for `(B, T, feat_dim)` features, in (B, C, F, T) order:
        `conv1`, `bn1` (before the ReLU), `layer1` .. `layer4`, `layer3_ds`, `fuse34`."""
        out: dict[str, torch.Tensor] = {}
        x = out["conv1"] = self.conv1(self._as_image(feat))
        x = out["bn1"] = self.bn1(x)
        x = F.relu(x)
        for s in range(1, 5):
            x = out[f"layer{s}"] = getattr(self, f"layer{s}")(x)
        out["layer3_ds"] = self.layer3_ds(out["layer3"])
        out["fuse34"] = self.fuse34(out["layer4"], out["layer3_ds"])
        return out

    def fused_map(self, feat: torch.Tensor) -> torch.Tensor:
        """`(B, T, feat_dim)` -> `(B, C4, ceil(F / 8), ceil(T / 8))`: fuse34(layer4, layer3_ds(layer3))."""
        x = self.stem(self._as_image(feat))
        x = self.layer2(self.layer1(x))
        x3 = self.layer3(x)
        x4 = self.layer4(x3)
        return self.fuse34(x4, self.layer3_ds(x3))

    # -- outputs -----------------------------------------------------------------------------------------------

    def forward3(self, feat: torch.Tensor) -> torch.Tensor:
        """The v2Pro sv embedding: `(B, T, feat_dim)` -> `(B, embedding_dim)` (20480 at full size).

        The fused map is flattened over (channel, freq) with index `c * out_freq + f` and averaged over time.
        """
        return self.fused_map(feat).flatten(1, 2).mean(dim=-1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Speaker embedding head: `(B, T, feat_dim)` -> `(B, embedding_size)` (192).

        Temporal statistics pooling (mean and `sqrt(unbiased var + 1e-8)` over time of the flattened fused map,
        concatenated to `2 * embedding_dim`) followed by the `seg_1` Linear. Needs at least 2 pooled frames.
        """
        x = self.fused_map(feat).flatten(1, 2)  # (B, embedding_dim, T')
        mean = x.mean(dim=-1)
        std = torch.sqrt(x.var(dim=-1, unbiased=True) + TSTP_EPS)
        return self.seg_1(torch.cat((mean, std), dim=-1))


# --------------------------------------------------------------------------------------------------------------
# checkpoint loading
# --------------------------------------------------------------------------------------------------------------

_SV_MARKERS = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.convs.0.weight", "layer3_ds.weight")


def _infer_base_width(planes: Sequence[int], widths: Sequence[int]) -> int | None:
    """Smallest base width giving `floor(p * bw / 64) == w` for every stage (24 for the official model)."""
    if widths[0] < 1:
        return None
    low = widths[-1] * 64 // planes[-1]
    for bw in range(max(1, low), low + 65):
        if all(p * bw // 64 == w for p, w in zip(planes, widths)):
            return bw
    return None


def infer_sv_config(state_dict: Mapping[str, torch.Tensor]) -> SVConfig:
    """Read the ERes2NetV2 hyper-parameters off a state_dict's shapes (keys must follow the official names)."""
    sd = state_dict
    try:
        m = int(sd["conv1.weight"].shape[0])
        num_blocks = []
        for s in range(1, 5):
            idx = {int(k.split(".")[1]) for k in sd if re.fullmatch(rf"layer{s}\.\d+\.conv1\.weight", k)}
            if not idx:
                raise KeyError(f"layer{s}.0.conv1.weight")
            num_blocks.append(max(idx) + 1)
        scale = len({k for k in sd if re.fullmatch(r"layer1\.0\.convs\.\d+\.weight", k)})
        widths = [int(sd[f"layer{s}.0.convs.0.weight"].shape[0]) for s in range(1, 5)]
        expansion = int(sd["layer1.0.conv3.weight"].shape[0]) // m
    except KeyError as exc:
        raise SVCheckpointError(f"cannot infer the ERes2NetV2 configuration: key {exc} is missing") from None
    planes = [m * 2**s for s in range(4)]
    base_width = _infer_base_width(planes, widths)
    if base_width is None:
        raise SVCheckpointError(
            f"block widths {widths} do not follow floor(planes * base_width / 64) for planes {planes}"
        )
    embedding_size, feat_dim = SVConfig.embedding_size, SVConfig.feat_dim
    if "seg_1.weight" in sd and sd["seg_1.weight"].dim() == 2:
        embedding_size = int(sd["seg_1.weight"].shape[0])
        out_freq = int(sd["seg_1.weight"].shape[1]) // (2 * planes[3] * expansion)
        if _halve(_halve(_halve(feat_dim))) != out_freq:
            feat_dim = 8 * out_freq
    try:
        return SVConfig(
            m_channels=m,
            feat_dim=feat_dim,
            embedding_size=embedding_size,
            base_width=base_width,
            scale=scale,
            expansion=expansion,
            num_blocks=tuple(num_blocks),
        )
    except SVError as exc:
        raise SVCheckpointError(f"inconsistent ERes2NetV2 shapes: {exc}") from None


def check_sv_state_dict(model: ERes2NetV2, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise `SVCheckpointError` naming every missing, extra or mis-shaped key of `state_dict` for `model`."""
    from models.checkpoints import state_dict_problems

    problems = state_dict_problems(model.state_dict(), state_dict)
    if problems:
        raise SVCheckpointError(f"{source} does not fit ERes2NetV2 ({model.config}): " + " | ".join(problems))


def _describe_foreign(obj: Mapping[str, Any]) -> str:
    if "weight" in obj and "config" in obj:
        return "it looks like a SoVITS checkpoint (has 'weight' and 'config')"
    if "state_dict" in obj or "config" in obj:
        return "it looks like a GPT checkpoint or a training container (has 'state_dict'/'config')"
    return f"its first keys are {', '.join(sorted(map(str, obj))[:6])}"


def load_sv(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    config: SVConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> ERes2NetV2:
    """Load an ERes2NetV2 sv model from a plain state_dict file (the official `.ckpt` or our reduced golden one).

    The file is read with `torch.load(weights_only=True)`. Without `config`, the hyper-parameters are inferred from
    the tensor shapes. Tensors (fp16 or fp32) are cast to `dtype`. Returns the model in eval mode on `device`.

    Raises:
        SVCheckpointError: the file is missing or unreadable, is not an ERes2NetV2 state_dict, or its keys/shapes
            do not match (the message lists missing, unexpected and mis-shaped keys).
    """
    p = Path(path)
    if not p.is_file():
        raise SVCheckpointError(
            f"sv checkpoint {p} not found: download GPT-SoVITS' "
            "pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt and point the sv model path at it"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise SVCheckpointError(f"cannot read sv checkpoint {p}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, Mapping):
        raise SVCheckpointError(f"{p} is not an sv checkpoint: expected a state_dict, found {type(obj).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()) or not any(k in obj for k in _SV_MARKERS):
        raise SVCheckpointError(
            f"{p} is not an sv (ERes2NetV2) checkpoint: {_describe_foreign(obj)}; "
            "expected a plain state_dict with keys like conv1.weight, layer1.0.convs.0.weight, "
            "fuse34.local_att.0.weight"
        )
    cfg = config or infer_sv_config(obj)
    with torch.device("meta"):
        model = ERes2NetV2(cfg)
    check_sv_state_dict(model, obj, source=str(p))
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in obj.items()}, assign=True)
    return model.to(device=device).eval()


# --------------------------------------------------------------------------------------------------------------
# the v2Pro chain
# --------------------------------------------------------------------------------------------------------------


def sv_fbank(wav_32k: torch.Tensor) -> torch.Tensor:
    """`(B, N)` 32 kHz waveform in [-1, 1] -> `(B, T, 80)` float32 Kaldi fbank of its 16 kHz resampling."""
    if wav_32k.dim() == 1:
        wav_32k = wav_32k.unsqueeze(0)
    if wav_32k.dim() != 2:
        raise SVError(f"expected a waveform of shape (batch, samples), got {tuple(wav_32k.shape)}")
    wav_16k = resample_32k_to_16k(wav_32k.float())
    if wav_16k.shape[-1] < 400:
        raise SVError(
            f"reference audio too short for the sv model: {wav_32k.shape[-1]} samples at 32 kHz (need >= 800)"
        )
    return kaldi_fbank(wav_16k)


def sv_embedding(wav_32k: torch.Tensor, model: ERes2NetV2) -> torch.Tensor:
    """The v2Pro sv vector: `(B, N)` 32 kHz waveform in [-1, 1] -> `(B, model.config.embedding_dim)` (20480).

    Resample 32k -> 16k, Kaldi fbank (float32), `model.forward3` (in the model's dtype and on its device).
    Runs without gradient tracking; rows must have equal length (pad or call once per clip).
    """
    param = next(model.parameters())
    with torch.no_grad():
        feat = sv_fbank(wav_32k.to(param.device))
        return model.forward3(feat.to(param.dtype))
