"""`narrator validate`: each crafted bad clip gets exactly its reason codes, and nothing in the source changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.validate import REASONS, validate
from narrator.audiofile import write_wav
from narrator.config import load_params
from tests.intake import (INTRUDER_VOICE, add_bad_files, add_to_list, long_recording, make_narrator,
                          rewrite_consent_voice, to_format, tree_digest)

PARAMS = load_params(None)


@pytest.fixture(scope="session")
def narrator_template(tmp_path_factory) -> Path:
    """A valid narrator folder, generated once; tests copy it before changing anything."""
    return make_narrator(tmp_path_factory.mktemp("template") / "narrator")


@pytest.fixture
def narrator(narrator_template, tmp_path) -> Path:
    folder = tmp_path / "narrator"
    shutil.copytree(narrator_template, folder)
    return folder


@pytest.fixture(scope="module")
def mixed(narrator_template, tmp_path_factory):
    """The narrator plus one crafted file per reason code, validated once."""
    root = tmp_path_factory.mktemp("mixed")
    source = root / "narrator"
    shutil.copytree(narrator_template, source)
    expected = add_bad_files(source)
    mono, rate, text = long_recording()
    write_wav(source / "suspect" / "long_with_pauses.wav", mono, rate)
    add_to_list(source, "suspect/long_with_pauses.wav", text)
    before = tree_digest(source)
    report = validate(str(source), root / "out", PARAMS)
    return {"source": source, "out": root / "out", "report": report, "expected": expected, "before": before,
            "clips": {c.rel: c for c in report.clips}}


BAD_FILES = ["truncated_header.wav", "text_renamed.wav", "empty.wav", "phone_8khz.wav", "hard_clipped.wav",
             "pure_noise.wav", "silence.wav", "blip_0.3s.wav", "copy_of_003.wav", "untranscribed.wav",
             "japanese.wav", "second_voice.wav", "very_quiet.wav"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_crafted_clip_gets_exactly_its_reason_codes(mixed, name):
    clip = mixed["clips"][f"suspect/{name}"]
    assert set(clip.reasons) == mixed["expected"][f"suspect/{name}"]


def test_every_reason_code_is_exercised_and_documented(mixed):
    from tests.test_hostile_datasets import HOSTILE_REASONS  # the codes only hostile datasets give

    seen = {code for codes in mixed["expected"].values() for code in codes} | {"too_long"} | HOSTILE_REASONS
    assert seen == set(REASONS)


def test_good_narrator_clips_are_all_accepted(mixed):
    narrator_clips = [c for rel, c in mixed["clips"].items() if rel.startswith("clips/")]
    assert len(narrator_clips) == 20
    assert all(c.status == "accepted" and not c.reasons for c in narrator_clips)


def test_loudness_alone_is_a_warning_not_a_rejection(mixed):
    assert mixed["clips"]["suspect/very_quiet.wav"].status == "warning"


def test_long_recording_with_pauses_is_routed_to_slicing(mixed):
    clip = mixed["clips"]["suspect/long_with_pauses.wav"]
    assert clip.reasons == ["too_long"]
    assert clip.status == "warning"


def test_duplicate_names_the_clip_it_copies(mixed):
    assert mixed["clips"]["suspect/copy_of_003.wav"].duplicate_of.endswith("clips/003.wav")


def test_second_voice_is_far_from_the_narrator(mixed):
    assert mixed["clips"]["suspect/second_voice.wav"].speaker_similarity < 0.8
    assert min(c.speaker_similarity for r, c in mixed["clips"].items() if r.startswith("clips/")) > 0.85


def test_source_folder_is_not_modified(mixed):
    assert tree_digest(mixed["source"]) == mixed["before"]


def test_rejected_clips_are_quarantined_with_their_reasons(mixed):
    quarantine = mixed["out"] / "quarantine"
    rejected = [c for c in mixed["report"].clips if c.status == "rejected"]
    assert len(rejected) == 12
    for clip in rejected:
        copy = quarantine / clip.rel
        assert copy.read_bytes() == (mixed["source"] / clip.rel).read_bytes()
        note = (quarantine / (clip.rel + ".reasons.txt")).read_text()
        assert all(code in note for code in clip.reasons)


def test_accepted_list_holds_accepted_and_warning_clips_in_gpt_sovits_format(mixed):
    lines = (mixed["out"] / "accepted.list").read_text().splitlines()
    usable = [c for c in mixed["report"].clips if c.status != "rejected"]
    assert len(lines) == len(usable) == 22
    path, speaker, lang, text = lines[0].split("|")
    assert Path(path).exists() and speaker == "Alex Reader" and lang == "en" and text


def test_report_json_has_measurements_per_clip_and_totals(mixed):
    data = json.loads((mixed["out"] / "report.json").read_text())
    clip = next(c for c in data["clips"] if c["rel"] == "clips/000.wav")
    for key in ("duration_s", "sample_rate_hz", "channels", "peak_dbfs", "lufs", "snr_db", "speech_ratio",
                "clipped_fraction"):
        assert clip[key] is not None, key
    assert clip["sample_rate_hz"] == 22050 and clip["channels"] == 1
    assert data["verdict"] == "accepted"
    assert data["totals"]["accepted_speech_s"] > 60
    assert data["consent_hash"].startswith("sha256:")


def test_report_html_shows_summary_table_and_pictures_of_rejects(mixed):
    page = (mixed["out"] / "report.html").read_text()
    assert "accepted" in page and "speaker_outlier" in page
    assert page.count("data:image/png;base64,") == 12 - 3  # three unreadable clips have no picture
    assert "suspect/second_voice.wav" in page


def test_every_supported_format_is_read(narrator, tmp_path):
    for index, ext in enumerate([".flac", ".ogg", ".mp3", ".m4a"]):
        wav = narrator / "clips" / f"{index:03d}.wav"
        to_format(wav, wav.with_suffix(ext))
        wav.unlink()
    (narrator / "transcripts.list").write_text(
        (narrator / "transcripts.list").read_text().replace("000.wav", "000.flac").replace("001.wav", "001.ogg")
        .replace("002.wav", "002.mp3").replace("003.wav", "003.m4a"))
    report = validate(str(narrator), tmp_path / "out", PARAMS)
    clips = {c.rel: c for c in report.clips}
    for rel in ("clips/000.flac", "clips/001.ogg", "clips/002.mp3", "clips/003.m4a"):
        assert clips[rel].status == "accepted", (rel, clips[rel].reasons)


def test_missing_consent_refuses_the_dataset(narrator, tmp_path):
    (narrator / "consent.yaml").unlink()
    report = validate(str(narrator), tmp_path / "out", PARAMS)
    assert report.verdict == "refused"
    assert report.dataset_reasons == ["missing_consent"]
    assert "consent.yaml" in report.messages[0]


def test_consent_without_recording_is_missing_consent(narrator, tmp_path):
    (narrator / "consent.wav").unlink()
    report = validate(str(narrator), tmp_path / "out", PARAMS)
    assert report.dataset_reasons == ["missing_consent"]


def test_consent_spoken_by_another_voice_is_refused(narrator, tmp_path):
    rewrite_consent_voice(narrator, INTRUDER_VOICE)
    report = validate(str(narrator), tmp_path / "out", PARAMS)
    assert report.dataset_reasons == ["consent_speaker_mismatch"]
    assert report.consent["speaker_similarity"] < PARAMS.validate_.consent_min_similarity


def test_consent_by_the_narrator_matches(mixed):
    assert mixed["report"].consent["speaker_similarity"] > 0.85


def test_too_little_speech_is_refused_with_the_missing_seconds(narrator, tmp_path):
    for clip in sorted((narrator / "clips").glob("*.wav"))[8:]:
        clip.unlink()
    report = validate(str(narrator), tmp_path / "out", PARAMS)
    assert report.dataset_reasons == ["insufficient_speech"]
    missing = report.totals["missing_speech_s"]
    assert 20 < missing < 40
    assert f"add {missing:.1f} s more" in report.messages[0]


def test_metadata_csv_and_sidecar_transcripts_are_read(narrator, tmp_path):
    (narrator / "transcripts.list").unlink()
    (narrator / "metadata.csv").write_text("file,text,lang\n" + "".join(
        f"clips/{i:03d}.wav,Sentence number {i}.,en\n" for i in range(10)))
    for i in range(10, 20):
        (narrator / "clips" / f"{i:03d}.lab").write_text(f"Sentence number {i}.")
    report = validate(str(narrator), tmp_path / "out", PARAMS)
    assert all(c.text.startswith("Sentence number") and c.language == "en" for c in report.clips)
    assert report.verdict == "accepted"


def test_reason_thresholds_come_from_params(narrator, tmp_path):
    strict = load_params(None, {"validate": {"min_clip_s": 5.0}})
    report = validate(str(narrator), tmp_path / "out", strict)
    assert all(c.reasons == ["too_short"] for c in report.clips if c.duration_s < 5.0)
    assert any(c.duration_s < 5.0 for c in report.clips)


def test_the_voice_activity_detector_leaves_torchs_thread_count_alone():
    """silero_vad sets torch to one thread when imported; a VAD must not slow every later model of the process."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); from narrator.speech import VoiceActivityDetector; "
            "VoiceActivityDetector(); print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
