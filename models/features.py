"""Feature extractors of the GPT-SoVITS pipeline, loaded from local directories (or s3:// URIs), never a hub.

- `HubertExtractor`: chinese-hubert-base layout (transformers `HubertModel`), 16 kHz audio -> `(B, 768, T50)`
  final-layer features at 50 Hz, no feature-extractor normalisation (the model is called on the raw samples).
- `BertExtractor`: chinese-roberta-wwm-ext-large layout (transformers `BertModel`), the third hidden state from
  the end, one vector per character repeated `word2ph` times -> `(1024, n_phones)`; only for Chinese segments,
  zeros elsewhere. Batched across texts with an attention mask (each result equals the text alone).
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


REFERENCE_PAD_SAMPLES = 9600  # inference appends 0.3 s x 32000 zero samples to the 16 kHz reference (sic)


def reference_hubert_input(wav_16k: np.ndarray) -> np.ndarray:
    """The official inference-time HuBERT input for a reference clip: raw [-1, 1] audio with 9600 zero samples
    appended (the count is 0.3 s at 32 kHz although the audio is at 16 kHz; kept for identical prompts)."""
    return np.concatenate([wav_16k.astype(np.float32), np.zeros(REFERENCE_PAD_SAMPLES, np.float32)])


class HubertExtractor:
    """`(B, samples)` 16 kHz float -> `(B, hidden, frames)` last-layer features at 50 Hz."""

    def __init__(self, model_dir: str | os.PathLike | None, device: str = "auto", key: str = "pretrained.hubert_dir"):
        from transformers import HubertModel

        folder = _require_dir(model_dir, key, "HuBERT (chinese-hubert-base)")
        self.device = pick_device(device)
        self.model = HubertModel.from_pretrained(str(folder), local_files_only=True).eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, wavs_16k: Sequence[np.ndarray], batch_size: int = 8) -> list[torch.Tensor]:
        """List of `(hidden, frames)` float32 CPU tensors, one per clip.

        Clips of the same length run as one batch. Clips of different lengths are not padded together: this
        layout normalises its first convolution over time (GroupNorm), so zero padding would change the features
        of the shorter clip away from what the official pipeline computes.
        """
        out: list[torch.Tensor | None] = [None] * len(wavs_16k)
        by_length: dict[int, list[int]] = {}
        for index, wav in enumerate(wavs_16k):
            by_length.setdefault(len(wav), []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                group = indices[start:start + batch_size]
                x = torch.from_numpy(np.stack([np.asarray(wavs_16k[i], dtype=np.float32) for i in group]))
                hidden = self.model(x.to(self.device)).last_hidden_state  # (B, frames, hidden)
                for row, index in enumerate(group):
                    out[index] = hidden[row].transpose(0, 1).float().cpu()
        return out  # type: ignore[return-value]


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

    def _ids(self, text: str) -> list[int]:
        pieces = [self.tokenizer.tokenize(ch) for ch in text]  # Chinese BERT: one token per character
        tokens = [self.tokenizer.cls_token] + [p[0] if p else self.tokenizer.unk_token for p in pieces] + \
                 [self.tokenizer.sep_token]
        return self.tokenizer.convert_tokens_to_ids(tokens)

    @torch.inference_mode()
    def characters_batch(self, texts: Sequence[str], batch_size: int = 16) -> list[torch.Tensor]:
        """`(n_chars, hidden)` per text: one vector per character (CLS and SEP dropped). Texts are sorted by length
        and run padded with an attention mask, so each result equals running that text alone."""
        out: list[torch.Tensor | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            group = order[start:start + batch_size]
            rows = [self._ids(texts[i]) for i in group]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, tokens in enumerate(rows):
                ids[row, :len(tokens)] = torch.tensor(tokens)
                mask[row, :len(tokens)] = 1
            states = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                output_hidden_states=True).hidden_states[-BERT_LAYER_FROM_END]
            for row, index in enumerate(group):
                out[index] = states[row, 1:len(rows[row]) - 1].float().cpu()
        return out  # type: ignore[return-value]

    def characters(self, text: str) -> torch.Tensor:
        """`(n_chars, hidden)`: one vector per character of `text` (CLS and SEP dropped)."""
        return self.characters_batch([text])[0]

    def phone_features_batch(self, items: Sequence[tuple[str, Sequence[int]]]) -> list[torch.Tensor]:
        """`(hidden, sum(word2ph))` per `(text, word2ph)`: each character's vector repeated for its phones."""
        for text, word2ph in items:
            if len(text) != len(word2ph):
                raise FeatureError(f"BERT alignment: {len(text)} characters but {len(word2ph)} word2ph entries "
                                   f"for {text!r}; the text front-end must give one entry per character")
        chars = self.characters_batch([text for text, _ in items])
        return [c.repeat_interleave(torch.tensor(list(w2p)), dim=0).T.contiguous()
                for c, (_, w2p) in zip(chars, items)]

    def phone_features(self, text: str, word2ph: Sequence[int]) -> torch.Tensor:
        return self.phone_features_batch([(text, word2ph)])[0]

    def zeros(self, n_phones: int) -> torch.Tensor:
        return torch.zeros(self.hidden_size, n_phones)


def bert_for_segments(bert: BertExtractor | None, segments, word2ph: Sequence[int], hidden_size: int = 1024
                      ) -> torch.Tensor:
    """`(hidden, n_phones)` for one g2p result: BERT features for Chinese segments, zeros elsewhere."""
    return bert_for_results(bert, [(segments, word2ph)], hidden_size)[0]


def bert_for_results(bert: BertExtractor | None, results: Sequence[tuple[Sequence, Sequence[int]]],
                     hidden_size: int = 1024) -> list[torch.Tensor]:
    """`(hidden, n_phones)` per `(segments, word2ph)` of several g2p results, with every Chinese segment of all of
    them going through BERT in batches. Segments are `(language, text, start_phone, end_phone)`; `word2ph` covers
    the whole text in order."""
    size = bert.hidden_size if bert is not None else hidden_size
    outputs = [torch.zeros(size, sum(word2ph)) for _, word2ph in results]
    jobs = []  # (result index, start, end, text, word2ph slice)
    for index, (segments, word2ph) in enumerate(results):
        cursor = 0  # index into word2ph
        for language, text, start, end in segments:
            count = _entries_for(word2ph, cursor, end - start)
            if language == "zh" and bert is not None:
                jobs.append((index, start, end, text, word2ph[cursor:cursor + count]))
            cursor += count
    if jobs:
        features = bert.phone_features_batch([(text, w2p) for _, _, _, text, w2p in jobs])
        for (index, start, end, _, _), feature in zip(jobs, features):
            outputs[index][:, start:end] = feature
    return outputs


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
