"""`narrator validate` on hostile datasets: links that leave the folder, files that are not what their names say,
headers that lie, names and transcripts that break the `.list` format, unwritable and full output folders, and two
runs at once. Each test builds its case from scratch in a temporary folder. Whatever the input, validate finishes
quickly, reads nothing outside the source folder, never modifies the source, explains the problem as the user's,
and leaves in `--out` either a complete output or the previous one.
"""

from __future__ import annotations

import builtins
import errno
import io
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
LOCK_NAME = ".narrator.lock"  # the lock file validate keeps in --out


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


def out_state(out: Path) -> dict[str, str]:
    """Content and mtime of every output file (the lock file aside)."""
    return {k: v for k, v in tree_digest(out).items() if Path(k).name != LOCK_NAME} if out.exists() else {}


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


def _under(file, folder: Path) -> bool:
    if isinstance(file, int):
        return False
    return os.path.abspath(os.fsdecode(os.fspath(file))).startswith(str(folder) + os.sep) or \
        os.path.abspath(os.fsdecode(os.fspath(file))) == str(folder)


def _writes(mode: str) -> bool:
    return any(flag in mode for flag in "wax+")


def read_only(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Make `folder` behave like a read-only file system (for root, whom chmod does not stop)."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    refuse_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fsdecode(os.fspath(path)))

    def guarded_open(file, mode="r", *args, **kwargs):
        if _writes(mode) and _under(file, folder):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & refuse_flags and _under(path, folder):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if _under(path, folder):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def guarded(real):
        def call(src, dst, *args, **kwargs):
            if _under(src, folder) or _under(dst, folder):
                refuse(dst)
            return real(src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    monkeypatch.setattr(os, "replace", guarded(os.replace))
    monkeypatch.setattr(os, "rename", guarded(os.rename))


class _Disk:
    def __init__(self, room: int):
        self.room = room


class _FillingFile:
    """A file on a disk with `disk.room` bytes left: the write that does not fit writes what fits, then fails."""

    def __init__(self, handle, disk: _Disk, name: str):
        self._handle, self._disk, self._name = handle, disk, name

    def write(self, data):
        if len(data) <= self._disk.room:
            self._disk.room -= len(data)
            return self._handle.write(data)
        self._handle.write(data[: self._disk.room])
        self._handle.flush()
        self._disk.room = 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        return False

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def disk_fills_after(monkeypatch, folder: Path, room: int) -> None:
    """Writes under `folder` succeed for `room` bytes in all, then fail with ENOSPC after a partial write."""
    real_open = builtins.open
    disk = _Disk(room)

    def filling_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if _writes(mode) and _under(file, folder):
            return _FillingFile(handle, disk, os.fsdecode(os.fspath(file)))
        return handle

    monkeypatch.setattr(builtins, "open", filling_open)
    monkeypatch.setattr(io, "open", filling_open)
    monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies go through write() too


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


# ------------------------------------------------------------------------- 4. unwritable and full output folders


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root; the simulated test below covers it")
def test_a_read_only_out_folder_is_refused_before_any_analysis(source, tmp_path, capsys, monkeypatch):
    import components.validate as step

    monkeypatch.setattr(step, "VoiceActivityDetector", lambda: pytest.fail("the analysis started"))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(["validate", str(source), "--out", str(out)]) == 2
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert str(out) in err and "internal error" not in err


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_out_folder_is_refused_before_any_analysis(source, tmp_path, capsys, monkeypatch, code):
    import components.validate as step

    monkeypatch.setattr(step, "VoiceActivityDetector", lambda: pytest.fail("the analysis started"))
    out = tmp_path / "out"
    out.mkdir()
    read_only(monkeypatch, out, code)
    assert main(["validate", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "internal error" not in err
    assert ("read-only" if code == errno.EROFS else "permission") in err.lower()


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 0.8, 0.99])
def test_a_full_disk_leaves_the_previous_complete_output(source, tmp_path, capsys, monkeypatch, share):
    out = tmp_path / "out"
    assert main(["validate", str(source), "--out", str(out), *SET_SMALL]) == 0
    previous = out_state(out)
    size = sum(len(data) for data in files_under(out).values())
    write_wav(source / "clips" / "quiet.wav", speech(SENTENCES[14], seed=14)[0] * 0, 22050)  # a rejected clip
    add_to_list(source, "clips/quiet.wav", SENTENCES[14])
    capsys.readouterr()
    disk_fills_after(monkeypatch, out, int(share * size))
    assert main(["validate", str(source), "--out", str(out), *SET_SMALL]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err.lower() and str(out) in err and "internal error" not in err
    assert out_state(out) == previous  # byte for byte, nothing half-written, no temporary files left


def test_a_full_disk_on_a_first_run_leaves_no_partial_output(source, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    write_wav(source / "clips" / "quiet.wav", speech(SENTENCES[14], seed=14)[0] * 0, 22050)
    add_to_list(source, "clips/quiet.wav", SENTENCES[14])
    disk_fills_after(monkeypatch, out, 150_000)
    assert main(["validate", str(source), "--out", str(out), *SET_SMALL]) == 2
    assert out_state(out) == {}


def test_too_little_free_space_is_refused_naming_the_space_needed(source, tmp_path, capsys, monkeypatch):
    real_usage = shutil.disk_usage
    out = tmp_path / "out"

    def small_disk(path):
        usage = real_usage(path)
        return usage._replace(free=1000) if _under(path, out) else usage

    monkeypatch.setattr(shutil, "disk_usage", small_disk)
    assert main(["validate", str(source), "--out", str(out), *SET_SMALL]) == 2
    err = capsys.readouterr().err
    assert "no space" in err.lower() and str(out) in err and " MB" in err
    assert out_state(out) == {}


def test_disk_errors_outside_validate_are_the_users_problem_not_a_bug(tmp_path, capsys, monkeypatch):
    import components.validate as step

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "somewhere" / "file"))

    monkeypatch.setattr(step, "validate", full)
    assert main(["validate", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "somewhere" / "file") in err and "internal error" not in err


def test_an_out_folder_inside_the_source_is_refused_and_the_source_untouched(source, capsys):
    before = tree_digest(source)
    assert main(["validate", str(source), "--out", str(source / "out"), *SET_SMALL]) == 2
    assert "inside the source folder" in capsys.readouterr().err
    assert tree_digest(source) == before and not (source / "out").exists()


def test_a_source_inside_the_out_folders_quarantine_is_never_deleted(tmp_path, capsys):
    out = tmp_path / "out"
    source = make_narrator(out / "quarantine" / "narrator", clips=3)
    before = tree_digest(source)
    assert main(["validate", str(source), "--out", str(out), *SET_SMALL]) == 2
    assert "holds the source folder" in capsys.readouterr().err
    assert tree_digest(source) == before


def test_an_out_that_is_a_file_is_refused(source, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert main(["validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "internal error" not in err


def test_a_link_planted_as_the_lock_file_is_never_written_through(source, outside, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).symlink_to(outside / "passwd")
    assert main(["validate", str(source), "--out", str(tmp_path / "out"), *SET_SMALL]) == 2
    assert "is a link" in capsys.readouterr().err
    assert (outside / "passwd").read_bytes() == SECRET


# ------------------------------------------------------------------------------------------ 5. two runs at once


def test_a_second_run_into_the_same_out_is_refused_naming_the_first(source, tmp_path):
    from narrator.storage import folder_lock

    out = tmp_path / "out"
    assert main(["validate", str(source), "--out", str(out), *SET_SMALL]) == 0
    previous = out_state(out)
    with folder_lock(out, "narrator validate"):
        result = run_cli("validate", str(source), "--out", str(out), *SET_SMALL)
    assert result.returncode == 2
    assert f"pid {os.getpid()}" in result.stderr and "another" in result.stderr
    assert out_state(out) == previous


def test_the_out_folder_is_free_again_after_a_run_even_a_failed_one(source, tmp_path, monkeypatch):
    import components.validate as step
    from narrator.storage import folder_lock

    out = tmp_path / "out"
    validate(str(source), out, PARAMS)
    monkeypatch.setattr(step, "_check_consent", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        validate(str(source), out, PARAMS)
    with folder_lock(out, "test"):  # would raise when a lock were still held
        pass


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
