"""`narrator watermark`: mark generated audio with a 32-bit payload, and look for the mark in any file.

The algorithm lives in models/watermark.py; this step reads and writes files. The key is a secret: it comes from
$NARRATOR_WATERMARK_KEY or the file named by $NARRATOR_WATERMARK_KEY_FILE (`models.watermark.load_key`), never
from params.yaml. The payload is written as exactly 8 hex digits (e.g. a voice or customer id).
"""

from __future__ import annotations

import re
from pathlib import Path

from models.watermark import PAYLOAD_BITS, WatermarkConfig, WatermarkError, detect, embed
from narrator.audiofile import read_audio, write_wav
from narrator.log import get_logger

log = get_logger("watermark")

_HEX_DIGITS = PAYLOAD_BITS // 4
_PAYLOAD_HEX = re.compile(rf"[0-9a-fA-F]{{{_HEX_DIGITS}}}")
_OUTPUT_SUFFIXES = (".wav", ".flac")


def parse_payload(payload_hex: str) -> int:
    """'00c0ffee' -> 0x00C0FFEE. Exactly 8 hex digits; anything else raises WatermarkError."""
    text = str(payload_hex).strip()
    if not _PAYLOAD_HEX.fullmatch(text):
        raise WatermarkError(f"payload {payload_hex!r} is not {_HEX_DIGITS} hex digits; give e.g. --payload 00c0ffee")
    return int(text, 16)


def format_payload(payload: int | None) -> str | None:
    """0xC0FFEE -> '00c0ffee'; None stays None."""
    return None if payload is None else f"{payload:0{_HEX_DIGITS}x}"


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


def check_voice(features_dir: str | Path, sovits_path: str, gpt_path: str, out_dir: str | Path, params,
                payload_hex: str = "4e415252", min_speech_s: float = 10.0) -> dict:
    """The pipeline's watermark check: the fine-tuned voice speaks the evaluation sentences (at least
    `min_speech_s`, enough to read the payload back), the result is marked with the production key as the service
    marks every output, and both a 3 s excerpt (presence) and the whole (payload) must be found.

    Writes `sample.wav` (the marked speech, at the voice's rate) and `watermark.json` into `out_dir`; returns the
    JSON. Raises WatermarkCheckFailed when the mark is not found, and the key errors of `load_key` when no key is
    configured (the check never runs with a throwaway key)."""
    import json

    import numpy as np

    from components.evaluate import EVAL_SENTENCES, pick_reference, synthesizer
    from components.features import training_entries
    from models.watermark import load_key

    key = load_key()
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    manifest = json.loads((features_dir / "manifest.json").read_text(encoding="utf-8"))
    entries = training_entries(manifest)
    reference_entry = pick_reference(entries)
    synth = synthesizer(sovits_path, gpt_path, params)
    ref = read_audio(reference_entry.wav_32k)
    reference = synth.reference(ref.mono(), ref.sample_rate_hz, reference_entry.text, reference_entry.language)
    language = reference_entry.language if reference_entry.language in EVAL_SENTENCES else "en"
    pieces, rate, spoken_s = [], 32000, 0.0
    for index in range(64):  # sentences, repeated if short, until min_speech_s
        text = EVAL_SENTENCES[language][index % len(EVAL_SENTENCES[language])]
        speech = synth.speak(text, reference, language, seed=index)
        rate = speech.sample_rate_hz
        pieces.append(speech.samples)
        spoken_s += len(speech.samples) / rate
        if spoken_s >= min_speech_s:
            break
    payload = parse_payload(payload_hex)
    marked = embed(np.concatenate(pieces), rate, payload, key)
    whole = detect(marked, rate, key)
    start = (len(marked) - 3 * rate) // 2
    excerpt = detect(marked[max(start, 0):max(start, 0) + 3 * rate], rate, key)
    result = {"payload": format_payload(payload), "speech_s": round(spoken_s, 2), "sample_rate_hz": rate,
              "excerpt_3s_detected": bool(excerpt.detected), "excerpt_3s_score": round(float(excerpt.score), 3),
              "detected": bool(whole.detected), "payload_read": format_payload(whole.payload),
              "score": round(float(whole.score), 3)}
    result["passed"] = bool(result["excerpt_3s_detected"] and whole.detected and whole.payload == payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_wav(out_dir / "sample.wav", marked, rate)
    (out_dir / "watermark.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    log.info("watermark check", extra=result)
    if not result["passed"]:
        raise WatermarkCheckFailed(
            f"the voice's marked output did not give the mark back (3 s excerpt detected: "
            f"{result['excerpt_3s_detected']}, payload read: {result['payload_read']}); see {out_dir / 'watermark.json'}"
            ". The output may be near-silent or clipped: listen to sample.wav and check the fine-tuning")
    return result
