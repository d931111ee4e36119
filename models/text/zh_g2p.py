"""Mandarin G2P: jieba words -> pypinyin (TONE3) -> tone sandhi -> v2 initials and finals.

Every syllable is two phones (initial or pseudo-initial AA/EE/OO, then final with tone digit), every
punctuation mark is one phone, so word2ph has one entry per character of the normalised text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

from models.text.tone_sandhi import apply_sandhi

_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h",
             "j", "q", "x", "r", "z", "c", "s")

# y- and w- syllables keep their written vowel as the final (opencpop-style, as the v2 model was trained):
# ya -> y a, you -> y ou, wei -> w ei, wen -> w en; "ye" and "yan" use the finals E and En;
# yu, yue, yuan, yun are the ü finals v, ve, van, vn
_Y_FINALS = {"e": "E", "an": "En", "u": "v", "ue": "ve", "uan": "van", "un": "vn"}
_FINALS = {"a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "er", "i", "ia", "ian", "iang", "iao",
           "ie", "in", "ing", "iong", "iu", "o", "ong", "ou", "u", "ua", "uai", "uan", "uang", "ui",
           "un", "uo", "v", "van", "ve", "vn", "E", "En"}

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff〇]")
_PUNCT_PHONES = {",": ",", ".": ".", "!": "!", "?": "?", "…": "…", "-": "-", "￥": "SP2", "^": "SP3"}


def split_syllable(syllable: str) -> tuple[str, str]:
    """pypinyin TONE3 syllable -> (initial, final+tone) in v2 symbols: "zhi1" -> ("zh", "ir1")."""
    syllable = syllable.replace("ü", "v")
    if syllable and syllable[-1] in "12345":
        body, tone = syllable[:-1], syllable[-1]
    else:
        body, tone = syllable, "5"
    if body in ("n", "ng", "m", "hm", "hng"):  # 嗯, 呣, 哼 as syllabic nasals: the nearest final is "en"
        return "EE", "en" + tone
    if body in ("ê", "e\u0302"):
        return "EE", "E" + tone
    if body[0] in "aeo":
        return {"a": "AA", "e": "EE", "o": "OO"}[body[0]], body + tone
    if body[0] == "y":
        return "y", _Y_FINALS.get(body[1:], body[1:]) + tone
    if body[0] == "w":
        return "w", body[1:] + tone
    for initial in _INITIALS:
        if body.startswith(initial):
            final = body[len(initial):]
            break
    else:
        return "UNK", "UNK"
    if final == "i" and initial in ("zh", "ch", "sh", "r"):
        final = "ir"
    elif final == "i" and initial in ("z", "c", "s"):
        final = "i0"
    elif initial in ("j", "q", "x") and final.startswith("u"):
        final = "v" + final[1:]
    elif final == "ue" and initial in ("n", "l"):
        final = "ve"
    if final not in _FINALS and final != "i0" and final != "ir":
        return initial, "UNK"
    return initial, final + tone


@lru_cache(maxsize=1)
def _jieba():
    import jieba
    import jieba.posseg as posseg

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return posseg


def _pinyin(word: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda x: ["UNK"] * len(x))


def cut(text: str) -> list[tuple[str, str]]:
    """jieba words with part-of-speech tags."""
    return [(w.word, w.flag) for w in _jieba().cut(text)]


def g2p_zh(text: str, lexicon: Mapping[str, Sequence[str]] | None = None) -> tuple[list[str], list[int]]:
    """Normalised Chinese text -> (phones, word2ph), word2ph with one entry per character.

    `lexicon` maps Chinese words to their phones (2 per character, a pronunciation lexicon's): those words are read
    so wherever they appear (longest first), the text between them as usual."""
    lexicon = lexicon or {}
    lexicon_re = "(" + "|".join(map(re.escape, sorted(lexicon, key=len, reverse=True))) + ")" if lexicon else None
    phones: list[str] = []
    word2ph: list[int] = []
    # sandhi works on stretches between punctuation marks
    for chunk in re.split(r"([^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff〇])", text):
        if not chunk:
            continue
        if not _CJK_RE.match(chunk):
            phones.append(_PUNCT_PHONES.get(chunk, "UNK"))
            word2ph.append(1)
            continue
        for piece in (re.split(lexicon_re, chunk) if lexicon_re else [chunk]):
            if piece in lexicon:  # a lexicon word: its syllables as written, 2 phones per character
                phones += lexicon[piece]
                word2ph += [2] * len(piece)
            elif piece:
                _read_chunk(piece, phones, word2ph)
    return phones, word2ph


def _read_chunk(chunk: str, phones: list[str], word2ph: list[int]) -> None:
    words = cut(chunk)
    syllables = [_pinyin(w) for w, _ in words]
    for (word, _), pys in zip(words, syllables):
        if len(pys) != len(word):  # pypinyin merged or split something: fall back per character
            pys[:] = [_pinyin(ch)[0] for ch in word]
    syllables = apply_sandhi(words, syllables)
    for pys in syllables:
        for py in pys:
            initial, final = split_syllable(py)
            phones += [initial, final]
            word2ph.append(2)
