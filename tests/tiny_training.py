"""Small training sets for the fine-tuning tests: espeak-ng speech at 32 kHz with the features `narrator features`
would write (the real spectrogram; stand-in HuBERT features and phone ids), and the tiny model sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.audio import spectrogram
from narrator.audiofile import read_audio, resample, write_wav
from cli.demo import SENTENCES, espeak

TINY_SOVITS = {
    "inter_channels": 8, "hidden_channels": 16, "filter_channels": 32, "n_layers": 1, "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]], "upsample_initial_channel": 32, "gin_channels": 32, "segment_size": 8,
    "mrte": {"content_enc_channels": 16, "hidden_size": 32, "out_channels": 16, "n_heads": 4},
}
TINY_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 32}


def make_features(root: Path, clips: int = 4, seed: int = 0, max_s: float = 3.0, speed_wpm: int = 190) -> Path:
    """A features folder (manifest.json + entries/NAME/*.pt) over `clips` espeak sentences, plus their 32 kHz
    wavs in root/wav32k. HuBERT features are seeded noise (the quantizer turns them into codes all the same)."""
    g = torch.Generator().manual_seed(seed)
    entries = []
    for i in range(clips):
        name = f"seg{i:03d}"
        raw = espeak(SENTENCES[i % len(SENTENCES)], root / "raw" / f"{name}.wav", speed_wpm=speed_wpm, seed=i)
        audio = read_audio(raw)
        wav = resample(audio.mono(), audio.sample_rate_hz, 32000)[:int(32000 * max_s)]
        wav = (0.5 * wav / max(float(np.abs(wav).max()), 1e-6)).astype(np.float32)
        frames = len(wav) // 640
        frames -= frames % 2
        wav = wav[:frames * 640]
        path = write_wav(root / "wav32k" / f"{name}.wav", wav, 32000)
        spec = spectrogram(torch.from_numpy(wav)[None])[0]
        n_phones = 10 + i
        folder = root / "entries" / name
        folder.mkdir(parents=True)
        torch.save(torch.zeros(1024, n_phones, dtype=torch.float16), folder / "bert.pt")
        torch.save(torch.randn(768, frames, generator=g), folder / "hubert.pt")
        torch.save(torch.randint(0, 1024, (frames // 2,), generator=g), folder / "semantic.pt")
        torch.save(spec, folder / "spec.pt")
        (folder / "done").write_text("")
        entries.append({"name": name, "text": SENTENCES[i % len(SENTENCES)], "language": "en", "phones": ["a"] * n_phones,
                        "ids": torch.randint(1, 732, (n_phones,), generator=g).tolist(), "word2ph": [1] * n_phones,
                        "duration_s": len(wav) / 32000, "wav_32k": str(path), "hubert_frames": frames,
                        "semantic_frames": frames // 2, "spec_frames": frames, "has_sv": False})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "sovits_version": "v2", "models": {},
                                                    "entries": entries}))
    return root
