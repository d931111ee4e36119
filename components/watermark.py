"""`narrator watermark`: mark generated audio with a 32-bit payload, look for the mark in any file, and check
that a fine-tuned voice's output carries it (the pipeline step between evaluation and registration).

The algorithm lives in models/watermark.py; this step reads and writes files. The key is a secret: it comes from
$NARRATOR_WATERMARK_KEY or the file named by $NARRATOR_WATERMARK_KEY_FILE (`models.watermark.load_key`), never
from params.yaml. Payloads are written as exactly 8 hex digits (`narrator.registry.format_payload`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.watermark import WatermarkConfig, WatermarkError, detect, embed
from narrator.audiofile import read_audio, write_wav
from narrator.config import Params
from narrator.log import get_logger
from narrator.registry import EVALUATION_PAYLOAD, format_payload, parse_payload

log = get_logger("watermark")

_OUTPUT_SUFFIXES = (".wav", ".flac")
CHECK_FILE = "watermark.json"
CHECK_EXCERPT_S = 3.0  # presence must show in an excerpt this short
CHECK_MIN_SPEECH_S = 10.0  # the payload must read back from this much speech (the detector's specification)
CHECK_MAX_SENTENCES = 64


def embed_file(in_path: str | Path, out_path: str | Path, payload_hex: str, key: bytes | str,
               config: WatermarkConfig | None = None) -> Path:
    """Read `in_path` (wav/flac/mp3/ogg/...), embed the payload, write 16-bit `out_path` (.wav or .flac) at the
    input's sample rate and channel count. Returns the written path."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in _OUTPUT_SUFFIXES:
        raise WatermarkError(f"{out_path}: write the marked audio as .wav or .flac (lossless); encode it afterwards "
                             "if you need mp3 or ogg")
    payload = parse_payload(payload_hex)
    audio = read_audio(in_path)
    samples = audio.samples[0] if audio.channels == 1 else audio.samples
    marked = embed(samples, audio.sample_rate_hz, payload, key, config)
    write_wav(out_path, marked, audio.sample_rate_hz)
    log.info("watermarked", extra={"source": str(in_path), "out": str(out_path), "payload": format_payload(payload),
                                   "duration_s": round(audio.duration_s, 2)})
    return out_path


def detect_file(path: str | Path, key: bytes | str, config: WatermarkConfig | None = None) -> dict:
    """Look for the mark in `path`: {"detected": bool, "payload": 8 hex digits or None, "score": float}.

    `score` is a z-score (about N(0, 1) on unmarked audio); the payload needs about 10 s of marked audio."""
    audio = read_audio(path)
    found = detect(audio.samples, audio.sample_rate_hz, key, config)
    result = {"detected": bool(found.detected), "payload": format_payload(found.payload),
              "score": round(float(found.score), 3)}
    log.info("watermark detection", extra={"source": str(path), **result, "threshold": round(found.threshold, 3)})
    return result


class WatermarkCheckFailed(WatermarkError):
    """The voice's output, marked as the service marks it, did not give the mark back."""


@dataclass(frozen=True)
class WatermarkCheck:
    """The result of `check_voice`, kept as watermark.json beside the marked sample; registration records it."""

    payload: str  # the payload embedded (8 hex digits)
    speech_s: float
    sample_rate_hz: int
    excerpt_3s_detected: bool
    excerpt_3s_score: float
    detected: bool
    payload_read: str | None
    score: float
    passed: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @property
    def summary(self) -> str:
        """One line for the registry's `watermark_check` tag, e.g. "passed (score 14.2)"."""
        return f"{'passed' if self.passed else 'failed'} (score {self.score})"

    @classmethod
    def read(cls, folder: str | Path) -> "WatermarkCheck":
        """The check `check_voice` wrote into `folder`."""
        from narrator.errors import NarratorError

        path = Path(folder) / CHECK_FILE
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise NarratorError(f"{path} not found; run `narrator watermark check FEATURES_DIR --sovits ... --gpt "
                                f"... --out {folder}` first") from None
        except (json.JSONDecodeError, TypeError) as error:
            raise NarratorError(f"{path} is not a watermark check result ({error}); run the check again") from None


def check_voice(features_dir: str | Path, sovits_path: str, gpt_path: str, out_dir: str | Path, params: Params,
                payload_hex: str | None = None) -> WatermarkCheck:
    """The pipeline's watermark check: the fine-tuned voice speaks the evaluation sentences (at least
    `CHECK_MIN_SPEECH_S`, enough to read the payload back), the result is marked with the production key as the
    service marks every output, and both a 3 s excerpt (presence) and the whole (payload) must be found.

    Writes `sample.wav` (the marked speech, at the voice's rate) and `watermark.json` into `out_dir`. Raises
    WatermarkCheckFailed when the mark is not found, and the key errors of `load_key` when no key is configured
    (the check never runs with a throwaway key). `payload_hex` defaults to the evaluation payload."""
    from components.evaluate import EVAL_SENTENCES, evaluation_voice
    from models.watermark import load_key

    key = load_key()
    out_dir = Path(out_dir)
    synth, reference, reference_entry = evaluation_voice(features_dir, sovits_path, gpt_path, params)
    language = reference_entry.language if reference_entry.language in EVAL_SENTENCES else "en"
    sentences = EVAL_SENTENCES[language]
    pieces, rate, spoken_s = [], 32000, 0.0
    for index in range(CHECK_MAX_SENTENCES):  # sentences, repeated if short, until CHECK_MIN_SPEECH_S
        speech = synth.speak(sentences[index % len(sentences)], reference, language, seed=index)
        rate = speech.sample_rate_hz
        pieces.append(speech.samples)
        spoken_s += len(speech.samples) / rate
        if spoken_s >= CHECK_MIN_SPEECH_S:
            break
    payload = parse_payload(payload_hex) if payload_hex else EVALUATION_PAYLOAD
    marked = embed(np.concatenate(pieces), rate, payload, key)
    whole = detect(marked, rate, key)
    excerpt_len = int(CHECK_EXCERPT_S * rate)
    start = max((len(marked) - excerpt_len) // 2, 0)
    excerpt = detect(marked[start:start + excerpt_len], rate, key)
    check = WatermarkCheck(
        payload=format_payload(payload), speech_s=round(spoken_s, 2), sample_rate_hz=rate,
        excerpt_3s_detected=bool(excerpt.detected), excerpt_3s_score=round(float(excerpt.score), 3),
        detected=bool(whole.detected), payload_read=format_payload(whole.payload),
        score=round(float(whole.score), 3),
        passed=bool(excerpt.detected and whole.detected and whole.payload == payload))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_wav(out_dir / "sample.wav", marked, rate)
    (out_dir / CHECK_FILE).write_text(check.to_json(), encoding="utf-8")
    log.info("watermark check", extra=asdict(check))
    if not check.passed:
        raise WatermarkCheckFailed(
            f"the voice's marked output did not give the mark back (3 s excerpt detected: "
            f"{check.excerpt_3s_detected}, payload read: {check.payload_read}); see {out_dir / CHECK_FILE}. The "
            "output may be near-silent or clipped: listen to sample.wav and check the fine-tuning")
    return check
