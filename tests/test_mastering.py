"""Publishable chapter audio (narrator/mastering.py), held to the ACX audio submission requirements.

Every chapter is measured from the files written (WAV master and MP3), by `measure_acx` and again by ffmpeg's own
filters (astats, silencedetect) and ffprobe, never by the numbers the mastering reports about itself. The inputs
are espeak-ng narration made here and synthetic trouble: loud clipped noise, very quiet speech, a DC offset and
noisy pauses (what an undertrained voice produces).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf

from models.watermark import detect, embed
from narrator import mastering
from narrator.audiofile import read_audio
from narrator.config import MasteringConfig, load_params
from narrator.errors import ConfigError
from narrator.mastering import (
    FfmpegError,
    MasteringError,
    master_chapter,
    measure_acx,
    mp3_frame_bitrates_kbps,
    relimit,
    write_m4b,
    write_mp3,
    write_vtt,
    write_wav_master,
)
from tests.watermark_attacks import narration

SETTINGS = MasteringConfig()
ESPEAK_HZ = 22050
TTS_HZ = 32000  # what the GPT-SoVITS decoder speaks at
ACX_HZ = 44100
MP3_FRAME_BYTES = (626, 627)  # 144 * 192 kbps / 44.1 kHz, without and with the padding byte


def _speech(rate_hz: int = ESPEAK_HZ) -> np.ndarray:
    return narration(0, 2, rate_hz)


def _noisy_pauses() -> np.ndarray:
    """Two stretches of narration with a 1 s pause between them, all under white noise at -35 dBFS."""
    speech = _speech()
    audio = np.concatenate([speech, np.zeros(ESPEAK_HZ), speech])
    return audio + np.random.default_rng(1).standard_normal(audio.size) * 10 ** (-35 / 20)


def _inputs() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    return {
        "espeak narration": (_speech(), ESPEAK_HZ),
        "narration at the TTS rate": (_speech(TTS_HZ), TTS_HZ),
        "loud clipped noise": (np.clip(2.0 * rng.standard_normal(4 * ESPEAK_HZ), -1.0, 1.0), ESPEAK_HZ),
        "very quiet speech": (0.001 * _speech(), ESPEAK_HZ),
        "DC offset": (0.3 * _speech() + 0.4, ESPEAK_HZ),
        "noisy pauses": (_noisy_pauses(), ESPEAK_HZ),
    }


CASES = tuple(_inputs())
FILES = ("wav", "mp3")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """case -> (MasteredAudio, {"wav": path, "mp3": path}), each written once."""
    folder = tmp_path_factory.mktemp("published")
    out = {}
    for number, (case, (samples, rate_hz)) in enumerate(_inputs().items()):
        mastered = master_chapter(samples, rate_hz, SETTINGS)
        paths = {"wav": write_wav_master(mastered, folder / f"{number}.wav"),
                 "mp3": write_mp3(mastered, folder / f"{number}.mp3", title=case)}
        out[case] = (mastered, paths)
    return out


def ffmpeg_filter_log(path, audio_filter: str) -> str:
    result = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-i", str(path), "-af", audio_filter, "-f", "null",
                             "-"], capture_output=True, text=True, check=True)
    return result.stderr


def astats(path) -> dict[str, float]:
    """ffmpeg astats over the whole file: peak, RMS and the quietest 0.5 s window's RMS (RMS trough), dB."""
    log = ffmpeg_filter_log(path, "astats=length=0.5:measure_perchannel=none:"
                                  "measure_overall=Peak_level+RMS_level+RMS_trough")
    return {name: float(re.search(rf"{name} dB: (-?[\d.]+|-inf)", log).group(1))
            for name in ("Peak level", "RMS level", "RMS trough")}


