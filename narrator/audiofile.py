"""Reading, resampling and writing audio files on CPU, without torchaudio.

wav, flac, ogg and mp3 decode through soundfile (libsndfile); m4a and anything libsndfile refuses go through the
ffmpeg command-line tool. Samples are float32 in [-1, 1], laid out `(channels, samples)`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from narrator.errors import AudioError, MissingDependency

_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".oga", ".aiff", ".aif"}


@dataclass(frozen=True)
class Audio:
    """Decoded audio. `samples` is `(channels, n_samples)` float32."""

    samples: np.ndarray
    sample_rate_hz: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[1] / float(self.sample_rate_hz)

    def mono(self) -> np.ndarray:
        """`(n_samples,)` float32: the mean of the channels."""
        return self.samples.mean(axis=0).astype(np.float32, copy=False)


def read_audio(path: str | Path) -> Audio:
    """Decode a file into float32 `(channels, samples)`; raises AudioError with the reason when it cannot."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty")
    errors = []
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            return _checked(Audio(np.ascontiguousarray(data.T), int(rate)), path)
        except AudioError:
            raise
        except Exception as error:  # libsndfile gives RuntimeError/LibsndfileError/TypeError for bad data
            errors.append(f"soundfile: {error}")
    try:
        return _checked(_read_with_ffmpeg(path), path)
    except MissingDependency:
        if errors:
            raise AudioError(f"{path}: cannot decode ({errors[0]})") from None
        raise
    except AudioError as error:
        detail = "; ".join(errors + [str(error)])
        raise AudioError(f"{path}: cannot decode as audio ({detail})") from None


def _checked(audio: Audio, path: Path) -> Audio:
    if audio.samples.shape[1] == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if not np.all(np.isfinite(audio.samples)):
        raise AudioError(f"{path}: the file holds non-finite samples")
    return audio


def _read_with_ffmpeg(path: Path) -> Audio:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise MissingDependency(
            f"{path}: decoding {path.suffix or 'this file'} needs ffmpeg; install it (apt-get install ffmpeg) "
            "or convert the file to wav/flac"
        )
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    probe = _probe(path)
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or probe is None:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(message[-1] if message else "ffmpeg could not decode it")
    rate, channels = probe
    data = np.frombuffer(result.stdout, dtype="<f4")
    usable = (data.size // channels) * channels
    return Audio(np.ascontiguousarray(data[:usable].reshape(-1, channels).T), rate)


def _probe(path: Path) -> tuple[int, int] | None:
    """(sample_rate_hz, channels) of the first audio stream, via ffprobe."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    cmd = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
           "-of", "csv=p=0", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    fields = result.stdout.strip().split(",")
    if result.returncode != 0 or len(fields) < 2:
        return None
    try:
        return int(fields[0]), int(fields[1])
    except ValueError:
        return None


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample `(..., samples)` float32 with soxr (high quality). Returns the input when rates match."""
    if from_hz == to_hz:
        return samples.astype(np.float32, copy=False)
    if samples.ndim == 1:
        return soxr.resample(samples, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)
    out = soxr.resample(samples.T, from_hz, to_hz, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate_hz: int) -> Path:
    """Write mono `(samples,)` or `(channels, samples)` float audio as 16-bit PCM wav; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples if samples.ndim == 1 else samples.T
    sf.write(str(path), np.clip(data, -1.0, 1.0), sample_rate_hz, subtype="PCM_16")
    return path


# output formats: (libsndfile container, subtype)
ENCODINGS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
             "ogg": ("OGG", "VORBIS")}
ENCODE_BLOCK_S = 1.0  # libsndfile has crashed encoding long Ogg Vorbis in one call: write at most this much at once


def write_blocks(out: sf.SoundFile, samples: np.ndarray, sample_rate_hz: int) -> None:
    """Write mono float `(n,)` audio, clipped to [-1, 1], into an open SoundFile in ENCODE_BLOCK_S pieces."""
    block = max(1, int(ENCODE_BLOCK_S * sample_rate_hz))
    data = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    for start in range(0, len(data), block):
        out.write(data[start:start + block])


def encode(samples: np.ndarray, sample_rate_hz: int, fmt: str) -> bytes:
    """Encode mono float audio `(n,)` as a whole wav/flac/mp3/ogg file (exact headers) in memory."""
    fmt = fmt.lower()
    if fmt not in ENCODINGS:
        raise AudioError(f"unsupported output format {fmt!r}; choose one of {', '.join(ENCODINGS)}")
    container, subtype = ENCODINGS[fmt]
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", samplerate=sample_rate_hz, channels=1, format=container, subtype=subtype) as out:
        write_blocks(out, samples, sample_rate_hz)
    return buffer.getvalue()
