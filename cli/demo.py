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


# -- base models and settings for the demo -----------------------------------------------------------------------
# No official weights can be downloaded here, so the demo onboards its narrator on small randomly initialised
# models of the real architecture, in the official file formats. The pipeline is the production one; only the
# sizes, the number of epochs and the quality gates differ (a voice this small cannot meet production gates, so
# the demo keeps the gates that test the machinery: watermark and speed).
DEMO_SOVITS = {
    "inter_channels": 32, "hidden_channels": 32, "filter_channels": 64, "n_layers": 2, "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]], "upsample_initial_channel": 64, "gin_channels": 64, "segment_size": 16,
    "mrte": {"content_enc_channels": 32, "hidden_size": 64, "out_channels": 32, "n_heads": 4},
}
DEMO_GPT = {"n_layer": 2, "n_head": 4, "n_embd": 64}
DEMO_DISCRIMINATOR_DIVISOR = 16
DEMO_HUBERT = {"hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
DEMO_KEY_FILE = "watermark.key"


def build_demo_bases(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Write small random base models in the official formats into `folder`; the `pretrained` settings naming
    them. Kept between runs (same seed, same files)."""
    import torch
    from transformers import HubertConfig, HubertModel

    from models.checkpoints import save_gpt, save_sovits
    from models.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator
    from models.gpt import GPT, GPTConfig
    from models.sovits import SoVITS, SoVITSConfig

    folder = Path(folder)
    paths = {"sovits": folder / "s2G-demo.pth", "sovits_discriminator": folder / "s2D-demo.pth",
             "gpt": folder / "s1-demo.ckpt", "hubert_dir": folder / "hubert"}
    if not all(p.exists() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        sovits = SoVITS(SoVITSConfig(**DEMO_SOVITS))
        save_sovits(sovits, paths["sovits"])
        layout = DiscriminatorConfig.for_version(sovits.version, DEMO_DISCRIMINATOR_DIVISOR)
        torch.save({"model": MultiPeriodDiscriminator(layout).state_dict()}, paths["sovits_discriminator"])
        save_gpt(GPT(GPTConfig(**DEMO_GPT)), paths["gpt"])
        HubertModel(HubertConfig(**DEMO_HUBERT)).save_pretrained(paths["hubert_dir"])
    return {key: str(path.resolve()) for key, path in paths.items()}


def demo_overrides(bases: dict[str, str], work: Path) -> dict:
    """The settings the demo changes from params.yaml: its base models, few epochs on CPU, its own registry and
    store under the demo folder, and the gates a tiny voice can be held to."""
    work = work.resolve()
    quality = ("speaker_similarity", "wer", "cer", "mcd_db", "f0_rmse_cents", "duration_outliers_share")
    return {
        "pretrained": bases,
        "features": {"device": "cpu"},
        "training": {"device": "cpu", "precision": "fp32", "checkpoint_every_steps": 20, "sample_every_steps": 0,
                     "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        "finetune_sovits": {"epochs": 2, "batch_size": 4},
        "finetune_gpt": {"epochs": 4, "batch_size": 4, "accumulate_batches": 1, "lr": 0.001, "warmup_steps": 2,
                         "decay_steps": 20},
        "evaluate": {"device": "cpu", "max_holdout_segments": 2, "sentences_per_language": 2,
                     "gates": {**{name: None for name in quality}, "rtf": 5.0, "watermark_detected_share": 1.0}},
        "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "audit_log": str(work / "registry-audit.jsonl")},
        "package": {"bentoml_home": str(work / "bentoml")},
        "pipeline": {"pipeline_root": str(work / "pipeline")},
    }


def demo_key(folder: Path) -> Path:
    """A watermark key for the demo only (a random 32-byte file, created once); production keys come from a
    secret store through $NARRATOR_WATERMARK_KEY or $NARRATOR_WATERMARK_KEY_FILE."""
    import secrets

    path = Path(folder) / DEMO_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        path.chmod(0o600)
    return path
