"""STAND-IN for `narrator/mastering.py` (branch `publishing`), with its planned API, so narration runs and is
tested before that module is merged. Once it is, delete this file and change the one import in
components/narrate.py (`from narrator import mastering_standin as mastering` -> `from narrator import
mastering`). Settings are read from `params.mastering` when it exists, else the ACX defaults below.

    master_chapter(samples, sample_rate_hz, settings) -> MasteredAudio   room tone, RMS to target, peak limit, 44.1 kHz
    relimit(master, marked_samples, settings) -> MasteredAudio            the peak limit again after the watermark
    write_wav_master(audio, path) / write_mp3(audio, path)                 16-bit WAV / MP3 192 kbps CBR (ffmpeg)
    write_m4b(chapters, path, title)                                       AAC in MP4 with chapter marks (ffmpeg)
    write_vtt(cues, path)                                                  WebVTT: (start_s, end_s, text)
    measure_acx(path) -> AcxMeasurement                                    what ACX measures, from the file
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from narrator.errors import MissingDependency, NarratorError

_DEFAULTS = {"sample_rate_hz": 44100, "mp3_bitrate_kbps": 192, "m4b_bitrate_kbps": 64, "head_room_tone_s": 0.75,
             "tail_room_tone_s": 2.0, "target_rms_db": -20.0, "peak_ceiling_dbfs": -3.5, "room_tone_db": -72.0,
             "room_tone_seed": 0, "noise_floor_window_s": 0.5, "room_tone_threshold_db": -50.0, "max_passes": 8}
_FRAME_S = 0.010


def _get(settings, name: str):
    return getattr(settings, name, _DEFAULTS[name]) if settings is not None else _DEFAULTS[name]


def _db(value: float) -> float:
    return 20.0 * float(np.log10(max(value, 1e-12)))


@dataclass
class MasteredAudio:
    samples: np.ndarray  # (n,) float32
    sample_rate_hz: int
    head_s: float  # room tone added before the first sample of the input
    tail_s: float

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz

    def output_time_s(self, input_s: float) -> float:
        """Where time `input_s` of the input lies in the master, kept inside the chapter's audio."""
        return self.head_s + min(max(input_s, 0.0), self.duration_s - self.head_s - self.tail_s)


@dataclass(frozen=True)
class AcxMeasurement:
    rms_db: float
    peak_db: float
    noise_floor_db: float
    head_room_tone_s: float
    tail_room_tone_s: float
    duration_s: float


def master_chapter(samples: np.ndarray, sample_rate_hz: int, settings=None) -> MasteredAudio:
    from narrator.audiofile import resample

    rate = int(_get(settings, "sample_rate_hz"))
    speech = resample(np.asarray(samples, np.float32), sample_rate_hz, rate).astype(np.float64)
    head, tail = float(_get(settings, "head_room_tone_s")), float(_get(settings, "tail_room_tone_s"))
    body = np.concatenate([np.zeros(round(head * rate)), speech, np.zeros(round(tail * rate))])
    noise = np.random.default_rng(int(_get(settings, "room_tone_seed"))).standard_normal(len(body))
    noise *= 10 ** (float(_get(settings, "room_tone_db")) / 20.0)
    ceiling = 10 ** (float(_get(settings, "peak_ceiling_dbfs")) / 20.0)
    target = 10 ** (float(_get(settings, "target_rms_db")) / 20.0)
    for _ in range(int(_get(settings, "max_passes"))):
        rms = float(np.sqrt(np.mean(body ** 2))) or 1e-12
        body = np.clip(body * (target / rms), -ceiling, ceiling)
    out = np.clip(body + noise, -ceiling, ceiling).astype(np.float32)
    return MasteredAudio(out, rate, head, tail)


def relimit(mastered: MasteredAudio, samples: np.ndarray, settings=None) -> MasteredAudio:
    """`mastered` with `samples` (the marked master) limited to the peak ceiling again."""
    ceiling = 10 ** (float(_get(settings, "peak_ceiling_dbfs")) / 20.0)
    limited = np.clip(np.asarray(samples, np.float32), -ceiling, ceiling)
    return MasteredAudio(limited, mastered.sample_rate_hz, mastered.head_s, mastered.tail_s)


