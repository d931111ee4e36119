"""`narrator validate` on hostile datasets: links that leave the folder, files that are not what their names say,
headers that lie, and names and transcripts that break the `.list` format. Each test builds its case from scratch
in a temporary folder. Whatever the input, validate finishes quickly, reads nothing outside the source folder,
never modifies the source, explains the problem as the user's, and writes a complete report.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from cli.demo import SENTENCES
from cli.main import main
from components.validate import REASONS, validate
from narrator.audiofile import write_wav
from narrator.config import load_params
from tests.intake import add_to_list, make_narrator, speech, tree_digest

REPO_ROOT = Path(__file__).resolve().parents[1]
# the clip reason codes that only these hostile cases exercise (tests/test_validate.py covers the others)
HOSTILE_REASONS = {"outside_source", "truncated", "bad_file_name"}
SMALL = {"validate": {"min_total_speech_s": 5.0}}  # three clips are enough speech for these datasets
PARAMS = load_params(None, SMALL)
SET_SMALL = ["--set", "validate.min_total_speech_s=5"]
SECRET = b"root:x:0:0:a host file that must never reach the outputs\n"
SECRET_TEXT = "The secret sentence from outside the dataset."


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def source(tmp_path) -> Path:
    """A small valid narrator: clips/000..002.wav, transcripts.list, consent.yaml + consent.wav."""
    return make_narrator(tmp_path / "narrator", clips=3)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the dataset (the host's files, another user's data) holding a secret file."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "passwd").write_bytes(SECRET)
    return folder


def clips_of(report) -> dict:
    return {c.rel: c for c in report.clips}


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m cli ARGS` in a child process; a child still running after `timeout` seconds fails the test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout,
                              cwd=REPO_ROOT, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"narrator {' '.join(args[:1])} did not finish in {timeout:g} s: it hangs")


def raw_wav(samples: bytes, rate: int, channels: int = 1, declared_bytes: int | None = None) -> bytes:
    """A 16-bit PCM wav written by hand, so its header can say what the data is not."""
    size = len(samples) if declared_bytes is None else declared_bytes
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", size) + samples)


def pcm_of(wav: Path, n_bytes: int) -> bytes:
    data, _ = sf.read(str(wav), dtype="int16")
    return data.tobytes()[:n_bytes]


# ------------------------------------------------------------------------------------ 1. links out of the folder


def test_a_link_to_a_host_file_is_refused_as_outside_source_and_never_copied(source, outside, tmp_path):
    (source / "bad").mkdir()
    (source / "bad" / "x.wav").symlink_to(outside / "passwd")
    before = tree_digest(source)
    report = validate(str(source), tmp_path / "out", PARAMS)
    clip = clips_of(report)["bad/x.wav"]
    assert clip.reasons == ["outside_source"] and clip.status == "rejected"
    quarantined = files_under(tmp_path / "out" / "quarantine")
    assert "bad/x.wav" not in quarantined and "bad/x.wav.reasons.txt" in quarantined
    assert not any(SECRET.strip() in data for data in files_under(tmp_path / "out").values())
    assert tree_digest(source) == before


def test_a_link_to_a_wav_outside_the_dataset_is_not_accepted_into_training(source, outside, tmp_path):
    mono, rate = speech(SENTENCES[10], seed=10)
    write_wav(outside / "voice.wav", mono, rate)
    (source / "clips" / "linked.wav").symlink_to(outside / "voice.wav")
    add_to_list(source, "clips/linked.wav", SENTENCES[10])
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert clips_of(report)["clips/linked.wav"].reasons == ["outside_source"]
    assert "linked.wav" not in (tmp_path / "out" / "accepted.list").read_text()
    assert not (tmp_path / "out" / "quarantine" / "clips" / "linked.wav").exists()


def test_a_link_to_a_clip_inside_the_dataset_is_followed(source, tmp_path):
    (source / "clips" / "again.wav").symlink_to("000.wav")
    add_to_list(source, "clips/again.wav", SENTENCES[0])
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert clips_of(report)["clips/again.wav"].reasons == ["duplicate"]  # read like any clip: the same audio as 000


def test_a_linked_folder_leaving_the_dataset_adds_no_clips_and_is_reported(source, outside, tmp_path):
    mono, rate = speech(SENTENCES[11], seed=11)
    write_wav(outside / "more" / "voice.wav", mono, rate)
    (source / "more").symlink_to(outside / "more")
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert not any(rel.startswith("more/") for rel in clips_of(report))
    assert [(i["path"], i["reason"]) for i in report.ignored] == [("more", "outside_source")]


@pytest.mark.parametrize("kind", ["list", "csv", "txt"])
def test_a_transcript_linked_from_outside_is_not_read(source, outside, tmp_path, kind):
    listing = source / "transcripts.list"
    listing.write_text("".join(line + "\n" for line in listing.read_text().splitlines()
                               if not line.startswith("clips/000.wav")))
    target, link = {
        "list": (outside / "t.list", source / "extra.list"),
        "csv": (outside / "t.csv", source / "metadata.csv"),
        "txt": (outside / "t.txt", source / "clips" / "000.txt"),
    }[kind]
    target.write_text({"list": f"clips/000.wav|Alex Reader|en|{SECRET_TEXT}\n",
                       "csv": f"clips/000.wav,{SECRET_TEXT},en\n", "txt": SECRET_TEXT}[kind])
    link.symlink_to(target)
    report = validate(str(source), tmp_path / "out", PARAMS)
    clip = clips_of(report)["clips/000.wav"]
    assert clip.text != SECRET_TEXT and "no_transcript" in clip.reasons
    assert SECRET_TEXT not in (tmp_path / "out" / "report.json").read_text()
    assert [i["reason"] for i in report.ignored] == ["outside_source"]


def test_a_consent_file_linked_from_outside_is_not_read(source, outside, tmp_path):
    shutil.move(source / "consent.yaml", outside / "consent.yaml")
    (source / "consent.yaml").symlink_to(outside / "consent.yaml")
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert report.dataset_reasons == ["missing_consent"]
    assert "outside the source folder" in report.messages[0]
    assert report.consent.get("speaker") is None and report.consent_hash is None


@pytest.mark.parametrize("how", ["absolute path", "parent path", "link"])
def test_a_consent_recording_outside_the_dataset_is_not_read(source, outside, tmp_path, how):
    shutil.move(source / "consent.wav", outside / "consent.wav")
    consent = source / "consent.yaml"
    if how == "link":
        (source / "consent.wav").symlink_to(outside / "consent.wav")
    else:
        named = str(outside / "consent.wav") if how == "absolute path" else "../outside/consent.wav"
        consent.write_text(consent.read_text().replace("recording: consent.wav", f"recording: {named}"))
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert report.dataset_reasons == ["missing_consent"]
    assert "outside the source folder" in report.messages[0]
    assert report.consent["recording_path"] is None


# --------------------------------------------------------------------------- 2. consent problems are the user's


def test_consent_yaml_that_is_not_utf8_refuses_the_dataset_and_writes_the_report(source, tmp_path, capsys):
    consent = source / "consent.yaml"
    consent.write_bytes(consent.read_bytes().replace(b"Alex Reader", "Jos\u00e9 Lopez".encode("latin-1")))
    assert main(["validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL]) == 2
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["dataset_reasons"] == ["missing_consent"] and "UTF-8" in data["messages"][0]
    assert "internal error" not in capsys.readouterr().err


def test_consent_recording_naming_a_folder_refuses_the_dataset_and_writes_the_report(source, tmp_path, capsys):
    consent = source / "consent.yaml"
    consent.write_text(consent.read_text().replace("recording: consent.wav", "recording: clips"))
    assert main(["validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL]) == 2
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["dataset_reasons"] == ["missing_consent"] and "is a folder" in data["messages"][0]
    assert "internal error" not in capsys.readouterr().err


def test_consent_yaml_that_is_a_folder_refuses_the_dataset_and_writes_the_report(source, tmp_path, capsys):
    (source / "consent.yaml").unlink()
    (source / "consent.yaml").mkdir()
    assert main(["validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL]) == 2
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["dataset_reasons"] == ["missing_consent"] and "is a folder" in data["messages"][0]
    assert "internal error" not in capsys.readouterr().err


def test_consent_fields_that_are_not_text_refuse_the_dataset_without_expanding_them(source, tmp_path):
    """An alias bomb: a few hundred bytes of YAML that expand to a million items when printed."""
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcde", "bcdef")]
    consent = source / "consent.yaml"
    consent.write_text("\n".join(bomb) + "\n" + consent.read_text().replace("speaker: Alex Reader", "speaker: *f"))
    started = time.monotonic()
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert time.monotonic() - started < 60
    assert report.dataset_reasons == ["missing_consent"] and "speaker" in report.messages[0]
    assert (tmp_path / "out" / "accepted.list").stat().st_size < 10_000
    assert (tmp_path / "out" / "report.json").stat().st_size < 100_000


def test_a_consent_recording_name_with_a_nul_byte_is_missing_consent(source, tmp_path):
    consent = source / "consent.yaml"
    consent.write_text(consent.read_text().replace("recording: consent.wav", 'recording: "con\\0sent.wav"'))
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert report.dataset_reasons == ["missing_consent"] and "not a valid file name" in report.messages[0]


@pytest.mark.parametrize("name", ["extra.list", "metadata.csv", "clips/000.txt"])
def test_a_folder_named_like_a_transcript_is_ignored_without_crashing(source, tmp_path, name):
    (source / name).mkdir()
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert clips_of(report)["clips/000.wav"].text == SENTENCES[0]


# ------------------------------------------------------------------------------------------------- 3. no hangs


def test_a_wav_whose_header_claims_1_hz_is_rejected_in_seconds_without_decoding(source, tmp_path):
    (source / "bad").mkdir()
    (source / "bad" / "one_hz.wav").write_bytes(raw_wav(pcm_of(source / "clips" / "000.wav", 10_000), rate=1))
    add_to_list(source, "bad/one_hz.wav", SENTENCES[12])
    result = run_cli("validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL, timeout=90)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    clip = next(c for c in data["clips"] if c["rel"] == "bad/one_hz.wav")
    assert clip["reasons"] == ["unreadable"] and "1 Hz" in clip["details"]["unreadable"]
    assert clip["peak_dbfs"] is None  # the samples were never decoded
    assert data["elapsed_s"] < 20


@pytest.mark.parametrize("rate", [1, 999, 800_000, 2_000_000])
def test_read_audio_refuses_an_impossible_sample_rate(tmp_path, rate):
    from narrator.audiofile import read_audio
    from narrator.errors import AudioError

    path = tmp_path / "odd.wav"
    path.write_bytes(raw_wav(b"\x00\x10" * 5000, rate=rate))
    with pytest.raises(AudioError, match=f"{rate} Hz"):
        read_audio(path)


def test_a_recording_longer_than_max_source_s_is_rejected_from_its_header_without_decoding(source, tmp_path,
                                                                                          monkeypatch):
    import components.validate as step

    decoded = []
    real_read = step.read_audio
    monkeypatch.setattr(step, "read_audio", lambda path, *a, **k: decoded.append(Path(path).name) or
                        real_read(path, *a, **k))
    mono, rate = speech(" ".join(SENTENCES[13:16]), seed=13)  # about 12 s
    write_wav(source / "clips" / "long.wav", mono, rate)
    add_to_list(source, "clips/long.wav", " ".join(SENTENCES[13:16]))
    params = load_params(None, {"validate": {"min_total_speech_s": 5.0, "max_source_s": 8.0}})
    clip = clips_of(validate(str(source), tmp_path / "out", params))["clips/long.wav"]
    assert clip.reasons == ["too_long"] and "max_source_s" in clip.details["too_long"]
    assert clip.duration_s > 8 and "long.wav" not in decoded


def test_a_wav_whose_header_claims_more_data_than_the_file_holds_is_truncated(source, tmp_path):
    whole = (source / "clips" / "001.wav").read_bytes()
    (source / "clips" / "001.wav").write_bytes(whole[: int(len(whole) * 0.6)])
    clip = clips_of(validate(str(source), tmp_path / "out", PARAMS))["clips/001.wav"]
    assert clip.reasons == ["truncated"] and clip.status == "rejected"
    assert "promises" in clip.details["truncated"]


@pytest.mark.parametrize("name", ["consent.yaml", "extra.list", "metadata.csv", "clips/000.txt", "clips/pipe.wav"])
def test_a_fifo_in_the_dataset_does_not_block_validate(source, tmp_path, name):
    if (source / name).exists():
        (source / name).unlink()
    os.mkfifo(source / name)
    result = run_cli("validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL, timeout=60)
    assert result.returncode in (0, 2), result.stderr
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    if name == "consent.yaml":
        assert data["dataset_reasons"] == ["missing_consent"]
    if name == "clips/pipe.wav":
        clip = next(c for c in data["clips"] if c["rel"] == name)
        assert clip["reasons"] == ["unreadable"] and "regular file" in clip["details"]["unreadable"]


# -------------------------------------------------------------------------------- 6. names and transcripts


@pytest.mark.parametrize("name", ["two\nlines.wav", "a|b.wav", "carriage\rreturn.wav", "sep\u2028line.wav"])
def test_a_file_name_that_breaks_a_list_line_is_refused(source, tmp_path, name):
    mono, rate = speech(SENTENCES[15], seed=15)
    write_wav(source / "clips" / name, mono, rate)
    (source / "clips" / name).with_suffix(".txt").write_text(SENTENCES[15])
    report = validate(str(source), tmp_path / "out", PARAMS)
    clip = clips_of(report)[f"clips/{name}"]
    assert "bad_file_name" in clip.reasons and clip.status == "rejected"
    for line in (tmp_path / "out" / "accepted.list").read_text(encoding="utf-8").splitlines():
        path, _, _, _ = line.split("|")
        assert Path(path).is_file()


def test_a_file_name_that_is_not_utf8_is_refused_and_the_report_still_written(source, tmp_path):
    folder = os.fsencode(source / "clips")
    shutil.copy(source / "clips" / "000.wav", folder + b"/caf\xe9.wav")
    assert main(["validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL]) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    clip = next(c for c in data["clips"] if c["rel"].startswith("clips/caf"))
    assert "bad_file_name" in clip["reasons"]
    assert (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize("text", [".", "…?!", "- - -", "«»", "\u3002\uff01"])
def test_a_transcript_of_punctuation_only_is_no_transcript(source, tmp_path, text):
    listing = source / "transcripts.list"
    listing.write_text(listing.read_text().replace(SENTENCES[0], text))
    clip = clips_of(validate(str(source), tmp_path / "out", PARAMS))["clips/000.wav"]
    assert clip.reasons == ["no_transcript"] and "no words" in clip.details["no_transcript"]


def test_a_chinese_transcript_has_words(source, tmp_path):
    listing = source / "transcripts.list"
    listing.write_text(listing.read_text().replace(f"|en|{SENTENCES[0]}", "|zh|今天天气很好。"))
    clip = clips_of(validate(str(source), tmp_path / "out", PARAMS))["clips/000.wav"]
    assert "no_transcript" not in clip.reasons


def test_a_speaker_name_with_a_pipe_and_a_newline_keeps_accepted_list_parseable(source, tmp_path):
    consent = source / "consent.yaml"
    consent.write_text(consent.read_text().replace("speaker: Alex Reader", 'speaker: "Alex | Reader\\nJr"'))
    validate(str(source), tmp_path / "out", PARAMS)
    lines = (tmp_path / "out" / "accepted.list").read_text().splitlines()
    assert len(lines) == 3
    assert all(len(line.split("|")) == 4 for line in lines)


HOSTILE_STRINGS = ["plain", "a|b", "two\nlines", "cr\rlf", "tab\tbed", "  padded  ", "sep\u2028arator", "nel\x85",
                   "form\x0cfeed", "file\x1cseparator", "", "|", "\n", "caf\udce9"]


@pytest.mark.parametrize("value", HOSTILE_STRINGS)
def test_list_line_never_produces_a_line_that_parses_differently(value):
    from narrator.dataset import ListLineError, list_line, parse_list_line

    for fields in ((f"/data/{value}.wav", "Alex", "en", "text"), ("/data/a.wav", value, "en", "text"),
                   ("/data/a.wav", "Alex", value, "text"), ("/data/a.wav", "Alex", "en", value)):
        try:
            line = list_line(*fields)
        except ListLineError:
            assert fields[0] != "/data/a.wav", "only a path may be refused: the other fields are cleaned"
            continue
        line.encode("utf-8")  # writable as UTF-8
        assert line.splitlines() == [line]
        parsed = parse_list_line(line)
        assert parsed[0] == fields[0]
        for got, given in zip(parsed[1:], fields[1:]):
            assert got == " ".join(given.replace("|", " ").split()).encode("utf-8", "replace").decode()


def test_shell_and_html_in_names_and_transcripts_stay_text(source, tmp_path, monkeypatch):
    from tests.intake import to_format

    monkeypatch.chdir(tmp_path)
    mono, rate = speech(SENTENCES[16], seed=16)
    wav = write_wav(tmp_path / "tmp.wav", mono, rate)
    to_format(wav, source / "clips" / "$(touch pwned);touch pwned2;-y.m4a")
    add_to_list(source, "clips/$(touch pwned);touch pwned2;-y.m4a", SENTENCES[16])
    shutil.copy(source / "clips" / "001.wav", source / "clips" / "<img src=x onerror=alert(1)>.wav")
    listing = source / "transcripts.list"
    listing.write_text(listing.read_text().replace(SENTENCES[2], "<script>alert('x')</script> hello"))
    report = validate(str(source), tmp_path / "out", PARAMS)
    assert clips_of(report)["clips/$(touch pwned);touch pwned2;-y.m4a"].status == "accepted"
    assert not list(tmp_path.rglob("pwned*")) and not list(REPO_ROOT.glob("pwned*"))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page


# --------------------------------------------------------------------------------------------- documentation


def test_every_new_reason_code_has_advice_and_is_listed_in_the_readme():
    from components.validate import DATASET_REASONS

    readme = (REPO_ROOT / "README.md").read_text()
    assert HOSTILE_REASONS <= set(REASONS)
    for code in (*REASONS, *DATASET_REASONS):
        assert f"`{code}`" in readme, code
    assert all(REASONS[code] for code in HOSTILE_REASONS)
