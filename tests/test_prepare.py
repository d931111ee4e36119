"""`narrator prepare`: trimmed, cut, loudness-normalised 32 kHz and 16 kHz segments with their transcripts."""

from __future__ import annotations

import json

import numpy as np
import pyloudnorm
import pytest

from components.prepare import PrepareError, plan_segments, prepare
from components.validate import validate
from narrator.audiofile import read_audio, write_wav
from narrator.config import PrepareConfig, load_params
from tests.intake import add_to_list, long_recording, make_narrator, speech

PARAMS = load_params(None)


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """A narrator with one 17 s recording that has pauses, validated."""
    root = tmp_path_factory.mktemp("prep")
    source = make_narrator(root / "narrator")
    mono, rate, text = long_recording()
    write_wav(source / "clips" / "long.wav", mono, rate)
    add_to_list(source, "clips/long.wav", text)
    report = validate(str(source), root / "validated", PARAMS)
    assert report.accepted
    return root


@pytest.fixture(scope="module")
def prepared(validated):
    return prepare(validated / "validated", validated / "prepared", PARAMS), validated / "prepared"


def test_writes_32k_and_16k_mono_audio_for_every_segment(prepared):
    report, _ = prepared
    for seg in report.segments:
        a32, a16 = read_audio(seg.wav_32k), read_audio(seg.wav_16k)
        assert (a32.sample_rate_hz, a32.channels, a16.sample_rate_hz, a16.channels) == (32000, 1, 16000, 1)
        assert abs(a32.duration_s - a16.duration_s) < 0.01


def test_segments_are_loudness_normalised(prepared):
    report, _ = prepared
    for seg in report.segments[:5]:
        audio = read_audio(seg.wav_32k)
        lufs = pyloudnorm.Meter(32000).integrated_loudness(audio.mono().astype(np.float64))
        assert abs(lufs - PARAMS.prepare.target_lufs) < 1.5
        assert np.abs(audio.samples).max() <= 10 ** (PARAMS.prepare.peak_limit_dbfs / 20) + 1e-3


def test_silence_is_trimmed_to_the_kept_margin(tmp_path):
    mono, rate = speech("Trim the silence around me.")
    padded = np.concatenate([np.zeros(rate * 2, np.float32), mono, np.zeros(rate * 2, np.float32)])
    segments, complete = plan_segments(padded, rate, PrepareConfig())
    assert complete and len(segments) == 1
    kept = segments[0].duration_s(rate)
    assert len(mono) / rate - 0.5 < kept < len(mono) / rate + 0.4


def test_long_recording_is_cut_at_pauses_within_limits():
    mono, rate, _ = long_recording(sentences=4)
    cfg = PrepareConfig(max_segment_s=8.0)
    segments, complete = plan_segments(mono, rate, cfg)
    assert complete and len(segments) >= 3
    assert all(s.duration_s(rate) <= 8.0 for s in segments)
    for seg in segments[1:]:  # every cut lands in a pause: the audio around it is silent
        around = mono[seg.start - int(0.05 * rate): seg.start + int(0.05 * rate)]
        assert np.abs(around).max() < 0.01


def test_long_clip_without_asr_is_rejected_with_how_to_fix(prepared):
    report, _ = prepared
    rejected = {r["path"].split("/")[-1]: r for r in report.rejected}
    assert rejected["long.wav"]["reason"] == "needs_transcription"
    assert "prepare.asr_model_dir" in rejected["long.wav"]["message"]


def test_long_clip_with_a_transcriber_is_cut_and_each_piece_transcribed(validated, tmp_path):
    heard = []

    def transcriber(wav_16k, language):
        heard.append(len(wav_16k) / 16000)
        return f"piece {len(heard)}"

    report = prepare(validated / "validated", tmp_path / "prepared", PARAMS, transcriber=transcriber)
    pieces = [s for s in report.segments if s.source.endswith("long.wav")]
    assert len(pieces) >= 2 and not report.rejected
    assert [p.text for p in pieces] == [f"piece {i + 1}" for i in range(len(pieces))]
    assert all(PARAMS.prepare.min_segment_s - 0.5 <= p.duration_s <= PARAMS.prepare.max_segment_s for p in pieces)


def test_long_clip_fitting_the_whole_clip_limit_is_kept_whole(validated, tmp_path):
    params = load_params(None, {"prepare": {"max_whole_clip_s": 20.0}})
    report = prepare(validated / "validated", tmp_path / "prepared", params)
    pieces = [s for s in report.segments if s.source.endswith("long.wav")]
    assert len(pieces) == 1 and pieces[0].text.startswith("The mountain path")


def test_prepared_list_is_gpt_sovits_format(prepared):
    report, out = prepared
    lines = (out / "prepared.list").read_text().splitlines()
    held_out = (out / "holdout.list").read_text().splitlines()
    assert len(lines) + len(held_out) == len(report.segments) == 20 and len(held_out) == 2
    path, speaker, lang, text = lines[0].split("|")
    assert path.endswith(".wav") and "wav32k" in path and speaker == "Alex Reader" and lang == "en" and text


def test_rerun_skips_finished_clips(validated, prepared):
    _, out = prepared
    first = {p: p.stat().st_mtime_ns for p in (out / "wav32k").glob("*.wav")}
    again = prepare(validated / "validated", out, PARAMS)
    assert {p: p.stat().st_mtime_ns for p in (out / "wav32k").glob("*.wav")} == first
    assert len(again.segments) == 20


def test_refused_dataset_cannot_be_prepared(tmp_path):
    source = make_narrator(tmp_path / "narrator", clips=3)
    validate(str(source), tmp_path / "validated", PARAMS)
    with pytest.raises(PrepareError, match="refused"):
        prepare(tmp_path / "validated", tmp_path / "prepared", PARAMS)


def test_missing_validation_says_to_validate_first(tmp_path):
    with pytest.raises(PrepareError, match="narrator validate"):
        prepare(tmp_path / "nothing", tmp_path / "prepared", PARAMS)


def test_prepare_report_is_written(prepared):
    _, out = prepared
    data = json.loads((out / "prepare.json").read_text())
    assert data["total_duration_s"] > 60 and len(data["segments"]) == 20


def test_configured_whisper_directory_transcribes_cut_segments(validated, tmp_path):
    from tests.tiny_whisper import build_tiny_whisper

    model_dir = build_tiny_whisper(tmp_path / "whisper")
    params = load_params(None, {"prepare": {"asr_model_dir": str(model_dir)}})
    report = prepare(validated / "validated", tmp_path / "prepared", params)
    pieces = [s for s in report.segments if s.source.endswith("long.wav")]
    dropped = [r for r in report.rejected if r["reason"] == "asr_empty"]
    assert len(pieces) + len(dropped) >= 2  # cut, and every piece went through the model
    assert all(isinstance(p.text, str) and p.text.strip() for p in pieces)


def test_missing_whisper_directory_names_the_setting(validated, tmp_path):
    params = load_params(None, {"prepare": {"asr_model_dir": str(tmp_path / "no-model")}})
    with pytest.raises(PrepareError, match="prepare.asr_model_dir"):
        prepare(validated / "validated", tmp_path / "prepared", params)


def test_a_share_of_segments_is_held_out_of_training_stably(prepared):
    from components.prepare import assign_holdout

    report, _ = prepared
    held = sorted(s.name for s in report.segments if s.split == "holdout")
    assert len(held) == 2
    shuffled = list(reversed(report.segments))
    assign_holdout(shuffled, 0.1)
    assert sorted(s.name for s in shuffled if s.split == "holdout") == held