def _ffmpeg(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], capture_output=True,
                              check=False)
    except FileNotFoundError:
        raise MissingDependency("ffmpeg is not installed: install it (apt-get install ffmpeg)") from None
    if done.returncode != 0:
        raise NarratorError(f"ffmpeg could not write {what}: {done.stderr.decode(errors='replace')[-500:]}")


def write_wav_master(audio: MasteredAudio, path: str | Path) -> Path:
    from narrator.audiofile import write_wav

    return write_wav(path, audio.samples, audio.sample_rate_hz)


def write_mp3(audio: MasteredAudio, path: str | Path, *, title: str | None = None, settings=None) -> Path:
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav_master(audio, Path(tmp) / "in.wav")
        _ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", "-b:a", f"{int(_get(settings, 'mp3_bitrate_kbps'))}k",
                 "-ar", str(int(_get(settings, "sample_rate_hz"))), "-fflags", "+bitexact", "-flags:a", "+bitexact",
                 *(["-metadata", f"title={title}"] if title else []), "-f", "mp3", str(path)], str(path))
    return path


def write_m4b(chapters: list[tuple[str, Path]], path: str | Path, title: str, *, settings=None) -> Path:
    """One M4B from chapter audio files [(title, path)], with a chapter mark at the start of each."""
    from narrator.audiofile import read_audio

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        listing, meta = Path(tmp) / "list.txt", Path(tmp) / "meta.txt"
        start_ms, lines = 0, [";FFMETADATA1", f"title={_meta(title)}"]
        for chapter_title, file in chapters:
            length_ms = round(read_audio(file).duration_s * 1000)
            lines += ["[CHAPTER]", "TIMEBASE=1/1000", f"START={start_ms}", f"END={start_ms + length_ms}",
                      f"title={_meta(chapter_title)}"]
            start_ms += length_ms
        listing.write_text("".join(f"file '{Path(f).resolve().as_posix()}'\n" for _, f in chapters))
        meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-i", str(meta), "-map_metadata", "1",
                 "-map_chapters", "1", "-map", "0:a", "-c:a", "aac",
                 "-b:a", f"{int(_get(settings, 'm4b_bitrate_kbps'))}k",
                 "-ar", str(int(_get(settings, "sample_rate_hz"))), "-fflags", "+bitexact", "-flags:a", "+bitexact",
                 "-f", "ipod", str(path)], str(path))
    return path


def _meta(text: str) -> str:
    return "".join("\\" + ch if ch in "=;#\\\n" else ch for ch in text)


def _timestamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def write_vtt(cues: list[tuple[float, float, str]], path: str | Path) -> Path:
    path = Path(path)
    blocks = ["WEBVTT", ""]
    for i, (start_s, end_s, text) in enumerate(cues, 1):
        blocks += [str(i), f"{_timestamp(start_s)} --> {_timestamp(end_s)}", " ".join(text.split()), ""]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def measure_acx(path: str | Path, settings=None) -> AcxMeasurement:
    from narrator.audiofile import read_audio

    audio = read_audio(path)
    x = audio.mono().astype(np.float64)
    rate = audio.sample_rate_hz
    window = max(1, int(float(_get(settings, "noise_floor_window_s")) * rate))
    frames = len(x) // window
    floor = min(float(np.sqrt(np.mean(x[i * window:(i + 1) * window] ** 2))) for i in range(max(frames, 1)))
    hop = max(1, int(_FRAME_S * rate))
    levels = np.array([_db(float(np.sqrt(np.mean(x[i:i + hop] ** 2)))) for i in range(0, len(x) - hop + 1, hop)])
    loud = np.nonzero(levels > float(_get(settings, "room_tone_threshold_db")))[0]
    head = float(loud[0] * _FRAME_S) if len(loud) else len(x) / rate
    tail = float((len(levels) - 1 - loud[-1]) * _FRAME_S) if len(loud) else len(x) / rate
    return AcxMeasurement(rms_db=_db(float(np.sqrt(np.mean(x ** 2)))), peak_db=_db(float(np.abs(x).max())),
                          noise_floor_db=_db(floor), head_room_tone_s=head, tail_room_tone_s=tail,
                          duration_s=len(x) / rate)
