"""The synthesis audit log: one JSON line per synthesis, chained to the line before it by sha256.

Record: time, key_id, tenant, voice, version, payload_hex (the watermark), text_sha256, language, format,
sample_rate_hz, duration_s (audio seconds), output_sha256 (of the bytes sent), stream (bool), prev_sha256.
The chaining is the registry's (`components.register.append_audit`), so one verifier serves both logs:
`narrator audit verify [FILE]` names the first line that was edited, inserted or deleted. A chain alone cannot
show that its newest lines were cut off, so FILE.head holds the sha256 of the newest line (written under the same
lock as the append) and verify checks the log still ends there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from components.register import RegistryError, line_sha256, append_audit, read_audit_log


class AuditError(RegistryError):
    """The audit log's chain is broken; the message names the first broken line."""

    exit_code = 2


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
    """Appends records to `path` (locked against concurrent writers: several workers may share it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def head_path(self) -> Path:
        return head_path(self.path)

    def append(self, record: SynthesisRecord) -> str:
        """Append one record and move the head to it; returns its line's sha256."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            digest = append_audit(self.path, {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                              "event": "synthesis", **asdict(record)})
            tmp = self.head_path.with_name(self.head_path.name + ".tmp")
            tmp.write_text(json.dumps({"last_sha256": digest}) + "\n", encoding="utf-8")
            os.replace(tmp, self.head_path)
        return digest

    def records(self) -> list[dict]:
        return read_audit_log(self.path)


def head_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".head")


def verify(path: str | Path) -> int:
    """The number of records when the chain is intact and ends at the head; raises AuditError naming the first
    broken line (or the cut-off end)."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path}: no audit log there; give the file (serving.audit_log in params.yaml)")
    try:
        records = read_audit_log(path)
    except RegistryError as error:
        raise AuditError(str(error)) from None
    head = head_path(path)
    if head.exists():
        expected = json.loads(head.read_text(encoding="utf-8"))["last_sha256"]
        lines = path.read_text(encoding="utf-8").splitlines()
        last = line_sha256(lines[-1]) if lines else None
        if last != expected:
            raise AuditError(f"{path} line {len(lines) + 1}: the log ends before its newest record ({head.name} "
                             f"names {expected[:12]}...): records were deleted from the end; restore the log from "
                             "a backup")
    return len(records)
