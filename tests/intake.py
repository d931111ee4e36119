"""Builders of test datasets for intake: a narrator (espeak-ng voice en-us+m3), an intruder (en-us+f3), and one
crafted bad file per reason code. Everything is generated into temporary folders."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from narrator.audiofile import read_audio, resample, write_wav
from narrator.config import DemoConfig
from cli.demo import SENTENCES, build_demo_narrator, espeak, write_consent

NARRATOR_VOICE = "en-us+m3"
INTRUDER_VOICE = "en-us+f3"
NARRATOR_CLIPS = 20  # about 75 s of speech: accepted with the default 60 s minimum


def make_narrator(folder: Path, clips: int = NARRATOR_CLIPS) -> Path:
    """A complete, valid narrator folder: clips/NNN.wav, transcripts.list, consent.yaml + consent.wav."""
    return build_demo_narrator(folder, DemoConfig(voice=NARRATOR_VOICE, clips=clips, speaker="Alex Reader",
                                                  organisation="Acme Audio"))


def speech(text: str, voice: str = NARRATOR_VOICE, seed: int = 0) -> tuple[np.ndarray, int]:
    """Mono espeak-ng speech (float32, 22.05 kHz) without writing a file the caller has to manage."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = espeak(text, Path(tmp) / "s.wav", voice, seed=seed)
        audio = read_audio(path)
    return audio.mono(), audio.sample_rate_hz


def add_to_list(folder: Path, rel: str, text: str, lang: str = "en") -> None:
    with open(folder / "transcripts.list", "a", encoding="utf-8") as handle:
        handle.write(f"{rel}|Alex Reader|{lang}|{text}\n")


def add_bad_files(folder: Path) -> dict[str, set[str]]:
    """Write one crafted file per problem under suspect/ and return {relative path: expected reason codes}."""
    # sentences the narrator clips do not use, so no crafted clip is a near-copy of a narrator clip
    sentence = SENTENCES[20]
    mono, rate = speech(sentence, seed=11)
    sus = folder / "suspect"
    sus.mkdir(parents=True, exist_ok=True)
    expected: dict[str, set[str]] = {}

    def clip(name: str, samples: np.ndarray, sr: int, codes: set[str], text: str | None = sentence, lang="en"):
        write_wav(sus / name, samples, sr)
        if text is not None:
            add_to_list(folder, f"suspect/{name}", text, lang)
        expected[f"suspect/{name}"] = codes

    good = folder / "clips" / "000.wav"
    (sus / "truncated_header.wav").write_bytes(good.read_bytes()[:30])
    add_to_list(folder, "suspect/truncated_header.wav", sentence)
    expected["suspect/truncated_header.wav"] = {"unreadable"}
    (sus / "text_renamed.wav").write_text("this is a text file, not audio\n" * 20)
    add_to_list(folder, "suspect/text_renamed.wav", sentence)
    expected["suspect/text_renamed.wav"] = {"unreadable"}
    (sus / "empty.wav").write_bytes(b"")
    add_to_list(folder, "suspect/empty.wav", sentence)
    expected["suspect/empty.wav"] = {"unreadable"}

    clip("phone_8khz.wav", resample(mono, rate, 8000), 8000, {"low_sample_rate"})
    clip("hard_clipped.wav", np.clip(mono * 2.5, -1.0, 1.0), rate, {"clipped"})
    rng = np.random.default_rng(3)
    clip("pure_noise.wav", (rng.standard_normal(rate * 4) * 0.1).astype(np.float32), rate,
         {"low_speech_ratio", "low_snr"})
    clip("silence.wav", np.zeros(rate * 3, np.float32), rate, {"silent"})
    start = int(0.5 * rate)
    clip("blip_0.3s.wav", mono[start:start + int(0.3 * rate)], rate, {"too_short"})
    shutil.copy(folder / "clips" / "003.wav", sus / "copy_of_003.wav")
    add_to_list(folder, "suspect/copy_of_003.wav", SENTENCES[3])
    expected["suspect/copy_of_003.wav"] = {"duplicate"}
    clip("untranscribed.wav", speech(SENTENCES[21], seed=12)[0], rate, {"no_transcript"}, text=None)
    clip("japanese.wav", speech(SENTENCES[22], seed=13)[0], rate, {"unsupported_language"},
         text="こんにちは、今日はいい天気ですね。", lang="ja")
    intruder, _ = speech(SENTENCES[23], voice=INTRUDER_VOICE, seed=14)
    clip("second_voice.wav", intruder, rate, {"speaker_outlier"}, text=SENTENCES[23])
    quiet, _ = speech(SENTENCES[24], seed=15)
    clip("very_quiet.wav", quiet * 0.05, rate, {"loudness_out_of_range"}, text=SENTENCES[24])
    return expected


def long_recording(pause_s: float = 0.6, sentences: int = 4, voice: str = NARRATOR_VOICE) -> tuple[np.ndarray, int, str]:
    """Several sentences separated by pauses: longer than a clip may be, cut-able at the pauses."""
    parts, texts = [], []
    rate = 22050
    for i in range(sentences):
        piece, rate = speech(SENTENCES[26 + i], voice=voice, seed=20 + i)
        parts += [piece, np.zeros(int(pause_s * rate), np.float32)]
        texts.append(SENTENCES[26 + i])
    return np.concatenate(parts[:-1]), rate, " ".join(texts)


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 and mtime of every file under `folder`: equal before and after means nothing was touched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def to_format(wav: Path, target: Path) -> Path:
    """Convert a wav into flac/ogg/mp3 (soundfile) or m4a (ffmpeg)."""
    if target.suffix == ".m4a":
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", "-b:a", "96k",
                        str(target)], check=True)
        return target
    data, rate = sf.read(str(wav), dtype="float32")
    kinds = {".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"), ".mp3": ("MP3", "MPEG_LAYER_III")}
    fmt, subtype = kinds[target.suffix]
    sf.write(str(target), data, rate, format=fmt, subtype=subtype)
    return target


def rewrite_consent_voice(folder: Path, voice: str) -> None:
    write_consent(folder, "Alex Reader", "Acme Audio", voice)
