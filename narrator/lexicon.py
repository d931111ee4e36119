"""Pronunciation lexicons: `lexicon.yaml`, how a voice (and its tenant) says the words the front-end would guess.

A lexicon maps words to what to say instead of the front-end's reading; each entry is one of

    Zorblax:  {phones: "Z AO1 R B L AE0 K S"}   # ARPAbet with stress digits (0-2) on vowels, as CMUdict spells them
    张三丰:    {pinyin: "zhang1 san1 feng1"}    # pinyin with tone digits 1-5, one syllable per Chinese character
    SQL:      {say: "sequel"}                  # a respelling, substituted for the word before G2P
    Xi:       {pinyin: "xi2", language: zh}    # optional `language` (en or zh): documentation, and the table
                                               # `narrator lexicon validate` checks the phones against

A key in lower case matches the word in any capitalisation ("zorblax" matches "Zorblax" and "ZORBLAX"); a key
with capitals matches only that spelling ("US" is not "us"). Pinyin tones are spoken as written (no tone sandhi).

This module (the library) reads and checks the file's shape; `models.text.lexicon.compile_lexicon` checks every
phone against the GPT-SoVITS v2 symbol table (pinyin becomes the zh front-end's initials and finals) and is what the
front-end applies. A lexicon is versioned with its voice: registration logs it as an artifact of the register run
and tags the version `lexicon_sha256`; the package step puts it into the voice bundle (voice.yaml lists it with its
digest), and `models.tts.load_bundle` gives it to the voice's synthesizer. `merge` puts a tenant's lexicon under a
voice's (the voice's entries win).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from narrator.config import Params
from narrator.errors import NarratorError

LEXICON_FILE = "lexicon.yaml"  # its name in a voice bundle and in the register run's artifacts
LEXICON_ARTIFACTS = "lexicon"  # the register run's artifact folder holding it
LEXICON_TAG = "lexicon_sha256"  # the model version tag: sha256 of the registered lexicon.yaml
KINDS = ("phones", "pinyin", "say")
LANGUAGES = ("en", "zh")


class LexiconError(NarratorError):
    """A lexicon file is unreadable, malformed, or names a phone outside the v2 table; nothing was changed."""

    exit_code = 2


@dataclass(frozen=True)
class Entry:
    """One word of a lexicon: `kind` is "phones", "pinyin" or "say"; `value` the text given for it."""

    word: str
    kind: str
    value: str
    language: str | None = None


@dataclass(frozen=True)
class Lexicon:
    """A parsed lexicon: its entries by word as written, where it came from, its YAML text and that text's sha256
    (what registration logs and tags)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    source: str = ""
    sha256: str = ""
    text: str = ""

    def __len__(self) -> int:
        return len(self.entries)

    def to_yaml(self) -> str:
        """The entries as lexicon.yaml text (what a merged lexicon is registered as)."""
        body = {e.word: {e.kind: e.value, **({"language": e.language} if e.language else {})}
                for e in self.entries.values()}
        return yaml.safe_dump(body, sort_keys=True, allow_unicode=True)


def parse_lexicon(text: str, source: str = "lexicon.yaml") -> Lexicon:
    """Parse lexicon.yaml text; a malformed file or entry raises `LexiconError` naming the word and the fix."""
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise LexiconError(f"{source} is not valid YAML ({error}); fix the file (see docs/lexicon.md)") from None
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise LexiconError(f"{source} must map words to entries (word: {{phones: \"...\"}}), not hold a "
                           f"{type(body).__name__}; see docs/lexicon.md")
    entries = {}
    for word, spec in body.items():
        entry = _entry(str(word), spec, source)
        entries[entry.word] = entry
    return Lexicon(entries, source, hashlib.sha256(text.encode("utf-8")).hexdigest(), text)


def _entry(word: str, spec: Any, source: str) -> Entry:
    where = f"{source}: entry {word!r}"
    if not word.strip() or word != word.strip() or any(ch.isspace() for ch in word):
        raise LexiconError(f"{where}: a lexicon key is one word without spaces; give each word its own entry")
    if not isinstance(spec, dict):
        raise LexiconError(f"{where} must be a mapping such as {{phones: \"HH AH0 L OW1\"}}, {{pinyin: \"ni3 hao3\"}} "
                           "or {say: \"respelling\"}")
    unknown = sorted(set(spec) - {*KINDS, "language"})
    if unknown:
        raise LexiconError(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; use one of "
                           f"{', '.join(KINDS)} and optionally language")
    kinds = [kind for kind in KINDS if kind in spec]
    if len(kinds) != 1:
        raise LexiconError(f"{where} needs exactly one of {', '.join(KINDS)} (it has "
                           f"{', '.join(kinds) or 'none'})")
    kind, value = kinds[0], spec[kinds[0]]
    if not isinstance(value, str) or not value.strip():
        raise LexiconError(f"{where}: {kind} must be a non-empty string, e.g. {kind}: \"...\"")
    language = spec.get("language")
    if language is not None and language not in LANGUAGES:
        raise LexiconError(f"{where}: language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    return Entry(word, kind, " ".join(value.split()), language)


def load_lexicon(path: str | Path) -> Lexicon:
    """Read and parse a lexicon.yaml file (the shape only; phones are checked by `models.text.lexicon`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LexiconError(f"{path} not found; give the path of a lexicon.yaml file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LexiconError(f"{path} cannot be read as UTF-8 text ({error}); save it as UTF-8") from None
    return parse_lexicon(text, str(path))


def merge(under: Lexicon | None, over: Lexicon | None) -> Lexicon | None:
    """`over`'s entries on top of `under`'s (a voice's lexicon over its tenant's); None when both are None. The
    merged lexicon's text is its `to_yaml`, what registration records."""
    if under is None or over is None:
        return over or under
    entries = {**under.entries, **over.entries}
    text = Lexicon(entries).to_yaml()
    return Lexicon(entries, f"{over.source} over {under.source}", hashlib.sha256(text.encode("utf-8")).hexdigest(),
                   text)


def voice_lexicon(params: Params, lexicon_file: str | Path | None = None) -> Lexicon | None:
    """The lexicon a new version of a voice registers: `lexicon_file` (else `registry.lexicon`) over its tenant's
    (`registry.tenant_lexicons[registry.tenant]`); None when neither is set."""
    from narrator.storage import fetch

    reg = params.registry
    path = lexicon_file or reg.lexicon
    voice = load_lexicon(fetch(str(path), params.storage, "registry.lexicon")) if path else None
    tenant_path = reg.tenant_lexicons.get(reg.tenant) if reg.tenant else None
    tenant = load_lexicon(fetch(tenant_path, params.storage, "registry.tenant_lexicons")) if tenant_path else None
    return merge(tenant, voice)
