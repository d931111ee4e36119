"""Narrator's exception types. Every message tells the user what to do next."""

from __future__ import annotations


class NarratorError(Exception):
    """Base class: an error we expected and can explain. The CLI prints it without a stack trace."""

    exit_code = 1


class ConfigError(NarratorError):
    """params.yaml (or an override) is malformed, has an unknown key or a value out of range."""


class SourceError(NarratorError):
    """A source folder or s3:// prefix cannot be read."""


class OutputError(NarratorError):
    """An output folder or file cannot be written: read-only, no permission, or the disk is full. The message names
    the path and what to do; it is the user's (or the machine's) problem, not a bug."""

    exit_code = 2


class OutputBusy(OutputError):
    """Another run is writing into the same output folder; the message names it (pid, since when)."""


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