def silences(path, threshold_db: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of every stretch ffmpeg's silencedetect finds below `threshold_db` (0.3 s or longer)."""
    log = ffmpeg_filter_log(path, f"silencedetect=noise={threshold_db}dB:d=0.3")
    starts = [float(v) for v in re.findall(r"silence_start: (-?[\d.]+)", log)]
    ends = [float(v) for v in re.findall(r"silence_end: (-?[\d.]+)", log)]
    return list(zip(starts, ends + [float("inf")] * (len(starts) - len(ends))))


def ffprobe(path, entries: str) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------- ACX limits, measured


@pytest.mark.parametrize("kind", FILES)
@pytest.mark.parametrize("case", CASES)
def test_rms_peak_and_noise_floor_meet_acx_measured_from_the_file(published, case, kind):
    found = measure_acx(published[case][1][kind])
    assert SETTINGS.min_rms_db <= found.rms_db <= SETTINGS.max_rms_db, found
    assert found.peak_db <= SETTINGS.max_peak_dbfs, found
    assert found.noise_floor_db <= SETTINGS.max_noise_floor_db, found
    assert found.problems() == []


@pytest.mark.parametrize("kind", FILES)
@pytest.mark.parametrize("case", CASES)
def test_ffmpeg_astats_agrees_the_file_meets_rms_peak_and_noise_floor(published, case, kind):
    stats = astats(published[case][1][kind])
    assert -23.0 <= stats["RMS level"] <= -18.0, stats
    assert stats["Peak level"] <= -3.0, stats
    assert stats["RMS trough"] <= -60.0, stats


@pytest.mark.parametrize("kind", FILES)
@pytest.mark.parametrize("case", CASES)
def test_room_tone_lasts_half_to_one_second_at_the_head_and_one_to_five_at_the_tail(published, case, kind):
    path = published[case][1][kind]
    found = measure_acx(path)
    assert 0.5 <= found.head_room_tone_s <= 1.0, found
    assert 1.0 <= found.tail_room_tone_s <= 5.0, found
    quiet = silences(path, SETTINGS.room_tone_threshold_db)  # ffmpeg's own reading of the same file
    duration_s = sf.info(str(path)).duration
    assert quiet[0][0] == 0.0 and 0.5 <= quiet[0][1] <= 1.0, quiet
    assert quiet[-1][1] >= duration_s - 0.05 and 1.0 <= duration_s - quiet[-1][0] <= 5.0, (quiet, duration_s)


@pytest.mark.parametrize("kind", FILES)
def test_room_tone_is_quiet_noise_never_digital_silence(published, kind):
    audio, rate_hz = sf.read(str(published["espeak narration"][1][kind]))
    head = audio[:int(0.5 * rate_hz)]
    assert np.count_nonzero(head) > 0.9 * head.size
    assert -90.0 < 20 * np.log10(np.sqrt(np.mean(head ** 2))) <= -60.0


@pytest.mark.parametrize("case", CASES)
def test_mp3_is_192_kbps_constant_bitrate_44_1_khz_mono(published, case):
    path = published[case][1]["mp3"]
    stream = ffprobe(path, "stream=codec_name,sample_rate,channels,bit_rate")["streams"][0]
    assert stream == {"codec_name": "mp3", "sample_rate": "44100", "channels": 1, "bit_rate": "192000"}
    packet_sizes = {int(p["size"]) for p in ffprobe(path, "packet=size")["packets"]}
    assert packet_sizes <= set(MP3_FRAME_BYTES)  # every frame 192 kbps: CBR
    assert set(mp3_frame_bitrates_kbps(path)) == {192}
    found = measure_acx(path)
    assert (found.bitrate_kbps, found.constant_bitrate, found.sample_rate_hz) == (192, True, 44100)


def test_an_mp3_whose_coding_raises_a_peak_over_the_limit_is_encoded_again_under_it(tmp_path):
    t = np.arange(3 * ACX_HZ) / ACX_HZ
    square = np.sign(np.sin(2 * np.pi * 997 * t)).astype(np.float32) * np.float32(10 ** (-3.1 / 20))
    chapter = mastering.MasteredAudio(square, ACX_HZ, 0.0, 0.0, 0.0, -3.1, -3.1, -3.1)  # MP3 raises it ~1 dB
    path = write_mp3(chapter, tmp_path / "square.mp3", settings=SETTINGS)
    assert astats(path)["Peak level"] <= SETTINGS.max_peak_dbfs


def test_mp3_carries_the_chapter_title_as_an_id3_tag(published):
    tags = ffprobe(published["espeak narration"][1]["mp3"], "format_tags")["format"]["tags"]
    assert tags == {"title": "espeak narration"}


def test_noisy_pauses_between_sentences_are_silenced_to_the_room_tone(published):
    mastered, paths = published["noisy pauses"]
    audio, rate_hz = sf.read(str(paths["wav"]))
    body = audio[round(mastered.head_room_tone_s * rate_hz):-round(mastered.tail_room_tone_s * rate_hz)]
    inner = measure_acx(body, rate_hz)  # the quietest 0.5 s between the words, room tone at the edges left out
    assert inner.noise_floor_db <= SETTINGS.max_noise_floor_db


def test_the_master_is_44_1_khz_mono_16_bit_pcm(published):
    info = sf.info(str(published["narration at the TTS rate"][1]["wav"]))
    assert (info.samplerate, info.channels, info.subtype) == (ACX_HZ, 1, "PCM_16")


def test_a_rerun_writes_byte_identical_wav_and_mp3(published, tmp_path):
    samples, rate_hz = _inputs()["noisy pauses"]
    again = master_chapter(samples, rate_hz, SETTINGS)
    paths = published["noisy pauses"][1]
    assert sha256(write_wav_master(again, tmp_path / "a.wav")) == sha256(paths["wav"])
    assert sha256(write_mp3(again, tmp_path / "a.mp3", title="noisy pauses")) == sha256(paths["mp3"])


def test_input_time_plus_head_s_points_at_the_same_sound_in_the_master():
    rate_hz = 16000
    audio = np.zeros(4 * rate_hz)
    for onset_s in (1.2, 2.5):  # two 0.3 s tones after 1.2 s of silence: the silence is trimmed
        start = int(onset_s * rate_hz)
        audio[start:start + int(0.3 * rate_hz)] = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(0.3 * rate_hz)) / rate_hz)
    mastered = master_chapter(audio, rate_hz, SETTINGS)
    loud = np.abs(mastered.samples) > 0.05
    for onset_s in (1.2, 2.5):
        expected = onset_s + mastered.head_s
        assert mastered.output_time_s(onset_s) == pytest.approx(expected)
        first = np.flatnonzero(loud[int((expected - 0.1) * ACX_HZ):])[0] / ACX_HZ + expected - 0.1
        assert abs(first - expected) < 0.02, (onset_s, expected, first)


