"""`narrator prepare`: turn the accepted clips of a validated dataset into training audio.

For each accepted clip: trim silence, cut recordings longer than `prepare.max_segment_s` at pauses into
`min_segment_s`..`max_segment_s` segments, normalise loudness, and write mono 32 kHz audio (SoVITS) and 16 kHz
audio (HuBERT and the speaker models), plus `prepared.list` in GPT-SoVITS format. A share of the segments
(prepare.holdout_share) is held out of training for `narrator evaluate`: marked "holdout" in prepare.json and
listed in `holdout.list` instead of `prepared.list`.

A segment cut from a longer recording needs its own transcript: with `prepare.asr_model_dir` (a local Whisper
directory) each segment is transcribed; without it a long clip is kept whole when it fits
`prepare.max_whole_clip_s`, and rejected otherwise with a reason that says how to fix it.
Re-running skips segments already written with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from narrator.audiofile import read_audio, resample, write_wav
from narrator.config import Params, PrepareConfig
from narrator.dataset import list_line
from narrator.errors import NarratorError
from narrator.log import get_logger

log = get_logger("prepare")

_FRAME_S = 0.02  # analysis window of the pause finder
_HOP_S = 0.01


class PrepareError(NarratorError):
    """The validated dataset cannot be prepared."""


@dataclass(frozen=True)
class Segment:
    start: int  # first sample
    end: int  # one past the last sample

    def duration_s(self, rate: int) -> float:
        return (self.end - self.start) / rate


def frame_levels_db(mono: np.ndarray, rate: int) -> np.ndarray:
    """RMS level per 10 ms hop (20 ms windows), in dB relative to full scale. `(frames,)`."""
    win, hop = max(1, int(_FRAME_S * rate)), max(1, int(_HOP_S * rate))
    if len(mono) < win:
        return np.array([20 * np.log10(max(float(np.sqrt(np.mean(mono ** 2))) if len(mono) else 0.0, 1e-10))])
    frames = np.lib.stride_tricks.sliding_window_view(mono, win)[::hop]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def plan_segments(mono: np.ndarray, rate: int, cfg: PrepareConfig) -> tuple[list[Segment], bool]:
    """Where to cut a recording: trimmed segments no longer than `max_segment_s`, cut in the middle of pauses.

    Returns (segments, complete): `complete` is False when some stretch of speech is longer than
    `max_segment_s` with no pause of `min_pause_s` to cut at (that stretch is returned as one long segment).
    """
    levels = frame_levels_db(mono, rate)
    hop = max(1, int(_HOP_S * rate))
    silent = levels < levels.max() + cfg.silence_threshold_db
    if silent.all():
        return [], True
    voiced_idx = np.flatnonzero(~silent)
    first, last = int(voiced_idx[0]), int(voiced_idx[-1])
    keep = int(cfg.keep_silence_s * rate)
    start = max(0, first * hop - keep)
    end = min(len(mono), (last + 1) * hop + int(_FRAME_S * rate) + keep)
    max_len = int(cfg.max_segment_s * rate)
    if end - start <= max_len:
        return [Segment(start, end)], True
    # candidate cut points: the middle of every pause of at least min_pause_s inside the voiced span
    min_pause = max(1, int(round(cfg.min_pause_s / _HOP_S)))
    cuts = []
    run_start = None
    for i in range(first, last + 1):
        if silent[i] and run_start is None:
            run_start = i
        elif not silent[i] and run_start is not None:
            if i - run_start >= min_pause:
                cuts.append(((run_start + i) // 2) * hop)
            run_start = None
    segments, complete = [], True
    seg_start = start
    min_len = int(cfg.min_segment_s * rate)
    while end - seg_start > max_len:
        fitting = [c for c in cuts if seg_start + min_len <= c <= seg_start + max_len]
        if not fitting:
            later = [c for c in cuts if c > seg_start + max_len]
            complete = False
            if not later:
                break
            segments.append(Segment(seg_start, later[0]))
            seg_start = later[0]
            continue
        cut = fitting[-1]
        segments.append(Segment(seg_start, cut))
        seg_start = cut
    segments.append(Segment(seg_start, end))
    if len(segments) > 1 and segments[-1].end - segments[-1].start < min_len // 2:
        # a tiny tail joins its neighbour when that stays within the limit
        tail = segments.pop()
        if tail.end - segments[-1].start <= max_len:
            segments[-1] = Segment(segments[-1].start, tail.end)
        else:
            segments.append(tail)
    return segments, complete


def normalise_loudness(mono: np.ndarray, rate: int, target_lufs: float) -> np.ndarray:
    """`mono` with the gain that brings its integrated loudness to `target_lufs` (unchanged when unmeasurable)."""
    import pyloudnorm

    out = mono.astype(np.float32, copy=True)
    if len(out) >= int(0.4 * rate):
        loudness = pyloudnorm.Meter(rate).integrated_loudness(out.astype(np.float64))
        if np.isfinite(loudness):
            out *= np.float32(10 ** ((target_lufs - loudness) / 20))
    return out


def limit_peaks(signals: list[np.ndarray], peak_limit_dbfs: float) -> list[np.ndarray]:
    """Scale all `signals` by one gain so that none peaks above the ceiling (applied after resampling,
    which can overshoot)."""
    peak = max((float(np.max(np.abs(s))) for s in signals if len(s)), default=0.0)
    ceiling = 10 ** (peak_limit_dbfs / 20)
    if peak <= ceiling:
        return signals
    return [s * np.float32(ceiling / peak) for s in signals]


@dataclass
class PreparedSegment:
    name: str
    source: str
    start_s: float
    end_s: float
    duration_s: float
    text: str
    language: str
    wav_32k: str
    wav_16k: str
    split: str = "train"  # or "holdout": kept out of training, used by `narrator evaluate`


def assign_holdout(segments: list[PreparedSegment], share: float) -> None:
    """Mark ceil(share * n) segments (at least one when share > 0 and n > 1) as "holdout", chosen by a hash of the
    name: the same segments whatever order the clips were processed in, and stable when clips are added."""
    for seg in segments:
        seg.split = "train"
    if share <= 0 or len(segments) < 2:
        return
    count = min(len(segments) - 1, max(1, math.ceil(share * len(segments))))
    ranked = sorted(segments, key=lambda seg: hashlib.sha1(seg.name.encode()).hexdigest())
    for seg in ranked[:count]:
        seg.split = "holdout"


@dataclass
class PrepareReport:
    validated_dir: str
    out_dir: str
    segments: list[PreparedSegment] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    total_duration_s: float = 0.0
    settings_hash: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


class Transcriber:
    """Whisper through transformers, loaded from a local directory (never from a hub)."""

    def __init__(self, model_dir: str):
        path = Path(model_dir)
        if not path.is_dir():
            raise PrepareError(
                f"prepare.asr_model_dir={model_dir} is not a folder; point it at a local Whisper model directory "
                "(config.json, weights, tokenizer) or set it to null to keep long clips whole"
            )
        from transformers import pipeline

        self._pipe = pipeline("automatic-speech-recognition", model=str(path), device="cpu")

    def __call__(self, wav_16k: np.ndarray, language: str | None) -> str:
        kwargs = {"generate_kwargs": {"language": language, "task": "transcribe"}} if language else {}
        result = self._pipe({"raw": wav_16k, "sampling_rate": 16000}, **kwargs)
        return str(result["text"]).strip()


def prepare(validated_dir: str | Path, out_dir: str | Path, params: Params, transcriber=None) -> PrepareReport:
    """Prepare every accepted clip of `validated_dir` (the output of `narrator validate`) into `out_dir`.

    `transcriber` (a callable `(wav_16k, language) -> text`) overrides the one built from
    `prepare.asr_model_dir`; tests pass their own.
    """
    from tqdm import tqdm

    cfg = params.prepare
    validated_dir, out_dir = Path(validated_dir), Path(out_dir)
    report_file = validated_dir / "report.json"
    if not report_file.exists():
        raise PrepareError(f"{report_file} not found; run `narrator validate SOURCE --out {validated_dir}` first")
    validation = json.loads(report_file.read_text())
    if validation.get("verdict") != "accepted":
        raise PrepareError(
            f"the dataset in {validated_dir} was refused by validation ({', '.join(validation.get('dataset_reasons', []))}); "
            "fix what report.html lists and validate again"
        )
    if transcriber is None and cfg.asr_model_dir:
        transcriber = Transcriber(cfg.asr_model_dir)
    settings = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    settings_hash = hashlib.sha256(settings.encode()).hexdigest()[:12]
    report = PrepareReport(str(validated_dir), str(out_dir), settings_hash=settings_hash)
    speaker = validation.get("consent", {}).get("speaker") or "narrator"
    clips = [c for c in validation["clips"] if c["status"] in ("accepted", "warning")]
    (out_dir / "wav32k").mkdir(parents=True, exist_ok=True)
    (out_dir / "wav16k").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for clip in tqdm(clips, desc="prepare", unit="clip", disable=None):
        _prepare_clip(clip, out_dir, cfg, settings_hash, transcriber, report)
    report.total_duration_s = round(sum(s.duration_s for s in report.segments), 3)
    assign_holdout(report.segments, cfg.holdout_share)
    for split, name in (("train", "prepared.list"), ("holdout", "holdout.list")):
        lines = [list_line(Path(s.wav_32k).resolve(), speaker, s.language, s.text) for s in report.segments
                 if s.split == split]
        (out_dir / name).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    (out_dir / "prepare.json").write_text(report.to_json(), encoding="utf-8")
    log.info("prepared %d segments (%.1f s) from %d clips in %.1f s; %d clips rejected", len(report.segments),
             report.total_duration_s, len(clips), time.monotonic() - started, len(report.rejected))
    if not report.segments:
        raise PrepareError(f"no segment could be prepared; see {out_dir / 'prepare.json'} for the reasons")
    return report


def _prepare_clip(clip: dict, out_dir: Path, cfg: PrepareConfig, settings_hash: str, transcriber,
                  report: PrepareReport) -> None:
    source = Path(clip["local_path"])
    stem = _safe_stem(clip["rel"])
    done_marker = out_dir / "done" / f"{stem}.{settings_hash}.json"
    if done_marker.exists():
        report.segments.extend(PreparedSegment(**s) for s in json.loads(done_marker.read_text()))
        return
    audio = read_audio(source)
    rate = audio.sample_rate_hz
    mono = audio.mono()
    segments, complete = plan_segments(mono, rate, cfg)
    if not segments:
        report.rejected.append({"path": clip["path"], "reason": "silent", "message": "no speech left after trimming"})
        return
    single = len(segments) == 1 and complete
    if not single and transcriber is None:
        whole = Segment(segments[0].start, segments[-1].end)
        if whole.duration_s(rate) <= cfg.max_whole_clip_s:
            segments = [whole]
        else:
            report.rejected.append({
                "path": clip["path"], "reason": "needs_transcription",
                "message": (f"{whole.duration_s(rate):.1f} s is longer than prepare.max_whole_clip_s="
                            f"{cfg.max_whole_clip_s} s and its cut segments need their own transcripts: set "
                            "prepare.asr_model_dir to a local Whisper directory, or split the recording into "
                            f"clips of at most {cfg.max_segment_s:g} s with one transcript each"),
            })
            return
    if not complete and transcriber is not None and any(s.duration_s(rate) > cfg.max_whole_clip_s for s in segments):
        report.rejected.append({
            "path": clip["path"], "reason": "no_pause_to_cut",
            "message": f"a stretch longer than {cfg.max_whole_clip_s} s has no pause of {cfg.min_pause_s} s to cut at",
        })
        return
    written = []
    for index, seg in enumerate(segments):
        piece = normalise_loudness(mono[seg.start:seg.end], rate, cfg.target_lufs)
        wav32, wav16 = limit_peaks([resample(piece, rate, cfg.sample_rate_hz),
                                    resample(piece, rate, cfg.ssl_sample_rate_hz)], cfg.peak_limit_dbfs)
        name = stem if len(segments) == 1 else f"{stem}_{index:03d}"
        if len(segments) == 1:
            text = clip["text"]
        else:
            text = transcriber(wav16, cfg.asr_language or clip.get("language") or None)
            if not text.strip():
                report.rejected.append({"path": f"{clip['path']}#{index}", "reason": "asr_empty",
                                        "message": "the ASR model heard no words in this segment; it is left out"})
                continue
        path32 = write_wav(out_dir / "wav32k" / f"{name}.wav", wav32, cfg.sample_rate_hz)
        path16 = write_wav(out_dir / "wav16k" / f"{name}.wav", wav16, cfg.ssl_sample_rate_hz)
        written.append(PreparedSegment(
            name=name, source=clip["path"], start_s=round(seg.start / rate, 3), end_s=round(seg.end / rate, 3),
            duration_s=round(len(wav32) / cfg.sample_rate_hz, 3), text=text, language=clip["language"],
            wav_32k=str(path32), wav_16k=str(path16),
        ))
    report.segments.extend(written)
    done_marker.parent.mkdir(parents=True, exist_ok=True)
    done_marker.write_text(json.dumps([asdict(s) for s in written], ensure_ascii=False))


def _safe_stem(rel: str) -> str:
    """A file-name-safe stem for a clip's relative path (`a/b c.wav` -> `a_b_c`)."""
    stem = Path(rel).with_suffix("").as_posix()
    clean = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem).strip("_")[-80:]
    return f"{clean}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}"  # the hash keeps a/b_c and a_b/c apart
