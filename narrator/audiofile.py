"""Reading, resampling and writing audio files on CPU, without torchaudio.

wav, flac, ogg and mp3 decode through soundfile (libsndfile); m4a and anything libsndfile refuses go through the
ffmpeg command-line tool. Samples are float32 in [-1, 1], laid out `(channels, samples)`.

Headers are checked before any sample is decoded: a sample rate outside MIN_SAMPLE_RATE_HZ..MAX_SAMPLE_RATE_HZ is
refused (a 10 KB file claiming 1 Hz would otherwise be decoded as hours of audio), and `audio_info` reads only
the header (duration, and for wav whether the file holds all the data its header promises).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from narrator.errors import AudioError, MissingDependency

_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".oga", ".aiff", ".aif"}
MIN_SAMPLE_RATE_HZ = 1_000  # no recording is sampled slower or faster: such a header is corrupt
MAX_SAMPLE_RATE_HZ = 768_000


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


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, read without decoding any sample."""

    sample_rate_hz: int
    channels: int
    frames: int  # frames the file holds
    missing_frames: int = 0  # frames the header promises beyond the end of the file (a cut-off wav)

    @property
    def duration_s(self) -> float:
        return self.frames / float(self.sample_rate_hz)

    @property
    def declared_duration_s(self) -> float:
        return (self.frames + self.missing_frames) / float(self.sample_rate_hz)


def check_sample_rate(path: str | Path, rate: int) -> None:
    """AudioError for a header whose sample rate no recording has (a corrupt or forged header)."""
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise AudioError(f"{path}: the header claims a sample rate of {rate} Hz; audio is sampled at "
                         f"{MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} Hz, so the header is corrupt: export the "
                         "file again")


def audio_info(path: str | Path) -> AudioInfo | None:
    """The header of a file libsndfile reads (wav, flac, ogg, mp3), without decoding: AudioError for a missing or
    empty file or an impossible sample rate; None when libsndfile cannot read the header (then only decoding, via
    ffmpeg, can tell). For wav, `missing_frames` counts the frames the header promises beyond the end of the file."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() not in _SOUNDFILE_SUFFIXES:
        return None
    try:
        info = sf.info(str(path))
    except Exception:  # libsndfile: not a format it knows, or a damaged header
        return None
    rate, channels = int(info.samplerate), int(info.channels)
    check_sample_rate(path, rate)
    if channels < 1:
        raise AudioError(f"{path}: the header claims {channels} channels; the header is corrupt: export it again")
    return AudioInfo(rate, channels, int(info.frames), _wav_missing_frames(path))


def _wav_missing_frames(path: Path, max_chunks: int = 64) -> int:
    """Frames a RIFF/WAVE header's data chunk promises beyond the end of the file (0 for other files, and for
    streaming headers whose data size is 0 or 0xFFFFFFFF). Reads only chunk headers."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return 0
            order = "<" if head[:4] == b"RIFF" else ">"
            size = handle.seek(0, io.SEEK_END)
            position, block_align = 12, 0
            for _ in range(max_chunks):
                handle.seek(position)
                chunk = handle.read(8 + 14)  # chunk id, length, and the fmt fields up to nBlockAlign
                if len(chunk) < 8:
                    return 0
                name, length = chunk[:4], struct.unpack(order + "I", chunk[4:8])[0]
                if name == b"fmt " and length >= 14 and len(chunk) == 22:
                    block_align = struct.unpack(order + "H", chunk[20:22])[0]
                if name == b"data":
                    if length in (0, 0xFFFFFFFF) or block_align <= 0:
                        return 0
                    held = size - position - 8
                    return max(0, length - held) // block_align
                position += 8 + length + (length & 1)
    except OSError:
        return 0
    return 0


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty")


def read_audio(path: str | Path, max_duration_s: float | None = None) -> Audio:
    """Decode a file into float32 `(channels, samples)`; raises AudioError with the reason when it cannot.

    The header is checked first: an impossible sample rate, or (with `max_duration_s`) a longer recording, is
    refused without decoding it."""
    path = Path(path)
    _check_exists(path)
    errors = []
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            with sf.SoundFile(str(path)) as handle:
                check_sample_rate(path, int(handle.samplerate))
                _check_duration(path, handle.frames / handle.samplerate, max_duration_s)
                data = handle.read(dtype="float32", always_2d=True)
                rate = int(handle.samplerate)
            return _checked(Audio(np.ascontiguousarray(data.T), rate), path)
        except AudioError:
            raise
        except Exception as error:  # libsndfile gives RuntimeError/LibsndfileError/TypeError for bad data
            errors.append(f"soundfile: {error}")
    try:
        return _checked(_read_with_ffmpeg(path, max_duration_s), path)
    except MissingDependency:
        if errors:
            raise AudioError(f"{path}: cannot decode ({errors[0]})") from None
        raise
    except AudioError as error:
        detail = "; ".join(errors + [str(error)])
        raise AudioError(f"{path}: cannot decode as audio ({detail})") from None


def _check_duration(path: Path, duration_s: float, max_duration_s: float | None) -> None:
    if max_duration_s is not None and duration_s > max_duration_s:
        raise AudioError(f"{path}: {duration_s:.0f} s long, more than the {max_duration_s:g} s allowed; split it "
                         "into shorter recordings")


def _checked(audio: Audio, path: Path) -> Audio:
    if audio.samples.shape[1] == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if not np.all(np.isfinite(audio.samples)):
        raise AudioError(f"{path}: the file holds non-finite samples")
    return audio


def _read_with_ffmpeg(path: Path, max_duration_s: float | None = None) -> Audio:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise MissingDependency(
            f"{path}: decoding {path.suffix or 'this file'} needs ffmpeg; install it (apt-get install ffmpeg) "
            "or convert the file to wav/flac"
        )
    probe = _probe(path)
    if probe is not None:
        check_sample_rate(path, probe[0])
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    if max_duration_s is not None:  # decode at most a little more than allowed, then tell
        cmd[-1:-1] = ["-t", f"{max_duration_s + 1:g}"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or probe is None:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(message[-1] if message else "ffmpeg could not decode it")
    rate, channels = probe
    data = np.frombuffer(result.stdout, dtype="<f4")
    usable = (data.size // channels) * channels
    audio = Audio(np.ascontiguousarray(data[:usable].reshape(-1, channels).T), rate)
    _check_duration(path, audio.duration_s, max_duration_s)
    return audio


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
