"""Publishable chapter audio: mastering to the ACX (Audible) audio submission requirements, and the files of a book.

ACX asks of every chapter file: 0.5-1 s of room tone at the head and 1-5 s at the tail, an RMS between -23 and
-18 dB, sample peaks at or below -3 dBFS, a noise floor at or below -60 dB, and MP3 at 192 kbps CBR, 44.1 kHz.
The limits and targets live in `params.yaml` (`mastering:`, `MasteringConfig`, also known here as
`MasteringSettings`).

Conventions (the ones ACX's own checks use): levels are dBFS of the samples, full scale = 1.0.
* RMS: `20*log10(sqrt(mean(x**2)))` over the whole file (every channel, room tone included; unweighted).
* Peak: `20*log10(max |x|)`, sample peak (not true peak).
* Noise floor: the RMS of the quietest `noise_floor_window_s` (0.5 s) window of the file.
* Head / tail room tone: how long the level of 10 ms frames (their RMS) stays below `room_tone_threshold_db`
  (-50 dB) from the start / before the end.

`master_chapter` turns any mono audio (any rate, any level, DC offset, noise, clipping) into a 44.1 kHz float32
master that meets these limits: resample, high-pass (DC, rumble), pauses between words and sentences silenced
and other quiet frames expanded downwards (noisy synthesis gets clean pauses), edge silence trimmed, seeded room tone laid under the whole chapter (quiet, never digital silence),
`room tone | chapter | room tone`, then gain to the target RMS and a look-ahead peak limiter, repeated until the
RMS settles. Everything is deterministic: the same input gives the same bytes.

`measure_acx` measures a file (or samples) independently of how it was made; `AcxMeasurement.problems()` lists
the limits it fails. The writers (`write_wav_master`, `write_mp3`, `write_m4b`, `write_vtt`) write atomically
(a temporary name, then a rename) and byte-identically on reruns (ffmpeg runs with bitexact flags).

The watermark and the mastering chain (order matters; tests/test_mastering.py checks it). Per chapter:

    master = master_chapter(speech, speech_rate_hz, settings)          # sentence times t -> t + master.head_s
    marked = models.watermark.embed(master.samples, master.sample_rate_hz, payload, key)
    master = relimit(master, marked, settings)      # the mark lifts a peak a hair over the ceiling: limit again
    write_wav_master(master, ...); write_mp3(master, ..., title=...); write_vtt(cues, ...)
    ... and once per book: write_m4b([(title, wav_path), ...], "book.m4b", book_title, author=...)

Why this order: `WATERMARK_ORDER` below, measured.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy.ndimage import maximum_filter1d, minimum_filter1d, uniform_filter1d
from scipy.signal import butter, sosfilt

from narrator.audiofile import read_audio
from narrator.config import MasteringConfig
from narrator.errors import MissingDependency, NarratorError, OutputError
from narrator.storage import output_error, temporary_name

MasteringSettings = MasteringConfig  # the name the narration code uses; params.yaml `mastering:`

WATERMARK_ORDER = """\
Measured (tests/test_mastering.py; espeak-ng narration, payload read back with models.watermark.detect):
* The mark survives either order: mastering (44.1 kHz resampling, high-pass, gate, gain, limiter) and MP3 at
  192 kbps keep it detected with its payload.
* But marking first and mastering second costs detection margin wherever the limiter works hard: on narration
  with clicks the score fell from about 26 to 16 (threshold about 7), because the limiter's gain dips reshape the
  tiles' energies the mark is written in. Marked after mastering, the score stays about 26 in every case.
* Marking after mastering lifts the sample peak a little above the limiter's ceiling (-3.5 -> -3.3 dBFS on
  narration): hence `relimit`, a pass of the same limiter that moves the peaks by a fraction of a dB and leaves
  the mark intact.
