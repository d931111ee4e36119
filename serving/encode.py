"""Audio out of the service: wav, flac, mp3 or ogg, whole or as a stream of chunks.

`StreamEncoder.write(samples)` returns the bytes that are final so far, `close()` the rest, so a response can be
sent sentence by sentence. WAV streams carry a header with unknown length (0xFFFFFFFF, as live streams do); FLAC,
MP3 and OGG go through libsndfile into a sink that passes on each byte once: the header rewrite libsndfile does
when it closes (total length) is dropped in a stream, which players accept (length unknown). A whole response is
`narrator.audiofile.encode` (exact headers); both write in blocks (`narrator.audiofile.write_blocks`).
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from narrator.audiofile import ENCODINGS, write_blocks

FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}  # media types


def media_type(fmt: str) -> str:
    return FORMATS[fmt]


class _Sink(io.RawIOBase):
    """A seekable in-memory file that remembers how much of it was already handed out."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.sent = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.buffer.write(data)

    def read(self, size: int = -1) -> bytes:
        return self.buffer.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.buffer.seek(offset, whence)

    def tell(self) -> int:
        return self.buffer.tell()

    def take_new(self) -> bytes:
        data = self.buffer.getvalue()[self.sent:]
        self.sent += len(data)
        return data


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_stream_header(sample_rate_hz: int) -> bytes:
    """A 16-bit mono WAV header whose RIFF and data sizes say "unknown" (0xFFFFFFFF)."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate_hz, sample_rate_hz * 2, 2, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


class StreamEncoder:
    """Incremental encoder of mono float audio `(n,)` in [-1, 1] at `sample_rate_hz`."""

    def __init__(self, fmt: str, sample_rate_hz: int) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unsupported format {fmt!r}; one of {', '.join(FORMATS)}")
        self.fmt, self.rate = fmt, sample_rate_hz
        self._started = False
        self._sink: _Sink | None = None
        self._file: sf.SoundFile | None = None
        if fmt != "wav":
            container, subtype = ENCODINGS[fmt]
            self._sink = _Sink()
            self._file = sf.SoundFile(self._sink, "w", samplerate=sample_rate_hz, channels=1, format=container,
                                      subtype=subtype)

    def write(self, samples: np.ndarray) -> bytes:
        if self.fmt == "wav":
            head = b"" if self._started else wav_stream_header(self.rate)
            self._started = True
            return head + _pcm16(samples)
        write_blocks(self._file, samples, self.rate)
        return self._sink.take_new()

    def close(self) -> bytes:
        if self.fmt == "wav":
            return b"" if self._started else wav_stream_header(self.rate)
        self._file.close()
        return self._sink.take_new()

