"""SoVITS (VITS-style) discriminators and LSGAN losses, for fine-tuning the GPT-SoVITS generator.

The discriminator is a `MultiPeriodDiscriminator`: one scale discriminator (`DiscriminatorS`, 1-D convs on the raw
waveform) followed by one `DiscriminatorP` per period (the waveform folded into a `(frames, period)` image and
seen through 2-D convs with `(k, 1)` kernels). GPT-SoVITS v2 uses periods (2, 3, 5, 7, 11); v2Pro / v2ProPlus add
17 and 23. Layer names and the weight-norm parametrisation (`weight_g` / `weight_v`) match the official
discriminator files (`s2D2333k.pth`, `s2Dv2Pro.pth`, `s2Dv2ProPlus.pth`), whose state dicts are saved under
"model": keys look like `discriminators.0.convs.0.weight_g`, `discriminators.3.conv_post.bias`.

Parameter count (biases included, weight-norm `g` and `v` both counted): 46,747,132 for the 5-period model (the
well-known ~46.7 M of the VITS discriminator); each extra period adds 8,221,154 (63,189,440 for v2Pro).

Losses follow the least-squares GAN of VITS: real logits are pushed to 1, fake logits to 0; the generator pushes
fake logits to 1 and matches the discriminator's feature maps of real audio (L1, times 2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoints import CheckpointError, _read_container, state_dict_problems
from models.sovits import WNConv1d, _WeightNormMixin

LRELU_SLOPE = 0.1
V2_PERIODS: tuple[int, ...] = (2, 3, 5, 7, 11)
V2PRO_PERIODS: tuple[int, ...] = (2, 3, 5, 7, 11, 17, 23)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Periods of the `DiscriminatorP` members (the scale discriminator is always there).

    Default: v2 (2, 3, 5, 7, 11). `DiscriminatorConfig.v2pro()` adds 17 and 23 (v2Pro and v2ProPlus).
    `channel_divisor` > 1 narrows every layer (small models for tests and the demo; the official files use 1).
    """

    periods: tuple[int, ...] = V2_PERIODS
    channel_divisor: int = 1

    def __post_init__(self) -> None:
        periods = tuple(int(p) for p in self.periods)
        if not periods or any(p < 1 for p in periods):
            raise ValueError(f"discriminator periods must be positive integers, got {self.periods!r}")
        object.__setattr__(self, "periods", periods)
        if self.channel_divisor < 1 or self.channel_divisor & (self.channel_divisor - 1):
            raise ValueError(f"channel_divisor must be a power of two, got {self.channel_divisor}")

    @classmethod
    def v2(cls, channel_divisor: int = 1) -> "DiscriminatorConfig":
        return cls(V2_PERIODS, channel_divisor)

    @classmethod
    def v2pro(cls, channel_divisor: int = 1) -> "DiscriminatorConfig":
        """v2Pro / v2ProPlus: periods (2, 3, 5, 7, 11, 17, 23)."""
        return cls(V2PRO_PERIODS, channel_divisor)

    @classmethod
    def for_version(cls, version: str, channel_divisor: int = 1) -> "DiscriminatorConfig":
        """"v2" -> 5 periods; "v2Pro" / "v2ProPlus" -> 7 periods."""
        if version == "v2":
            return cls.v2(channel_divisor)
        if version in ("v2Pro", "v2ProPlus"):
            return cls.v2pro(channel_divisor)
        raise ValueError(f"no discriminator layout for SoVITS version {version!r} (use v2, v2Pro or v2ProPlus)")


class WNConv2d(_WeightNormMixin, nn.Conv2d):
    """Weight-normalised Conv2d (`weight_g` / `weight_v`), `(batch, in, H, W)` -> `(batch, out, H', W')`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.compute_weight(), self.bias)


def _conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The convs with leaky ReLU, then `conv_post`: (flattened logits `(batch, -1)`, every layer's output)."""
    fmaps: list[torch.Tensor] = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmaps.append(x)
    x = conv_post(x)
    fmaps.append(x)
    return torch.flatten(x, 1, -1), fmaps


