"""`narrator validate SOURCE --out DIR`: check a narrator's recordings before anyone spends GPU hours on them.

Every clip gets measured (duration, sample rate, peak, clipping, loudness, SNR, voice activity, speaker
embedding) and each failed check adds a stable reason code (see `REASONS`). The dataset as a whole needs a
consent record whose recording is the same voice, and enough accepted speech.

Outputs in DIR: `report.json`, `report.html`, `accepted.list` (GPT-SoVITS format) and `quarantine/` with a copy
of every rejected clip beside a note of its reasons. Sources are only read, never modified or moved.

Hostile input: nothing outside the source folder is read (see narrator/dataset.py: links that leave it are
`outside_source`, links inside it are followed); headers are read before any sample is decoded, so a file whose
header claims an impossible sample rate or hours of audio costs a header read. The outputs are written under
temporary names and renamed into place once all are complete (report.json last), so a failed run - a full disk, a
killed process - leaves the previous complete outputs, or none. One run at a time writes into DIR: a second one
is refused at once with the pid of the first (`narrator.storage.folder_lock`); DIR is checked writable before any
work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from components.prepare import plan_segments
from narrator.audiofile import audio_info, read_audio, resample
from narrator.config import Params, ValidateConfig
from narrator.dataset import Clip, Consent, discover, inside, list_line
from narrator.errors import AudioError, OutputError, SourceError
from narrator.log import get_logger
from narrator.speech import SAMPLE_RATE_HZ, SpeakerEncoder, VoiceActivityDetector, cosine, ge2e_mel, vad_frame_s, voiced
from narrator.storage import (check_free_space, folder_lock, is_s3, is_user_os_error, open_source, output_error,
                              sha256_file, temporary_name)

log = get_logger("validate")

# Stable reason codes -> what they mean and what to do. Codes never change meaning; new ones may be added.
REASONS: dict[str, str] = {
    "unreadable": "the file is corrupt, empty or not audio: re-export it as wav or flac",
    "too_short": "shorter than validate.min_clip_s: merge it with a neighbouring clip or drop it",
    "too_long": "longer than validate.max_clip_s: prepare cuts it at pauses (rejected when it has no pauses to cut at)",
    "low_sample_rate": "sampled below validate.min_sample_rate_hz: record again at 32 kHz or more",
    "clipped": "too many samples at full scale: record again with less input gain",
    "silent": "no signal above validate.silence_peak_dbfs: check the microphone and the file",
    "low_speech_ratio": "too little of the clip is speech: trim the silence or noise around the speech",
    "low_snr": "the background noise is too loud next to the speech: record in a quieter room",
    "loudness_out_of_range": "integrated loudness (LUFS) outside validate.min_lufs..max_lufs: prepare normalises it",
    "no_transcript": "no transcript names this clip: add it to a .list, metadata.csv or a .txt beside the clip",
    "unsupported_language": "the transcript's language is not supported (zh and en are): remove the clip",
    "duplicate": "the same audio as another clip (kept once): remove the copy",
    "speaker_outlier": "a different voice from the rest of the set: remove clips of other speakers",
    "outside_source": "a link to a file outside the source folder: never read nor copied; copy the file itself "
                      "into the folder",
    "truncated": "the file is cut off: its header promises more audio than it holds; copy or export it again",
    "bad_file_name": "the file name holds a '|', a line break or control character, or bytes that are not UTF-8, "
                     "which a GPT-SoVITS .list line cannot carry: rename the file",
}
DATASET_REASONS: dict[str, str] = {
    "missing_consent": "the consent record (consent.yaml with speaker, organisation, date, scope, and a recording "
                       "of the speaker's consent statement) is missing, incomplete or unreadable",
    "consent_speaker_mismatch": "the voice in the consent recording is not the voice of the training clips",
    "insufficient_speech": "not enough accepted speech to train a voice",
}
# Reasons that mean the audio itself is unusable: such clips are left out of the speaker reference.
_AUDIO_FAULTS = {"unreadable", "too_short", "low_sample_rate", "clipped", "silent", "low_speech_ratio", "low_snr",
                 "duplicate", "outside_source", "truncated", "bad_file_name"}
_OUTPUTS = ("accepted.list", "report.html", "report.json")  # renamed into place in this order: report.json last


@dataclass
class ClipReport:
    path: str  # where the user keeps it (local path or s3:// URI)
    rel: str  # path relative to the source root
    local_path: str  # where it was read from (the source itself, or the local copy of an s3 object)
    status: str = "accepted"  # accepted | warning | rejected
    reasons: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    duration_s: float | None = None
    sample_rate_hz: int | None = None
    channels: int | None = None
    peak_dbfs: float | None = None
    lufs: float | None = None
    snr_db: float | None = None
    speech_ratio: float | None = None
    speech_s: float | None = None
    clipped_fraction: float | None = None
    speaker_similarity: float | None = None
    duplicate_of: str | None = None
    text: str = ""
    language: str = ""

    def add(self, reason: str, detail: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
            self.details[reason] = detail


@dataclass
class ValidationReport:
    source: str
    out_dir: str
    verdict: str  # accepted | refused
    dataset_reasons: list[str]
    messages: list[str]
    totals: dict
    consent: dict
    consent_hash: str | None
    clips: list[ClipReport]
    thresholds: dict
    created_at: str
    elapsed_s: float
    ignored: list[dict] = field(default_factory=list)  # transcripts and linked folders not read, and why

    @property
    def accepted(self) -> bool:
        return self.verdict == "accepted"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


@dataclass
class _Analysis:
    """What the batched pass keeps per clip (small: no audio)."""

    fingerprint: np.ndarray | None = None  # (frames/4, 40) log-mel for duplicate search
    embedding: np.ndarray | None = None  # (256,) speaker embedding


def validate(source: str, out_dir: str | Path, params: Params) -> ValidationReport:
    """Validate every clip of `source` (folder or s3:// prefix) and write the report files into `out_dir`."""
    out_dir = Path(out_dir)
    _check_apart(source, out_dir)
    with folder_lock(out_dir, "narrator validate"):  # also the check that out_dir can be written
        _remove_leftovers(out_dir)
        return _validate(source, out_dir, params)


def _check_apart(source: str, out_dir: Path) -> None:
    """Refuse an --out inside a local source folder, or one holding it: the source would be written into (or, under
    quarantine/, replaced), and sources are never modified."""
    if is_s3(source) or not Path(source).expanduser().is_dir():
        return
    root, out = os.path.realpath(Path(source).expanduser()), os.path.realpath(out_dir)
    if inside(out, root) or inside(root, out):
        where = "lies inside the source folder" if inside(out, root) else "holds the source folder"
        raise OutputError(f"--out {out_dir} {where} {source}: sources are never modified; give an --out outside it")


def _validate(source: str, out_dir: Path, params: Params) -> ValidationReport:
    started = time.monotonic()
    cfg = params.validate_
    local = open_source(source, params.storage, cache_dir=out_dir / ".source-cache")
    clips, consent, ignored = discover(local.root, cfg.audio_extensions, cfg.consent_file)
    for item in ignored:
        log.warning("not read: %s: %s", item.path, item.detail)
    if not clips:
        raise SourceError(
            f"{source}: no audio files ({', '.join(cfg.audio_extensions)}) found; give the folder that holds the clips"
        )
    log.info("validating %d clips from %s", len(clips), source)
    vad, speaker = VoiceActivityDetector(), SpeakerEncoder()
    reports = [ClipReport(path=local.uri_of(c.path), rel=c.rel, local_path=str(c.path)) for c in clips]
    analyses = [_Analysis() for _ in clips]
    _analyse_all(clips, reports, analyses, cfg, params, vad, speaker)
    _mark_duplicates(reports, analyses, cfg)
    reference = _mark_speaker_outliers(reports, analyses, cfg)
    for report in reports:
        _settle_status(report, cfg)
    consent_info, consent_hash, dataset_reasons, messages = _check_consent(consent, reference, cfg, vad, speaker)
    totals = _totals(reports, cfg)
    if totals["missing_speech_s"] > 0:
        dataset_reasons.append("insufficient_speech")
        messages.append(
            f"accepted speech totals {totals['accepted_speech_s']:.1f} s; at least {cfg.min_total_speech_s:g} s are "
            f"needed: add {totals['missing_speech_s']:.1f} s more accepted speech (or fix the rejected clips)"
        )
    report = ValidationReport(
        source=str(source), out_dir=str(out_dir), verdict="refused" if dataset_reasons else "accepted",
        dataset_reasons=dataset_reasons, messages=messages, totals=totals, consent=consent_info,
        consent_hash=consent_hash, clips=reports, thresholds=cfg.model_dump(mode="json"),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), elapsed_s=round(time.monotonic() - started, 3),
        ignored=[asdict(item) for item in ignored],
    )
    _write_outputs(report, out_dir, local.root, consent_info.get("speaker") or local.root.name, cfg)
    log.info("verdict %s: %d accepted, %d warnings, %d rejected, %.1f s accepted speech", report.verdict,
             totals["accepted"], totals["warning"], totals["rejected"], totals["accepted_speech_s"])
    return report


