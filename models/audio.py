"""Spectrogram front-ends used by the SoVITS synthesizer.

`spectrogram` is the linear-magnitude STFT GPT-SoVITS feeds to the reference encoder and the posterior
encoder (n_fft 2048, hop 640, Hann window 2048, reflect padding of (n_fft - hop) / 2 on each side,
`center=False`, magnitude sqrt(re^2 + im^2 + 1e-8)). `mel_spectrogram` is the 128-bin log-mel used by the
stage-2 reconstruction loss. Both are plain functions of their arguments; windows and filter banks are
rebuilt per call for the tensor's device and dtype (they are tiny next to the STFT itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SAMPLE_RATE = 32000
N_FFT = 2048
HOP_LENGTH = 640
WIN_LENGTH = 2048
N_MELS = 128


def _stft_magnitude(wav: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    if wav.dim() == 3 and wav.size(1) == 1:
        wav = wav.squeeze(1)
    if wav.dim() != 2:
        raise ValueError(f"expected a waveform of shape (batch, samples), got {tuple(wav.shape)}")
    pad = (n_fft - hop_length) // 2
    work_dtype = wav.dtype if wav.dtype in (torch.float32, torch.float64) else torch.float32
    y = F.pad(wav.to(work_dtype).unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(win_length, device=y.device, dtype=y.dtype)
    spec = torch.stft(
        y,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)
    return torch.sqrt(spec.pow(2).sum(-1) + 1e-8).to(wav.dtype)


def spectrogram(
    wav: torch.Tensor,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    win_length: int = WIN_LENGTH,
) -> torch.Tensor:
    """Linear magnitude spectrogram, identical to the official `spectrogram_torch(..., center=False)`.

    Args:
        wav: `(batch, samples)` (or `(batch, 1, samples)`) waveform at 32 kHz in [-1, 1].
    Returns:
        `(batch, n_fft // 2 + 1, frames)` with `frames = samples // hop_length` for the default sizes.
    """
    return _stft_magnitude(wav, n_fft, hop_length, win_length)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = 0.0,
    fmax: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Slaney-normalised mel filter bank `(n_mels, n_fft // 2 + 1)` (librosa's default)."""
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return torch.from_numpy(basis).to(device=device, dtype=dtype)


def spec_to_mel(spec: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """`(batch, bins, frames)` magnitude -> `(batch, n_mels, frames)` log-mel (log of max(x, 1e-5))."""
    mel = torch.matmul(basis.to(spec.dtype), spec)
    return torch.log(torch.clamp(mel, min=1e-5))


def mel_spectrogram(
    wav: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    win_length: int = WIN_LENGTH,
    n_mels: int = N_MELS,
    fmin: float = 0.0,
    fmax: float | None = None,
    basis: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-mel spectrogram used by the stage-2 L1 mel loss: `(batch, samples)` -> `(batch, n_mels, frames)`.

    Pass a precomputed `basis` (see `mel_filterbank`) in training loops to avoid rebuilding it.
    """
    spec = _stft_magnitude(wav, n_fft, hop_length, win_length)
    if basis is None:
        basis = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, device=spec.device, dtype=spec.dtype)
    return spec_to_mel(spec, basis)
