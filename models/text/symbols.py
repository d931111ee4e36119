"""The GPT-SoVITS v2 phone table (732 symbols). A phone's id is its index in `symbols_v2.json`.

The table ships inside this package so the front-end works without the project's shared folder.
"""

from __future__ import annotations

import json
from pathlib import Path

_TABLE = Path(__file__).with_name("symbols_v2.json")

symbols: list[str] = json.loads(_TABLE.read_text(encoding="utf-8"))
symbol_to_id: dict[str, int] = {s: i for i, s in enumerate(symbols)}

#: Punctuation phones shared by every language. Each one is one phone and one word2ph entry.
PUNCTUATION: tuple[str, ...] = ("!", "?", "…", ",", ".", "-")
UNK = "UNK"

assert len(symbols) == 732 and symbols[-1] == "Yz", "symbols_v2.json is not the v2 table"


def to_ids(phones: list[str]) -> list[int]:
    """Phone strings -> ids; a phone outside the table becomes UNK."""
    unk = symbol_to_id[UNK]
    return [symbol_to_id.get(p, unk) for p in phones]
