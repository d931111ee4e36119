"""Split long text into sentences for synthesis, one GPT-SoVITS call each."""

from __future__ import annotations

import re
from typing import NamedTuple

from models.text.frontend import _CJK, _fold, check_language

# words that end in "." without ending a sentence
_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "capt", "lt", "col", "gen", "sgt", "rev", "gov",
           "sen", "rep", "mt", "ave", "rd", "blvd", "co", "corp", "inc", "ltd", "dept", "vs", "etc", "e.g", "i.e",
           "approx", "no", "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
           "dec", "u.s", "u.k", "a.m", "p.m"}
_CLOSERS = "\"'”’」』)）]】》"
_HARD_END = "。！？!?…"
_SOFT = "，,；;：:、"


class Sentence(NamedTuple):
    text: str
    language: str


def _has_words(text: str) -> bool:
    return bool(re.search(rf"[A-Za-z0-9{_CJK}]", text))


def _sentence_ends(text: str) -> list[int]:
    """Indices just after each sentence end."""
    ends = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        end = None
        if ch == "\n":
            end = i + 1
        elif ch in _HARD_END:
            j = i + 1
            while j < n and text[j] in _HARD_END:
                j += 1
            end = j
        elif ch == "." and (i + 1 == n or text[i + 1] in " \n" + _CLOSERS):
            word = re.search(r"([A-Za-z.]+)$", text[:i])
            prev = word.group(1).lower() if word else ""
            if i + 1 < n and text[i + 1] == "." or prev in _ABBREV or (len(prev) == 1 and prev.isalpha()):
                end = None  # "Dr. Smith", "J. K. Rowling", "..."
            else:
                end = i + 1
        elif ch == "." and i + 1 < n and text[i + 1] == ".":
            j = i
            while j < n and text[j] == ".":
                j += 1
            end = j
        if end is not None:
            while end < n and text[end] in _CLOSERS:
                end += 1
            ends.append(end)
            i = end
        else:
            i += 1
    if not ends or ends[-1] != n:
        ends.append(n)
    return ends


def _split_long(piece: str, max_chars: int) -> list[str]:
    if len(piece) <= max_chars:
        return [piece]
    out: list[str] = []
    current = ""
    for part in re.split(rf"(?<=[{_SOFT}])", piece):
        if current and len(current) + len(part) > max_chars:
            out.append(current)
            current = ""
        current += part
    if current:
        out.append(current)
    final: list[str] = []
    for part in out:
        while len(part) > max_chars:  # no punctuation to cut at: cut at a space, else anywhere
            cut = part.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > max_chars // 2 else max_chars
            final.append(part[:cut])
            part = part[cut:]
        final.append(part)
    return [p for p in final if p.strip()]


def split_sentences(text: str, language: str = "auto", max_chars: int = 100) -> list[Sentence]:
    """Long text -> sentences cut after 。！？!?… , a sentence-final "." and line breaks.

    Pieces longer than `max_chars` are cut again at commas (then spaces). Each piece is a
    `Sentence(text, language)`: the given language, or for "auto" "zh" when the piece has Chinese
    characters and "en" otherwise. Pieces without words (stray punctuation) join the one before."""
    lang = check_language(language)
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    text = _fold(text)
    pieces: list[str] = []
    start = 0
    for end in _sentence_ends(text):
        piece = text[start:end]
        start = end
        if not piece.strip():
            continue
        if pieces and not _has_words(piece):
            pieces[-1] += piece.rstrip("\n")
            continue
        pieces.extend(_split_long(piece.strip(), max_chars))
    out = []
    for piece in pieces:
        piece = piece.strip()
        if not piece or not _has_words(piece):
            continue
        piece_lang = lang
        if lang == "auto":
            piece_lang = "zh" if re.search(f"[{_CJK}]", piece) else "en"
        out.append(Sentence(piece, piece_lang))
    return out
