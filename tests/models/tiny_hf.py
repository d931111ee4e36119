"""Tiny randomly initialised HuBERT and BERT models saved with save_pretrained: the extractors load them by path
exactly as they load the real chinese-hubert-base and chinese-roberta-wwm-ext-large directories."""

from __future__ import annotations

from pathlib import Path

import torch

CHARS = "你好世界今天天气很不错我们一起去公园吧，。！？"


def build_tiny_hubert(folder: Path, hidden: int = 48) -> Path:
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    HubertModel(config).save_pretrained(folder)
    return folder


def build_tiny_bert(folder: Path, hidden: int = 40) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(CHARS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=80, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder
