"""A generated demo narrator: espeak-ng speech with transcripts and a consent record.

Used by `make demo` and by the tests (which need speech without shipping recordings). espeak-ng voices differ
enough for a speaker model to tell them apart, so another voice stands in for an intruder.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import yaml

from narrator.audiofile import read_audio, write_wav
from narrator.config import DemoConfig
from narrator.errors import MissingDependency

SENTENCES = (
    "The lighthouse keeper climbed the spiral stairs before the storm arrived.",
    "Every morning the baker opened her shop at exactly six o'clock.",
    "A small boat drifted slowly across the quiet harbour at dawn.",
    "The library on the hill holds more than ten thousand old maps.",
    "He packed a warm coat, a torch and a notebook for the journey north.",
    "Rain tapped against the window while the children read their stories.",
    "The orchestra tuned their instruments as the audience settled in.",
    "Our train left the station twelve minutes later than planned.",
    "She planted tomatoes, beans and sunflowers along the garden wall.",
    "The museum guide explained how the ancient bridge was built.",
    "Snow covered the mountain village for most of the winter.",
    "A curious fox watched the campers from behind a fallen tree.",
    "The chef tasted the soup and added a pinch of pepper.",
    "They counted the stars until the clouds rolled in from the sea.",
    "The old clock in the hallway chimed seven times.",
    "Fresh bread and strong coffee filled the kitchen with a lovely smell.",
    "The river rose after three days of heavy rain.",
    "A gentle breeze carried the sound of bells across the valley.",
    "The students built a model rocket for the science fair.",
    "Autumn leaves gathered in golden piles along the street.",
    "The captain checked the charts and set a course for the island.",
    "Our neighbour repairs bicycles in his garage every weekend.",
    "The painter mixed blue and yellow to find the perfect green.",
    "Late at night the city lights shimmered on the water.",
    "The postman whistled a cheerful tune on his morning round.",
    "A pair of swans glided past the reeds near the old mill.",
    "The mountain path was steep, narrow and covered in loose stones.",
    "Grandmother kept her recipes in a worn leather book.",
    "The festival ended with fireworks over the castle walls.",
    "Quiet footsteps echoed through the empty marble hall.",
    "The farmer watched the sky and decided to bring in the hay.",
    "A narrow lane led down to a hidden beach of white sand.",
)


def consent_statement(speaker: str, organisation: str) -> str:
    return (f"I, {speaker}, am aware that recordings of my voice will be used by {organisation} "
            "to create and use a synthetic version of my voice.")


def espeak(text: str, path: str | Path, voice: str = "en-us+m3", speed_wpm: int = 150, pitch: int | None = None,
           noise_dbfs: float | None = -70.0, seed: int = 0) -> Path:
    """Speak `text` with espeak-ng into a 22.05 kHz mono wav at `path`; optional seeded noise floor."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise MissingDependency("espeak-ng is not installed: run `make setup` (or apt-get install espeak-ng)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        cmd = [binary, "-v", voice, "-s", str(speed_wpm), "-w", raw.name]
        if pitch is not None:
            cmd += ["-p", str(pitch)]
        subprocess.run(cmd + [text], check=True, capture_output=True)
        audio = read_audio(raw.name)
    mono = audio.mono()
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        mono = mono + rng.standard_normal(len(mono)).astype(np.float32) * np.float32(10 ** (noise_dbfs / 20))
    return write_wav(path, mono, audio.sample_rate_hz)


def build_demo_narrator(folder: str | Path, cfg: DemoConfig | None = None, sentences=SENTENCES) -> Path:
    """Write a narrator folder: clips/NNN.wav, a GPT-SoVITS `.list`, consent.yaml and consent.wav."""
    cfg = cfg or DemoConfig()
    folder = Path(folder)
    lines = []
    for index in range(cfg.clips):
        text = sentences[index % len(sentences)]
        name = f"clips/{index:03d}.wav"
        espeak(text, folder / name, cfg.voice, cfg.speed_wpm, seed=index)
        lines.append(f"{name}|{cfg.speaker}|en|{text}")
    (folder / "transcripts.list").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_consent(folder, cfg.speaker, cfg.organisation, cfg.voice, cfg.speed_wpm)
    return folder


def write_consent(folder: Path, speaker: str, organisation: str, voice: str, speed_wpm: int = 150) -> None:
    """consent.yaml plus consent.wav spoken by `voice`."""
    espeak(consent_statement(speaker, organisation), folder / "consent.wav", voice, speed_wpm, seed=999)
    record = {
        "speaker": speaker,
        "organisation": organisation,
        "date": "2026-11-25",
        "scope": "synthetic narration of audiobooks and product videos",
        "recording": "consent.wav",
        "statement": consent_statement(speaker, organisation),
    }
    (folder / "consent.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
