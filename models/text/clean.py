"""Cleaning raw text before the front-end reads it: terminal escape sequences, control and invisible format characters.

    clean_text("\\x1b[31mHello\\x1b[0m\\u200b world")  ->  "Hello world"

Text pasted from a terminal or a word processor carries characters nobody means to be spoken: an ANSI colour code
`\\x1b[31m` would otherwise reach the normaliser as "[31m" and be read "thirty-one meters". Removed:

- ANSI/ECMA-48 escape sequences: CSI (`ESC [ ... final`, and the 8-bit CSI U+009B), OSC (`ESC ] ... BEL|ESC \\\\`,
  the 8-bit OSC U+009D), DCS/SOS/PM/APC strings (terminated, at most 512 characters: an unterminated one loses only
  its introducer, never the text after it), and two-character escapes (`ESC c`, `ESC =`, ...);
- C0 and C1 control characters (Unicode category Cc) except line feed, carriage return and tab (the front-end turns
  those into sentence ends and spaces);
- format characters (category Cf): zero-width space/joiners, word joiner, byte-order mark, soft hyphen, and the
  bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069, LRM/RLM).

Unicode normalisation stays where it was, in the front-end's fold (`frontend._fold`): NFKC, which folds full-width
digits, letters and punctuation and compatibility forms (ligatures, superscripts) to what the normalisers read,
keeping "…". NFC would leave full-width "１２３" unread. Cleaning runs first, so an escape or an invisible character
never reaches NFKC nor anything after it. Text without such characters is returned unchanged (the same object).
"""

from __future__ import annotations

import re
import unicodedata

_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]{0,512}(?:\x07|\x1b\\|\x9c)"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]"  # two-character (and nF) escapes
)
_KEEP = frozenset("\n\r\t")


def clean_text(text: str) -> str:
    """`text` without terminal escape sequences, control characters (but newline, carriage return and tab) and
    invisible format characters (zero-width, bidi controls, BOM, soft hyphen); see the module docstring."""
    if text.isprintable():  # no Cc nor Cf character (fast path; also False for other invisible categories)
        return text
    text = _ESCAPES.sub("", text)
    return "".join(ch for ch in text if ch in _KEEP or unicodedata.category(ch) not in ("Cc", "Cf"))
