"""Narrator: one minute of a narrator's consented speech in, a watermarked production voice out.

The shared core lives here: typed configuration (`narrator.config`), errors (`narrator.errors`), audio files
(`narrator.audiofile`), storage (`narrator.storage`) and the `narrator` command line (`narrator.cli`).
Pipeline steps live in `components/`, the GPT-SoVITS model in `models/`.
"""

__version__ = "0.1.0"
