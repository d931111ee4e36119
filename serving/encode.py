"""Audio out of the service: one registry of output formats, each with a whole-file and a streaming encoder.

    FORMATS["mp3"].content_type / .extension / .sample_rates_hz / .bitrates_kbps
    FORMATS["mp3"].encode(samples, 44100, bitrate_kbps=128)      -> bytes of a whole file (exact headers)
    enc = FORMATS["mp3"].stream(44100, bitrate_kbps=128)          -> StreamEncoder
    enc.write(samples) -> bytes final so far; enc.close() -> the rest; enc.abort() when the client went away

`audio_format(name)` looks a format up (ValueError naming the choices), `check(name, rate, bitrate)` says what is
wrong with a request (None when nothing). Input is always mono float `(n,)` in [-1, 1] (clipped).

How each format streams (a stream's header is sent before the audio's length is known; nothing in a stream claims
a length it does not have):

| name | whole file                                     | stream                                                     |
|------|------------------------------------------------|------------------------------------------------------------|
| wav  | RIFF/WAVE PCM 16-bit, exact sizes              | RIFF and data sizes 0xFFFFFFFF ("unknown"), same samples   |
| pcm  | raw s16le, mono (rate in the headers)          | the same bytes                                             |
| flac | FLAC 16-bit, exact STREAMINFO                  | total_samples 0 ("unknown", FLAC spec), same frames        |
| mp3  | CBR MPEG audio, Info/LAME tag (gapless)        | CBR MPEG frames, no Info/Xing tag (no frame count to lie)  |
| ogg  | Ogg Vorbis (libvorbis, quality 4)              | the same: granule positions, end-of-stream page on close   |
| opus | Ogg Opus (48 kHz inside; other rates resampled)| the same                                                   |
| aac  | AAC-LC in ADTS                                 | the same                                                   |

wav, pcm and flac go through libsndfile in process; mp3, ogg, opus and aac through an ffmpeg process (libmp3lame,
libvorbis, libopus, ffmpeg's aac; bit-exact, so the same audio gives the same bytes), a stream keeping one ffmpeg
process fed through its stdin while a thread reads its stdout. (libsndfile's Ogg Vorbis ends its streams with
granule positions ffmpeg decodes to 256 samples too few or 468 too many; libvorbis's are exact.)
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from narrator.audiofile import write_blocks

# the rates MPEG audio (1, 2 and 2.5) can carry, and the rates Opus encodes natively
MP3_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES_HZ = (8000, 12000, 16000, 24000, 48000)
AAC_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
MP3_BITRATES_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MP3_LOW_RATES_MAX_KBPS = 160  # MPEG-2/2.5 (rates under 32 kHz) go up to 160 kbps
OPUS_BITRATES_KBPS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
AAC_BITRATES_KBPS = (32, 48, 64, 96, 128, 160, 192, 256)
FFMPEG_TIMEOUT_S = 60.0
STREAM_SETTLE_S = 0.06  # after a write, wait for ffmpeg's first output, then until it has been quiet this long ...
STREAM_WAIT_S = 1.0  # ... (at most this long), so a sentence's bytes leave with that sentence, not the next
STREAM_EXPECT_S = 0.25  # wait for output only when at least this much audio went in since the last output


class EncodeError(RuntimeError):
    """An encoder failed (ffmpeg missing or exiting with an error)."""


class StreamEncoder:
    """Incremental encoder: `write(samples)` returns the bytes final so far, `close()` the rest; `abort()` drops
    the stream (the client went away). Subclasses implement `_write`, `_close` and may override `abort`."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.rate = sample_rate_hz
        self.closed = False

    def write(self, samples: np.ndarray) -> bytes:
        if self.closed:
            raise EncodeError("write to a closed stream encoder")
        return self._write(np.clip(np.asarray(samples, np.float32), -1.0, 1.0))

    def close(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        return self._close()

    def abort(self) -> None:
        self.closed = True

    def _write(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def _close(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True)
class AudioFormat:
    """One output format: what a response says it is and how to make it, whole or streamed."""

    name: str  # what a request asks for: "mp3"
    content_type: str  # the response's Content-Type
    extension: str  # the file name's extension, without the dot
    container: str  # in words, for docs and errors
    codec: str  # ffprobe's codec_name of the audio inside
    lossless: bool
    whole: Callable[[np.ndarray, int, int | None], bytes] = field(repr=False)
    streaming: Callable[[int, int | None], StreamEncoder] = field(repr=False)
    sample_rates_hz: tuple[int, ...] | None = None  # rates it takes; None: any
    bitrates_kbps: tuple[int, ...] = ()  # the bitrates a request may ask for; () none (lossless / quality-based)
    bitrate_kbps: int | None = None  # the default
    stream_note: str = ""  # how a stream differs from the whole file

    def encode(self, samples: np.ndarray, sample_rate_hz: int, bitrate_kbps: int | None = None) -> bytes:
        """The whole file."""
        return self.whole(np.clip(np.asarray(samples, np.float32), -1.0, 1.0), sample_rate_hz,
                          bitrate_kbps or self.bitrate_kbps)

    def stream(self, sample_rate_hz: int, bitrate_kbps: int | None = None) -> StreamEncoder:
        """A new incremental encoder."""
        return self.streaming(sample_rate_hz, bitrate_kbps or self.bitrate_kbps)

    def encoded_rate_hz(self, sample_rate_hz: int) -> int:
        """The rate inside the file for audio asked at `sample_rate_hz` (Opus takes 8/12/16/24/48 kHz only)."""
        if self.name == "opus" and sample_rate_hz not in OPUS_RATES_HZ:
            return 48000
        return sample_rate_hz

    def headers(self, sample_rate_hz: int) -> dict[str, str]:
        """What a response in this format says about its audio beyond the content type."""
        headers = {"X-Audio-Sample-Rate-Hz": str(self.encoded_rate_hz(sample_rate_hz)), "X-Audio-Channels": "1"}
        if self.name == "pcm":
            headers["X-Audio-Encoding"] = "s16le"
        return headers

    def problem(self, sample_rate_hz: int, bitrate_kbps: int | None = None) -> str | None:
        """What is wrong with asking this format for `sample_rate_hz` and `bitrate_kbps`; None when nothing."""
        if self.sample_rates_hz is not None and sample_rate_hz not in self.sample_rates_hz:
            return (f"{self.name} cannot carry {sample_rate_hz} Hz; choose one of "
                    f"{', '.join(map(str, self.sample_rates_hz))}")
        if bitrate_kbps is not None:
            if not self.bitrates_kbps:
                return f"{self.name} takes no bitrate"
            allowed = self.allowed_bitrates(sample_rate_hz)
            if bitrate_kbps not in allowed:
                return (f"{self.name} at {sample_rate_hz} Hz takes a bitrate of "
                        f"{', '.join(map(str, allowed))} kbps, not {bitrate_kbps}")
        return None

    def allowed_bitrates(self, sample_rate_hz: int) -> tuple[int, ...]:
        if self.name == "mp3" and sample_rate_hz < 32000:
            return tuple(b for b in self.bitrates_kbps if b <= MP3_LOW_RATES_MAX_KBPS)
        return self.bitrates_kbps


# -- PCM helpers -------------------------------------------------------------------------------------------------------


def _pcm16(samples: np.ndarray) -> bytes:
    """16-bit little-endian PCM by libsndfile's own conversion, so streamed samples equal the whole files'."""
    if not len(samples):
        return b""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), 8000, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buffer.getvalue()


def wav_stream_header(sample_rate_hz: int) -> bytes:
    """A 16-bit mono WAV header whose RIFF and data sizes say "unknown" (0xFFFFFFFF), as live streams do."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate_hz, sample_rate_hz * 2, 2, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


class _PcmStream(StreamEncoder):
    """Raw s16le, after an optional header (the WAV one)."""

    def __init__(self, sample_rate_hz: int, header: bytes = b"") -> None:
        super().__init__(sample_rate_hz)
        self._head = header

    def _take_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def _write(self, samples: np.ndarray) -> bytes:
        return self._take_head() + _pcm16(samples)

    def _close(self) -> bytes:
        return self._take_head()


# -- libsndfile (wav, flac) --------------------------------------------------------------------------------------------


def _sndfile_whole(container: str, subtype: str) -> Callable[[np.ndarray, int, int | None], bytes]:
    def whole(samples: np.ndarray, sample_rate_hz: int, _bitrate: int | None) -> bytes:
        buffer = io.BytesIO()
        with sf.SoundFile(buffer, "w", samplerate=sample_rate_hz, channels=1, format=container,
                          subtype=subtype) as out:
            write_blocks(out, samples, sample_rate_hz)
        return buffer.getvalue()

    return whole


class _Sink(io.RawIOBase):
    """A seekable in-memory file that remembers how much of it was already handed out: bytes rewritten after they
    were handed out (a header libsndfile completes on close) are not handed out again."""

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
        data = self.buffer.getbuffer()[self.sent:].tobytes()
        self.sent += len(data)
        return data


class _SndfileStream(StreamEncoder):
    def __init__(self, sample_rate_hz: int, container: str, subtype: str) -> None:
        super().__init__(sample_rate_hz)
        self._sink = _Sink()
        self._file = sf.SoundFile(self._sink, "w", samplerate=sample_rate_hz, channels=1, format=container,
                                  subtype=subtype)

    def _write(self, samples: np.ndarray) -> bytes:
        write_blocks(self._file, samples, self.rate)
        return self._sink.take_new()

    def _close(self) -> bytes:
        self._file.close()
        return self._sink.take_new()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._file.close()


# -- ffmpeg (mp3, ogg, opus, aac) --------------------------------------------------------------------------------------


def _ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found is None:
        raise EncodeError("ffmpeg is not installed; it encodes mp3, ogg, opus and aac (apt-get install ffmpeg)")
    return found


def _ffmpeg_input(sample_rate_hz: int) -> list[str]:
    return [_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-probesize", "32", "-analyzeduration", "0",
            "-f", "f32le", "-ar", str(sample_rate_hz), "-ac", "1", "-i", "pipe:0",
            "-fflags", "+bitexact", "-flags:a", "+bitexact"]  # no random Ogg serial, no version strings


def _mp3_args(sample_rate_hz: int, bitrate_kbps: int | None) -> list[str]:
    return ["-c:a", "libmp3lame", "-b:a", f"{bitrate_kbps}k", "-abr", "0", "-f", "mp3", "-id3v2_version", "0",
            "-write_id3v1", "0"]


def _opus_args(sample_rate_hz: int, bitrate_kbps: int | None) -> list[str]:
    rate = [] if sample_rate_hz in OPUS_RATES_HZ else ["-ar", "48000"]  # libopus takes only these rates
    return [*rate, "-c:a", "libopus", "-b:a", f"{bitrate_kbps}k", "-application", "audio", "-f", "ogg",
            "-page_duration", "200000"]


def _vorbis_args(sample_rate_hz: int, bitrate_kbps: int | None) -> list[str]:
    return ["-c:a", "libvorbis", "-q:a", "4", "-f", "ogg", "-page_duration", "200000"]


def _aac_args(sample_rate_hz: int, bitrate_kbps: int | None) -> list[str]:
    return ["-c:a", "aac", "-b:a", f"{bitrate_kbps}k", "-f", "adts"]


def _ffmpeg_whole(args: Callable[[int, int | None], list[str]], seekable_output: bool = False
                  ) -> Callable[[np.ndarray, int, int | None], bytes]:
    """Encode a whole file with ffmpeg; `seekable_output` writes it to a temporary file, so ffmpeg can complete
    its header (the MP3 Info/LAME tag: frame count, encoder delay and padding)."""

    def whole(samples: np.ndarray, sample_rate_hz: int, bitrate_kbps: int | None) -> bytes:
        data = np.asarray(samples, "<f4").tobytes()
        command = [*_ffmpeg_input(sample_rate_hz), *args(sample_rate_hz, bitrate_kbps)]
        if not seekable_output:
            done = subprocess.run([*command, "pipe:1"], input=data, capture_output=True, check=False,
                                  timeout=FFMPEG_TIMEOUT_S)
            _check(done.returncode, done.stderr)
            return done.stdout
        with tempfile.TemporaryDirectory(prefix="narrator-encode-") as folder:
            out = os.path.join(folder, "out")
            done = subprocess.run([*command, "-y", out], input=data, capture_output=True, check=False,
                                  timeout=FFMPEG_TIMEOUT_S)
            _check(done.returncode, done.stderr)
            with open(out, "rb") as file:
                return file.read()

    return whole


def _check(returncode: int, stderr: bytes) -> None:
    if returncode != 0:
        raise EncodeError(f"ffmpeg failed ({returncode}): {stderr.decode(errors='replace').strip()[-500:]}")


class _FfmpegStream(StreamEncoder):
    """One ffmpeg process per stream: samples go to its stdin, a thread collects its stdout."""

    def __init__(self, sample_rate_hz: int, args: list[str]) -> None:
        super().__init__(sample_rate_hz)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close/abort)
        self._process = subprocess.Popen([*_ffmpeg_input(sample_rate_hz), *args, "-flush_packets", "1", "pipe:1"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._out: list[bytes] = []
        self._pending = 0  # samples written since output last came
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="ffmpeg-stream-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self._process.stdout
        while True:
            data = os.read(stdout.fileno(), 65536)
            with self._arrived:
                if not data:
                    self._out.append(b"")  # end of output
                    self._arrived.notify_all()
                    return
                self._out.append(data)
                self._arrived.notify_all()

    def _take(self) -> bytes:
        with self._arrived:
            data, self._out = b"".join(self._out), []
        return data

    def _write(self, samples: np.ndarray) -> bytes:
        try:
            self._process.stdin.write(np.asarray(samples, "<f4").tobytes())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail()
        self._pending += len(samples)
        if self._pending >= STREAM_EXPECT_S * self.rate:  # let ffmpeg encode it before handing out what it made
            deadline = time.monotonic() + STREAM_WAIT_S
            with self._arrived:
                while not self._out and time.monotonic() < deadline:  # the first output
                    self._arrived.wait(deadline - time.monotonic())
                before = -1
                while len(self._out) != before and time.monotonic() < deadline:  # until it is quiet
                    before = len(self._out)
                    self._arrived.wait(min(STREAM_SETTLE_S, max(0.0, deadline - time.monotonic())))
        data = self._take()
        if data:
            self._pending = 0
        return data

    def _close(self) -> bytes:
        try:
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._process.wait(timeout=FFMPEG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=FFMPEG_TIMEOUT_S)
        self._process.stdout.close()
        if self._process.returncode != 0:
            self._fail()
        self._stderr.close()
        return self._take()

    def _fail(self) -> None:
        self._process.kill()
        self._process.wait()
        self._stderr.seek(0)
        message = self._stderr.read()
        self._stderr.close()
        self.closed = True
        _check(self._process.returncode or 1, message)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        self._stderr.close()


# -- the registry ------------------------------------------------------------------------------------------------------


def _register(*formats: AudioFormat) -> dict[str, AudioFormat]:
    return {f.name: f for f in formats}


FORMATS: dict[str, AudioFormat] = _register(
    AudioFormat("wav", "audio/wav", "wav", "RIFF/WAVE, PCM 16-bit mono", "pcm_s16le", True,
                _sndfile_whole("WAV", "PCM_16"), lambda rate, _b: _PcmStream(rate, wav_stream_header(rate)),
                stream_note="the RIFF and data sizes say 'unknown' (0xFFFFFFFF); the samples are the whole file's"),
    AudioFormat("pcm", "audio/pcm", "pcm", "raw PCM, signed 16-bit little-endian, mono, no header", "pcm_s16le",
                True, lambda samples, _rate, _b: _pcm16(samples), lambda rate, _b: _PcmStream(rate),
                stream_note="identical bytes; the rate is in X-Audio-Sample-Rate-Hz"),
    AudioFormat("flac", "audio/flac", "flac", "native FLAC, 16-bit mono", "flac", True,
                _sndfile_whole("FLAC", "PCM_16"), lambda rate, _b: _SndfileStream(rate, "FLAC", "PCM_16"),
                stream_note="STREAMINFO total_samples is 0 ('unknown', allowed by the FLAC format) and has no MD5; "
                            "ffmpeg and players decode every sample; libsndfile (soundfile) cannot read a FLAC of "
                            "unknown length to its end: stream wav or pcm for soundfile"),
    AudioFormat("mp3", "audio/mpeg", "mp3", "MPEG audio layer III, CBR", "mp3", False,
                _ffmpeg_whole(_mp3_args, seekable_output=True), lambda rate, b: _FfmpegStream(rate, _mp3_args(rate, b)),
                MP3_RATES_HZ, MP3_BITRATES_KBPS, 128,
                stream_note="plain CBR frames without the Info/LAME tag (its frame count is unknown while "
                            "streaming): decoders also play the encoder delay and the last frame's padding"),
    AudioFormat("ogg", "audio/ogg", "ogg", "Ogg Vorbis (VBR, quality 4)", "vorbis", False,
                _ffmpeg_whole(_vorbis_args), lambda rate, _b: _FfmpegStream(rate, _vorbis_args(rate, _b)),
                stream_note="the same Ogg pages: granule positions and the end-of-stream page make the length exact"),
    AudioFormat("opus", "audio/ogg; codecs=opus", "opus", "Ogg Opus (48 kHz inside; other rates resampled)", "opus",
                False, _ffmpeg_whole(_opus_args), lambda rate, b: _FfmpegStream(rate, _opus_args(rate, b)),
                None, OPUS_BITRATES_KBPS, 64,
                stream_note="the same Ogg pages: pre-skip, granule positions and the end-of-stream page make the "
                            "length exact"),
    AudioFormat("aac", "audio/aac", "aac", "AAC-LC in ADTS", "aac", False,
                _ffmpeg_whole(_aac_args), lambda rate, b: _FfmpegStream(rate, _aac_args(rate, b)),
                AAC_RATES_HZ, AAC_BITRATES_KBPS, 128,
                stream_note="the same ADTS frames (whole files too: ADTS carries no length, so decoders also "
                            "play the encoder's priming and the last frame's padding)"),
)


def audio_format(name: str) -> AudioFormat:
    """The format called `name`; ValueError naming the choices."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ValueError(f"unsupported format {name!r}; one of {', '.join(FORMATS)}") from None


def media_type(fmt: str) -> str:
    return audio_format(fmt).content_type


def encode(samples: np.ndarray, sample_rate_hz: int, fmt: str, bitrate_kbps: int | None = None) -> bytes:
    """The whole file in format `fmt`."""
    return audio_format(fmt).encode(samples, sample_rate_hz, bitrate_kbps)


def open_stream(fmt: str, sample_rate_hz: int, bitrate_kbps: int | None = None) -> StreamEncoder:
    """A new incremental encoder for format `fmt`."""
    return audio_format(fmt).stream(sample_rate_hz, bitrate_kbps)
