"""What the audio watermark (models/watermark.py) is held to: espeak-ng narration to mark, the attacks a marked
file meets on its way (codecs, resampling, noise, gain, filters) and the unmarked audio it must never flag.

One definition for the tests (tests/test_watermark.py) and the benchmark (bench/watermark.py), so the figures in
docs/benchmarks.md and the tested guarantees speak of the same attacks. Audio is float64 `(samples,)`, mono.
Codec attacks need the `ffmpeg` command (libmp3lame, libvorbis); `needs_ffmpeg(name)` says which.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PEAK = 0.45  # narration peak: leaves room for +6 dB without clipping
VOICES = ("en-us+m3", "en-us+f3", "en+m1", "en-gb+f2")  # espeak-ng voices, alternated sentence by sentence
NOISE_SEED = 7

ATTACKS = ("none", "mp3 64 kbps", "ogg vorbis 64 kbps", "resample 16 kHz", "resample 22.05 kHz",
           "resample 44.1 kHz", "white noise 20 dB SNR", "gain -6 dB", "gain +6 dB", "low-pass 5 kHz (8th order)",
           "low-pass 5 kHz (ffmpeg, 2nd order)")
UNMARKED_RATES_HZ = (16000, 22050, 44100)


def narration(first: int, count: int, rate_hz: int, pause_s: float = 0.3) -> np.ndarray:
    """Sentences `first`..`first + count - 1` of the demo text (cli.demo.SENTENCES), alternating `VOICES`,
    with `pause_s` pauses, resampled to `rate_hz` and scaled to `PEAK`; float64 `(samples,)`."""
    from narrator.audiofile import read_audio, resample
    from cli.demo import SENTENCES, espeak

    parts, native = [], 22050
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(first, first + count):
            spoken = read_audio(espeak(SENTENCES[i % len(SENTENCES)], Path(tmp) / f"{i}.wav",
                                       VOICES[i % len(VOICES)], seed=i))
            native = spoken.sample_rate_hz
            parts += [spoken.mono(), np.zeros(int(pause_s * native), np.float32)]
    audio = resample(np.concatenate(parts), native, rate_hz).astype(np.float64)
    return audio * (PEAK / np.abs(audio).max())


def with_noise(audio: np.ndarray, snr_db: float, seed: int = NOISE_SEED) -> np.ndarray:
    """`audio` plus white noise at `snr_db` below its mean power."""
    noise = np.random.default_rng(seed).standard_normal(audio.size)
    return audio + noise * np.sqrt(np.mean(audio ** 2) / 10 ** (snr_db / 10))


def needs_ffmpeg(name: str) -> bool:
    return "kbps" in name or "ffmpeg" in name


def _ffmpeg(audio: np.ndarray, rate_hz: int, args: list[str], suffix: str) -> np.ndarray:
    from narrator.audiofile import read_audio, write_wav

    with tempfile.TemporaryDirectory() as tmp:
        source, coded = Path(tmp) / "in.wav", Path(tmp) / f"coded{suffix}"
        write_wav(source, audio, rate_hz)
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *args, str(coded)], check=True)
        decoded = read_audio(coded)
        if decoded.sample_rate_hz != rate_hz:
            raise RuntimeError(f"ffmpeg changed the rate: {decoded.sample_rate_hz} Hz, not {rate_hz}")
        return decoded.mono().astype(np.float64)


def attack(name: str, audio: np.ndarray, rate_hz: int) -> tuple[np.ndarray, int]:
    """The attacked copy of `audio` and its sample rate; `name` is one of `ATTACKS`."""
    from scipy.signal import butter, sosfilt

    from narrator.audiofile import resample

    if name == "none":
        return audio, rate_hz
    if name == "mp3 64 kbps":
        return _ffmpeg(audio, rate_hz, ["-c:a", "libmp3lame", "-b:a", "64k"], ".mp3"), rate_hz
    if name == "ogg vorbis 64 kbps":
        return _ffmpeg(audio, rate_hz, ["-c:a", "libvorbis", "-b:a", "64k"], ".ogg"), rate_hz
    if name.startswith("resample "):
        target = int(float(name.split()[1]) * 1000)
        return resample(audio.astype(np.float32), rate_hz, target).astype(np.float64), target
    if name == "white noise 20 dB SNR":
        return with_noise(audio, 20.0), rate_hz
    if name.startswith("gain "):
        return audio * 10 ** (float(name.split()[1]) / 20), rate_hz
    if name == "low-pass 5 kHz (8th order)":
        return sosfilt(butter(8, 5000, fs=rate_hz, output="sos"), audio), rate_hz
    if name == "low-pass 5 kHz (ffmpeg, 2nd order)":
        return _ffmpeg(audio, rate_hz, ["-af", "lowpass=f=5000"], ".flac"), rate_hz
    raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")


def splice(piece: np.ndarray, host: np.ndarray, at: int) -> np.ndarray:
    """`piece` inserted into `host` before sample `at`."""
    return np.concatenate([host[:at], piece, host[at:]])


UNMARKED_KINDS = ("speech", "white noise", "brown noise", "noisy speech", "speech marked with another key",
                  "speech or silence")


def unmarked_clips(count: int, seed: int, first_sentence: int = 24, sentences: int = 8,
                   ) -> Iterator[tuple[np.ndarray, int]]:
    """`count` (samples, rate) clips of 3-12 s that carry no mark of any key but their own: in turn unmarked
    speech at 16/22.05/44.1 kHz, white noise, brown noise (drift removed), speech under 5-30 dB SNR noise,
    speech marked with another key, and (every second time round) digital silence."""
    from scipy.ndimage import uniform_filter1d

    from models.watermark import embed

    rng = np.random.default_rng(seed)
    voices = {rate: narration(first_sentence, sentences, rate) for rate in UNMARKED_RATES_HZ}
    for i in range(count):
        rate = int(rng.choice(list(voices)))
        size = int(rng.uniform(3.0, 12.0) * rate)
        start = int(rng.integers(0, voices[rate].size - size))
        clip = voices[rate][start:start + size]
        kind = i % len(UNMARKED_KINDS)
        if kind == 1:
            clip = 0.1 * rng.standard_normal(size)
        elif kind == 2:
            clip = np.cumsum(rng.standard_normal(size)) * 1e-3
            clip -= uniform_filter1d(clip, 512)
        elif kind == 3:
            clip = with_noise(clip, float(rng.uniform(5, 30)), seed=int(rng.integers(2 ** 31)))
        elif kind == 4:
            clip = embed(clip, rate, int(rng.integers(0, 2 ** 32)), f"another key {i}")
        elif kind == 5 and i % (2 * len(UNMARKED_KINDS)) == 5:
            clip = np.zeros(size)
        yield clip, rate