Order for every chapter: master_chapter -> models.watermark.embed(master.samples, master.sample_rate_hz, ...)
-> relimit(master, marked) -> write_wav_master / write_mp3 / write_m4b. (MP3 coding itself can lift a peak: about
1 dB on a square wave, while narration decodes about 0.3 dB quieter than its master; write_mp3 measures the decoded
peak and encodes again, quieter, when it is over the limit.)
"""

FRAME_S = 0.01  # level analysis frames: gate, edge trimming, room-tone measurement (441 samples at 44.1 kHz)
SPEECH_PERCENTILE = 95.0  # the speech level of a chapter: this percentile of its frame levels
NOISE_PERCENTILE = 10.0  # the noise level between its sentences: this percentile of its frame levels
DIGITAL_SILENCE_DB = -100.0  # frames quieter than this are digital silence: left out of the percentiles
MAX_GATE_DEPTH_DB = 80.0  # the expander attenuates by at most this much
HIGHPASS_ORDER = 2  # Butterworth order of the DC/rumble filter
ROOM_TONE_BAND_HZ = (100.0, 6000.0)  # the room tone's noise is band-limited like a quiet room's
MASTER_SUBTYPE = "PCM_16"  # WAV master: 16-bit PCM
MP3_ENCODER = "libmp3lame"  # ffmpeg encoders of the MP3 and of the M4B's AAC
AAC_ENCODER = "aac"
MP3_PEAK_PASSES = 3  # encodings of an MP3 whose coding raised a peak over the limit, scaled down each time
M4B_BRAND = "M4B "  # MP4 major brand of an audiobook (players show it as a book, with chapters and bookmarks)
FFMPEG_STDERR_LINES = 15  # the tail of ffmpeg's stderr quoted in an error
STREAM_BLOCK_FRAMES = 1 << 18  # frames per block when streaming chapters into ffmpeg
_TINY = 1e-12
CHUNK_SAMPLES = 1 << 20  # per-sample work on a long chapter is done in pieces of this many samples: bounded memory
# MPEG-1 Layer III frame headers: bitrate index -> kbps, sample-rate index -> Hz
_MP3_BITRATES_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_RATES_HZ = (44100, 48000, 32000)


class MasteringError(NarratorError):
    """Chapter audio cannot be mastered or a book file cannot be written (silent input, bad cues, ffmpeg failed)."""


class FfmpegError(MasteringError):
    """ffmpeg refused to encode; the message quotes the end of its stderr."""


def db(value: float) -> float:
    """20*log10(value), with digital silence as -inf rather than an error."""
    return 20.0 * math.log10(value) if value > 0 else -math.inf


def amplitude(level_db: float) -> float:
    return 10.0 ** (level_db / 20.0)


# ------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MasteredAudio:
    """A mastered chapter: float32 mono `samples` at `sample_rate_hz` (44.1 kHz), with its measured levels.

    `head_room_tone_s` / `tail_room_tone_s`: room tone laid before / after the chapter's audio; `trimmed_head_s`:
    silence cut from the start of the input first. Caption timestamps: a time `t` (s) of the input is at
    `t + head_s` in the master (`output_time_s(t)` also keeps it inside the chapter's audio)."""

    samples: np.ndarray
    sample_rate_hz: int
    head_room_tone_s: float
    tail_room_tone_s: float
    trimmed_head_s: float
    rms_db: float
    peak_db: float
    noise_floor_db: float

    @property
    def head_s(self) -> float:
        """The offset of the input's timeline in the master: head room tone less the trimmed leading silence."""
        return self.head_room_tone_s - self.trimmed_head_s

    @property
    def tail_s(self) -> float:
        return self.tail_room_tone_s

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate_hz

    def output_time_s(self, input_s: float) -> float:
        """Where input time `input_s` lies in the master (`input_s + head_s`), kept inside the chapter's audio."""
        body_s = self.duration_s - self.head_room_tone_s - self.tail_room_tone_s
        return self.head_room_tone_s + min(max(input_s - self.trimmed_head_s, 0.0), body_s)


@dataclass(frozen=True)
class AcxCheck:
    """One ACX requirement against one file: what it is, the measured figure, the limit in words, and whether it
    passes (what the narration report shows per chapter)."""

    name: str  # "RMS", "peak", "noise floor", "room tone", "head room tone", ...
    value: str  # the measured figure with its unit, e.g. "-20.0 dB"
    limit: str  # e.g. "-23..-18 dB"
    passed: bool

    @property
    def problem(self) -> str:
        return f"{self.name}: {self.value}, must be {self.limit}"


@dataclass(frozen=True)
class AcxMeasurement:
    """A chapter file measured the way ACX checks it (conventions in the module docstring). `bitrate_kbps` and
    `constant_bitrate` are None for anything but MP3."""

    rms_db: float
    peak_db: float
    noise_floor_db: float
    head_room_tone_s: float
    tail_room_tone_s: float
    sample_rate_hz: int
    channels: int
    duration_s: float
    bitrate_kbps: float | None = None
    constant_bitrate: bool | None = None

    def checks(self, settings: MasteringConfig | None = None) -> list[AcxCheck]:
        """Every ACX requirement that applies to this file, measured against `settings`' limits."""
        s = settings or MasteringConfig()
        found = [
            AcxCheck("RMS", f"{self.rms_db:.1f} dB", f"{s.min_rms_db:g}..{s.max_rms_db:g} dB",
                     s.min_rms_db <= self.rms_db <= s.max_rms_db),
            AcxCheck("peak", f"{self.peak_db:.2f} dBFS", f"at most {s.max_peak_dbfs:g} dBFS",
                     self.peak_db <= s.max_peak_dbfs),
            AcxCheck("noise floor", f"{self.noise_floor_db:.1f} dB", f"at most {s.max_noise_floor_db:g} dB",
                     self.noise_floor_db <= s.max_noise_floor_db),
            AcxCheck("room tone", "digital silence" if self.noise_floor_db < DIGITAL_SILENCE_DB else "present",
                     "quiet noise, never digital silence (lay room tone under the chapter)",
                     self.noise_floor_db >= DIGITAL_SILENCE_DB),
            AcxCheck("head room tone", f"{self.head_room_tone_s:.2f} s",
                     f"{s.min_head_room_tone_s:g}..{s.max_head_room_tone_s:g} s",
                     s.min_head_room_tone_s <= self.head_room_tone_s <= s.max_head_room_tone_s),
            AcxCheck("tail room tone", f"{self.tail_room_tone_s:.2f} s",
                     f"{s.min_tail_room_tone_s:g}..{s.max_tail_room_tone_s:g} s",
                     s.min_tail_room_tone_s <= self.tail_room_tone_s <= s.max_tail_room_tone_s),
            AcxCheck("sample rate", f"{self.sample_rate_hz} Hz", f"{s.sample_rate_hz} Hz",
                     self.sample_rate_hz == s.sample_rate_hz),
        ]
        if self.bitrate_kbps is not None:
            found.append(AcxCheck("MP3 bitrate", f"{self.bitrate_kbps:g} kbps", f"at least {s.mp3_bitrate_kbps} kbps",
                                  self.bitrate_kbps >= s.mp3_bitrate_kbps))
        if self.constant_bitrate is not None:
            found.append(AcxCheck("MP3 bitrate mode", "CBR" if self.constant_bitrate else "VBR", "CBR",
                                  self.constant_bitrate))
        return found

    def problems(self, settings: MasteringConfig | None = None) -> list[str]:
        """Each ACX requirement this file fails, in words (empty: it passes)."""
        return [check.problem for check in self.checks(settings) if not check.passed]


# ------------------------------------------------------------------------------------------------ measuring


def _frame_power(samples: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squares (float64, every channel) of consecutive `frame`-sample frames of `(n,)` or `(channels, n)`
    audio, and each frame's sample count (the last frame may be short). Read in pieces: bounded memory."""
    flat = samples.reshape(-1, samples.shape[-1])
    n = flat.shape[1]
    count = -(-n // frame)
    sums = np.zeros(count)
    step = max(1, CHUNK_SAMPLES // frame) * frame
    for start in range(0, n, step):
        squares = np.sum(flat[:, start:start + step].astype(np.float64) ** 2, axis=0)
        frames = -(-squares.size // frame)
        padded = np.zeros(frames * frame)
        padded[:squares.size] = squares
        sums[start // frame:start // frame + frames] = padded.reshape(frames, frame).sum(axis=1)
    sizes = np.full(count, float(frame * flat.shape[0]))
    sizes[-1] = (n - (count - 1) * frame) * flat.shape[0]
    return sums, sizes


def _frame_levels_db(samples: np.ndarray, frame: int) -> np.ndarray:
    """RMS level (dB) of consecutive `frame`-sample frames."""
    sums, sizes = _frame_power(samples, frame)
    return 10.0 * np.log10(np.maximum(sums / sizes, _TINY ** 2))


def _quietest_window_db(samples: np.ndarray, sample_rate_hz: int, window_s: float) -> float:
    """RMS (dB) of the quietest `window_s` window, windows starting every FRAME_S."""
    frame = max(1, round(FRAME_S * sample_rate_hz))
    sums, sizes = _frame_power(samples, frame)
    frames = min(sums.size, max(1, round(window_s / FRAME_S)))
    total = np.concatenate([[0.0], np.cumsum(sums)])
    counted = np.concatenate([[0.0], np.cumsum(sizes)])
    power = (total[frames:] - total[:-frames]) / (counted[frames:] - counted[:-frames])
    quietest = float(power.min())
    return 10.0 * math.log10(quietest) if quietest > 0 else -math.inf


def _rms(samples: np.ndarray) -> float:
    """RMS of all the samples (every channel), accumulated in float64 piece by piece."""
    flat = samples.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, CHUNK_SAMPLES):
        piece = flat[start:start + CHUNK_SAMPLES].astype(np.float64)
        total += float(np.dot(piece, piece))
    return math.sqrt(total / max(flat.size, 1))


def _edge_run_s(levels_db: np.ndarray, threshold_db: float, frame_s: float) -> tuple[float, float]:
    """Seconds from the start / before the end during which every frame stays below `threshold_db`."""
    loud = np.flatnonzero(levels_db >= threshold_db)
    if loud.size == 0:
        return float(levels_db.size * frame_s), float(levels_db.size * frame_s)
    return float(loud[0] * frame_s), float((levels_db.size - 1 - loud[-1]) * frame_s)


def measure_acx(path_or_samples: str | os.PathLike | np.ndarray, sample_rate_hz: int | None = None,
                settings: MasteringConfig | None = None) -> AcxMeasurement:
    """Measure a chapter file (wav, mp3, m4b ...: decoded as any player would) or float samples `(n,)` /
    `(channels, n)` (then `sample_rate_hz` is needed) the way ACX does. MP3 files also get their bitrate and whether
    every frame has the same one (CBR), read from the frame headers."""
    s = settings or MasteringConfig()
    bitrate, constant = None, None
    if isinstance(path_or_samples, np.ndarray):
        if sample_rate_hz is None:
            raise MasteringError("measure_acx: samples need their sample_rate_hz")
        samples = np.atleast_2d(path_or_samples)
        rate = int(sample_rate_hz)
    else:
        path = Path(path_or_samples)
        audio = read_audio(path)
        samples, rate = audio.samples, audio.sample_rate_hz
        if path.suffix.lower() == ".mp3":
            bitrates = mp3_frame_bitrates_kbps(path)
            if bitrates:
                bitrate, constant = float(np.mean(bitrates)), len(set(bitrates)) == 1
    if samples.size == 0:
        raise MasteringError("measure_acx: there is no audio to measure")
    frame = max(1, round(FRAME_S * rate))
    head_s, tail_s = _edge_run_s(_frame_levels_db(samples, frame), s.room_tone_threshold_db, frame / rate)
    return AcxMeasurement(
        rms_db=db(_rms(samples)), peak_db=db(float(np.max(np.abs(samples)))),
        noise_floor_db=_quietest_window_db(samples, rate, s.noise_floor_window_s),
        head_room_tone_s=head_s, tail_room_tone_s=tail_s, sample_rate_hz=rate, channels=samples.shape[0],
        duration_s=samples.shape[1] / rate, bitrate_kbps=bitrate, constant_bitrate=constant)


def mp3_frame_bitrates_kbps(path: str | os.PathLike) -> list[int]:
    """The bitrate of every MPEG-1 Layer III frame of an MP3 file, read from the frame headers (an ID3v2 tag at
    the start is skipped). Empty when the file holds no such frames (MPEG-2 rates, not an MP3)."""
    data = Path(path).read_bytes()
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        pos = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F))
    bitrates = []
    while pos + 4 <= len(data):
        b1, b2 = data[pos + 1], data[pos + 2]
        if data[pos] != 0xFF or (b1 & 0xFE) != 0xFA:  # sync, MPEG-1, Layer III (either CRC setting)
            break
        rate_index, bitrate_index = (b2 >> 2) & 0x3, b2 >> 4
        if rate_index == 3 or bitrate_index in (0, 15):
            break
        kbps = _MP3_BITRATES_KBPS[bitrate_index]
        bitrates.append(kbps)
        pos += 144000 * kbps // _MP3_RATES_HZ[rate_index] + ((b2 >> 1) & 1)
    return bitrates


# ----------------------------------------------------------------------------------------------- mastering


def _mono_float32(samples: np.ndarray) -> np.ndarray:
    audio = np.asarray(samples)
    if audio.ndim == 2:
        audio = audio.mean(axis=0, dtype=np.float64)
    audio = np.array(audio, dtype=np.float32)  # a copy: the caller's array is never changed
    if audio.ndim != 1:
        raise MasteringError(f"chapter audio must be (samples,) or (channels, samples), not shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise MasteringError("chapter audio holds NaN or infinite samples: the synthesis failed; regenerate it")
    return audio


def _runs_at_least(mask: np.ndarray, length: int) -> np.ndarray:
    """`mask` with only its runs of True that are at least `length` long."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    kept = np.zeros_like(mask, dtype=bool)
    for start, end in zip(starts, ends):
        if end - start >= length:
            kept[start:end] = True
    return kept


def _gate_gain_db(audio: np.ndarray, frame: int, s: MasteringConfig) -> np.ndarray:
    """Per-frame gain (dB) that cleans the quiet between words and sentences, in two parts.

    * Pauses: a run of at least `pause_min_s` of frames near the noise level (within `pause_above_noise_db` of
      the 10th percentile of frame levels, and `pause_min_below_speech_db` under the speech level, the 95th
      percentile) is silenced (`MAX_GATE_DEPTH_DB`): noisy synthesis gets clean pauses, short dips (stops,
      consonants) inside words are kept.
    * Everything else below `gate_below_speech_db` under the speech level is expanded downwards by `gate_ratio`.

    The gain is held open around louder frames and ramped over `gate_smoothing_s`, so no word is clipped."""
    levels = _frame_levels_db(audio, frame)
    heard = levels[levels > DIGITAL_SILENCE_DB]
    if heard.size == 0:
        return np.zeros_like(levels)
    speech = float(np.percentile(heard, SPEECH_PERCENTILE))
    noise = float(np.percentile(heard, NOISE_PERCENTILE))
    gain_db = -np.minimum(np.maximum(speech - s.gate_below_speech_db - levels, 0.0) * (s.gate_ratio - 1.0),
                          MAX_GATE_DEPTH_DB)
    pause_threshold = min(noise + s.pause_above_noise_db, speech - s.pause_min_below_speech_db)
    pauses = _runs_at_least(levels < pause_threshold, max(1, round(s.pause_min_s / FRAME_S)))
    gain_db[pauses] = -MAX_GATE_DEPTH_DB
    span = max(1, round(s.gate_smoothing_s / FRAME_S)) | 1
    return uniform_filter1d(maximum_filter1d(gain_db, span, mode="nearest"), span, mode="nearest")


def _apply_frame_gain(audio: np.ndarray, gain_db: np.ndarray, frame: int) -> None:
    """Multiply `audio` in place by per-frame gains (dB), interpolated between frame centres, piece by piece."""
    centres = (np.arange(gain_db.size) + 0.5) * frame
    for start in range(0, audio.size, CHUNK_SAMPLES):
        index = np.arange(start, min(start + CHUNK_SAMPLES, audio.size))
        audio[index[0]:index[-1] + 1] *= (10.0 ** (np.interp(index, centres, gain_db) / 20.0)).astype(np.float32)


def _limit(audio: np.ndarray, ceiling: float, window: int) -> np.ndarray:
    """Look-ahead peak limiter: no sample above `ceiling`, the gain ramped over `window` samples around each peak.

    The gain each sample needs is held at its minimum over the window, then averaged over the same window: every
    sample's gain is then at or below the gain it needs, and the gain moves smoothly (no clipping). Long audio is
    limited piece by piece, each piece seeing `window` samples of its neighbours on either side."""
    window |= 1
    margin = window + 1  # a sample's gain depends on the needed gains up to a window either side
    out = np.empty(audio.size, np.float32)
    for start in range(0, audio.size, CHUNK_SAMPLES):
        end = min(start + CHUNK_SAMPLES, audio.size)
        lo, hi = max(0, start - margin), min(audio.size, end + margin)
        piece = audio[lo:hi].astype(np.float64)
        needed = np.minimum(1.0, ceiling / np.maximum(np.abs(piece), _TINY))
        if needed.min() < 1.0:
            gain = uniform_filter1d(minimum_filter1d(needed, window, mode="nearest"), window, mode="nearest")
            piece = np.clip(piece * gain, -ceiling, ceiling)  # the clip only catches float rounding
        out[start:end] = piece[start - lo:end - lo]
    return out


def _room_tone(n: int, sample_rate_hz: int, s: MasteringConfig) -> np.ndarray:
    """`n` samples (float32) of seeded, band-limited noise at `room_tone_db` RMS, made piece by piece."""
    rng = np.random.default_rng(s.room_tone_seed)
    high = min(ROOM_TONE_BAND_HZ[1], 0.45 * sample_rate_hz)
    band = butter(2, (ROOM_TONE_BAND_HZ[0], high), btype="bandpass", fs=sample_rate_hz, output="sos")
    state = np.zeros((band.shape[0], 2))
    noise = np.empty(n, np.float32)
    for start in range(0, n, CHUNK_SAMPLES):
        piece, state = sosfilt(band, rng.standard_normal(min(CHUNK_SAMPLES, n - start)), zi=state)
        noise[start:start + piece.size] = piece
    noise *= np.float32(amplitude(s.room_tone_db) / max(_rms(noise), _TINY))
    return noise


def _highpass(audio: np.ndarray, cutoff_hz: float, sample_rate_hz: int) -> None:
    """Remove DC and rumble below `cutoff_hz` from float32 `audio`, in place, piece by piece."""
    audio -= np.float32(np.mean(audio, dtype=np.float64))
    sos = butter(HIGHPASS_ORDER, cutoff_hz, btype="highpass", fs=sample_rate_hz, output="sos")
    state = np.zeros((sos.shape[0], 2))
    for start in range(0, audio.size, CHUNK_SAMPLES):
        piece, state = sosfilt(sos, audio[start:start + CHUNK_SAMPLES], zi=state)
        audio[start:start + piece.size] = piece


def master_chapter(samples: np.ndarray, sample_rate_hz: int, settings: MasteringConfig | None = None
                   ) -> MasteredAudio:
    """Master one chapter's audio (float, mono `(n,)` or `(channels, n)` mixed to mono, any rate) to the ACX limits.

    Resample to `settings.sample_rate_hz`; high-pass; expand the quiet frames between sentences downwards; trim the
    silence at both edges; lay `room tone | chapter | room tone` over seeded room tone; set the gain so the whole
    file's RMS is `target_rms_db` and limit the peaks to `peak_ceiling_dbfs`, again until the RMS is within
    `rms_tolerance_db` (at most `max_passes`). Raises MasteringError for silent or non-finite audio."""
    s = settings or MasteringConfig()
    rate = s.sample_rate_hz
    audio = _mono_float32(samples)
    if sample_rate_hz != rate:
        audio = soxr.resample(audio, sample_rate_hz, rate, quality="HQ")
    if audio.size == 0 or np.max(np.abs(audio)) == 0:
        raise MasteringError("the chapter audio is silent (no sample above zero): nothing to master; check the "
                             "synthesis of its sentences")
    _highpass(audio, s.highpass_hz, rate)
    frame = max(1, round(FRAME_S * rate))
    _apply_frame_gain(audio, _gate_gain_db(audio, frame, s), frame)

    gain = amplitude(s.target_rms_db) / max(_rms(audio), _TINY)
    heard = np.flatnonzero(_frame_levels_db(audio, frame) + db(gain) >= s.room_tone_threshold_db)
    if heard.size == 0:
        raise MasteringError("the chapter audio holds nothing above its noise: nothing to master; check the "
                             "synthesis of its sentences")
    start, end = heard[0] * frame, min(audio.size, (heard[-1] + 1) * frame)
    head, tail = round(s.head_room_tone_s * rate), round(s.tail_room_tone_s * rate)
    content = np.zeros(head + (end - start) + tail, np.float32)
    content[head:head + end - start] = audio[start:end]
    del audio
    room = _room_tone(content.size, rate, s)
    ceiling = amplitude(s.peak_ceiling_dbfs)
    window = max(1, round(s.limiter_window_s * rate))
    gain = amplitude(s.target_rms_db) / max(_rms(content), _TINY)
    for _ in range(s.max_passes):
        mastered = _limit(content * np.float32(gain) + room, ceiling, window)
        error_db = s.target_rms_db - db(_rms(mastered))
        if abs(error_db) <= s.rms_tolerance_db:
            break
        gain *= amplitude(error_db)
    return _measured(MasteredAudio(mastered, rate, head / rate, tail / rate, start / rate, 0.0, 0.0, 0.0), s)


def _measured(mastered: MasteredAudio, s: MasteringConfig) -> MasteredAudio:
    found = measure_acx(mastered.samples, mastered.sample_rate_hz, s)
    return replace(mastered, rms_db=found.rms_db, peak_db=found.peak_db, noise_floor_db=found.noise_floor_db)


def relimit(mastered: MasteredAudio, samples: np.ndarray, settings: MasteringConfig | None = None
            ) -> MasteredAudio:
    """`mastered` with its samples replaced by `samples` (the same chapter after a small change: the watermark
    embedded into the master), peaks limited to `peak_ceiling_dbfs` again and the levels measured again."""
    s = settings or MasteringConfig()
    audio = _mono_float32(samples)
    if audio.size != mastered.samples.size:
        raise MasteringError(f"relimit: {audio.size} samples given for a master of {mastered.samples.size}; pass "
                             "the marked master itself, at its own rate")
    window = max(1, round(s.limiter_window_s * mastered.sample_rate_hz))
    limited = _limit(audio, amplitude(s.peak_ceiling_dbfs), window)
    return _measured(replace(mastered, samples=limited), s)


# ----------------------------------------------------------------------------------------------- writing


def _replace_atomically(temporary: Path, path: Path) -> Path:
    try:
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise output_error(error, path) from None
    return path


def _prepare(path: str | os.PathLike) -> tuple[Path, Path]:
    """`path` and the hidden name it is written under first (it keeps the suffix, so it decodes as what it is)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(error, path.parent) from None
    return path, temporary_name(path).with_suffix(f".tmp{path.suffix}")


def write_wav_master(mastered: MasteredAudio, path: str | os.PathLike) -> Path:
    """Write the master as mono 16-bit PCM WAV at its rate (44.1 kHz); atomic."""
    path, temporary = _prepare(path)
    try:
        sf.write(str(temporary), np.clip(mastered.samples, -1.0, 1.0), mastered.sample_rate_hz,
                 subtype=MASTER_SUBTYPE, format="WAV")
    except (OSError, sf.LibsndfileError) as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise output_error(error, path) from None
        raise OutputError(f"cannot write {path}: {error}; check the folder is writable and has space") from None
    return _replace_atomically(temporary, path)


def _ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found is None:
        raise MissingDependency("writing MP3 and M4B files needs ffmpeg (with libmp3lame and aac); install it "
                                "(apt-get install ffmpeg)")
    return found


def _run_ffmpeg(args: list[str], blocks, what: str, path: Path) -> None:
    """Run ffmpeg reading raw float32 mono from stdin (`blocks`: arrays fed in order); FfmpegError on failure."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen([_ffmpeg(), "-nostdin", "-v", "error", "-y", *args], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            for block in blocks:
                process.stdin.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
            process.stdin.close()
        except BrokenPipeError:
            pass
        code = process.wait()
        if code != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-FFMPEG_STDERR_LINES:]
            raise FfmpegError(f"ffmpeg could not write {what} {path} (exit {code}):\n  " + "\n  ".join(tail) +
                              "\nCheck that ffmpeg has the encoder (ffmpeg -encoders) and that the folder is "
                              "writable")


def _raw_input(sample_rate_hz: int) -> list[str]:
    return ["-f", "f32le", "-ar", str(sample_rate_hz), "-ac", "1", "-i", "pipe:0"]


_BITEXACT = ["-fflags", "+bitexact", "-flags:a", "+bitexact"]  # no encoder version or dates: reruns byte-identical


def write_mp3(mastered: MasteredAudio, path: str | os.PathLike, *, title: str | None = None,
              artist: str | None = None, album: str | None = None, track: int | None = None,
              bitrate_kbps: int | None = None, settings: MasteringConfig | None = None) -> Path:
    """Encode the master as a constant-bitrate MP3 (libmp3lame, mono, at the master's rate; `bitrate_kbps`, else
    `mp3_bitrate_kbps`: 192) with ID3v2.3 tags; atomic.

    MP3 coding can raise a peak (by about 1 dB on a square wave), so the encoded file is decoded and its peak
    measured: above `max_peak_dbfs` the master is scaled down until the MP3's peak sits at `peak_ceiling_dbfs`
    and encoded again (at most `MP3_PEAK_PASSES` times; then MasteringError)."""
    s = settings or MasteringConfig()
    bitrate_kbps = bitrate_kbps or s.mp3_bitrate_kbps
    path, temporary = _prepare(path)
    tags = []
    for key, value in (("title", title), ("artist", artist), ("album", album), ("track", track)):
        if value is not None:
            tags += ["-metadata", f"{key}={value}"]
    args = [*_raw_input(mastered.sample_rate_hz), "-map_metadata", "-1", "-c:a", MP3_ENCODER,
            "-b:a", f"{bitrate_kbps}k", "-ar", str(mastered.sample_rate_hz), "-ac", "1", "-id3v2_version", "3",
            *tags, *_BITEXACT, "-f", "mp3", str(temporary)]
    samples = mastered.samples
    try:
        for _ in range(MP3_PEAK_PASSES):
            _run_ffmpeg(args, [samples], "the MP3", path)
            peak_db = _decoded_peak_db(temporary)
            if peak_db <= s.max_peak_dbfs:
                return _replace_atomically(temporary, path)
            samples = samples * np.float32(amplitude(s.peak_ceiling_dbfs - peak_db))
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.unlink(missing_ok=True)
    raise MasteringError(f"the MP3 of {path} still peaks at {peak_db:.2f} dBFS, above {s.max_peak_dbfs:g} dBFS, after "
                         f"{MP3_PEAK_PASSES} encodings; lower mastering.peak_ceiling_dbfs")


def _decoded_peak_db(path: Path) -> float:
    return db(float(np.max(np.abs(read_audio(path).samples))))


def _ffmetadata_escape(text: str) -> str:
    for char in ("\\", "=", ";", "#", "\n"):
        text = text.replace(char, "\\" + char)
    return text


def write_m4b(chapters: Sequence[tuple[str, str | os.PathLike]], path: str | os.PathLike, title: str, *,
              author: str | None = None, settings: MasteringConfig | None = None) -> Path:
    """Write an audiobook: the chapters' WAV masters, in order, as AAC in an MP4 (.m4b) with one chapter mark
    per chapter (`chapters`: `(title, wav_path)`) at `m4b_bitrate_kbps`; atomic. Chapters must share one sample
    rate. The mark of a chapter starts where its audio starts in the book (to the millisecond)."""
    bitrate_kbps = (settings or MasteringConfig()).m4b_bitrate_kbps
    if not chapters:
        raise MasteringError("write_m4b: no chapters given; a book needs at least one")
    path, temporary = _prepare(path)
    infos = [(name, Path(wav), sf.info(str(wav))) for name, wav in chapters]
    rate = infos[0][2].samplerate
    for name, wav, info in infos:
        if info.samplerate != rate:
            raise MasteringError(f"write_m4b: chapter {name!r} ({wav}) is at {info.samplerate} Hz, the first at "
                                 f"{rate} Hz; master every chapter with the same mastering settings")
    lines = [";FFMETADATA1", f"title={_ffmetadata_escape(title)}", "genre=Audiobook"]
    if author:
        lines += [f"artist={_ffmetadata_escape(author)}", f"album_artist={_ffmetadata_escape(author)}"]
    lines.append(f"album={_ffmetadata_escape(title)}")
    start = 0
    for name, _, info in infos:
        end = start + info.frames
        lines += ["[CHAPTER]", "TIMEBASE=1/1000", f"START={start * 1000 // rate}", f"END={end * 1000 // rate}",
                  f"title={_ffmetadata_escape(name)}"]
        start = end

    def blocks():
        for _, wav, _ in infos:
            with sf.SoundFile(str(wav)) as handle:
                for block in handle.blocks(blocksize=STREAM_BLOCK_FRAMES, dtype="float32", always_2d=True):
                    yield block.mean(axis=1)

    with tempfile.TemporaryDirectory() as folder:
        metadata = Path(folder) / "chapters.txt"
        metadata.write_text("\n".join(lines) + "\n", encoding="utf-8")
        args = [*_raw_input(rate), "-f", "ffmetadata", "-i", str(metadata), "-map", "0:a", "-map_metadata", "1",
                "-map_chapters", "1", "-c:a", AAC_ENCODER, "-b:a", f"{bitrate_kbps}k", "-ac", "1", "-brand", M4B_BRAND, *_BITEXACT,
                "-f", "ipod", str(temporary)]
        try:
            _run_ffmpeg(args, blocks(), "the M4B", path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return _replace_atomically(temporary, path)


def vtt_timestamp(seconds: float) -> str:
    """WebVTT cue time `HH:MM:SS.mmm` (rounded to the millisecond)."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def vtt_escape(text: str) -> str:
    """Cue text as WebVTT wants it: `&`, `<` and `>` escaped (so no `-->` survives), line breaks as spaces (a
    blank line would end the cue)."""
    text = " ".join(text.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_vtt(cues: Sequence[tuple[float, float, str]], path: str | os.PathLike) -> Path:
    """Write WebVTT captions: one cue per `(start_s, end_s, text)`, numbered from 1; atomic. Cues must start in
    order and each end after it starts."""
    lines = ["WEBVTT", ""]
    previous = 0.0
    for number, (start_s, end_s, text) in enumerate(cues, 1):
        if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < previous or end_s <= start_s:
            raise MasteringError(f"caption cue {number} ({start_s!r} -> {end_s!r}) must start at or after the cue "
                                 f"before ({previous:g} s) and end after it starts; check the sentence timings")
        previous = start_s
        lines += [str(number), f"{vtt_timestamp(start_s)} --> {vtt_timestamp(end_s)}", vtt_escape(text), ""]
    path, temporary = _prepare(path)
    try:
        temporary.write_text("\n".join(lines), encoding="utf-8")
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise output_error(error, path) from None
    return _replace_atomically(temporary, path)
