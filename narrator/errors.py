"""Narrator's exception types. Every message tells the user what to do next."""

from __future__ import annotations


class NarratorError(Exception):
    """Base class: an error we expected and can explain. The CLI prints it without a stack trace."""

    exit_code = 1


class ConfigError(NarratorError):
    """params.yaml (or an override) is malformed, has an unknown key or a value out of range."""


class SourceError(NarratorError):
    """A source folder or s3:// prefix cannot be read."""


class AudioError(NarratorError):
    """An audio file cannot be decoded."""


class DatasetRefused(NarratorError):
    """The dataset as a whole cannot be used (no consent, consent speaker mismatch, too little speech)."""

    exit_code = 2

    def __init__(self, message: str, codes: list[str] | None = None):
        super().__init__(message)
        self.codes = list(codes or [])


class MissingDependency(NarratorError):
    """A system tool or optional package is missing."""