# ---------------------------------------------------------------------------------------------- per-clip checks


def _analyse_all(clips: list[Clip], reports, analyses, cfg: ValidateConfig, params: Params, vad, speaker,
                 batch_clips: int = 48) -> None:
    """Measure clips in batches: decoding, signal checks and VAD of the next batch run in a worker thread while
    the speaker model embeds the current one (both release the GIL, so two cores stay busy)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def measure(batch: range):
        wavs16 = {}
        for i in batch:
            wav16 = _measure_clip(clips[i], reports[i], cfg, params)
            if wav16 is not None:
                wavs16[i] = wav16
        return batch, wavs16, vad.probabilities(list(wavs16.values()))

    batches = [range(s, min(s + batch_clips, len(clips))) for s in range(0, len(clips), batch_clips)]
    with ThreadPoolExecutor(max_workers=1) as pool, \
            tqdm(total=len(clips), desc="validate", unit="clip", disable=None) as progress:
        pending = pool.submit(measure, batches[0])
        for index in range(len(batches)):
            batch, wavs16, probabilities = pending.result()
            if index + 1 < len(batches):
                pending = pool.submit(measure, batches[index + 1])
            to_embed = []
            for i, probs in zip(wavs16, probabilities):
                _speech_checks(reports[i], wavs16[i], probs, cfg)
                analyses[i].fingerprint = _fingerprint(ge2e_mel(wavs16[i]))
                if not (set(reports[i].reasons) & _AUDIO_FAULTS):
                    to_embed.append((i, voiced(wavs16[i], probs, cfg.vad_threshold)))
            if to_embed:
                for (i, _), emb in zip(to_embed, speaker.embed([w for _, w in to_embed])):
                    analyses[i].embedding = emb
            progress.update(len(batch))


def _measure_clip(clip: Clip, report: ClipReport, cfg: ValidateConfig, params: Params) -> np.ndarray | None:
    """Read the header, decode and run the checks that need no model. Returns 16 kHz mono audio for the batched
    checks (None when the clip was not decoded)."""
    if clip.problem is not None:  # outside_source, bad_file_name, not a regular file: never opened
        report.add(*clip.problem)
        return None
    if clip.transcript is None or not clip.transcript.text.strip():
        report.add("no_transcript", REASONS["no_transcript"])
    elif not any(ch.isalnum() for ch in clip.transcript.text):
        report.add("no_transcript", f"the transcript {clip.transcript.text[:40]!r} (from {clip.transcript.origin}) "
                                    "holds no words, only punctuation: write down what the clip says")
    else:
        report.text, report.language = clip.transcript.text, clip.transcript.language
        if report.language not in cfg.languages:
            shown = report.language or "unknown"
            report.add("unsupported_language",
                       f"language {shown!r} (from {clip.transcript.origin}); supported: {', '.join(cfg.languages)}")
    try:
        info = audio_info(clip.path)  # the header only: nothing decoded yet
    except AudioError as error:
        report.add("unreadable", f"{REASONS['unreadable']} ({error})")
        return None
    if info is not None:
        report.duration_s = round(info.duration_s, 3)
        report.sample_rate_hz, report.channels = info.sample_rate_hz, info.channels
        if info.missing_frames:
            report.add("truncated", f"the header promises {info.declared_duration_s:.2f} s of audio, the file holds "
                                    f"{info.duration_s:.2f} s: it was cut off; copy or export it again")
            return None
        if info.duration_s > cfg.max_source_s:
            report.add("too_long", f"{info.duration_s:.0f} s > validate.max_source_s={cfg.max_source_s:g} s: split "
                                   "the recording")
            report.details["too_long_sliceable"] = "no"
            return None
    try:
        audio = read_audio(clip.path)
    except AudioError as error:
        report.add("unreadable", f"{REASONS['unreadable']} ({error})")
        return None
    mono = audio.mono()
    rate = audio.sample_rate_hz
    report.duration_s = round(audio.duration_s, 3)
    report.sample_rate_hz = rate
    report.channels = audio.channels
    peak = float(np.max(np.abs(audio.samples)))
    report.peak_dbfs = round(20 * np.log10(max(peak, 1e-10)), 2)
    report.clipped_fraction = round(float(np.mean(np.abs(audio.samples) >= cfg.clip_level)), 6)
    if rate < cfg.min_sample_rate_hz:
        report.add("low_sample_rate", f"{rate} Hz < {cfg.min_sample_rate_hz} Hz: record again at 32 kHz or more")
    if audio.duration_s < cfg.min_clip_s:
        report.add("too_short", f"{audio.duration_s:.2f} s < {cfg.min_clip_s:g} s: merge it or drop it")
    elif audio.duration_s > cfg.max_clip_s:
        _check_long(mono, rate, report, cfg, params)
    if report.peak_dbfs < cfg.silence_peak_dbfs:
        report.add("silent", f"peak {report.peak_dbfs:.1f} dBFS < {cfg.silence_peak_dbfs:g} dBFS: no usable signal")
        return None
    if report.clipped_fraction > cfg.max_clipped_fraction:
        report.add("clipped", f"{100 * report.clipped_fraction:.2f}% of samples at full scale "
                              f"(limit {100 * cfg.max_clipped_fraction:.2f}%): record with less gain")
    report.lufs = _loudness(mono, rate)
    if report.lufs is not None and not cfg.min_lufs <= report.lufs <= cfg.max_lufs:
        report.add("loudness_out_of_range", f"{report.lufs:.1f} LUFS outside {cfg.min_lufs:g}..{cfg.max_lufs:g} LUFS; "
                                            "prepare normalises loudness")
    return resample(mono, rate, SAMPLE_RATE_HZ)


def _check_long(mono: np.ndarray, rate: int, report: ClipReport, cfg: ValidateConfig, params: Params) -> None:
    duration = len(mono) / rate
    if duration > cfg.max_source_s:
        report.add("too_long", f"{duration:.0f} s > validate.max_source_s={cfg.max_source_s:g} s: split the recording")
        report.details["too_long_sliceable"] = "no"
        return
    _, complete = plan_segments(mono, rate, params.prepare)
    if complete:
        report.add("too_long", f"{duration:.1f} s > {cfg.max_clip_s:g} s: prepare will cut it at pauses")
        report.details["too_long_sliceable"] = "yes"
    else:
        report.add("too_long", f"{duration:.1f} s > {cfg.max_clip_s:g} s with no pause of "
                               f"{params.prepare.min_pause_s:g} s to cut at: split it into shorter clips")
        report.details["too_long_sliceable"] = "no"


def _loudness(mono: np.ndarray, rate: int) -> float | None:
    import pyloudnorm

    if len(mono) < int(0.4 * rate):
        return None
    value = pyloudnorm.Meter(rate).integrated_loudness(mono.astype(np.float64))
    return round(float(value), 2) if np.isfinite(value) else None


def _speech_checks(report: ClipReport, wav16: np.ndarray, probs: np.ndarray, cfg: ValidateConfig) -> None:
    speech = probs >= cfg.vad_threshold
    report.speech_ratio = round(float(speech.mean()), 4)
    report.speech_s = round(float(speech.sum()) * vad_frame_s(), 3)
    report.snr_db = round(estimate_snr_db(wav16), 2)
    if report.speech_ratio < cfg.min_speech_ratio:
        report.add("low_speech_ratio", f"{100 * report.speech_ratio:.0f}% speech < {100 * cfg.min_speech_ratio:.0f}%")
    if report.snr_db < cfg.min_snr_db:
        report.add("low_snr", f"estimated SNR {report.snr_db:.1f} dB < {cfg.min_snr_db:g} dB")


def estimate_snr_db(wav: np.ndarray, rate: int = SAMPLE_RATE_HZ) -> float:
    """Signal-to-noise ratio from the spread of 20 ms frame levels: loud frames (95th percentile) against the
    noise floor (10th percentile). Capped to 0..100 dB (digital silence between words gives the cap)."""
    win = int(0.02 * rate)
    n = len(wav) // win
    if n < 5:
        return 0.0
    power = np.mean(np.square(wav[: n * win].reshape(n, win), dtype=np.float64), axis=1)
    levels = 10 * np.log10(np.maximum(power, 1e-12))
    return float(np.clip(np.percentile(levels, 95) - np.percentile(levels, 10), 0.0, 100.0))


def _fingerprint(mel: np.ndarray) -> np.ndarray:
    """`(frames, 40)` mel power -> `(frames // 4, 40)` log-mel averaged over 40 ms: compact, encoding-robust."""
    n = (len(mel) // 4) * 4
    pooled = mel[:n].reshape(-1, 4, mel.shape[1]).mean(axis=1) if n else mel
    return np.log(pooled + 1e-6).astype(np.float32)


# ------------------------------------------------------------------------------------------------ set checks


def _mark_duplicates(reports: list[ClipReport], analyses: list[_Analysis], cfg: ValidateConfig) -> None:
    """Mark later copies of the same audio (log-mel correlation above the threshold, same duration)."""
    items = [(i, a.fingerprint) for i, a in enumerate(analyses) if a.fingerprint is not None and len(a.fingerprint)]
    items.sort(key=lambda item: len(item[1]))
    for pos, (i, fp_i) in enumerate(items):
        if reports[i].duplicate_of:
            continue
        for j, fp_j in items[pos + 1:]:
            if len(fp_j) > len(fp_i) * 1.02 + 2:
                break
            if reports[j].duplicate_of:
                continue
            n = min(len(fp_i), len(fp_j))
            a, b = fp_i[:n].ravel(), fp_j[:n].ravel()
            if np.std(a) < 1e-6 or np.std(b) < 1e-6:
                continue
            if float(np.corrcoef(a, b)[0, 1]) >= cfg.duplicate_min_correlation:
                first, later = sorted((i, j), key=lambda k: reports[k].path)
                reports[later].duplicate_of = reports[first].path
                reports[later].add("duplicate", f"same audio as {reports[first].path}: keep one copy")
                if later == i:
                    break


def _mark_speaker_outliers(reports, analyses, cfg: ValidateConfig) -> np.ndarray | None:
    """Find the set's voice (the clips that agree most with each other) and mark clips far from it.

    Returns the reference embedding (unit vector), or None when no clip could be embedded.
    """
    indices = [i for i, a in enumerate(analyses) if a.embedding is not None]
    if not indices:
        return None
    embeddings = np.stack([analyses[i].embedding for i in indices])
    if len(indices) > 2:
        similarity = embeddings @ embeddings.T
        typical = np.median(similarity, axis=1)
        core = typical >= np.median(typical)  # the better-agreeing half defines the voice
        centre = embeddings[core].mean(axis=0)
    else:
        centre = embeddings.mean(axis=0)
    reference = centre / max(float(np.linalg.norm(centre)), 1e-9)
    for i, emb in zip(indices, embeddings):
        sim = cosine(emb, reference)
        reports[i].speaker_similarity = round(sim, 4)
        if len(indices) > 2 and sim < cfg.speaker_min_similarity:
            reports[i].add("speaker_outlier",
                           f"similarity {sim:.2f} to the set's voice < {cfg.speaker_min_similarity:g}: another voice?")
    return reference


def _settle_status(report: ClipReport, cfg: ValidateConfig) -> None:
    warn = set(cfg.warn_reasons)
    if report.details.get("too_long_sliceable") == "yes":
        warn.add("too_long")
    if any(r not in warn for r in report.reasons):
        report.status = "rejected"
    elif report.reasons:
        report.status = "warning"
    else:
        report.status = "accepted"


def _check_consent(consent: Consent, reference, cfg: ValidateConfig, vad, speaker):
    info: dict = {k: (str(v) if v is not None else None) for k, v in consent.fields.items()}
    info["file"] = str(consent.file) if consent.file else None
    info["recording_path"] = str(consent.recording) if consent.recording else None
    reasons: list[str] = []
    messages: list[str] = []
    consent_hash = None
    if consent.problems:
        reasons.append("missing_consent")
        messages.append("consent refused: " + "; ".join(consent.problems) + ". Add consent.yaml (speaker, "
                        "organisation, date, scope) and a recording of the speaker saying the consent statement.")
    if consent.file is not None:
        digest = hashlib.sha256(consent.file.read_bytes())
        if consent.recording is not None:
            digest.update(bytes.fromhex(sha256_file(consent.recording)))
        consent_hash = "sha256:" + digest.hexdigest()
    if consent.recording is not None:
        try:
            audio = read_audio(consent.recording, max_duration_s=cfg.max_source_s)
        except AudioError as error:
            if "missing_consent" not in reasons:
                reasons.append("missing_consent")
            messages.append(f"consent recording unreadable ({error}); record it again as wav or flac")
            return info, consent_hash, reasons, messages
        wav16 = resample(audio.mono(), audio.sample_rate_hz, SAMPLE_RATE_HZ)
        probs = vad.probabilities([wav16])[0]
        embedding = speaker.embed([voiced(wav16, probs, cfg.vad_threshold)])[0]
        info["duration_s"] = round(audio.duration_s, 2)
        if reference is not None:
            similarity = cosine(embedding, reference)
            info["speaker_similarity"] = round(similarity, 4)
            if similarity < cfg.consent_min_similarity:
                reasons.append("consent_speaker_mismatch")
                messages.append(
                    f"the consent recording's voice does not match the training clips (similarity {similarity:.2f} "
                    f"< {cfg.consent_min_similarity:g}): the narrator must record the consent statement themself"
                )
    return info, consent_hash, reasons, messages


def _totals(reports: list[ClipReport], cfg: ValidateConfig) -> dict:
    usable = [r for r in reports if r.status in ("accepted", "warning")]
    accepted_speech = round(sum(r.speech_s or 0.0 for r in usable), 3)
    counts: dict[str, int] = {}
    for r in reports:
        for reason in r.reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return {
        "clips": len(reports),
        "accepted": sum(r.status == "accepted" for r in reports),
        "warning": sum(r.status == "warning" for r in reports),
        "rejected": sum(r.status == "rejected" for r in reports),
        "total_duration_s": round(sum(r.duration_s or 0.0 for r in reports), 3),
        "accepted_duration_s": round(sum(r.duration_s or 0.0 for r in usable), 3),
        "accepted_speech_s": accepted_speech,
        "required_speech_s": cfg.min_total_speech_s,
        "missing_speech_s": round(max(0.0, cfg.min_total_speech_s - accepted_speech), 3),
        "reason_counts": counts,
    }


# --------------------------------------------------------------------------------------------------- outputs


def _remove_leftovers(out_dir: Path) -> None:
    """Temporary files of runs that were killed before renaming them into place (we hold the folder's lock)."""
    for pattern in (".quarantine.*.tmp", ".quarantine.*.old", *(f".{output}.*.tmp" for output in _OUTPUTS)):
        for path in out_dir.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _copyable(clip: ClipReport, root: Path) -> bool:
    """A rejected clip is copied into quarantine only when it is a regular file inside the source folder."""
    real = os.path.realpath(clip.local_path)
    return "outside_source" not in clip.reasons and inside(real, root) and os.path.isfile(real)


def _write_outputs(report: ValidationReport, out_dir: Path, root: Path, speaker: str, cfg: ValidateConfig) -> None:
    """Write quarantine/, accepted.list, report.html and report.json: everything is first written under temporary
    names (a hidden staging folder for quarantine/), then renamed into place, report.json last. A failure leaves
    the previous outputs as they were and no temporary file; a full or read-only disk is an OutputError."""
    rejected = [c for c in report.clips if c.status == "rejected"]
    notes = {c.rel: ("\n".join([c.path, "rejected for:"] + [f"  {r}: {c.details.get(r, REASONS.get(r, ''))}"
                                                            for r in c.reasons]) + "\n").encode("utf-8",
                                                                                               "backslashreplace")
             for c in rejected}
    copies = [c for c in rejected if _copyable(c, root)]
    lines = [list_line(c.local_path, speaker, c.language, c.text) for c in report.clips
             if c.status in ("accepted", "warning")]
    contents = {
        "accepted.list": ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"),
        "report.html": render_html(report, cfg).encode("utf-8", "backslashreplace"),
        "report.json": report.to_json().encode("utf-8", "backslashreplace"),  # lone surrogates stay JSON escapes
    }
    needed = (sum(os.path.getsize(c.local_path) for c in copies) + sum(map(len, notes.values()))
              + sum(map(len, contents.values())))
    check_free_space(out_dir, needed)
    quarantine, staging = out_dir / "quarantine", temporary_name(out_dir / "quarantine")
    old = out_dir / f".quarantine.{os.getpid()}.old"
    temporary = {name: temporary_name(out_dir / name) for name in _OUTPUTS}
    writing = staging
    try:
        copyable = {c.rel for c in copies}
        for clip in rejected:
            target = staging / clip.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            writing = quarantine / clip.rel
            if clip.rel in copyable:
                shutil.copy2(clip.local_path, target)
            _write_file(target.with_name(target.name + ".reasons.txt"), notes[clip.rel])
        for name in _OUTPUTS:
            writing = out_dir / name
            _write_file(temporary[name], contents[name])
        writing = quarantine
        if quarantine.exists():
            os.replace(quarantine, old)
        if rejected:
            os.replace(staging, quarantine)
        for name in _OUTPUTS:
            writing = out_dir / name
            os.replace(temporary[name], out_dir / name)
    except OSError as error:
        if old.exists():  # the previous quarantine back in place
            if quarantine.exists():
                os.replace(quarantine, staging)
            os.replace(old, quarantine)
        for path in temporary.values():
            path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        if is_user_os_error(error):
            raise output_error(error, writing, needed) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def render_html(report: ValidationReport, cfg: ValidateConfig) -> str:
    """report.html: verdict and totals, dataset messages, reason counts, the clip table, pictures of rejects."""
    from narrator import report as html

    totals = report.totals
    verdict_class = "ok" if report.accepted else "bad"
    body = [html.cards([
        ("verdict", report.verdict, verdict_class),
        ("clips", str(totals["clips"]), ""),
        ("accepted", str(totals["accepted"]), "ok"),
        ("warnings", str(totals["warning"]), "warn"),
        ("rejected", str(totals["rejected"]), "bad" if totals["rejected"] else ""),
        ("accepted speech", f"{totals['accepted_speech_s']:.1f} s / {totals['required_speech_s']:g} s",
         "ok" if totals["missing_speech_s"] == 0 else "bad"),
    ])]
    body += [f"<div class=msg>{html.esc(m)}</div>" for m in report.messages]
    consent = report.consent
    body.append("<h2>Consent</h2>" + html.table(["speaker", "organisation", "date", "scope", "voice match", "hash"], [[
        html.esc(consent.get("speaker")), html.esc(consent.get("organisation")), html.esc(consent.get("date")),
        html.esc(consent.get("scope")), html.fmt(consent.get("speaker_similarity"), 2),
        f"<code>{html.esc((report.consent_hash or '–')[:23])}</code>",
    ]]))
    if totals["reason_counts"]:
        rows = [[f"<code>{html.esc(code)}</code>", str(n), html.esc(REASONS.get(code, ""))]
                for code, n in sorted(totals["reason_counts"].items(), key=lambda kv: -kv[1])]
        body.append("<h2>Reasons</h2>" + html.table(["code", "clips", "meaning and fix"], rows, numeric={1}))
    rows = []
    order = {"rejected": 0, "warning": 1, "accepted": 2}
    for clip in sorted(report.clips, key=lambda c: (order[c.status], c.rel)):  # problems first
        css = {"accepted": "ok", "warning": "warn", "rejected": "bad"}[clip.status]
        pills = "".join(f"<span class='pill{' warn' if clip.status == 'warning' else ''}' title='"
                        f"{html.esc(clip.details.get(r, ''))}'>{html.esc(r)}</span>" for r in clip.reasons)
        rows.append([html.esc(clip.rel), f"<span class={css}>{clip.status}</span>", pills,
                     html.fmt(clip.duration_s, 2), html.fmt(clip.sample_rate_hz), html.fmt(clip.peak_dbfs),
                     html.fmt(clip.lufs), html.fmt(clip.snr_db), html.fmt(clip.speech_ratio, 2),
                     html.fmt(clip.speaker_similarity, 2), html.esc(clip.language), html.esc(clip.text[:80])])
    body.append("<h2>Clips</h2>" + html.table(
        ["clip", "status", "reasons", "s", "Hz", "peak dBFS", "LUFS", "SNR dB", "speech", "voice", "lang", "text"],
        rows, numeric={3, 4, 5, 6, 7, 8, 9}))
    rejected = [c for c in report.clips if c.status == "rejected"]
    if rejected:
        body.append("<h2>Rejected clips</h2>")
        for clip in rejected[: cfg.report_pictures]:
            caption = "; ".join(f"{r}: {clip.details.get(r, '')}" for r in clip.reasons)
            picture = "<p><i>not decodable: no picture</i></p>"
            if clip.peak_dbfs is not None:  # decoded during the analysis: not a link outside, not a lying header
                try:
                    audio = read_audio(clip.local_path, max_duration_s=cfg.max_source_s)
                    picture = html.waveform_and_spectrogram(audio.mono(), audio.sample_rate_hz, clip.rel)
                except AudioError:
                    pass
            body.append(f"<figure>{picture}<figcaption>{html.esc(caption)}</figcaption></figure>")
        if len(rejected) > cfg.report_pictures:
            body.append(f"<p>{len(rejected) - cfg.report_pictures} more rejected clips: see report.json.</p>")
    if report.ignored:
        body.append("<h2>Not read</h2>" + html.table(["path", "reason", "why"], [
            [html.esc(item["path"]), f"<code>{html.esc(item['reason'])}</code>", html.esc(item["detail"])]
            for item in report.ignored]))
    subtitle = f"{report.source} · {report.created_at} · {report.elapsed_s:.1f} s"
    return html.page("Narrator validation report", subtitle, body)
