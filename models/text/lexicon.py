"""A pronunciation lexicon (`narrator.lexicon`, docs/lexicon.md) checked against the v2 symbol table and made ready
for the front-end:

    lexicon = compile_lexicon(load_lexicon("lexicon.yaml"))     # LexiconError naming the word and the phone
    prepare_for_synthesis("Zorblax smiled.", "en", lexicon=lexicon)

`phones` entries must be ARPAbet phones of the table with a stress digit (0-2) on every vowel; `pinyin` entries
become the zh front-end's initials and finals (`zh_g2p.split_syllable`), one syllable per Chinese character of the
word (word2ph of Chinese text has one entry per character, which the BERT features are repeated by); `say` entries
are respellings substituted for the word before G2P. The front-end then reads an English word of the lexicon with
its phones (one word2ph entry, as any word) and a Chinese word with its syllables (2 phones per character).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from models.text.symbols import symbol_to_id, symbols
from models.text.zh_g2p import split_syllable
from narrator.lexicon import Entry, Lexicon, LexiconError

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff〇"
_CJK_RE = re.compile(f"[{_CJK}]")
_CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T", "TH",
               "V", "W", "Y", "Z", "ZH")
_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
#: The English phones a `phones` entry may use: ARPAbet consonants, and vowels with stress 0-2, as the v2 table has them
EN_PHONES: tuple[str, ...] = tuple(p for p in (*_CONSONANTS, *(v + s for v in _VOWELS for s in "012"))
                                   if p in symbol_to_id)
#: The Mandarin phones pinyin becomes: initials (and the pseudo-initials AA/EE/OO) and finals with tones 1-5
ZH_PHONES: tuple[str, ...] = tuple(s for s in symbols if re.fullmatch(r"(?:[a-z]+|E|En)[1-5]|[a-z]{1,2}|AA|EE|OO", s))
_SYLLABLE = re.compile(r"([a-zü]+)([1-5])")
_READABLE_KEY = re.compile(rf"[A-Za-z]+(?:'[A-Za-z]+)*|[{_CJK}]+")  # what the G2P sees as one word
NEAREST = 3  # valid symbols suggested for a bad phone
# extended ARPAbet phones CMUdict (and the v2 table) spell otherwise: suggested first
_EXTENDED = {"AX": "AH0", "IX": "IH0", "AXR": "ER0", "UX": "UW0", "DX": "T", "NX": "N", "EL": "AH0 L", "EM": "AH0 M",
             "EN": "AH0 N", "Q": "T"}


@dataclass(frozen=True)
class PhoneLexicon:
    """A checked lexicon as the front-end applies it: v2 phones per word (`phones` and `pinyin` entries) and
    respellings (`say` entries). Keys as in the file: a lower-case key matches any capitalisation."""

    lexicon: Lexicon
    phones: dict[str, tuple[str, ...]] = field(default_factory=dict)
    say: dict[str, str] = field(default_factory=dict)
    _respell: object = field(default=None, init=False, repr=False, compare=False)
    _chinese: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_respell", _respeller(self.say) if self.say else None)
        object.__setattr__(self, "_chinese", {w: p for w, p in self.phones.items() if _CJK_RE.search(w)})

    @property
    def sha256(self) -> str:
        return self.lexicon.sha256

    def phones_for(self, word: str) -> list[str] | None:
        """The v2 phones of `word` as written in a text (exact key, else its lower-case key), or None."""
        found = self.phones.get(word)
        if found is None and word.lower() != word:
            found = self.phones.get(word.lower())
        return list(found) if found is not None else None

    def chinese_words(self) -> dict[str, tuple[str, ...]]:
        """The Chinese-character words with their phones (2 per character), for the zh G2P."""
        return self._chinese

    def respell(self, text: str) -> str:
        """`text` with every `say` word replaced by its respelling (whole words only)."""
        return self._respell(text) if self._respell else text


def _respeller(say: dict[str, str]):
    chinese = sorted((w for w in say if _CJK_RE.search(w)), key=len, reverse=True)
    latin = sorted((w for w in say if not _CJK_RE.search(w)), key=len, reverse=True)
    patterns = []
    if chinese:
        patterns.append(re.compile("|".join(map(re.escape, chinese))))
    exact = [w for w in latin if w.lower() != w]
    folded = [w for w in latin if w.lower() == w]
    edge_l, edge_r = r"(?<![A-Za-z0-9'])", r"(?![A-Za-z0-9])"
    if exact:
        patterns.append(re.compile(f"{edge_l}(?:{'|'.join(map(re.escape, exact))}){edge_r}"))
    if folded:
        patterns.append(re.compile(f"{edge_l}(?:{'|'.join(map(re.escape, folded))}){edge_r}", re.IGNORECASE))

    def replace(match: re.Match) -> str:
        word = match.group(0)
        return say.get(word) or say[word.lower()]

    def respell(text: str) -> str:
        for pattern in patterns:
            text = pattern.sub(replace, text)
        return text

    return respell


def _nearest(phone: str, table: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(phone, table, n=NEAREST, cutoff=0.0)
    if phone in _EXTENDED and table is EN_PHONES:
        close = [f"{_EXTENDED[phone]!r} (extended ARPAbet {phone})", *close[:NEAREST - 1]]
    return ", ".join(close)


def _arpabet(entry: Entry, source: str) -> tuple[str, ...]:
    if _CJK_RE.search(entry.word):
        raise LexiconError(f"{source}: {entry.word!r} is a Chinese word: give it pinyin (one syllable per "
                           "character), not ARPAbet phones")
    for phone in entry.value.split():
        if phone not in EN_PHONES:
            hint = " (a vowel needs its stress digit 0, 1 or 2)" if phone.upper() in _VOWELS else ""
            raise LexiconError(f"{source}: phone {phone!r} of {entry.word!r} is not an English phone of the v2 symbol "
                               f"table{hint}; nearest valid symbols: {_nearest(phone.upper(), EN_PHONES)}")
    return tuple(entry.value.split())


def _pinyin(entry: Entry, source: str) -> tuple[str, ...]:
    syllables = entry.value.split()
    characters = len(_CJK_RE.findall(entry.word))
    if characters and (characters != len(entry.word) or characters != len(syllables)):
        raise LexiconError(f"{source}: {entry.word!r} has {len(entry.word)} characters but {len(syllables)} pinyin "
                           f"syllable(s) ({entry.value!r}); give one syllable per Chinese character")
    phones: list[str] = []
    for syllable in syllables:
        match = _SYLLABLE.fullmatch(syllable.lower().replace("v", "ü"))
        if not match:
            raise LexiconError(f"{source}: pinyin {syllable!r} of {entry.word!r} is not a syllable with a tone digit "
                               "1-5 (e.g. zhang1, lv4, ma5)")
        initial, final = split_syllable(syllable.lower())
        for phone in (initial, final):
            if phone == "UNK" or phone not in symbol_to_id:
                bad = final if initial != "UNK" else syllable
                raise LexiconError(f"{source}: pinyin {syllable!r} of {entry.word!r} is not Mandarin: {bad!r} is not in "
                                   f"the v2 symbol table; nearest valid symbols: {_nearest(bad, ZH_PHONES)}")
        phones += [initial, final]
    return tuple(phones)


def compile_lexicon(lexicon: Lexicon | None) -> PhoneLexicon | None:
    """Check every entry of `lexicon` against the v2 symbol table and make it ready for the front-end (None: None).
    A phone outside the table raises `LexiconError` naming the word, the phone and the nearest valid symbols."""
    if lexicon is None:
        return None
    source = lexicon.source or "lexicon"
    phones: dict[str, tuple[str, ...]] = {}
    say: dict[str, str] = {}
    for word, entry in lexicon.entries.items():
        if entry.kind != "say" and not _READABLE_KEY.fullmatch(word):
            raise LexiconError(f"{source}: {word!r} is not one word the front-end reads (letters and apostrophes, or "
                               "Chinese characters): give each part its own entry, or respell it with say")
        if entry.kind == "phones":
            if entry.language == "zh":
                raise LexiconError(f"{source}: {word!r} is marked language zh but gives ARPAbet phones; give pinyin")
            phones[word] = _arpabet(entry, source)
        elif entry.kind == "pinyin":
            if entry.language == "en":
                raise LexiconError(f"{source}: {word!r} is marked language en but gives pinyin; give ARPAbet phones")
            phones[word] = _pinyin(entry, source)
        else:
            say[word] = entry.value
    return PhoneLexicon(lexicon, phones, say)
