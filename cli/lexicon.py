"""`narrator lexicon check|validate`: the words a manuscript makes the front-end guess, and lexicon files checked
against the v2 symbol table (docs/lexicon.md)."""

from __future__ import annotations

import json
from pathlib import Path

from narrator.config import Params
from narrator.errors import NarratorError
from narrator.lexicon import Lexicon, load_lexicon, merge

MANUSCRIPT_SUFFIXES = (".txt", ".md", ".markdown")


class ManuscriptError(NarratorError):
    """A manuscript cannot be read (missing, not UTF-8, a format not handled here)."""

    exit_code = 2


def manuscript_text(path: str | Path) -> str:
    """The text of a manuscript (.txt or Markdown, read as it is: headings and emphasis marks are not words).

    The one place `lexicon check` reads a manuscript: to be replaced by `narrator.manuscript` (EPUB, DOCX,
    chapters) when that lands."""
    path = Path(path)
    if path.suffix.lower() not in MANUSCRIPT_SUFFIXES:
        raise ManuscriptError(f"{path}: only {', '.join(MANUSCRIPT_SUFFIXES)} manuscripts are read here yet; save it "
                              "as plain text or Markdown")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManuscriptError(f"{path} not found; give the manuscript's path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ManuscriptError(f"{path} cannot be read as UTF-8 text ({error}); save it as UTF-8") from None


def _lexicon(voice: str | None, lexicon_file: str | None, params: Params) -> Lexicon | None:
    """The voice's registered lexicon (VOICE[@VERSION]) with `lexicon_file` over it (the edit being tried)."""
    from components.register import registered_lexicon

    registered = None
    if voice:
        name, _, version = voice.partition("@")
        if version and not version.isdigit():
            raise NarratorError(f"--voice {voice!r}: expected VOICE or VOICE@VERSION with a version number")
        registered = registered_lexicon(name, int(version) if version else None, params)
    return merge(registered, load_lexicon(lexicon_file) if lexicon_file else None)


def check(manuscript: str, voice: str | None, lexicon_file: str | None, language: str, as_json: bool,
          params: Params) -> int:
    """Print the guesses of `manuscript` (a table, or JSON); exit status 0."""
    from models.text.guesses import find_guesses
    from models.text.lexicon import compile_lexicon

    lexicon = compile_lexicon(_lexicon(voice, lexicon_file, params))
    guesses = find_guesses(manuscript_text(manuscript), language, lexicon)
    if as_json:
        print(json.dumps({"manuscript": str(manuscript), "lexicon_sha256": lexicon.sha256 if lexicon else None,
                          "guesses": [g.to_dict() for g in guesses]}, indent=1, ensure_ascii=False))
        return 0
    if not guesses:
        print("no guesses: every word is in the dictionary or the lexicon")
        return 0
    for g in guesses:
        reading = f" read as {g.reading!r}" if g.reading != g.word else ""
        print(f"{g.kind:<18} {g.word:<16} x{g.count:<4} {' '.join(g.phones)}{reading} ({g.note})\n"
              f"{'':<18} {g.context}")
    print(f"{len(guesses)} word(s) guessed; fix them in a lexicon.yaml (docs/lexicon.md) and check again with "
          "--lexicon FILE")
    return 0


def validate(lexicon_file: str) -> int:
    """Check a lexicon file; print its entry count and sha256."""
    from models.text.lexicon import compile_lexicon

    compiled = compile_lexicon(load_lexicon(lexicon_file))
    print(f"{lexicon_file}: {len(compiled.lexicon)} entries valid ({len(compiled.phones)} with phones, "
          f"{len(compiled.say)} respellings); sha256 {compiled.sha256}")
    return 0
