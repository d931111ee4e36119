"""What the compatible-API tests (tests/test_openai_api.py, tests/test_elevenlabs_api.py) read audio with: ffprobe
and ffmpeg for files and streams (which may carry "unknown length" headers), numpy for raw PCM, and the
watermark detector with the deployment's key."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

import numpy as np

# long enough for the payload (~10 s) with the tiny random voices at seed 7 (tests/test_serving.py)
LONG_TEXT = ("The lighthouse keeper climbed the spiral stairs before the storm arrived. Every morning the baker "
             "opened her shop at exactly six o'clock. A small boat drifted slowly across the quiet harbour.")
SHORT_TEXT = "Hello there. The old clock in the hallway chimed seven times."
SEED = 7
TOLERANCE_S = 0.08  # mp3/aac/opus encoders pad and delay by a frame or two; the same samples otherwise


@dataclass
class Decoded:
    samples: np.ndarray  # mono float32
    sample_rate_hz: int
    codec: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate_hz


def decode(data: bytes, fmt: str, pcm_rate_hz: int = 24000) -> Decoded:
    """`data` in `fmt` (a container ffmpeg recognises, or "pcm": raw 16-bit little-endian mono at `pcm_rate_hz`)."""
    if fmt == "pcm":
        assert len(data) % 2 == 0, "raw 16-bit PCM has an even number of bytes"
        return Decoded(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, pcm_rate_hz, "pcm_s16le")
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", "-i", "-"], input=data,
                           capture_output=True, check=True).stdout
    stream = json.loads(probe)["streams"][0]
    rate = int(stream["sample_rate"])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-f", "f32le", "-ac", "1", "-ar", str(rate), "-"],
                         input=data, capture_output=True, check=True).stdout
    return Decoded(np.frombuffer(raw, "<f4"), rate, stream["codec_name"])


def watermark(decoded: Decoded, key: str) -> tuple[bool, str]:
    """Whether the mark is in the audio, and its payload (hex)."""
    from models.watermark import detect
    from narrator.audiofile import resample
    from narrator.registry import format_payload

    samples = resample(decoded.samples, decoded.sample_rate_hz, 32000)
    found = detect(samples, 32000, key)
    return bool(found.detected), format_payload(found.payload)
