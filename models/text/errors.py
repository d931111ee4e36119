"""Errors raised by the text front-end."""

from __future__ import annotations

from narrator.errors import NarratorError


class TextError(NarratorError):
    """The text cannot be turned into phones (empty after cleaning, unknown language code...)."""


class LanguageNotSupported(TextError):
    """Japanese, Korean and Cantonese have phones in the v2 table but no front-end here yet."""
