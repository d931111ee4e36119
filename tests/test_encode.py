"""The output formats of the service (serving/encode.py), whole and streamed, on synthetic audio.

A 440 Hz sine is encoded whole and, fed in odd-sized chunks, as a stream; both are decoded with soundfile and
ffprobe. What each decoder must give back, per codec (samples at the encoded rate, N the input's):

| format      | soundfile                    | ffprobe (decoded frames)        | why                               |
|-------------|------------------------------|---------------------------------|-----------------------------------|
| wav, pcm    | N, the same samples          | N                               | PCM                               |
| flac whole  | N, the same samples          | N                               | exact STREAMINFO                  |
| flac stream | cannot read (unknown length) | N, the same samples             | STREAMINFO total_samples 0        |
| ogg, opus   | N                            | N                               | granules, pre-skip, EOS page      |
| mp3 whole   | N                            | N to N + padding (< 1 frame)    | Info/LAME tag (ffmpeg 5.1 may not |
|             |                              |                                 | trim the end padding)             |
| mp3 stream  | N + 1105 + padding           | N + 1105 + padding              | no tag: the encoder's (576) and   |
|             |                              |                                 | decoder's (529) delay are played  |
| aac (ADTS)  | cannot read (no AAC)         | N + 1024 + padding (< 1 frame)  | ADTS has no priming/length info   |

(opus: in seconds; it decodes at 48 kHz.) MP3 frames hold 1152 samples at 32 kHz and up, 576 below.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from serving.encode import FORMATS, audio_format, open_stream
from tests.decoders import (SOUNDFILE_CANNOT_READ, ffprobe_decode, mp3_frame_bitrates,
                            soundfile_decode)

CHUNKS = (1, 7, 577, 5003, 1151, 2, 12345)  # odd sizes, cycled
MP3_DELAY = 576 + 529  # LAME's encoder delay + the decoder's


def sine(seconds: float, rate: int) -> np.ndarray:
    n = int(seconds * rate) + 13
    return (0.4 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)


def streamed(fmt: str, samples: np.ndarray, rate: int, bitrate: int | None = None) -> bytes:
    encoder, out, pos, i = open_stream(fmt, rate, bitrate), [], 0, 0
    while pos < len(samples):
        size = CHUNKS[i % len(CHUNKS)]
        out.append(encoder.write(samples[pos:pos + size]))
        pos, i = pos + size, i + 1
    out.append(encoder.close())
    return b"".join(out)


def frame(rate: int, fmt: str) -> int:
    return {"mp3": 1152 if rate >= 32000 else 576, "aac": 1024}[fmt]


def expected_extra(fmt: str, kind: str, decoder: str, rate: int) -> tuple[int, int]:
    """The range of decoded - input samples a decoder gives (see the module's table)."""
    if fmt == "mp3":
        if kind == "whole":
            return (0, 0) if decoder == "soundfile" else (0, frame(rate, fmt) - 1)
        return MP3_DELAY, MP3_DELAY + frame(rate, fmt) - 1
    if fmt == "aac":
        return 1024, 1024 + 1023
    return 0, 0


CASES = [(fmt, 24000) for fmt in FORMATS] + [("mp3", 44100), ("opus", 22050), ("opus", 48000), ("aac", 44100),
                                               ("flac", 44100)]


@pytest.mark.parametrize("fmt,rate", CASES)
def test_whole_and_streamed_decode_to_the_input_duration(fmt, rate):
    x = sine(2.3, rate)
    n = len(x)
    spec = FORMATS[fmt]
    whole, stream = spec.encode(x, rate), streamed(fmt, x, rate)
    for kind, data in (("whole", whole), ("stream", stream)):
        probe = ffprobe_decode(data, fmt, rate)
        assert probe.codec == spec.codec, (kind, probe)
        decoded = round(probe.seconds * rate)  # opus decodes at 48 kHz: compare in seconds
        low, high = expected_extra(fmt, kind, "ffprobe", rate)
        assert n + low - 1 <= decoded <= n + high + 1, (kind, "ffprobe", decoded - n)
        if probe.header_duration_s is not None and fmt != "aac":  # ADTS declares nothing; ffprobe guesses
            # ffmpeg 5.1 states an mp3's duration as its frames x frame size (the delay and padding included)
            # and an Ogg Opus file's as its last granule position less the pre-skip (6.5 ms at 48 kHz)
            slack = (MP3_DELAY + frame(rate, fmt)) / rate if fmt == "mp3" else 0.007 if fmt == "opus" else 0.002
            assert abs(probe.header_duration_s - probe.seconds) <= slack, (kind, probe)
        if fmt in SOUNDFILE_CANNOT_READ or (fmt == "flac" and kind == "stream"):
            continue
        audio, sf_rate = soundfile_decode(data, fmt, rate)
        low, high = expected_extra(fmt, kind, "soundfile", rate)
        decoded = round(len(audio) * rate / sf_rate)
        assert n + low - 1 <= decoded <= n + high + 1, (kind, "soundfile", decoded - n)


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac"])
def test_lossless_streams_hold_the_whole_files_samples(fmt):
    """No seams at chunk boundaries: the stream decodes to exactly the samples of the whole file."""
    rate = 24000
    x = sine(1.7, rate)
    whole, stream = FORMATS[fmt].encode(x, rate), streamed(fmt, x, rate)
    reference, _ = soundfile_decode(whole, fmt, rate)
    assert np.abs(reference - x).max() < 1 / 32767  # 16-bit rounding only
    decoded = subprocess.run(["ffmpeg", "-v", "error", *(["-f", "s16le", "-ar", str(rate), "-ac", "1"]
                                                          if fmt == "pcm" else []),
                              "-i", "pipe:0", "-f", "s16le", "pipe:1"], input=stream, capture_output=True,
                             check=True).stdout
    assert np.array_equal(np.frombuffer(decoded, "<i2"), np.round(reference * 32768).astype("<i2"))
    if fmt != "flac":
        streamed_audio, _ = soundfile_decode(stream, fmt, rate)
        assert np.array_equal(streamed_audio, reference)


def test_a_streamed_flac_says_its_length_is_unknown_and_soundfile_cannot_read_it():
    """The documented limit: a FLAC stream's STREAMINFO holds total_samples 0 (unknown), which the FLAC format
    allows; libsndfile reads frames but fails at the end of a FLAC of unknown length."""
    stream = streamed("flac", sine(0.5, 24000), 24000)
    assert stream[:4] == b"fLaC"
    streaminfo = stream[8:42]
    assert int.from_bytes(streaminfo[13:18], "big") & (2 ** 36 - 1) == 0
    with pytest.raises(Exception):  # noqa: B017 (libsndfile's messages vary)
        soundfile_decode(stream, "flac", 24000)


@pytest.mark.parametrize("rate,bitrate", [(24000, 64), (44100, 128), (48000, 192)])
def test_mp3_is_cbr_at_the_asked_bitrate_and_a_stream_has_no_info_tag(rate, bitrate):
    x = sine(1.5, rate)
    whole, stream = FORMATS["mp3"].encode(x, rate, bitrate), streamed("mp3", x, rate, bitrate)
    assert set(mp3_frame_bitrates(whole)) == {bitrate}
    assert set(mp3_frame_bitrates(stream)) == {bitrate}
    assert b"Info" in whole[:200] or b"Xing" in whole[:200]  # the whole file's gapless tag (frames, delay, padding)
    assert b"Info" not in stream[:200] and b"Xing" not in stream[:200]  # a stream cannot know its frame count
    assert not stream.startswith(b"ID3")


def test_the_same_input_gives_the_same_bytes():
    """Same seed, same audio, same bytes: the ffmpeg encoders run bit-exact (no random Ogg serial, no version)."""
    x = sine(0.8, 24000)
    for fmt in FORMATS:
        assert FORMATS[fmt].encode(x, 24000) == FORMATS[fmt].encode(x, 24000), fmt
    for fmt in ("ogg", "opus", "aac", "pcm"):  # these stream exactly their whole file
        assert streamed(fmt, x, 24000) == FORMATS[fmt].encode(x, 24000), fmt


def test_registry_describes_every_format():
    for name, spec in FORMATS.items():
        assert spec.name == name and spec.content_type.startswith("audio/") and spec.extension
        assert spec.stream_note and spec.container
        assert (spec.bitrate_kbps is None) == (not spec.bitrates_kbps)
        assert spec.bitrate_kbps is None or spec.bitrate_kbps in spec.bitrates_kbps
    assert audio_format("MP3") is FORMATS["mp3"]
    with pytest.raises(ValueError, match="one of wav, pcm"):
        audio_format("aiff")
    assert FORMATS["opus"].problem(44100) is None  # resampled to 48 kHz, and the headers say so
    assert FORMATS["opus"].headers(44100)["X-Audio-Sample-Rate-Hz"] == "48000"
    assert FORMATS["opus"].headers(24000)["X-Audio-Sample-Rate-Hz"] == "24000"
    assert "cannot carry" in FORMATS["mp3"].problem(96000)
    assert "takes no bitrate" in FORMATS["flac"].problem(24000, 128)
    assert "not 320" in FORMATS["mp3"].problem(24000, 320)  # MPEG-2 tops out at 160 kbps
    assert FORMATS["mp3"].problem(44100, 320) is None
    assert FORMATS["pcm"].headers(24000) == {"X-Audio-Sample-Rate-Hz": "24000", "X-Audio-Channels": "1",
                                             "X-Audio-Encoding": "s16le"}


def _children() -> set[int]:
    import os

    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found.add(int(entry))
    return found


def test_an_aborted_stream_ends_its_encoder_process():
    before = _children()
    encoder = open_stream("mp3", 24000)
    assert encoder.write(sine(0.5, 24000)) is not None
    assert _children() - before, "the mp3 stream runs an ffmpeg process"
    encoder.abort()
    deadline = time.monotonic() + 5
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _children() - before
    encoder.abort()  # twice is fine
    assert encoder.close() == b""


def test_a_stream_hands_out_audio_before_it_is_closed():
    """Each write returns what the encoder finished, so a sentence leaves with that sentence."""
    for fmt in FORMATS:
        encoder = open_stream(fmt, 24000)
        first = encoder.write(sine(1.0, 24000))
        second = encoder.write(sine(1.0, 24000))
        rest = encoder.close()
        assert first or second, f"{fmt}: nothing before close"
        assert len(first) + len(second) > len(rest), fmt


def test_the_api_offers_exactly_the_registry():
    from serving.api import SpeechRequest

    schema = SpeechRequest.model_json_schema()["properties"]["format"]
    assert schema["enum"] == list(FORMATS)
    with pytest.raises(ValueError, match="format"):
        SpeechRequest(voice="alice", text="Hi.", format="aiff")
