"""The text front-end: language segments -> normalisation -> G2P -> phone ids.

    r = g2p("我喜欢Python, 真的!", "zh")
    r.phones, r.ids, r.word2ph, r.segments

`g2p` is deterministic and does no model-specific padding; `prepare_for_synthesis` adds the GPT-SoVITS
rules for synthesis inputs (closing punctuation, "." prepended to very short sentences).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import NamedTuple

from models.text.clean import clean_text
from models.text.errors import LanguageNotSupported, TextError
from models.text.lexicon import PhoneLexicon
from models.text.symbols import PUNCTUATION, symbol_to_id, to_ids

LANGUAGES = ("zh", "en", "auto")
_NOT_YET = {"ja": "Japanese", "jp": "Japanese", "all_ja": "Japanese", "ko": "Korean", "all_ko": "Korean",
            "yue": "Cantonese", "all_yue": "Cantonese", "cantonese": "Cantonese", "japanese": "Japanese",
            "korean": "Korean"}

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff〇"
_LATIN_LIGATURES = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE",
                                  "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "ð": "th"})
_LATIN_ACCENTED = re.compile(r"[\u00c0-\u00ff\u0100-\u017f]")
_KANA_RE = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL_RE = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_UNITS = ("km/h|km²|m²|m³|cm²|kHz|MHz|GHz|mph|lbs|min|km|kg|cm|mm|ml|mL|mg|kW|kw|Hz|lb|oz|ft|"
          "°C|℃|°F|℉|°|m|g|t|L|h|s")
_TOKEN_RE = re.compile(
    rf"(?P<zh>[{_CJK}]+)"
    rf"|(?P<num>(?:US\$|HK\$|[$€£¥￥])?[-+]?\d(?:[\d,.:/\-]*\d)?"
    rf"(?:\s?[%‰]|(?P<ord>st|nd|rd|th)(?![A-Za-z])|(?:{_UNITS})(?![A-Za-z]))?)"
    r"|(?P<en>[A-Za-z]+(?:'[A-Za-z]+)*'?)"
    r"|(?P<other>.)",
    re.S,
)


class Segment(NamedTuple):
    """One language stretch of a g2p result: phones[start:end] came from `text`."""

    language: str
    text: str
    start: int
    end: int


@dataclass
class G2PResult:
    """What `g2p` returns.

    text      normalised text (segments joined)
    phones    v2 phone strings; ids their indices in `symbols`
    word2ph   phones per unit, in order: per character in Chinese segments (2 per syllable, 1 per
              punctuation mark, so BERT character vectors can be repeated), per word or mark in English
    segments  `Segment(language, text, start, end)` per language stretch, phones[start:end]
    """

    text: str
    phones: list[str]
    ids: list[int]
    word2ph: list[int]
    segments: list[Segment] = field(default_factory=list)
    language: str = "zh"
    _w2p: list[list[int]] = field(default_factory=list, repr=False, compare=False)  # word2ph per segment

    def segment_word2ph(self, index: int) -> list[int]:
        """The word2ph entries of segment `index` (per character for zh, per word for en)."""
        start = sum(len(self._w2p[i]) for i in range(index))
        return self.word2ph[start:start + len(self._w2p[index])]


def check_language(language: str) -> str:
    lang = (language or "").strip().lower()
    if lang in _NOT_YET:
        raise LanguageNotSupported(
            f"{_NOT_YET[lang]} ({language!r}) is not supported yet by the text front-end; "
            "use 'zh', 'en' or 'auto'.")
    if lang not in LANGUAGES:
        raise TextError(f"unknown language {language!r}; use 'zh', 'en' or 'auto'.")
    return lang


def _fold(text: str) -> str:
    text = clean_text(text)  # escapes, control and invisible format characters first (models/text/clean.py)
    # NFKC folds full-width digits/letters/punctuation; keep "…" (NFKC would make it "...")
    text = text.replace("…", "\x00")
    text = unicodedata.normalize("NFKC", text).replace("\x00", "…")
    text = text.translate(_LATIN_LIGATURES)
    # accented Latin letters lose their accents (café -> cafe) so CMUdict can read them
    text = _LATIN_ACCENTED.sub(lambda m: "".join(c for c in unicodedata.normalize("NFKD", m.group(0))
                                                 if not unicodedata.combining(c)), text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")


def _refuse_other_scripts(text: str) -> None:
    if _KANA_RE.search(text):
        raise LanguageNotSupported("Japanese text (kana) is not supported yet by the text front-end; "
                                   "give Chinese or English text.")
    if _HANGUL_RE.search(text):
        raise LanguageNotSupported("Korean text (Hangul) is not supported yet by the text front-end; "
                                   "give Chinese or English text.")


def split_languages(text: str, language: str) -> list[tuple[str, str]]:
    """Raw text -> [(language, raw text)] with Chinese characters as "zh" and Latin words as "en".

    Numbers join the language they touch (2024年 -> zh, 1st -> en), otherwise the nearest word's;
    spaces and punctuation join the segment before them. `language` decides text without words
    ("zh"/"en"; "auto" means zh when there is any Chinese character, else en)."""
    language = check_language(language)
    text = _fold(text)
    _refuse_other_scripts(text)
    if language == "auto":
        language = "zh" if re.search(f"[{_CJK}]", text) else "en"
    tokens = [[m.lastgroup if m.lastgroup != "ord" else "num", m.group(0), m.start(), m.end(), bool(m.group("ord"))]
              for m in _TOKEN_RE.finditer(text)]
    langs: list[str | None] = [t[0] if t[0] in ("zh", "en") else None for t in tokens]
    for i, (kind, _, start, end, is_ord) in enumerate(tokens):
        if kind != "num":
            continue
        left = tokens[i - 1] if i > 0 and tokens[i - 1][3] == start else None
        right = tokens[i + 1] if i + 1 < len(tokens) and tokens[i + 1][2] == end else None
        touching = [t[0] for t in (left, right) if t is not None]
        if is_ord:
            langs[i] = "en"
        elif "zh" in touching:
            langs[i] = "zh"
        elif "en" in touching:
            langs[i] = "en"
        else:
            before = [tokens[j][0] for j in range(i - 1, -1, -1) if tokens[j][0] in ("zh", "en")]
            after = [tokens[j][0] for j in range(i + 1, len(tokens)) if tokens[j][0] in ("zh", "en")]
            langs[i] = before[0] if before else (after[0] if after else language)
    # punctuation and spaces: the segment before, else the one after, else the default
    last = None
    for i in range(len(tokens)):
        if langs[i] is None:
            langs[i] = last
        else:
            last = langs[i]
    nxt = None
    for i in range(len(tokens) - 1, -1, -1):
        if langs[i] is None:
            langs[i] = nxt or language
        else:
            nxt = langs[i]
    segments: list[tuple[str, str]] = []
    for lang, token in zip(langs, tokens):
        if segments and segments[-1][0] == lang:
            segments[-1] = (lang, segments[-1][1] + token[1])
        else:
            segments.append((lang, token[1]))
    return segments


def normalize(text: str, language: str) -> str:
    """Normalised text of one segment in its language ("zh" or "en")."""
    if language == "zh":
        from models.text.zh_normalize import normalize_zh

        return normalize_zh(text)
    from models.text.en_normalize import normalize_en

    return normalize_en(text)


def _g2p_segment(text: str, language: str, lexicon: PhoneLexicon | None = None) -> tuple[list[str], list[int]]:
    if language == "zh":
        from models.text.zh_g2p import g2p_zh

        return g2p_zh(text, lexicon.chinese_words() if lexicon else None)
    from models.text.en_g2p import g2p_en

    return g2p_en(text, lexicon.phones_for if lexicon else None)


def g2p(text: str, language: str = "auto", lexicon: PhoneLexicon | None = None) -> G2PResult:
    """Text -> normalised text, v2 phones, ids, word2ph and language segments.

    `language` is "zh", "en" or "auto"; Chinese characters are always read as Mandarin and Latin words
    as English (mixed text is split), the language only decides text without words of either kind.
    Japanese, Korean and Cantonese raise `LanguageNotSupported`. A pronunciation `lexicon`
    (`models.text.lexicon.compile_lexicon`) respells its `say` words first and gives its words their phones."""
    lang = check_language(language)
    text = clean_text(text)
    if lexicon is not None:
        text = lexicon.respell(text)
    phones: list[str] = []
    word2ph: list[int] = []
    segments: list[Segment] = []
    per_segment: list[list[int]] = []
    texts: list[str] = []
    for seg_lang, raw in split_languages(text, lang):
        norm = normalize(raw, seg_lang)
        if not norm.strip():
            continue
        seg_phones, seg_w2p = _g2p_segment(norm, seg_lang, lexicon)
        if not seg_phones:
            continue
        start = len(phones)
        phones += seg_phones
        word2ph += seg_w2p
        per_segment.append(seg_w2p)
        segments.append(Segment(seg_lang, norm, start, len(phones)))
        texts.append(norm)
    joined = ""
    for piece in texts:
        if joined and re.match(r"[A-Za-z]", piece) and re.search(r"[A-Za-z,.!?…]$", joined):
            joined += " "
        joined += piece
    phones = [p if p in symbol_to_id else "UNK" for p in phones]
    result = G2PResult(text=joined, phones=phones, ids=to_ids(phones), word2ph=word2ph, segments=segments,
                       language=lang)
    result._w2p = per_segment
    return result


def _ends_with_punctuation(text: str) -> bool:
    return bool(re.search(r"[,.!?…。！？，、；：;:~～—\-]\s*$", text))


def prepare_for_synthesis(text: str, language: str = "auto", *, min_phones: int = 6,
                          min_en_phones: int = 4, lexicon: PhoneLexicon | None = None) -> G2PResult:
    """g2p for a synthesis input (prompt text or one target sentence), with GPT-SoVITS' padding rules:

    1. a text that does not end in punctuation gets "。" (zh/auto with Chinese) or "." (en) appended;
    2. a pure-English result with fewer than `min_en_phones` phones is redone with "," prepended;
    3. a result with fewer than `min_phones` phones is redone with "." prepended.
    Raises TextError when nothing pronounceable is left. `lexicon`: a voice's pronunciation lexicon (see `g2p`)."""
    lang = check_language(language)
    text = clean_text(text).strip()
    if not text:
        raise TextError("the text is empty: give at least one word to synthesise.")
    if not _ends_with_punctuation(text):
        chinese_end = re.search(f"[{_CJK}]", text) and lang != "en"
        text += "。" if chinese_end else "."
    result = g2p(text, lang, lexicon)
    if not any(p not in PUNCTUATION for p in result.phones):
        raise TextError(f"nothing pronounceable in {text!r}: it has no Chinese characters, English words or "
                        "numbers the front-end can read.")
    if result.segments and all(s.language == "en" for s in result.segments) and len(result.phones) < min_en_phones:
        text = "," + text
        result = g2p(text, lang, lexicon)
    if len(result.phones) < min_phones:
        result = g2p("." + text, lang, lexicon)
    return result
