"""The synthesis audit log: one record per synthesis, in the hash-chained format of `narrator/audit.py`.

Record: time, key_id, tenant, voice, version, payload_hex (the watermark), text_sha256, language, format,
sample_rate_hz, duration_s (audio seconds), output_sha256 (of the bytes sent), stream (bool), prev_sha256.
`narrator audit verify [FILE]` names the first line that was edited, inserted or deleted, or a cut-off end.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from narrator import audit


@dataclass
class SynthesisRecord:
    key_id: str
    tenant: str
    voice: str
    version: int
    payload_hex: str
    text_sha256: str
    language: str
    format: str
    sample_rate_hz: int
    duration_s: float
    output_sha256: str
    stream: bool


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SynthesisAudit:
    """Appends synthesis records to `path` (several service workers may share it: appends are locked)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def head_path(self) -> Path:
        return audit.head_path(self.path)

    def append(self, record: SynthesisRecord) -> str:
        """Append one record and move the head to it; returns its line's sha256."""
        return audit.append(self.path, {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                        "event": "synthesis", **asdict(record)})

    def records(self) -> list[dict]:
        return audit.read(self.path)
