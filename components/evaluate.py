"""`narrator evaluate`: measure a fine-tuned voice before it ships, and decide whether it may.

Material: the narrator's held-out segments (prepare.holdout_share kept them out of training; their real
recordings are the yardstick) and a fixed set of evaluation sentences per language (EVAL_SENTENCES below).
The voice speaks every held-out transcript and every evaluation sentence, from one reference segment.

Metrics (each in report.json, report.html and MLflow):
    speaker_similarity        cosine of speaker embeddings, synthesized vs held-out real speech (GE2E, the intake
                              model; a WavLM-SV / ECAPA directory when evaluate.speaker_model_dir is set)
    wer / cer                 through Whisper (evaluate.asr_model_dir, else prepare.asr_model_dir), text normalised
                              as the Seed-TTS protocol does; not measured (a warning) when no ASR model is
                              configured, which fails their gates while they are required
    mcd_db, f0_rmse_cents,    against the held-out recording of the same text (DTW-aligned)
    f0_correlation
    duration_outliers_share   share of utterances whose duration is implausible for their phone count at the
                              narrator's own rate (repeated or skipped words, the GPT stage's usual failure);
                              with ASR, the repeated and skipped words themselves
    rtf, first_audio_s        real-time factor and time to first audio
    watermark_detected_share  the synthesized audio, marked as the service marks it, is detected (with its payload
                              from 10 s): each utterance of 3 s or more alone, and all of them joined
The verdict applies evaluate.gates: a required gate whose metric was not measured fails (reason `not_measured`,
with what to set), one not required is skipped, and so is a metric the voice cannot have (CER when nothing Chinese
was spoken: `not_applicable`). `verdict.json` ({"passed": bool, "reasons": [...]}) is what the DAG branches on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.features import FeatureEntry, read_manifest, training_entries
from models.text.lexicon import compile_lexicon
from models.tts import REFERENCE_MAX_S, REFERENCE_MIN_S, Reference, Synthesizer, load_synthesizer
from narrator.audiofile import read_audio, resample
from narrator.config import Params
from narrator.errors import NarratorError
from narrator.lexicon import load_lexicon
from narrator.log import get_logger
from narrator.registry import EVALUATION_PAYLOAD

log = get_logger("evaluate")

EVAL_RATE_HZ = 16000  # speaker, ASR, MCD and F0 all work at 16 kHz
EVAL_SENTENCES = {
    "en": [
        "The library opens at nine in the morning and closes at six in the evening.",
        "Please remember to bring your ticket and a photo identification to the gate.",
        "She opened the window, and the sound of the rain filled the quiet room.",
        "Our quarterly results show steady growth across every region we serve.",
        "If the light turns red, stop the car and wait for the green signal.",
        "He read the letter twice before he understood what it really meant.",
    ],
    "zh": [
        "今天的天气很好，我们一起去公园散步吧。",
        "请在进入会场之前出示您的门票和身份证件。",
        "这本书讲述了一个普通人如何改变自己命运的故事。",
        "我们的产品已经销往全国三十多个城市。",
        "如果遇到红灯，请停车等待绿灯亮起。",
        "他把那封信读了两遍，才明白其中的意思。",
    ],
}
HIGHER_IS_BETTER = {"speaker_similarity", "f0_correlation", "watermark_detected_share"}
WATERMARK_MIN_UTTERANCE_S = 3.0  # shorter utterances are checked only within the joined outputs (presence: 3 s)
WATERMARK_PAYLOAD_S = 10.0  # from this length the payload must be read back too (the detector's specification)
WATERMARK_JOIN_GAP_S = 0.25  # silence between utterances in the joined check


class EvaluationError(NarratorError):
    """The voice cannot be evaluated (missing inputs or models)."""


@dataclass
class Utterance:
    """One synthesized utterance and what was measured on it."""

    kind: str  # "holdout" (a held-out segment's transcript) or "sentence" (the fixed evaluation set)
    name: str
    text: str
    language: str
    duration_s: float
    phones: int
    synthesis_s: float
    first_audio_s: float
    speaker_similarity: float | None = None
    mcd_db: float | None = None
    f0_rmse_cents: float | None = None
    f0_correlation: float | None = None
    duration_ratio: float | None = None
    duration_verdict: str | None = None
    asr_text: str | None = None
    error_rate: float | None = None
    repeated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    watermark_detected: bool | None = None


@dataclass
class EvaluationReport:
    voice: dict[str, str]
    reference: str
    metrics: dict[str, float | None]
    verdict: dict[str, Any]
    utterances: list[Utterance]
    warnings: list[str]
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


# -- models ------------------------------------------------------------------------------------------------------


class SpeakerModel:
    """Speaker embeddings of 16 kHz clips: GE2E (the intake model) or a transformers x-vector directory."""

    def __init__(self, model_dir: str | None = None) -> None:
        self.name = "ge2e"
        self._encoder = None
        if model_dir:
            from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

            self._extractor = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
            self._model = AutoModelForAudioXVector.from_pretrained(model_dir, local_files_only=True).eval()
            self.name = Path(model_dir).name
        else:
            from narrator.speech import SpeakerEncoder

            self._encoder = SpeakerEncoder()

    def embed(self, clips_16k: list[np.ndarray]) -> np.ndarray:
        """`(n, dim)` unit-length embeddings."""
        if self._encoder is not None:
            out = np.asarray(self._encoder.embed(clips_16k), dtype=np.float64)
        else:
            import torch

            rows = []
            with torch.inference_mode():
                for clip in clips_16k:
                    inputs = self._extractor(clip, sampling_rate=EVAL_RATE_HZ, return_tensors="pt")
                    rows.append(self._model(**inputs).embeddings[0].numpy())
            out = np.stack(rows).astype(np.float64)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def pick_reference(entries: list[FeatureEntry]) -> FeatureEntry:
    """The training segment of 3-10 s closest to 6 s (a typical official reference length): the clip a voice
    speaks from in evaluation, in the watermark check and, bundled by the package step, in service."""
    usable = [e for e in entries if REFERENCE_MIN_S <= e.duration_s <= REFERENCE_MAX_S]
    if not usable:
        raise EvaluationError("no training segment is 3-10 s long to serve as the reference; prepare with "
                              "prepare.min_segment_s >= 3 or record longer sentences")
    return min(usable, key=lambda e: (abs(e.duration_s - 6.0), e.name))


def evaluation_voice(features_dir: str | Path, sovits_path: str, gpt_path: str, params: Params,
                     lexicon_file: str | Path | None = None) -> tuple[Synthesizer, Reference, FeatureEntry]:
    """The voice as evaluation (and the watermark check) speak with it: the synthesizer of `sovits_path` and
    `gpt_path` (on `evaluate.device`, in `inference.mode`) and its reference prompt from the training segment
    `pick_reference` chooses, the same clip the package step bundles as the voice's reference; it reads with the
    pronunciation lexicon `lexicon_file` when given."""
    manifest = read_manifest(features_dir)
    reference_entry = pick_reference(training_entries(manifest))
    lexicon = compile_lexicon(load_lexicon(lexicon_file)) if lexicon_file else None
    synth = load_synthesizer(sovits_path, gpt_path, params, device=params.evaluate.device, lexicon=lexicon)
    audio = read_audio(reference_entry.wav_32k)
    reference = synth.reference(audio.mono(), audio.sample_rate_hz, reference_entry.text, reference_entry.language)
    return synth, reference, reference_entry


def read_verdict(evaluation_dir: str | Path) -> dict[str, Any]:
    """The verdict.json `evaluate` wrote: {"passed": bool, "reasons": [...], "checked": [...]}."""
    path = Path(evaluation_dir) / "verdict.json"
    if not path.exists():
        raise EvaluationError(f"{path} not found; run `narrator evaluate ... --out {evaluation_dir}` first")
    return json.loads(path.read_text(encoding="utf-8"))


# -- the step ----------------------------------------------------------------------------------------------------


def evaluate(features_dir: str | Path, sovits_path: str, gpt_path: str, out_dir: str | Path, params: Params,
             logger=None, lexicon_file: str | Path | None = None) -> EvaluationReport:
    """Evaluate the voice (`sovits_path` + `gpt_path`) against the narrator's held-out data in `features_dir`,
    reading with the pronunciation lexicon `lexicon_file` when given (the one it will be registered with).

    Writes out_dir/report.json, report.html, verdict.json and samples/*.wav; returns the report.
    """
    from narrator import metrics as M

    started = time.monotonic()
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    cfg = params.evaluate
    manifest = read_manifest(features_dir)
    entries = [FeatureEntry(**raw) for raw in manifest["entries"]]
    train = training_entries(manifest)
    holdout = sorted((e for e in entries if e.split == "holdout"), key=lambda e: e.name)[:cfg.max_holdout_segments]
    warnings: list[str] = []
    if not holdout:
        warnings.append("no held-out segments (prepare.holdout_share is 0): speaker similarity is measured against "
                        "training segments and MCD/F0 are skipped")
    synth, reference, reference_entry = evaluation_voice(features_dir, sovits_path, gpt_path, params, lexicon_file)
    speaker = SpeakerModel(cfg.speaker_model_dir)
    asr_dir = cfg.asr_model_dir or params.prepare.asr_model_dir
    transcriber = None
    if asr_dir:
        from components.prepare import Transcriber

        transcriber = Transcriber(asr_dir)
    else:
        warnings.append("no ASR model configured (evaluate.asr_model_dir): WER/CER are not measured (their gates "
                        "fail while required) and the repeated/skipped word check is skipped")
    rate_s_per_phone = M.speaking_rate_s_per_phone([e.duration_s for e in train], [len(e.ids) for e in train])
    key, key_note = _watermark_key()
    if key_note:
        warnings.append(key_note)

    real_16k = {e.name: _at_eval_rate(e.wav_32k) for e in (holdout or train[:cfg.max_holdout_segments])}
    real_embeddings = speaker.embed(list(real_16k.values()))
    voice_centre = real_embeddings.mean(axis=0)
    voice_centre /= max(float(np.linalg.norm(voice_centre)), 1e-9)
    language = max({e.language for e in train}, key=lambda lang: sum(e.language == lang for e in train))
    jobs = [("holdout", e.name, e.text, e.language) for e in holdout]
    jobs += [("sentence", f"sentence-{i:02d}", text, language)
             for i, text in enumerate(EVAL_SENTENCES.get(language, [])[:cfg.sentences_per_language])]

    from tqdm import tqdm

    from narrator.audiofile import write_wav

    utterances: list[Utterance] = []
    samples_dir = out_dir / "samples"
    synthesized_16k: dict[str, np.ndarray] = {}  # held-out syntheses, for the report's pairs
    marked: list[tuple[np.ndarray, int]] = []  # every output as the service would mark it, (samples, rate)
    for index, (kind, name, text, lang) in enumerate(tqdm(jobs, desc="evaluate", unit="utt", disable=None)):
        speech = synth.speak(text, reference, lang, seed=cfg.seed + index)
        write_wav(samples_dir / f"{name}.wav", speech.samples, speech.sample_rate_hz)
        syn_16k = resample(speech.samples, speech.sample_rate_hz, EVAL_RATE_HZ)
        phones = sum(s.phones for s in speech.sentences)
        spoken_s = _spoken_duration_s(speech)
        u = Utterance(kind, name, text, lang, round(spoken_s, 3), phones, round(speech.seconds, 3),
                      round(speech.first_audio_s, 3))
        embedding = speaker.embed([syn_16k])[0]
        target = real_embeddings[list(real_16k).index(name)] if name in real_16k else voice_centre
        u.speaker_similarity = round(float(np.dot(embedding, target)), 4)
        if kind == "holdout":
            synthesized_16k[name] = syn_16k
            u.mcd_db = round(M.mel_cepstral_distortion(real_16k[name], syn_16k, EVAL_RATE_HZ), 3)
            f0 = M.f0_metrics(real_16k[name], syn_16k, EVAL_RATE_HZ)
            u.f0_rmse_cents, u.f0_correlation = _finite(f0.rmse_cents), _finite(f0.correlation)
        check = M.duration_check(spoken_s, phones, rate_s_per_phone, cfg.duration_tolerance)
        u.duration_ratio, u.duration_verdict = round(check.ratio, 3), check.verdict
        if transcriber is not None:
            u.asr_text = transcriber(syn_16k, lang)
            u.error_rate = round(M.word_error_rate(text, u.asr_text, lang).rate, 4)
            issues = M.repeated_or_skipped_words(text, u.asr_text, lang)
            u.repeated, u.skipped = list(issues.repeated), list(issues.skipped)
        if key is not None:
            marked.append(_mark_and_check(u, speech.samples, speech.sample_rate_hz, key))
        utterances.append(u)

    metrics = _aggregate(utterances)
    if marked:
        metrics["watermark_detected_share"] = _watermark_share(utterances, marked, key)
    gates = [M.Gate(metric, ">=" if metric in HIGHER_IS_BETTER else "<=", gate.threshold, gate.required)
             for metric, gate in cfg.gates.items() if gate is not None]
    verdict = M.evaluate_gates(metrics, gates, not_applicable=_not_applicable(utterances),
                               how_to_measure={gate.metric: _how_to_measure(gate.metric, metrics) for gate in gates})
    report = EvaluationReport(
        voice={"sovits": str(sovits_path), "gpt": str(gpt_path), "speaker_model": speaker.name,
               "asr_model": str(asr_dir) if asr_dir else ""},
        reference=reference_entry.name, metrics=metrics,
        verdict={"passed": verdict.passed, "reasons": list(verdict.reasons), "checked": list(verdict.checked)},
        utterances=utterances, warnings=warnings, seconds=round(time.monotonic() - started, 2))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.to_json(), encoding="utf-8")
    (out_dir / "verdict.json").write_text(json.dumps(report.verdict, indent=1), encoding="utf-8")
    (out_dir / "report.html").write_text(_html(report, real_16k, synthesized_16k), encoding="utf-8")
    _log_to_mlflow(report, out_dir, params, logger)
    log.info("evaluation %s in %.0f s: %s", "passed" if verdict.passed else "FAILED", report.seconds,
             "; ".join(verdict.reasons) or "every gate met")
    return report


# the metric each spoken language is checked by (through ASR): word error rate for English, character for Chinese
ASR_METRIC_LANGUAGES = {"wer": "en", "cer": "zh"}
HOLDOUT_METRICS = ("mcd_db", "f0_rmse_cents", "f0_correlation")  # measured against held-out recordings only


def _not_applicable(utterances: list[Utterance]) -> dict[str, str]:
    """The ASR metrics this evaluation could not have (no utterance in their language), and why."""
    spoken = {u.language for u in utterances}
    return {metric: f"no utterance in {language!r} was spoken" for metric, language in ASR_METRIC_LANGUAGES.items()
            if language not in spoken}


def _how_to_measure(metric: str, metrics: dict[str, float | None]) -> str:
    """What to change so a required gate's metric is measured (or how to stop requiring it)."""
    if metric not in metrics:
        how = f"evaluation measures no such metric (it measures {', '.join(sorted(metrics))}); check the gate's name"
    elif metric in ASR_METRIC_LANGUAGES:
        how = "set evaluate.asr_model_dir (or prepare.asr_model_dir) to a local Whisper directory"
    elif metric in HOLDOUT_METRICS:
        how = "keep held-out segments (prepare.holdout_share > 0 and evaluate.max_holdout_segments > 0)"
    else:
        how = "let the voice speak (evaluate.max_holdout_segments or evaluate.sentences_per_language above 0)"
    return f"{how}; or set evaluate.gates.{metric}.required: false to skip it when unmeasured"


def _log_to_mlflow(report: EvaluationReport, out_dir: Path, params: Params, logger) -> None:
    """Metrics to `logger(metrics, step)` when given, else to an MLflow run "evaluate" (with the report files)."""
    measured = {k: v for k, v in report.metrics.items() if v is not None}
    if logger is not None:
        logger(measured, 0)
        return
    train = params.training
    if not train.mlflow_tracking_uri:
        return
    import mlflow

    from components.training import mlflow_logger

    log_fn, _ = mlflow_logger(train.mlflow_tracking_uri, train.mlflow_experiment, "evaluate",
                              {**params.evaluate.model_dump(), **report.voice})
    try:
        log_fn(measured, 0)
        mlflow.set_tag("verdict", "passed" if report.verdict["passed"] else "failed")
        for name in ("report.json", "report.html", "verdict.json"):
            mlflow.log_artifact(str(out_dir / name))
    finally:
        mlflow.end_run()


def _mark_and_check(u: Utterance, samples: np.ndarray, sample_rate_hz: int, key: bytes) -> tuple[np.ndarray, int]:
    """Mark one output as the service does; when it is long enough for the detector on its own
    (WATERMARK_MIN_UTTERANCE_S), set `u.watermark_detected` (presence and the exact payload). Returns the marked
    samples and their rate."""
    from models.watermark import detect, embed

    marked = embed(samples, sample_rate_hz, EVALUATION_PAYLOAD, key)
    if len(marked) / sample_rate_hz >= WATERMARK_MIN_UTTERANCE_S:
        u.watermark_detected = _mark_found(detect(marked, sample_rate_hz, key), len(marked) / sample_rate_hz)
    return marked, sample_rate_hz


def _mark_found(found, duration_s: float) -> bool:
    """Present, and carrying the evaluation payload: read back exactly from WATERMARK_PAYLOAD_S on; below that an
    unread payload is allowed (presence is what a short excerpt proves) but a wrong one never is."""
    if not found.detected:
        return False
    if found.payload is None:
        return duration_s < WATERMARK_PAYLOAD_S
    return found.payload == EVALUATION_PAYLOAD


def _watermark_share(utterances: list[Utterance], marked: list[tuple[np.ndarray, int]], key: bytes) -> float:
    """Share of watermark checks passed: one per utterance long enough to check alone, plus one on all outputs
    joined with short pauses (so short utterances are covered too, as a listener of a whole session hears them)."""
    from models.watermark import detect

    rate = marked[0][1]
    gap = np.zeros(int(WATERMARK_JOIN_GAP_S * rate), dtype=np.float32)
    pieces = []
    for samples, sr in marked:
        pieces += [resample(samples, sr, rate) if sr != rate else samples, gap]
    joined = np.concatenate(pieces)
    checks = [u.watermark_detected for u in utterances if u.watermark_detected is not None]
    found = detect(joined, rate, key)  # separately marked pieces: presence, and no wrong payload
    checks.append(bool(found.detected and found.payload in (None, EVALUATION_PAYLOAD)))
    return round(sum(checks) / len(checks), 4)


def _watermark_key() -> tuple[bytes | None, str | None]:
    try:
        from models.watermark import load_key

        return load_key(), None
    except NarratorError:
        import secrets

        return secrets.token_bytes(32), ("NARRATOR_WATERMARK_KEY is not set: the watermark check used a throwaway "
                                         "key (set the production key to check with it)")


def _spoken_duration_s(speech) -> float:
    """Seconds of speech: edge silence trimmed (40 dB below the peak) and the pauses between sentences left out,
    comparable with the prepared segments' durations."""
    import librosa

    from models.tts import SamplingSettings

    trimmed, _ = librosa.effects.trim(speech.samples, top_db=40)
    pauses_s = (len(speech.sentences) - 1) * SamplingSettings().pause_s
    return max(len(trimmed) / speech.sample_rate_hz - pauses_s, 0.0)


def _at_eval_rate(path: str) -> np.ndarray:
    audio = read_audio(path)
    return resample(audio.mono(), audio.sample_rate_hz, EVAL_RATE_HZ)


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), 4) if present else None


def _aggregate(utterances: list[Utterance]) -> dict[str, float | None]:
    """Dataset-level metrics from the utterances (None where nothing was measured)."""
    by_lang = {lang: [u for u in utterances if u.language == lang] for lang in {u.language for u in utterances}}
    total_audio = sum(u.duration_s for u in utterances)
    metrics: dict[str, float | None] = {
        "speaker_similarity": _mean([u.speaker_similarity for u in utterances if u.kind == "holdout"])
        or _mean([u.speaker_similarity for u in utterances]),
        "wer": _mean([u.error_rate for u in by_lang.get("en", [])]),
        "cer": _mean([u.error_rate for u in by_lang.get("zh", [])]),
        "mcd_db": _mean([u.mcd_db for u in utterances]),
        "f0_rmse_cents": _mean([u.f0_rmse_cents for u in utterances]),
        "f0_correlation": _mean([u.f0_correlation for u in utterances]),
        "duration_outliers_share": round(sum(u.duration_verdict != "ok" for u in utterances) / len(utterances), 4)
        if utterances else None,
        "rtf": round(sum(u.synthesis_s for u in utterances) / max(total_audio, 1e-9), 4) if utterances else None,
        "first_audio_s": round(float(np.median([u.first_audio_s for u in utterances])), 4) if utterances else None,
        "watermark_detected_share": None,  # set by _watermark_share when a key is available
    }
    return metrics


def _html(report: EvaluationReport, real_16k: dict[str, np.ndarray], synthesized_16k: dict[str, np.ndarray]
          ) -> str:
    from narrator.report import audio_tag, cards, esc, fmt, page, table, waveform_and_spectrogram

    v = report.verdict
    body = [cards([("verdict", "PASS" if v["passed"] else "FAIL", "ok" if v["passed"] else "bad"),
                   ("speaker similarity", fmt(report.metrics.get("speaker_similarity"), 3), ""),
                   ("real-time factor", fmt(report.metrics.get("rtf"), 3), ""),
                   ("utterances", str(len(report.utterances)), "")])]
    body += [f"<div class=msg>{esc(r)}</div>" for r in v["reasons"]]
    body += [f"<p class=warn>{esc(w)}</p>" for w in report.warnings]
    body.append("<h2>Metrics against the gates</h2>")
    checked = {c["metric"]: c for c in v["checked"]}
    rows = []
    for name, value in report.metrics.items():
        gate = checked.get(name)
        status = "–" if gate is None else esc(gate.get("status", "") + (f" ({gate['reason']})" if gate.get("reason")
                                                                         else ""))
        rule = "" if gate is None else (f"{esc(gate.get('op', ''))} {fmt(gate.get('threshold'), 3)}"
                                        + (", required" if gate.get("required") else ""))
        rows.append([esc(name), fmt(value, 3), rule, status])
    body.append(table(["metric", "value", "gate", "status"], rows, numeric={1}))
    body.append("<h2>Utterances</h2>")
    body.append(table(
        ["kind", "name", "text", "s", "similarity", "MCD dB", "F0 cents", "duration", "ASR", "error", "watermark"],
        [[esc(u.kind), esc(u.name), esc(u.text), fmt(u.duration_s, 2), fmt(u.speaker_similarity, 3),
          fmt(u.mcd_db, 2), fmt(u.f0_rmse_cents, 0), esc(u.duration_verdict), esc(u.asr_text or "–"),
          fmt(u.error_rate, 3), esc(u.watermark_detected)] for u in report.utterances],
        numeric={3, 4, 5, 6, 9}))
    body.append("<h2>Held-out pairs: real (left) and synthesized (right)</h2>")
    for u in report.utterances:
        if u.kind != "holdout" or u.name not in real_16k:
            continue
        syn_16k = synthesized_16k[u.name]
        body.append(f"<h3>{esc(u.name)}: {esc(u.text)}</h3><div class=cards><figure>"
                    + waveform_and_spectrogram(real_16k[u.name], EVAL_RATE_HZ, "real")
                    + audio_tag(_wav_bytes(real_16k[u.name])) + "</figure><figure>"
                    + waveform_and_spectrogram(syn_16k, EVAL_RATE_HZ, "synthesized")
                    + audio_tag(_wav_bytes(syn_16k)) + "</figure></div>")
    return page("Voice evaluation", f"reference {report.reference}; {report.seconds:.0f} s", body)


def _wav_bytes(samples: np.ndarray, rate: int = EVAL_RATE_HZ) -> bytes:
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
