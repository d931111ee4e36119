"""`narrator narrate`: a manuscript in, a publishable audiobook out, every sentence through the guard, resumable.

The voice is the tiny registered, packaged voice of tests/deployment.py (random weights: its speech is not
intelligible, so the ASR check is specified at the function level in tests/test_guard.py). The ACX limits are
checked by decoding and measuring the written files here, not by reading narration.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

WATERMARK_KEY = "test-narrate-key"
BOOK = "# The Storm\n\nThe keeper climbed the stairs. The lamp was lit.\n\n# The Morning\n\nThe sea was calm.\n"
# the tiny random voice decodes up to its token limit (0.4 s per phone): looser than a real voice's 0.3
SETTINGS = {"narrate": {"torch_threads": 1, "parallel_chapters": 2, "guard_limits": {"max_s_per_phone": 1.0}}}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.deployment import build_small_deployment

    work = tmp_path_factory.mktemp("narrate")
    return build_small_deployment(work, {"storage": {"cache_dir": str(work / "cache")}})


@pytest.fixture(scope="module")
def params(deployment):
    from narrator.config import load_params

    return load_params(deployment.params_file, SETTINGS)


@pytest.fixture(scope="module", autouse=True)
def watermark_key():
    before = os.environ.get("NARRATOR_WATERMARK_KEY")
    os.environ["NARRATOR_WATERMARK_KEY"] = WATERMARK_KEY
    yield
    if before is None:
        os.environ.pop("NARRATOR_WATERMARK_KEY", None)
    else:
        os.environ["NARRATOR_WATERMARK_KEY"] = before


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("manuscript") / "lighthouse.md"
    path.write_text(BOOK, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def narrated(book, params, tmp_path_factory):
    from components.narrate import narrate

    out = tmp_path_factory.mktemp("book") / "out"
    return narrate(book, "alice", None, out, params), out


def chapter_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for folder in ("chapters", "masters", "captions")
            for p in sorted((out / folder).iterdir())}


def measure(path: Path) -> dict[str, float]:
    """What ACX measures, from the decoded file: RMS and peak in dBFS, the noise floor (quietest 0.5 s), and the
    room tone at head and tail (time until / after the first / last 10 ms above -50 dB)."""
    from narrator.audiofile import read_audio

    audio = read_audio(path)
    x, rate = audio.mono().astype(np.float64), audio.sample_rate_hz
    def db(value) -> float:
        return 20 * np.log10(max(float(value), 1e-12))

    half = rate // 2
    floor = min(np.sqrt(np.mean(x[i:i + half] ** 2)) for i in range(0, len(x) - half, half))
    hop = rate // 100
    levels = np.array([db(np.sqrt(np.mean(x[i:i + hop] ** 2))) for i in range(0, len(x) - hop, hop)])
    loud = np.nonzero(levels > -50)[0]
    return {"rate": rate, "rms_db": db(np.sqrt(np.mean(x ** 2))), "peak_db": db(np.abs(x).max()),
            "noise_floor_db": db(floor), "head_s": loud[0] / 100, "tail_s": (len(levels) - 1 - loud[-1]) / 100}


# -- a book ------------------------------------------------------------------------------------------------------


def test_a_two_chapter_markdown_book_gives_two_chapters_an_m4b_and_captions(narrated):
    result, out = narrated
    assert [c.title for c in result.chapters] == ["The Storm", "The Morning"]
    assert sorted(p.name for p in (out / "chapters").iterdir()) == ["01-the-storm.mp3", "02-the-morning.mp3"]
    assert sorted(p.name for p in (out / "masters").iterdir()) == ["01-the-storm.wav", "02-the-morning.wav"]
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-of", "json", str(out / "book.m4b")],
                           capture_output=True, text=True, check=True)
    assert [c["tags"]["title"] for c in json.loads(probe.stdout)["chapters"]] == ["The Storm", "The Morning"]
    vtt = (out / "captions" / "01-the-storm.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT") and "The keeper climbed the stairs." in vtt and "The lamp was lit." in vtt


def test_captions_start_after_the_head_room_tone_and_follow_the_sentences(narrated):
    result, _ = narrated
    first = result.chapters[0].details
    assert 0.5 <= first[0].start_s <= 1.0
    assert first[0].end_s < first[1].start_s < first[1].end_s <= result.chapters[0].duration_s


def test_narration_json_describes_each_chapter(narrated):
    _, out = narrated
    data = json.loads((out / "narration.json").read_text(encoding="utf-8"))
    assert data["voice"] == "alice" and data["m4b"] == "book.m4b"
    first = data["chapters"][0]
    for name in ("title", "audio", "captions", "duration_s", "rms_db", "peak_db", "noise_floor_db", "sentences",
                 "regenerated", "failed"):
        assert name in first, name
    assert [c["sentences"] for c in data["chapters"]] == [2, 1]
    assert (out / first["audio"]).is_file() and (out / first["captions"]).is_file()
    assert "<audio" in (out / "report.html").read_text(encoding="utf-8")


def test_every_chapter_meets_the_acx_limits_measured_from_its_mp3(narrated):
    _, out = narrated
    for path in sorted((out / "chapters").iterdir()):
        found = measure(path)
        assert found["rate"] == 44100, path.name
        assert -23 <= found["rms_db"] <= -18, (path.name, found)
        assert found["peak_db"] <= -3, (path.name, found)
        assert found["noise_floor_db"] <= -60, (path.name, found)
        assert 0.5 <= found["head_s"] <= 1.0 and 1.0 <= found["tail_s"] <= 5.0, (path.name, found)
    bitrate = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=bit_rate", "-of", "csv=p=0",
                              str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert bitrate == "192000"


def test_every_chapter_carries_the_voices_watermark(narrated, deployment):
    from models.watermark import detect
    from narrator.audiofile import read_audio

    _, out = narrated
    for path in sorted((out / "chapters").iterdir()):
        audio = read_audio(path)
        found = detect(audio.mono(), audio.sample_rate_hz, WATERMARK_KEY)
        assert found.detected and f"{found.payload:08x}" == deployment.payloads["alice"], path.name


def test_every_chapter_gets_an_audit_record_with_its_digest(narrated, params):
    from narrator import audit
    from narrator.storage import sha256_file

    _, out = narrated
    records = [r for r in audit.read(params.registry.audit_log) if r["event"] == "narrated"]
    digests = {r["output"]: r["output_sha256"] for r in records}
    for path in sorted((out / "chapters").iterdir()):
        assert digests[f"chapters/{path.name}"] == sha256_file(path)
    assert {r["voice"] for r in records} == {"alice"}


# -- resuming ----------------------------------------------------------------------------------------------------


def test_a_rerun_redoes_only_lost_sentences_and_gives_byte_identical_chapters(narrated, book, params, tmp_path):
    from components.narrate import narrate

    _, out = narrated
    again = tmp_path / "out"
    shutil.copytree(out, again)
    (again / "chapters" / "01-the-storm.mp3").unlink()
    lost = sorted((again / ".sentences" / "01").iterdir())[1]
    lost.unlink()
    result = narrate(book, "alice", None, again, params)
    assert [c.synthesized for c in result.chapters] == [1, 0]
    assert chapter_bytes(again) == chapter_bytes(out)


def test_a_killed_run_rerun_gives_byte_identical_chapters(narrated, book, deployment, tmp_path):
    _, out = narrated
    again = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NARRATOR_WATERMARK_KEY": WATERMARK_KEY}
    command = [sys.executable, "-m", "cli.main", "narrate", str(book), "--voice", "alice", "--out", str(again),
               "--params", str(deployment.params_file)]
    command += [f"--set=narrate.{k}={v}" for k, v in (("torch_threads", 1), ("parallel_chapters", 1),
                                                       ("guard_limits.max_s_per_phone", 1.0))]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((again / ".sentences").glob("*/*.npz")):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before a sentence was kept"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (again / "book.m4b").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 spoken now" in done.stdout or "0 spoken now" in done.stdout
    assert chapter_bytes(again) == chapter_bytes(out)


# -- the guard in narration --------------------------------------------------------------------------------------


def test_a_sentence_failing_the_guard_is_spoken_again_with_the_next_seed_and_the_best_kept(params):
    from components.narrate import load_narrator, resolve_voice
    from models.guard import GuardLimits, guarded_sentence

    narrator = load_narrator(resolve_voice("alice", None, params), params)
    impossible = GuardLimits(max_s_per_phone=0.001)
    kept = guarded_sentence(narrator.synth, narrator.reference, "The lamp was lit.", "en", None, 7, 3, impossible,
                            max_attempts=3)
    assert len(kept.verdicts) == 3 and not kept.passed
    assert kept.attempt == int(np.argmin([v.worst for v in kept.verdicts]))
    again = narrator.synth.sentence("The lamp was lit.", narrator.reference, "en",
                                    generator=narrator.synth.generator(7 + kept.attempt, 3))
    assert np.array_equal(kept.audio.samples, again.samples)
    first = guarded_sentence(narrator.synth, narrator.reference, "The lamp was lit.", "en", None, 7, 3, None)
    plain = narrator.synth.sentence("The lamp was lit.", narrator.reference, "en",
                                    generator=narrator.synth.generator(7, 3))
    assert np.array_equal(first.audio.samples, plain.samples)  # attempt 0 is what the synthesizer speaks


def test_sentences_still_failing_are_listed_for_a_human(deployment, tmp_path):
    from components.narrate import narrate
    from narrator.config import load_params

    params = load_params(deployment.params_file, {"narrate": {"torch_threads": 1, "max_attempts": 2,
                                                              "guard_limits": {"max_s_per_phone": 0.001}}})
    book = tmp_path / "note.txt"
    book.write_text("The lamp was lit.", encoding="utf-8")
    result = narrate(book, "alice", None, tmp_path / "out", params)
    data = json.loads((tmp_path / "out" / "narration.json").read_text(encoding="utf-8"))
    assert data["chapters"][0]["regenerated"] == 1
    [failed] = data["failed"]
    assert failed["text"] == "The lamp was lit." and failed["attempts"] == 2
    assert len(failed["scores"]) == 2 and failed["reasons"][0].startswith("duration:")
    assert "The lamp was lit." in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert result.failed == data["failed"]


def test_with_a_local_asr_model_each_sentence_is_also_scored_against_its_text(deployment, tmp_path):
    from components.narrate import narrate
    from narrator.config import load_params
    from tests.tiny_whisper import build_tiny_whisper

    asr = build_tiny_whisper(tmp_path / "whisper")
    params = load_params(deployment.params_file, {"narrate": {
        "torch_threads": 1, "max_attempts": 1, "guard_limits": {"max_s_per_phone": 1.0, "asr_model_dir": str(asr)}}})
    book = tmp_path / "note.txt"
    book.write_text("The lamp was lit.", encoding="utf-8")
    result = narrate(book, "alice", None, tmp_path / "out", params)
    [verdict] = result.chapters[0].details[0].verdicts
    assert isinstance(verdict["figures"]["asr_text"], str)  # the tiny random Whisper hears noise
    assert verdict["figures"]["error_rate"] is not None and "asr" in verdict["scores"]


# -- bad input ---------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> int:
    from cli.main import main

    return main(["narrate", *args])


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02binary\xff"])
def test_an_empty_or_binary_manuscript_is_refused_and_nothing_in_out_is_touched(deployment, tmp_path, content,
                                                                               capsys):
    book = tmp_path / "book.txt"
    book.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    assert run_cli(str(book), "--voice", "alice", "--out", str(out), "--params", str(deployment.params_file)) == 2
    assert "error:" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_an_unknown_voice_is_refused_naming_it(deployment, book, tmp_path, capsys):
    code = run_cli(str(book), "--voice", "nobody", "--out", str(tmp_path / "out"), "--params",
                   str(deployment.params_file))
    assert code == 2
    assert "no voice 'nobody'" in capsys.readouterr().err


def test_an_unknown_version_is_refused_listing_the_versions(deployment, book, tmp_path, capsys):
    code = run_cli(str(book), "--voice", "alice@9", "--out", str(tmp_path / "out"), "--params",
                   str(deployment.params_file))
    assert code == 2
    assert "has no version 9; its versions are 1" in capsys.readouterr().err


def test_an_unwritable_out_is_refused(deployment, book, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = run_cli(str(book), "--voice", "alice", "--out", str(blocker / "out"), "--params",
                   str(deployment.params_file))
    assert code == 2
    assert "not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


# -- the guard in the service ------------------------------------------------------------------------------------


def test_the_service_offers_the_guard_as_quality_checked_off_by_default():
    from serving.api import SpeechRequest

    assert SpeechRequest(voice="alice", text="Hi.").quality == "fast"
    assert SpeechRequest(voice="alice", text="Hi.", quality="checked").quality == "checked"


def test_checked_speech_that_needs_no_retry_is_the_same_audio_and_a_failing_one_is_spoken_again(params):
    from components.narrate import load_narrator, resolve_voice
    from models.tts import SamplingSettings
    from narrator.config import load_params
    from serving.engine import GptBatcher, checked_sentences, sentences
    from serving.voices import LoadedVoice, VoiceInfo

    narrator = load_narrator(resolve_voice("alice", None, params), params)
    info = VoiceInfo("alice", "narrator-alice", 1, "acme", narrator.source.payload_hex, None, {})
    voice = LoadedVoice(info, narrator.synth, narrator.reference, 1.0)
    batcher = GptBatcher(4, 5)
    try:
        text, settings = "The lamp was lit. The sea was calm.", SamplingSettings()
        plain = [s.samples for s in sentences(voice, text, "en", settings, 5, batcher)]
        checked = [s.samples for s in checked_sentences(voice, text, "en", settings, 5, batcher, params.narrate)]
        assert all(np.array_equal(a, b) for a, b in zip(plain, checked, strict=True))
        strict = load_params(overrides={"narrate": {"max_attempts": 2, "guard_limits": {"max_s_per_phone": 0.001}}})
        retried = list(checked_sentences(voice, text, "en", settings, 5, batcher, strict.narrate))
        first = list(sentences(voice, text, "en", settings, 5, batcher))
        second = [voice.synth.sentence(s.text, voice.reference, "en", settings, voice.synth.generator(6, i))
                  for i, s in enumerate(first)]
        assert any(a.tokens != b.tokens for a, b in zip(first, second)), "the two seeds must differ to tell"
        for kept, a, b in zip(retried, first, second, strict=True):  # both fail: the shorter (less bad) is kept
            best = a if a.tokens <= b.tokens else b
            assert kept.tokens == best.tokens
            assert np.array_equal(kept.samples[:len(best.samples)], best.samples[:len(kept.samples)])
    finally:
        batcher.stop()


def test_narration_leaves_the_processs_torch_threads_as_they_were(deployment, tmp_path):
    """Narration picks its own thread count for its chapters and gives the process's back: a service or a test run
    in the same process keeps computing as before (float sums depend on the count)."""
    import torch

    from components.narrate import load_narrator, narration_threads, resolve_voice
    from narrator.config import load_params

    params = load_params(deployment.params_file, {"narrate": {"torch_threads": 1}})
    before = torch.get_num_threads()
    load_narrator(resolve_voice("alice", None, params), params)
    assert torch.get_num_threads() == before
    with narration_threads(params):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