class DiscriminatorS(nn.Module):
    """Scale discriminator on the raw waveform.

    forward(x `(batch, 1, T)`) -> (logits `(batch, T')`, feature maps: 7 tensors `(batch, C_i, T_i)`, the
    6 conv outputs after leaky ReLU and the `conv_post` output). T' = ceil(T / 256) (four stride-4 convs).
    """

    def __init__(self, channel_divisor: int = 1) -> None:
        super().__init__()
        # (in, out, kernel, stride, groups, padding) of the official layout
        layout = [
            (1, 16, 15, 1, 1, 7),
            (16, 64, 41, 4, 4, 20),
            (64, 256, 41, 4, 16, 20),
            (256, 1024, 41, 4, 64, 20),
            (1024, 1024, 41, 4, 256, 20),
            (1024, 1024, 5, 1, 1, 2),
        ]
        d = channel_divisor
        narrow = lambda c: c if c == 1 else max(1, c // d)  # noqa: E731
        self.convs = nn.ModuleList(
            WNConv1d(narrow(i), narrow(o), k, s, groups=max(1, g // d), padding=p) for i, o, k, s, g, p in layout
        )
        self.conv_post = WNConv1d(narrow(1024), 1, 3, 1, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _conv_stack(self.convs, self.conv_post, x)


class DiscriminatorP(nn.Module):
    """Period discriminator: the waveform, reflect-padded to a multiple of `period`, folded to
    `(batch, 1, T / period, period)` and seen through 2-D convs with `(5, 1)` kernels (stride 3 on the frame axis).

    forward(x `(batch, 1, T)`) -> (logits `(batch, H' * period)`, feature maps: 6 tensors `(batch, C_i, H_i,
    period)`, the 5 conv outputs after leaky ReLU and the `conv_post` output).
    """

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, channel_divisor: int = 1) -> None:
        super().__init__()
        self.period = int(period)
        pad = (kernel_size - 1) // 2
        chans = [1] + [max(1, c // channel_divisor) for c in (32, 128, 512, 1024)]
        convs = [
            WNConv2d(chans[i], chans[i + 1], (kernel_size, 1), (stride, 1), padding=(pad, 0))
            for i in range(len(chans) - 1)
        ]
        convs.append(WNConv2d(chans[-1], chans[-1], (kernel_size, 1), 1, padding=(pad, 0)))
        self.convs = nn.ModuleList(convs)
        self.conv_post = WNConv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        rest = t % self.period
        if rest:
            n_pad = self.period - rest
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)
        return _conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """`discriminators[0]` is a `DiscriminatorS`, then one `DiscriminatorP(p)` per configured period.

    forward(y `(batch, 1, T)` real audio, y_hat `(batch, 1, T)` generated audio) ->
    (real_logits, fake_logits, real_feature_maps, fake_feature_maps): lists with one entry per discriminator
    (1 + len(periods)); logits are `(batch, n_i)`, feature maps lists of tensors (7 for S, 6 for each P).
    """

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiscriminatorConfig()
        self.discriminators = nn.ModuleList(
            [DiscriminatorS(self.config.channel_divisor)]
            + [DiscriminatorP(p, channel_divisor=self.config.channel_divisor) for p in self.config.periods]
        )

    def forward(
        self, y: torch.Tensor, y_hat: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        if y.dim() != 3 or y.shape[1] != 1 or y_hat.shape != y.shape:
            raise ValueError(
                f"discriminator inputs must both be (batch, 1, samples) with equal shapes, got {tuple(y.shape)} "
                f"and {tuple(y_hat.shape)}"
            )
        real_logits, fake_logits, real_fmaps, fake_fmaps = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            real_logits.append(r)
            fake_logits.append(g)
            real_fmaps.append(fr)
            fake_fmaps.append(fg)
        return real_logits, fake_logits, real_fmaps, fake_fmaps


# --------------------------------------------------------------------------------------------------------------
# LSGAN losses
# --------------------------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over discriminators of mean((1 - D(y))^2) + mean(D(y_hat)^2); logits `(batch, n_i)` -> scalar.

    Pass fake logits computed from a detached y_hat when updating D."""
    loss = torch.zeros((), device=real_logits[0].device)
    for r, g in zip(real_logits, fake_logits, strict=True):
        loss = loss + torch.mean((1 - r.float()) ** 2) + torch.mean(g.float() ** 2)
    return loss


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over discriminators of mean((1 - D(y_hat))^2); logits `(batch, n_i)` -> scalar."""
    loss = torch.zeros((), device=fake_logits[0].device)
    for g in fake_logits:
        loss = loss + torch.mean((1 - g.float()) ** 2)
    return loss


def feature_matching_loss(
    real_fmaps: Sequence[Sequence[torch.Tensor]], fake_fmaps: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """2 * sum over discriminators and layers of mean|r - g|, r detached (no gradient into the real branch)."""
    loss = torch.zeros((), device=real_fmaps[0][0].device)
    for dr, dg in zip(real_fmaps, fake_fmaps, strict=True):
        for r, g in zip(dr, dg, strict=True):
            loss = loss + torch.mean(torch.abs(r.float().detach() - g.float()))
    return loss * 2


# --------------------------------------------------------------------------------------------------------------
# loading a discriminator checkpoint
# --------------------------------------------------------------------------------------------------------------

_DISC_INDEX = re.compile(r"^discriminators\.(\d+)\.")


def _extract_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__}); "
                              "pass a SoVITS discriminator file such as s2D2333k.pth")
    sd: Any = obj
    for key in ("model", "weight"):
        if isinstance(obj.get(key), Mapping):
            sd = obj[key]
            break
    keys = [str(k) for k in sd]
    config = obj.get("config")
    if (keys and all(k.startswith("model.") for k in keys)) or (
        isinstance(config, Mapping) and isinstance(config.get("model"), Mapping)
        and "phoneme_vocab_size" in config["model"]
    ):
        raise CheckpointError(f"{path} is a GPT (stage 1) checkpoint, not a SoVITS discriminator; pass the "
                              "discriminator file (e.g. s2D2333k.pth, s2Dv2Pro.pth)")
    if any(k.startswith(("enc_p.", "dec.", "flow.", "enc_q.", "ref_enc.", "ssl_proj.", "quantizer."))
           for k in keys):
        raise CheckpointError(f"{path} is a SoVITS generator (G) checkpoint, not the discriminator; pass the "
                              "discriminator file (e.g. s2D2333k.pth, s2Dv2Pro.pth)")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = str(k)
        if k.startswith("module."):  # saved from a DistributedDataParallel wrapper
            k = k[len("module."):]
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is not a tensor; the file is not a discriminator state dict")
        out[k] = v
    if not any(_DISC_INDEX.match(k) for k in out):
        raise CheckpointError(f"{path} has no `discriminators.N.*` weights; it is not a SoVITS discriminator file")
    return out


def load_discriminator(path: str | os.PathLike, periods: Sequence[int] | None = None) -> MultiPeriodDiscriminator:
    """Build a `MultiPeriodDiscriminator` and load the weights of an official (or Narrator-saved) discriminator
    file. The state dict may sit under "model" (official s2D*.pth), "weight", or be the file's top level.

    periods: None -> inferred from the number of `discriminators.N` members (6 -> v2 periods, 8 -> v2Pro periods).
    Raises `CheckpointError` (a `NarratorError`) for a missing / damaged / unsafe file, a GPT or SoVITS-G file, or
    keys / shapes that do not fit the model.
    """
    obj, _head = _read_container(path, "SoVITS discriminator")
    sd = _extract_state_dict(obj, path)
    if periods is None:
        n = max(int(_DISC_INDEX.match(k).group(1)) for k in sd if _DISC_INDEX.match(k)) + 1
        by_count = {1 + len(V2_PERIODS): V2_PERIODS, 1 + len(V2PRO_PERIODS): V2PRO_PERIODS}
        if n not in by_count:
            raise CheckpointError(
                f"{path} holds {n} discriminators; expected 6 (v2: periods 2,3,5,7,11) or 8 (v2Pro: + 17, 23). "
                "Pass `periods=` explicitly for another layout"
            )
        periods = by_count[n]
    first = sd.get("discriminators.0.convs.0.weight_v")
    divisor = 16 // int(first.shape[0]) if first is not None and 0 < first.shape[0] <= 16 else 1
    model = MultiPeriodDiscriminator(DiscriminatorConfig(tuple(periods), divisor))
    expected = model.state_dict()
    problems = state_dict_problems(expected, sd)
    if problems:
        raise CheckpointError(
            f"{path} does not fit the discriminator with periods {tuple(periods)}: " + "; ".join(problems)
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()})
    return model
