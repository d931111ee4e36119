"""Feature extractors of the GPT-SoVITS pipeline, loaded from local directories (or s3:// URIs), never a hub.

- `HubertExtractor`: chinese-hubert-base layout (transformers `HubertModel`), 16 kHz audio -> `(B, 768, T50)`
  final-layer features at 50 Hz, no feature-extractor normalisation (the model is called on the raw samples).
- `BertExtractor`: chinese-roberta-wwm-ext-large layout (transformers `BertModel`), the third hidden state from
  the end, one vector per character repeated `word2ph` times -> `(1024, n_phones)`; only for Chinese segments,
  zeros elsewhere.
- `semantic_tokens`: HuBERT features -> 25 Hz codes through the base SoVITS model's `extract_latent`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from narrator.errors import NarratorError

HUBERT_SAMPLE_RATE_HZ = 16000
HUBERT_FRAME_RATE_HZ = 50
TRAINING_HUBERT_PEAK = 1145.14  # the official training-data step feeds HuBERT audio at this peak scale
TRAINING_PEAK, TRAINING_MIX = 0.95, 0.5  # peak-normalise half of the signal to 0.95, keep the other half raw
BERT_LAYER_FROM_END = 3  # hidden_states[-3]


class FeatureError(NarratorError):
    """A feature model is missing or does not fit."""


def _require_dir(path: str | os.PathLike | None, key: str, what: str) -> Path:
    if not path:
        raise FeatureError(f"{what}: set {key} in params.yaml to a local directory (or s3:// URI) holding it; "
                           "models are never downloaded from a hub")
    folder = Path(path)
    if not folder.is_dir() or not (folder / "config.json").exists():
        raise FeatureError(f"{what}: {folder} is not a model directory with config.json; fix {key} in params.yaml")
    return folder


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def training_hubert_input(wav_16k: np.ndarray) -> np.ndarray:
    """The official training-data scaling for HuBERT input: half peak-normalised to 0.95, half raw, then scaled so
    the peak is about 1145 (inference feeds raw [-1, 1] audio instead)."""
    peak = float(np.max(np.abs(wav_16k))) or 1.0
    mixed = wav_16k / peak * (TRAINING_PEAK * TRAINING_MIX) + (1 - TRAINING_MIX) * wav_16k
    return (mixed * TRAINING_HUBERT_PEAK).astype(np.float32)


class HubertExtractor:
    """`(B, samples)` 16 kHz float -> `(B, hidden, frames)` last-layer features at 50 Hz."""

    def __init__(self, model_dir: str | os.PathLike | None, device: str = "auto", key: str = "pretrained.hubert_dir"):
        from transformers import HubertModel

        folder = _require_dir(model_dir, key, "HuBERT (chinese-hubert-base)")
        self.device = pick_device(device)
        self.model = HubertModel.from_pretrained(str(folder), local_files_only=True).eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, wavs_16k: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Each clip alone (HuBERT has no padding mask in this layout): list of `(hidden, frames)` float32 CPU."""
        out = []
        for wav in wavs_16k:
            x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(self.device)
            hidden = self.model(x).last_hidden_state  # (1, frames, hidden)
            out.append(hidden[0].transpose(0, 1).float().cpu())
        return out


class BertExtractor:
    """Character-level BERT features for Chinese text, repeated per phone."""

    def __init__(self, model_dir: str | os.PathLike | None, device: str = "auto", key: str = "pretrained.bert_dir"):
        from transformers import BertModel, BertTokenizer

        folder = _require_dir(model_dir, key, "BERT (chinese-roberta-wwm-ext-large)")
        self.device = pick_device(device)
        # BertTokenizerFast(vocab_file=...) silently ignores the file; the slow tokenizer reads the directory.
        self.tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = BertModel.from_pretrained(str(folder), local_files_only=True).eval().to(self.device)
        self.hidden_size = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def characters(self, text: str) -> torch.Tensor:
        """`(n_chars, hidden)`: one vector per character of `text` (CLS and SEP dropped)."""
        pieces = [self.tokenizer.tokenize(ch) for ch in text]  # Chinese BERT: one token per character
        tokens = [self.tokenizer.cls_token] + [p[0] if p else self.tokenizer.unk_token for p in pieces] + \
                 [self.tokenizer.sep_token]
        ids = torch.tensor([self.tokenizer.convert_tokens_to_ids(tokens)], device=self.device)
        states = self.model(input_ids=ids, output_hidden_states=True).hidden_states
        return states[-BERT_LAYER_FROM_END][0, 1:-1].float().cpu()

    def phone_features(self, text: str, word2ph: Sequence[int]) -> torch.Tensor:
        """`(hidden, sum(word2ph))`: each character's vector repeated for its phones."""
        if len(text) != len(word2ph):
            raise FeatureError(f"BERT alignment: {len(text)} characters but {len(word2ph)} word2ph entries "
                               f"for {text!r}; the text front-end must give one entry per character")
        per_char = self.characters(text)
        repeats = torch.tensor(list(word2ph))
        return per_char.repeat_interleave(repeats, dim=0).T.contiguous()

    def zeros(self, n_phones: int) -> torch.Tensor:
        return torch.zeros(self.hidden_size, n_phones)


def bert_for_segments(bert: BertExtractor | None, segments, word2ph: Sequence[int], hidden_size: int = 1024
                      ) -> torch.Tensor:
    """`(hidden, n_phones)` for a whole g2p result: BERT features for Chinese segments, zeros elsewhere.

    `segments` are `(language, text, start_phone, end_phone)`; `word2ph` covers the whole text, in order.
    """
    n_phones = sum(word2ph)
    size = bert.hidden_size if bert is not None else hidden_size
    out = torch.zeros(size, n_phones)
    cursor = 0  # index into word2ph
    for language, text, start, end in segments:
        count = _entries_for(word2ph, cursor, end - start)
        if language == "zh" and bert is not None:
            out[:, start:end] = bert.phone_features(text, word2ph[cursor:cursor + count])
        cursor += count
    return out


def _entries_for(word2ph: Sequence[int], cursor: int, n_phones: int) -> int:
    total, count = 0, 0
    while total < n_phones and cursor + count < len(word2ph):
        total += word2ph[cursor + count]
        count += 1
    return count


@torch.inference_mode()
def semantic_tokens(sovits, ssl: torch.Tensor) -> torch.Tensor:
    """`(1, 768, T50)` HuBERT features -> `(T25,)` int64 codes through the base SoVITS quantizer."""
    codes = sovits.extract_latent(ssl.to(next(sovits.parameters()).device))
    return codes[0, 0].cpu()
