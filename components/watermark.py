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