def test_a_stereo_chapter_is_mastered_to_mono_within_the_limits():
    speech = _speech()
    mastered = master_chapter(np.stack([speech, 0.5 * speech]), ESPEAK_HZ, SETTINGS)
    assert mastered.samples.ndim == 1 and mastered.sample_rate_hz == ACX_HZ
    assert measure_acx(mastered.samples, ACX_HZ).problems() == []


def test_a_chapter_with_non_finite_samples_is_refused():
    speech = _speech()
    speech[100] = np.nan
    with pytest.raises(MasteringError, match="NaN or infinite"):
        master_chapter(speech, ESPEAK_HZ, SETTINGS)


def test_a_silent_chapter_is_refused():
    with pytest.raises(MasteringError, match="silent"):
        master_chapter(np.zeros(ESPEAK_HZ), ESPEAK_HZ, SETTINGS)


def test_measure_acx_names_the_limits_an_unmastered_file_fails(tmp_path):
    raw = np.concatenate([np.zeros(ESPEAK_HZ * 6 // 10), _speech() * (0.99 / 0.45)])  # hot, digital silence
    path = tmp_path / "raw.wav"
    sf.write(str(path), raw, ESPEAK_HZ, subtype="PCM_16")
    problems = " | ".join(measure_acx(path).problems())
    for failure in ("peak: -0.", "tail room tone: 0.", "room tone: digital silence", "sample rate: 22050 Hz"):
        assert failure in problems, problems


def test_mastering_settings_outside_the_acx_limits_are_refused():
    with pytest.raises(ConfigError, match="target_rms_db -17 lies outside its limits -23..-18"):
        load_params(None, {"mastering": {"target_rms_db": -17.0}})
    with pytest.raises(ConfigError, match="peak_ceiling_dbfs -2 is above max_peak_dbfs -3"):
        load_params(None, {"mastering": {"peak_ceiling_dbfs": -2.0}})


# ---------------------------------------------------------------------------------------------- the book


@pytest.fixture(scope="module")
def book(published, tmp_path_factory):
    chapters = [("Chapter 1: Beginnings", published["espeak narration"][1]["wav"]),
                ("Chapter 2 = noise; #2", published["loud clipped noise"][1]["wav"]),
                ("Chapter 3", published["noisy pauses"][1]["wav"])]
    path = write_m4b(chapters, tmp_path_factory.mktemp("book") / "book.m4b", "A Test Book", author="A. Narrator")
    return chapters, path


def test_m4b_has_one_chapter_mark_per_master_with_its_title_and_start(book):
    chapters, path = book
    marks = ffprobe(path, "chapter=start_time,end_time:chapter_tags=title")["chapters"]
    assert [mark["tags"]["title"] for mark in marks] == [title for title, _ in chapters]
    start_s = 0.0
    for mark, (_, wav) in zip(marks, chapters):
        duration_s = sf.info(str(wav)).duration
        assert float(mark["start_time"]) == pytest.approx(start_s, abs=0.002)
        assert float(mark["end_time"]) == pytest.approx(start_s + duration_s, abs=0.002)
        start_s += duration_s


def test_m4b_is_an_aac_audiobook_with_its_title_and_author(book):
    _, path = book
    found = ffprobe(path, "stream=codec_name,sample_rate:format_tags=title,artist,genre,major_brand")
    assert {"codec_name": "aac", "sample_rate": "44100"} in [
        {key: stream.get(key) for key in ("codec_name", "sample_rate")} for stream in found["streams"]]
    assert found["format"]["tags"] == {"major_brand": "M4B ", "title": "A Test Book", "artist": "A. Narrator",
                                       "genre": "Audiobook"}


def test_m4b_rerun_is_byte_identical(book, tmp_path):
    chapters, path = book
    again = write_m4b(chapters, tmp_path / "again.m4b", "A Test Book", author="A. Narrator")
    assert sha256(again) == sha256(path)


def test_a_failed_ffmpeg_raises_its_stderr_and_leaves_no_file(published, tmp_path, monkeypatch):
    monkeypatch.setattr(mastering, "MP3_ENCODER", "no_such_encoder")
    with pytest.raises(FfmpegError, match="(?s)could not write the MP3.*no_such_encoder"):
        write_mp3(published["espeak narration"][0], tmp_path / "chapter.mp3")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- captions

VTT_CUE = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})$")


def _seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_vtt_is_well_formed_with_ordered_cue_timings(tmp_path):
    cues = [(0.75, 2.5, "It was a bright cold day."), (2.5, 4.125, "The clocks struck thirteen."),
            (3725.0004, 3727.9996, "An hour later.")]
    text = write_vtt(cues, tmp_path / "chapter.vtt").read_text(encoding="utf-8")
    blocks = text.strip().split("\n\n")
    assert blocks[0] == "WEBVTT"
    timings = []
    for number, block in enumerate(blocks[1:], 1):
        identifier, timing, caption = block.split("\n")
        assert identifier == str(number)
        match = VTT_CUE.match(timing)
        assert match, timing
        timings.append((_seconds(*match.groups()[:4]), _seconds(*match.groups()[4:])))
        assert caption == cues[number - 1][2]
    assert timings == [(0.75, 2.5), (2.5, 4.125), (3725.0, 3728.0)]
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(timings)) and all(s < e for s, e in timings)


