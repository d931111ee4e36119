"""The words of a text the front-end has to guess, so an editor can fix them in a lexicon before narrating
(`narrator lexicon check`):

    not_in_dictionary   an English word CMUdict lacks (nor its possessive or contraction base): read by splitting
                        it into known words or by letter-to-sound rules
    acronym             an all-capitals word: spelled out (FBI) or read as a word (NASA)
    ambiguous_number    a number whose reading depends on what it means: 1984 (a year, read "nineteen
                        eighty-four", or a quantity), 1/2 (a fraction or a date), 3:30 (a time or a score), 21st
                        (an ordinal), 3-4 (a range, a score or a subtraction)

    find_guesses("Zorblax met the FBI in 1984.", "en", lexicon)  # -> [Guess("Zorblax", "not_in_dictionary", ...), ...]

A word the lexicon gives phones (or a respelling) is no guess. Each guess carries its count, the context of its
first occurrence and the phones the front-end chose.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from models.text import en_g2p
from models.text.frontend import g2p, normalize, split_languages
from models.text.lexicon import PhoneLexicon

KINDS = ("not_in_dictionary", "acronym", "ambiguous_number")
CONTEXT_CHARS = 30  # of text on each side of a guess's first occurrence
_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_NUMBER_RE = re.compile(
    r"(?<![\d/:.,$€£¥￥-])(?:"
    r"(?P<fraction>\d{1,4}/\d{1,4}(?:/\d{2,4})?)"
    r"|(?P<time>\d{1,2}:\d{2}(?::\d{2})?)"
    r"|(?P<ordinal>\d+(?:st|nd|rd|th))(?![A-Za-z])"
    r"|(?P<range>\d+-\d+)"
    r"|(?P<year>1[1-9]\d\d|20\d\d)"
    r")(?![\d/:]|[.,]\d)")
_NUMBER_NOTES = {"fraction": "a fraction or a date", "time": "a time or a score", "ordinal": "an ordinal",
                 "range": "a range, a score or a subtraction", "year": "read as a year; a quantity reads otherwise"}


@dataclass
class Guess:
    """One word (or number) the front-end had to guess."""

    word: str
    kind: str  # one of KINDS
    count: int
    context: str  # around its first occurrence
    phones: list[str]  # what the front-end says for it
    reading: str  # the words it was read as (numbers), else the word itself
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _context(text: str, start: int, end: int) -> str:
    before = text[max(0, start - CONTEXT_CHARS):start]
    after = text[end:end + CONTEXT_CHARS]
    return " ".join(f"{before}[{text[start:end]}]{after}".split())


def _classify(word: str) -> tuple[str, str] | None:
    """(kind, note) of an English word the front-end guesses, or None when CMUdict reads it."""
    if re.fullmatch(r"[A-Z]{2,}(?:'?s)?", word):
        letters = re.sub(r"'?s$", "", word) if re.fullmatch(r"[A-Z]{2,}'?s", word) else word
        spelled = en_g2p.word_to_phones(word)[:len(en_g2p.spell(letters))] == en_g2p.spell(letters)
        return "acronym", "spelled out" if spelled else "read as a word"
    if en_g2p.in_dictionary(word):
        return None
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", word)
    if len(parts) > 1 and "".join(parts) == word and all(en_g2p.in_dictionary(p) or p.isupper() for p in parts):
        return None  # ChatGPT, iOS: read part by part, each part known
    return "not_in_dictionary", "guessed by rules"


def find_guesses(text: str, language: str = "auto", lexicon: PhoneLexicon | None = None) -> list[Guess]:
    """The guesses of `text` (see the module docstring), in order of first occurrence."""
    if lexicon is not None:
        text = lexicon.respell(text)
    found: dict[tuple[str, str], Guess] = {}
    first: dict[tuple[str, str], int] = {}  # offset of each guess's first occurrence
    offset = 0
    pieces = split_languages(text, language)
    folded = "".join(raw for _, raw in pieces)
    for seg_lang, raw in pieces:
        if seg_lang == "en":
            spoken = set(_WORD_RE.findall(normalize(raw, "en")))  # not the abbreviations and units it expands
            for match in _WORD_RE.finditer(raw):
                word = match.group(0)
                if word not in spoken:
                    continue
                if lexicon is not None and en_g2p.lexicon_phones(word, lexicon.phones_for) is not None:
                    continue
                base = re.sub(r"'s?$", "", word)  # Zorblax's counts as Zorblax
                key = ("word", base if base.isupper() else base.lower())
                if key in found:
                    found[key].count += 1
                    continue
                kind = _classify(word)
                if kind is None:
                    continue
                first[key] = offset + match.start()
                found[key] = Guess(word, kind[0], 1, _context(folded, offset + match.start(), offset + match.end()),
                                   en_g2p.word_to_phones(word), word, kind[1])
        for match in _NUMBER_RE.finditer(raw):
            token = match.group(0)
            if seg_lang == "zh" and match.lastgroup == "year" and raw[match.end():match.end() + 1] == "年":
                continue  # 2024年 is a year, read digit by digit
            key = ("number", token)
            if key in found:
                found[key].count += 1
                continue
            reading = normalize(token, seg_lang)
            first[key] = offset + match.start()
            found[key] = Guess(token, "ambiguous_number", 1,
                               _context(folded, offset + match.start(), offset + match.end()),
                               g2p(token, seg_lang).phones, reading, _NUMBER_NOTES[match.lastgroup])
        offset += len(raw)
    return [found[key] for key in sorted(found, key=first.__getitem__)]
