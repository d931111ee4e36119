"""A subset of SSML 1.1, parsed safely and mapped onto the text front-end.

    segments = parse_ssml('<speak>Hello <break time="700ms"/> <phoneme alphabet="x-arpabet" ph="T AH0 M EY1 T OW2">'
                          'tomato</phoneme></speak>', "en")
    -> [Speech("Hello", "en"), Pause(0.7), Speech("zqxphonemea", "en", phones={"zqxphonemea": (...)})]
    synth.stream_segments(segments, reference, settings, seed)          # models/tts.py

Elements (and their attributes):

- `<speak>` (`xml:lang`, `version`, `xmlns`): the document, root only.
- `<break>` (`time`: "700ms", "1.5s"; `strength`: none, x-weak, weak, medium, strong, x-strong): exactly that much
  silence, in place of the pause between sentences; `time` wins over `strength`; at most `SsmlLimits.max_break_s`.
- `<prosody>` (`rate`: x-slow, slow, medium, fast, x-fast, default, "150%", "+20%", "-10%", "1.2"): the
  synthesizer's speed times the rate (nested rates multiply), bounded to 0.5-2.0.
- `<say-as>` (`interpret-as`: characters, cardinal, date; `format` of a date: mdy, dmy, ymd, md, dm, ym, my, y):
  letters spelled by their names (digits one by one), a number read as a quantity, a date read as words.
- `<sub>` (`alias`): the alias is spoken instead of the content.
- `<phoneme>` (`alphabet`: x-arpabet, pinyin, ipa; `ph`): that occurrence read with those phones, checked as
  lexicon entries are (`models.text.lexicon`).
- `<lang>` (`xml:lang`: en, en-US, en-GB, ..., zh, zh-CN, cmn, ...): the front-end language of its content.

Anything else (another element, attribute, namespace or value) raises `SsmlError` naming it; the service answers
422. The document is parsed with defusedxml and `forbid_dtd`: a DOCTYPE is refused before anything in it is read,
so entity expansion ("billion laughs") and external entities (`SYSTEM "file:///etc/passwd"`) never happen. A
document is bounded in elements (`max_elements`) and depth (`max_depth`); its length is the caller's limit (the
service's `serving.max_text_chars`). Control characters and escape sequences are removed before parsing
(`models.text.clean`).

Per-occurrence phones: a `<phoneme>` (and a spelled `say-as characters` word) is replaced in its segment's text by a
placeholder word of letters only, and the segment carries the placeholder's phones; the synthesizer reads the
segment with the voice's lexicon plus these words (`segment_lexicon`). Every other occurrence of the same word
keeps its ordinary reading. A placeholder is read as one English word (one word2ph entry), also in Chinese text,
as an English-script lexicon word with pinyin is.

IPA: English only, through a small table (`IPA_TO_ARPABET`): the consonants and vowels of General American and
RP as CMUdict's phones, the length mark folded, `ˈ` / `ˌ` giving the next vowel stress 1 / 2, other vowels 0 (a
transcription without stress marks stresses its first vowel). A symbol outside the table is refused, naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from models.text.clean import clean_text
from models.text.errors import TextError

SSML_NAMESPACE = "http://www.w3.org/2001/10/synthesis"
XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
MIN_RATE, MAX_RATE = 0.5, 2.0  # the synthesizer's speed bounds (the service's `speed` field has the same)
RATES = {"x-slow": 0.6, "slow": 0.8, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
DATE_FORMATS = ("mdy", "dmy", "ymd", "md", "dm", "ym", "my", "y")
_PLACEHOLDER = "zqxphoneme"  # + letters: a word no text has; the front-end reads it with its lexicon phones
_CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff〇]")
_ATTRIBUTES = {
    "speak": {"lang", "version", "base"},
    "break": {"time", "strength"},
    "prosody": {"rate"},
    "say-as": {"interpret-as", "format", "detail"},
    "sub": {"alias"},
    "phoneme": {"alphabet", "ph"},
    "lang": {"lang"},
}


class SsmlError(TextError):
    """An SSML document outside the supported subset or unsafe to parse; the message names the element or
    attribute (the service answers 422)."""


@dataclass(frozen=True)
class SsmlLimits:
    """What a document may ask for (the service fills these from `serving.ssml_*`)."""

    max_break_s: float = 10.0
    break_strengths_s: dict = field(default_factory=lambda: {"none": 0.0, "x-weak": 0.1, "weak": 0.25,
                                                             "medium": 0.4, "strong": 0.7, "x-strong": 1.2})
    max_elements: int = 500
    max_depth: int = 16


@dataclass(frozen=True)
class Speech:
    """Text to speak in `language` at `rate` times the request's speed; `phones` are the placeholder words of its
    text with their v2 phones (per-occurrence `<phoneme>` and spelled words)."""

    text: str
    language: str = "auto"
    rate: float = 1.0
    phones: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Pause:
    """Silence of exactly `seconds`, replacing the pause between sentences where it stands."""

    seconds: float


Segment = Speech | Pause


_SSML_START = re.compile(r"\s*(?:<\?xml[^>]*\?>\s*)?(?:<!DOCTYPE|<speak[\s>/])", re.IGNORECASE)


def is_ssml(text: str) -> bool:
    """Whether a request's text is an SSML document: it starts with `<speak` (or an XML declaration, or a DOCTYPE,
    which `parse_ssml` then refuses), after cleaning and spaces."""
    return bool(_SSML_START.match(clean_text(text)))


def parse_ssml(markup: str, language: str = "auto", limits: SsmlLimits | None = None) -> list[Segment]:
    """An SSML document -> speech and pause segments in order (see the module docstring); `SsmlError` otherwise."""
    import xml.etree.ElementTree as ET

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    from models.text.frontend import check_language

    limits = limits or SsmlLimits()
    language = check_language(language)
    markup = clean_text(markup)
    try:
        root = fromstring(markup, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as error:
        raise SsmlError(f"the SSML document declares a DOCTYPE or entities ({type(error).__name__}); they are "
                        "refused (no entity expansion, no external files): remove the <!DOCTYPE ...>") from None
    except ET.ParseError as error:
        raise SsmlError(f"the SSML document is not well-formed XML ({error}); escape & and < in text as &amp; and "
                        "&lt;") from None
    if _tag(root) != "speak":
        raise SsmlError(f"an SSML document starts with <speak>, not <{_tag(root)}>")
    count = sum(1 for _ in root.iter())
    if count > limits.max_elements:
        raise SsmlError(f"the SSML document has {count} elements; at most {limits.max_elements}")
    walker = _Walker(limits, "zh" if language == "auto" and _CJK_RE.search(markup) else language)
    walker.element(root, _State(language, 1.0), 1)
    walker.flush()
    return walker.segments


@dataclass(frozen=True)
class _State:
    language: str
    rate: float


def _tag(element) -> str:
    tag = element.tag if isinstance(element.tag, str) else "?"
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        if namespace != SSML_NAMESPACE:
            raise SsmlError(f"element <{name}> of namespace {namespace!r} is not SSML; use the SSML subset "
                            "(speak, break, prosody, say-as, sub, phoneme, lang)")
        return name
    return tag


def _attributes(element, name: str) -> dict[str, str]:
    out = {}
    for key, value in element.attrib.items():
        local = key
        if key.startswith("{"):
            namespace, _, local = key[1:].partition("}")
            if namespace == XSI_NAMESPACE:
                continue
            if namespace != XML_NAMESPACE and namespace != SSML_NAMESPACE:
                raise SsmlError(f"attribute {local!r} of <{name}> (namespace {namespace!r}) is not supported")
        if local not in _ATTRIBUTES[name]:
            allowed = ", ".join(sorted("xml:lang" if a == "lang" else a for a in _ATTRIBUTES[name])) or "none"
            raise SsmlError(f"attribute {local!r} of <{name}> is not supported (supported: {allowed})")
        out[local] = value.strip()
    return out


def _language(value: str, name: str) -> str:
    code = value.strip().lower().replace("_", "-")
    head = code.split("-")[0]
    if head == "en":
        return "en"
    if head in ("zh", "cmn") and not code.endswith(("-hk", "-yue")) and "yue" not in code:
        return "zh"
    raise SsmlError(f"xml:lang {value!r} of <{name}> is not supported; use en (en-US, en-GB, ...) or zh (zh-CN, "
                    "cmn, ...)")


def _seconds(value: str, limits: SsmlLimits) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*", value)
    if not match:
        raise SsmlError(f"<break time={value!r}> is not a time; write it as 700ms or 1.5s")
    seconds = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    if seconds > limits.max_break_s:
        raise SsmlError(f"<break time={value!r}> is longer than {limits.max_break_s:g} s, the longest break allowed")
    return seconds


def _rate(value: str) -> float:
    text = value.strip().lower()
    if text in RATES:
        return RATES[text]
    match = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)(%?)", text)
    if not match:
        raise SsmlError(f"<prosody rate={value!r}> is not a rate; use x-slow, slow, medium, fast, x-fast, a "
                        "percentage (150%, +20%, -10%) or a multiplier (1.2)")
    sign, number, percent = match.groups()
    amount = float(number)
    if percent and sign:
        rate = 1.0 + (amount if sign == "+" else -amount) / 100.0
    elif percent:
        rate = amount / 100.0
    elif sign == "-":
        rate = 0.0
    else:
        rate = amount
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SsmlError(f"<prosody rate={value!r}> is outside {MIN_RATE:g}-{MAX_RATE:g} times the normal rate")
    return rate


class _Walker:
    def __init__(self, limits: SsmlLimits, number_language: str) -> None:
        self.limits = limits
        self.number_language = number_language  # how say-as reads numbers where the language is "auto"
        self.segments: list[Segment] = []
        self._pieces: list[str] = []
        self._phones: dict[str, tuple[str, ...]] = {}
        self._state: _State | None = None
        self._placeholders = 0

    # -- output ---------------------------------------------------------------------------------------------------

    def switch(self, state: _State) -> None:
        """Speak what follows in `state`: a segment in another state ends here."""
        if self._state is not None and state != self._state and "".join(self._pieces).strip():
            self.flush()
        if self._state is None or not "".join(self._pieces).strip():
            self._state = state

    def text(self, text: str | None, state: _State) -> None:
        if not text:
            return
        self.switch(state)
        self._pieces.append(text)

    def flush(self) -> None:
        text = " ".join(clean_text("".join(self._pieces)).split())  # character references (&#x200b;) included
        if text and self._state is not None:
            self.segments.append(Speech(text, self._state.language, self._state.rate, dict(self._phones)))
        self._pieces, self._phones, self._state = [], {}, None

    def pause(self, seconds: float) -> None:
        self.flush()
        self.segments.append(Pause(seconds))

    def placeholder(self, phones: tuple[str, ...]) -> str:
        n, letters = self._placeholders, ""
        self._placeholders += 1
        while True:
            n, r = divmod(n, 26)
            letters += chr(ord("a") + r)
            if n == 0:
                break
        word = _PLACEHOLDER + letters
        self._phones[word] = phones
        return word

    # -- elements -------------------------------------------------------------------------------------------------

    def element(self, element, state: _State, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise SsmlError(f"the SSML document nests elements deeper than {self.limits.max_depth}")
        name = _tag(element)
        if name not in _ATTRIBUTES:
            raise SsmlError(f"<{name}> is not supported; use the SSML subset: speak, break, prosody, say-as, sub, "
                            "phoneme, lang")
        attrs = _attributes(element, name)
        if name == "speak":
            if depth > 1:
                raise SsmlError("<speak> is the document's root; it cannot be nested")
            if "lang" in attrs:
                state = _State(_language(attrs["lang"], name), state.rate)
            self.children(element, state, depth)
        elif name == "break":
            if len(element) or (element.text or "").strip():
                raise SsmlError("<break> is empty: write <break time=\"500ms\"/>")
            if "time" in attrs:
                seconds = _seconds(attrs["time"], self.limits)
            else:
                strength = attrs.get("strength", "medium")
                if strength not in self.limits.break_strengths_s:
                    raise SsmlError(f"<break strength={strength!r}> is not a strength; use one of "
                                    f"{', '.join(self.limits.break_strengths_s)}")
                seconds = float(self.limits.break_strengths_s[strength])
            self.pause(seconds)
        elif name == "prosody":
            rate = state.rate * _rate(attrs["rate"]) if "rate" in attrs else state.rate
            self.children(element, _State(state.language, rate), depth)
        elif name == "lang":
            if "lang" not in attrs:
                raise SsmlError("<lang> needs xml:lang, e.g. <lang xml:lang=\"zh-CN\">")
            self.children(element, _State(_language(attrs["lang"], name), state.rate), depth)
        elif name == "sub":
            self.only_text(element, name)
            if "alias" not in attrs:
                raise SsmlError("<sub> needs alias, e.g. <sub alias=\"World Wide Web\">WWW</sub>")
            self.text(f" {attrs['alias']} ", state)
        elif name == "say-as":
            self.only_text(element, name)
            self.switch(state)  # before say_as/phoneme add their placeholder words to the current segment
            self.text(f" {self.say_as(element.text or '', attrs, state)} ", state)
        elif name == "phoneme":
            self.only_text(element, name)
            self.switch(state)
            self.text(f" {self.phoneme(element.text or '', attrs)} ", state)
        self.text(element.tail, state)

    def children(self, element, state: _State, depth: int) -> None:
        self.text(element.text, state)
        for child in element:
            self.element(child, state, depth + 1)

    @staticmethod
    def only_text(element, name: str) -> None:
        if len(element):
            raise SsmlError(f"<{name}> may hold only text, not <{_tag(element[0])}>")

    # -- say-as and phoneme ---------------------------------------------------------------------------------------

    def say_as(self, content: str, attrs: dict[str, str], state: _State) -> str:
        kind = attrs.get("interpret-as", "")
        content = content.strip()
        language = state.language if state.language != "auto" else self.number_language
        if kind == "characters":
            return self.characters(content, language)
        if kind == "cardinal":
            return _cardinal(content, language)
        if kind == "date":
            return _date(content, attrs.get("format", "ymd"), language)
        raise SsmlError(f"<say-as interpret-as={kind!r}> is not supported; use characters, cardinal or date")

    def characters(self, content: str, language: str) -> str:
        from models.text.en_g2p import spell
        from models.text.en_normalize import _ONES
        from models.text.zh_normalize import digits_to_zh

        out = []
        for run in re.findall(r"[A-Za-z]+|\d|\S", content):
            if run.isascii() and run.isalpha():
                out.append(self.placeholder(tuple(spell(run))))
            elif run.isdigit():
                out.append(digits_to_zh(run) if language == "zh" else _ONES[int(run)])
            else:
                out.append(run)
        return " ".join(out)

    def phoneme(self, content: str, attrs: dict[str, str]) -> str:
        from models.text.lexicon import _arpabet, _pinyin
        from narrator.lexicon import Entry, LexiconError

        if "ph" not in attrs or not attrs["ph"].strip():
            raise SsmlError("<phoneme> needs ph, e.g. <phoneme alphabet=\"x-arpabet\" ph=\"T AH0 M EY1 T OW2\">")
        alphabet, ph, word = attrs.get("alphabet", "ipa").strip().lower(), attrs["ph"], content.strip() or "?"
        try:
            if alphabet in ("x-arpabet", "arpabet"):
                phones = _arpabet(Entry(word, "phones", " ".join(ph.split())), "<phoneme>")
            elif alphabet in ("pinyin", "x-pinyin"):
                phones = _pinyin(Entry(word if _CJK_RE.search(word) else "x", "pinyin", " ".join(ph.split())),
                                 "<phoneme>")
            elif alphabet == "ipa":
                phones = ipa_to_arpabet(ph)
            else:
                raise SsmlError(f"<phoneme alphabet={alphabet!r}> is not supported; use x-arpabet, pinyin or ipa")
        except LexiconError as error:
            raise SsmlError(str(error)) from None
        return self.placeholder(phones)


def _cardinal(content: str, language: str) -> str:
    from models.text.en_normalize import number_words
    from models.text.zh_normalize import number_to_zh

    number = content.replace(" ", "")
    if not re.fullmatch(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", number):
        raise SsmlError(f"<say-as interpret-as=\"cardinal\"> holds {content!r}, not a number")
    if language == "zh":
        return number_to_zh(number)
    return number_words(number.lstrip("+"))


def _date(content: str, fmt: str, language: str) -> str:
    from models.text.en_normalize import MONTHS, ordinal_words, year_words

    fmt = fmt.strip().lower()
    if fmt not in DATE_FORMATS:
        raise SsmlError(f"<say-as interpret-as=\"date\" format={fmt!r}> is not a date format; use one of "
                        f"{', '.join(DATE_FORMATS)}")
    parts = [p for p in re.split(r"[-/.\s]+", content.strip()) if p]
    if len(parts) != len(fmt) or not all(p.isdigit() for p in parts):
        raise SsmlError(f"<say-as interpret-as=\"date\" format=\"{fmt}\"> holds {content!r}, not a {len(fmt)}-part "
                        "numeric date (e.g. 2024-03-05 for ymd, 03/05/2024 for mdy)")
    value = {letter: int(part) for letter, part in zip(fmt, parts)}
    if "m" in value and not 1 <= value["m"] <= 12 or "d" in value and not 1 <= value["d"] <= 31:
        raise SsmlError(f"<say-as interpret-as=\"date\" format=\"{fmt}\"> holds {content!r}: month 1-12, day 1-31")
    if language == "zh":
        return "".join(f"{value[k]}{u}" for k, u in (("y", "年"), ("m", "月"), ("d", "日")) if k in value)
    year = f", {year_words(value['y'])}" if "y" in value else ""
    if "m" not in value:
        return year_words(value["y"])
    month = MONTHS[value["m"] - 1]
    if "d" not in value:
        return f"{month}{year.replace(',', '')}"
    if fmt.index("d") < fmt.index("m"):
        return f"the {ordinal_words(value['d'])} of {month}{year}"
    return f"{month} {ordinal_words(value['d'])}{year}"


# -- IPA ----------------------------------------------------------------------------------------------------------

#: English IPA -> ARPAbet (CMUdict's phones); vowels without their stress digit (see `ipa_to_arpabet`)
IPA_TO_ARPABET: dict[str, str] = {
    # consonants
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "ɡ": "G", "f": "F", "v": "V", "θ": "TH",
    "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "tʃ": "CH", "t͡ʃ": "CH", "ʧ": "CH",
    "dʒ": "JH", "d͡ʒ": "JH", "ʤ": "JH", "m": "M", "n": "N", "ŋ": "NG", "l": "L", "ɫ": "L", "ɹ": "R", "r": "R",
    "ɾ": "T", "ʔ": "T", "w": "W", "j": "Y", "ʍ": "W",
    # syllabic consonants (schwa + consonant, as CMUdict spells them)
    "l̩": "AH L", "n̩": "AH N", "m̩": "AH M",
    # vowels and diphthongs
    "i": "IY", "ɪ": "IH", "e": "EY", "eɪ": "EY", "ɛ": "EH", "æ": "AE", "a": "AA", "ɑ": "AA", "ɒ": "AA",
    "ɔ": "AO", "o": "OW", "oʊ": "OW", "əʊ": "OW", "ʊ": "UH", "u": "UW", "ʌ": "AH", "ə": "AH", "ɐ": "AH",
    "ɜ": "ER", "ɝ": "ER", "ɚ": "ER", "aɪ": "AY", "aʊ": "AW", "ɔɪ": "OY", "ɪə": "IH R", "eə": "EH R",
    "ʊə": "UH R", "ɛə": "EH R",
}
_VOWEL_PHONES = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
_IPA_IGNORED = "ː ˑ . ‿ / [ ] ( ) \u0361 \u035c"  # length, syllable marks, slashes, tie bars


def ipa_to_arpabet(ipa: str) -> tuple[str, ...]:
    """English IPA (General American or RP) -> v2 ARPAbet phones with stress digits; `SsmlError` naming a symbol
    outside `IPA_TO_ARPABET`. `ˈ`/`ˌ` stress the next vowel 1/2, the others get 0; without marks, the first vowel 1."""
    import unicodedata

    text = unicodedata.normalize("NFC", ipa).replace("'", "ˈ").replace(",", "ˌ").replace("g", "ɡ")
    for mark in _IPA_IGNORED.split():
        text = text.replace(mark, "")
    text = "".join(text.split())
    keys = sorted(IPA_TO_ARPABET, key=len, reverse=True)
    phones: list[str] = []
    stress, marked = None, "ˈ" in text or "ˌ" in text
    i = 0
    while i < len(text):
        if text[i] in "ˈˌ":
            stress = "1" if text[i] == "ˈ" else "2"
            i += 1
            continue
        for key in keys:
            if text.startswith(key, i):
                break
        else:
            raise SsmlError(f"<phoneme alphabet=\"ipa\">: {text[i]!r} (in {ipa!r}) is not an English IPA symbol this "
                            "service maps to ARPAbet; use alphabet=\"x-arpabet\"")
        i += len(key)
        for phone in IPA_TO_ARPABET[key].split():
            if phone in _VOWEL_PHONES:
                if stress is None and not marked and not any(p[-1] == "1" for p in phones):
                    stress = "1"
                phone += stress or "0"
                stress = None
            phones.append(phone)
    if not phones:
        raise SsmlError(f"<phoneme alphabet=\"ipa\" ph={ipa!r}> has no phones")
    return tuple(phones)


def segment_lexicon(base, phones: dict):
    """The lexicon a segment is read with: the voice's (`PhoneLexicon` or None) plus the segment's placeholder
    words; `base` itself when the segment has none."""
    if not phones:
        return base
    from models.text.lexicon import PhoneLexicon
    from narrator.lexicon import Lexicon

    if base is None:
        return PhoneLexicon(Lexicon(), dict(phones), {})
    return PhoneLexicon(base.lexicon, {**base.phones, **phones}, dict(base.say))