def test_vtt_escapes_arrows_markup_and_ampersands_in_the_text(tmp_path):
    text = write_vtt([(0.0, 1.0, "A --> B <i>&\nsecond line")], tmp_path / "c.vtt").read_text(encoding="utf-8")
    assert text.split("\n")[4] == "A --&gt; B &lt;i&gt;&amp; second line"


def test_vtt_refuses_cues_out_of_order(tmp_path):
    with pytest.raises(MasteringError, match="cue 2"):
        write_vtt([(1.0, 2.0, "one"), (0.5, 1.5, "two")], tmp_path / "c.vtt")
    assert not (tmp_path / "c.vtt").exists()


# --------------------------------------------------------------------------------------------- watermark


def test_watermark_survives_mastering_then_marking_then_relimiting_then_mp3(tmp_path):
    key, payload = "mastering test key", 0xC0FFEE42
    mastered = master_chapter(narration(0, 3, TTS_HZ), TTS_HZ, SETTINGS)  # the order of mastering.WATERMARK_ORDER
    marked = relimit(mastered, embed(mastered.samples, mastered.sample_rate_hz, payload, key), SETTINGS)
    path = write_mp3(marked, tmp_path / "chapter.mp3")
    assert measure_acx(path).problems() == []
    decoded = read_audio(path)
    found = detect(decoded.mono(), decoded.sample_rate_hz, key)
    assert found.detected and found.payload == payload, found


def test_relimit_brings_the_peaks_of_a_marked_master_back_under_the_ceiling(published):
    mastered = published["espeak narration"][0]
    louder = mastered.samples * np.float32(10 ** (0.3 / 20))  # what the mark can do to a peak, and more
    again = relimit(mastered, louder, SETTINGS)
    assert again.peak_db <= SETTINGS.peak_ceiling_dbfs + 1e-3
    assert abs(again.rms_db - mastered.rms_db) < 0.5
