"""Decode service output the way clients do: soundfile (libsndfile) and ffprobe (libavformat/libavcodec).

`soundfile_decode(data, fmt, rate)` -> (samples, sample rate), or None where libsndfile cannot read the format at
all (aac); `ffprobe_decode(data, fmt, rate)` -> Probe: codec, the decoded sample rate, the decoded samples (the sum
of every decoded frame's nb_samples) and the duration the container's header declares (None when it declares none).
Both read a file, as a player would (ffprobe's header duration needs a seekable input).
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

SOUNDFILE_CANNOT_READ = {"aac": "libsndfile has no AAC decoder"}
ENTRIES = "stream=codec_name,sample_rate,bit_rate:frame=nb_samples:format=duration,bit_rate"


@dataclass
class Probe:
    codec: str
    sample_rate_hz: int
    samples: int  # decoded
    header_duration_s: float | None  # what the container declares (ffprobe's format duration)
    bit_rate: int | None

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate_hz


def soundfile_decode(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int] | None:
    if fmt in SOUNDFILE_CANNOT_READ:
        return None
    if fmt == "pcm":
        return sf.read(io.BytesIO(data), format="RAW", subtype="PCM_16", samplerate=rate, channels=1,
                       endian="LITTLE", dtype="float32")
    with tempfile.NamedTemporaryFile(suffix=f".{fmt}") as tmp:
        tmp.write(data)
        tmp.flush()
        return sf.read(tmp.name, dtype="float32")


def ffprobe_decode(data: bytes, fmt: str, rate: int) -> Probe:
    raw = ["-f", "s16le", "-ar", str(rate), "-ac", "1"] if fmt == "pcm" else []
    with tempfile.NamedTemporaryFile(suffix=f".{fmt}") as tmp:
        tmp.write(data)
        tmp.flush()
        done = subprocess.run(["ffprobe", "-v", "error", *raw, "-i", tmp.name, "-select_streams", "a:0",
                               "-show_entries", ENTRIES, "-of", "json"], capture_output=True, check=True)
    found = json.loads(done.stdout)
    stream, form = found["streams"][0], found.get("format", {})
    bit_rate = stream.get("bit_rate") or form.get("bit_rate")
    return Probe(stream["codec_name"], int(stream["sample_rate"]),
                 sum(int(frame["nb_samples"]) for frame in found.get("frames", [])),
                 float(form["duration"]) if form.get("duration") not in (None, "N/A") else None,
                 int(bit_rate) if bit_rate not in (None, "N/A") else None)


def mp3_frame_bitrates(data: bytes) -> list[int]:
    """The bitrate (kbps) in the header of every MPEG audio frame of `data` (walking frame by frame)."""
    v1 = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
    v2 = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
    rates = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
    found, pos = [], 0
    if data[:3] == b"ID3":
        size = data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]
        pos = 10 + size
    while pos + 4 <= len(data):
        head = int.from_bytes(data[pos:pos + 4], "big")
        if head >> 21 != 0x7FF:
            raise AssertionError(f"no MPEG frame at byte {pos}")
        version, index = head >> 19 & 3, head >> 12 & 15
        rate = rates[version][head >> 10 & 3]
        padding = head >> 9 & 1
        kbps = (v1 if version == 3 else v2)[index]
        size = (144 if version == 3 else 72) * kbps * 1000 // rate + padding
        found.append(kbps)
        pos += size
    return found

