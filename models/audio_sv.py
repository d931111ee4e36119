"""Audio front end of the v2Pro speaker-verification (sv) branch: 32 kHz -> 16 kHz resampling and the
Kaldi-style 80-bin log-mel filter bank that ERes2NetV2 consumes (facts: shared/gsv/SV.md, sections 1.2-1.3).

Both are written with plain torch so that no torchaudio is needed:

* `SincResampler` / `resample_32k_to_16k`: band-limited resampling with a Hann-windowed sinc kernel
  (lowpass filter width 6, rolloff 0.99). The kernel is computed in float64 and stored as float32, then applied
  as a strided `conv1d`, reproducing `torchaudio.transforms.Resample(32000, 16000)` with default settings.
* `kaldi_fbank`: 25 ms / 10 ms frames (snip edges), DC removal, pre-emphasis 0.97, Povey window, 512-point power
  spectrum, 80 triangular mel bins between 20 Hz and 8 kHz, natural log floored at float32 eps.

Waveforms are float in [-1, 1] (not int16 scale), so log-mel values sit about 20.8 below Kaldi's on int16 audio.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

SV_SAMPLE_RATE = 16000
"""The rate the sv model's filter bank expects."""

FBANK_FRAME_LENGTH = 400  # 25 ms at 16 kHz
FBANK_FRAME_SHIFT = 160  # 10 ms at 16 kHz
FBANK_N_FFT = 512  # frame length rounded up to a power of two
FBANK_N_MELS = 80
FBANK_LOW_FREQ = 20.0
FBANK_PREEMPHASIS = 0.97
FBANK_POVEY_POWER = 0.85
FBANK_LOG_FLOOR = torch.finfo(torch.float32).eps  # 1.1920929e-07


# --------------------------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------------------------


def sinc_resample_kernel(
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> tuple[torch.Tensor, int]:
    """Hann-windowed sinc interpolation kernels for resampling `orig_freq` -> `new_freq`.

    The rates are first divided by their gcd (32000 -> 16000 becomes 2 -> 1). With
    `base = rolloff * min(orig, new)` (the cutoff in reduced units) and
    `width = ceil(lowpass_filter_width * orig / base)`,
    output phase `j` (0 <= j < new) has one tap per input offset `i = -width .. width + orig - 1`, at
    `t = (i / orig - j / new) * base` clamped to +-lowpass_filter_width, with value
    `sinc(pi t) * cos^2(pi t / (2 * lowpass_filter_width)) * base / orig`. Computed in float64, returned as float32.

    Returns:
        `(kernel, width)`: kernel `(new, 1, 2 * width + orig)` float32 and the half-width (left padding).
        For 2 -> 1 this is `(1, 1, 28)` and 13.
    """
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    offsets = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # (K,)
    phases = -torch.arange(new, dtype=torch.float64)[:, None] / new  # (new, 1)
    t = ((phases + offsets[None, :]) * base).clamp(-lowpass_filter_width, lowpass_filter_width)  # (new, K)
    window = torch.cos(t * math.pi / (2 * lowpass_filter_width)) ** 2
    arg = t * math.pi
    safe = torch.where(arg == 0, torch.ones_like(arg), arg)
    sinc = torch.where(arg == 0, torch.ones_like(arg), torch.sin(safe) / safe)
    kernel = sinc * window * (base / orig)
    return kernel.to(torch.float32).unsqueeze(1), width


class SincResampler(torch.nn.Module):
    """Band-limited resampler `orig_freq` -> `new_freq` (the v2Pro sv path uses 32000 -> 16000).

    Input `(..., N)` float; output `(..., ceil(N * new / orig))` (reduced rates), same dtype as the input
    (computed in float32 unless the input is float64). The signal is zero-padded by `width` on the left and
    `width + orig` on the right, convolved with stride `orig`, and the `new` phases are interleaved.
    """

    kernel: torch.Tensor

    def __init__(
        self, orig_freq: int = 32000, new_freq: int = 16000, lowpass_filter_width: int = 6, rolloff: float = 0.99
    ):
        super().__init__()
        g = math.gcd(int(orig_freq), int(new_freq))
        self.orig, self.new = int(orig_freq) // g, int(new_freq) // g
        kernel, self.width = sinc_resample_kernel(orig_freq, new_freq, lowpass_filter_width, rolloff)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if self.orig == self.new:
            return wav
        shape = wav.shape
        n = shape[-1]
        work = torch.float64 if wav.dtype == torch.float64 else torch.float32
        x = wav.reshape(-1, 1, n).to(work)
        x = F.pad(x, (self.width, self.width + self.orig))
        y = F.conv1d(x, self.kernel.to(device=x.device, dtype=work), stride=self.orig)  # (R, new, L)
        y = y.transpose(1, 2).reshape(x.shape[0], -1)  # phases interleaved
        n_out = math.ceil(self.new * n / self.orig)
        return y[:, :n_out].reshape(*shape[:-1], n_out).to(wav.dtype)


@lru_cache(maxsize=8)
def _resampler(orig_freq: int, new_freq: int) -> SincResampler:
    return SincResampler(orig_freq, new_freq)


def resample(wav: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Functional form of `SincResampler` (default filter settings); `(..., N)` -> `(..., ceil(N * new / orig))`."""
    return _resampler(int(orig_freq), int(new_freq))(wav)


def resample_32k_to_16k(wav: torch.Tensor) -> torch.Tensor:
    """`(..., N)` at 32 kHz -> `(..., ceil(N / 2))` at 16 kHz (96000 -> 48000, 32001 -> 16001)."""
    return resample(wav, 32000, 16000)


# --------------------------------------------------------------------------------------------------------------
# Kaldi-style filter bank
# --------------------------------------------------------------------------------------------------------------


def povey_window(length: int = FBANK_FRAME_LENGTH) -> torch.Tensor:
    """Kaldi's Povey window `(length,)` float32: a symmetric Hann window raised to the power 0.85."""
    return torch.hann_window(length, periodic=False, dtype=torch.float32).pow(FBANK_POVEY_POWER)


def mel_scale(freq: float) -> float:
    """Kaldi's mel scale `1127 ln(1 + f / 700)` of a scalar frequency in Hz."""
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(
    n_mels: int = FBANK_N_MELS,
    n_fft: int = FBANK_N_FFT,
    sample_rate: int = SV_SAMPLE_RATE,
    low_freq: float = FBANK_LOW_FREQ,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """Triangular mel filters `(n_mels, n_fft // 2)` float32 on Kaldi's mel scale `1127 ln(1 + f / 700)`.

    `n_mels + 2` points are equally spaced in mel between `low_freq` and `high_freq` (<= 0 counts from Nyquist);
    filter m rises from point m to m + 1 and falls to m + 2 (linear in mel). It is evaluated at FFT bins
    `k * sample_rate / n_fft` for k = 0 .. n_fft / 2 - 1; the Nyquist bin is not covered (weight 0).
    The band edges are Python doubles and the per-bin arithmetic is float32 (this matches the reference bit for bit).
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_high - mel_low) / (n_mels + 1)
    m = torch.arange(n_mels, dtype=torch.float32)[:, None]
    left, center, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    freqs = torch.arange(n_fft // 2, dtype=torch.float32) * (sample_rate / n_fft)
    bin_mel = (1127.0 * torch.log(1.0 + freqs / 700.0))[None, :]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)


@lru_cache(maxsize=4)
def _fbank_constants(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    window = povey_window().to(device)
    banks = F.pad(kaldi_mel_banks(), (0, 1)).to(device)  # (80, 257): Nyquist column is zero
    return window, banks


def num_fbank_frames(n_samples: int) -> int:
    """Frames for `n_samples` at 16 kHz with snip_edges: `1 + (N - 400) // 160` (0 if N < 400)."""
    if n_samples < FBANK_FRAME_LENGTH:
        return 0
    return 1 + (n_samples - FBANK_FRAME_LENGTH) // FBANK_FRAME_SHIFT


def kaldi_fbank(wav_16k: torch.Tensor) -> torch.Tensor:
    """80-bin log-mel filter bank as Kaldi computes it (dither 0, no energy column, no mean subtraction).

    Args:
        wav_16k: `(N,)` or `(B, N)` float waveform at 16 kHz in [-1, 1]; rows are processed independently.
    Returns:
        `(T, 80)` or `(B, T, 80)` float32, `T = 1 + (N - 400) // 160`.
    """
    squeeze = wav_16k.dim() == 1
    x = wav_16k.unsqueeze(0) if squeeze else wav_16k
    if x.dim() != 2:
        raise ValueError(f"expected a waveform of shape (N,) or (batch, N), got {tuple(wav_16k.shape)}")
    n_frames = num_fbank_frames(x.shape[-1])
    if n_frames == 0:
        raise ValueError(f"need at least {FBANK_FRAME_LENGTH} samples (25 ms at 16 kHz), got {x.shape[-1]}")
    x = x.to(torch.float32)
    window, banks = _fbank_constants(str(x.device))
    frames = x.unfold(-1, FBANK_FRAME_LENGTH, FBANK_FRAME_SHIFT)  # (B, T, 400)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # DC offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # sample 0 is its own predecessor
    frames = frames - FBANK_PREEMPHASIS * previous
    frames = frames * window
    frames = F.pad(frames, (0, FBANK_N_FFT - FBANK_FRAME_LENGTH))
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (B, T, 257)
    mel = torch.matmul(power, banks.T)  # (B, T, 80)
    out = torch.clamp(mel, min=FBANK_LOG_FLOOR).log()
    return out[0] if squeeze else out
