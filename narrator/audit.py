"""Hash-chained audit logs: one JSON object per line, each carrying the sha256 of the line before it.

Two logs use this format: the registry's (`registry.audit_log`: registrations, promotions, approvals, gate
failures, pipeline runs) and the service's (`serving.audit_log`: one record per synthesis). Each line holds
`prev_sha256`, the sha256 of the previous line (64 zeros for the first), so editing, inserting or deleting a line
breaks the chain at the next one. A chain alone cannot show that its newest lines were cut off, so `FILE.head`
holds the sha256 of the newest line, written under the same lock as the append; `verify` checks that the log
still ends there. Appends are locked against concurrent writers (POSIX `flock`), so several processes may share a
log.

    append(path, {"event": "registered", ...})   -> the new line's sha256
    read(path)                                   -> every record, oldest first (AuditError when broken)
    verify(path)                                 -> the number of records (AuditError naming the first bad line)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from narrator.errors import NarratorError

GENESIS_SHA256 = "0" * 64  # prev_sha256 of the first line


class AuditError(NarratorError):
    """An audit log's chain is broken; the message names the first broken line and what to do."""

    exit_code = 2


def line_sha256(line: str) -> str:
    """sha256 of one line of a log (without its newline), as the next line's prev_sha256 holds it."""
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def head_path(path: str | Path) -> Path:
    """The file naming the sha256 of the log's newest line: `FILE.head` beside `FILE`."""
    path = Path(path)
    return path.with_name(path.name + ".head")


@contextmanager
def exclusive(handle) -> Iterator[None]:
    """Hold an exclusive lock on an open file (POSIX flock; elsewhere no lock) until the block ends."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def append(path: str | Path, record: dict[str, Any]) -> str:
    """Append `record` (plus prev_sha256) as one JSON line and move the head to it; returns the line's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle, exclusive(handle):
        handle.seek(0)
        lines = handle.read().splitlines()
        prev = line_sha256(lines[-1]) if lines else GENESIS_SHA256
        line = json.dumps({**record, "prev_sha256": prev}, sort_keys=True, ensure_ascii=False)
        handle.seek(0, os.SEEK_END)
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        digest = line_sha256(line)
        head = head_path(path)
        tmp = head.with_name(head.name + ".tmp")
        tmp.write_text(json.dumps({"last_sha256": digest}) + "\n", encoding="utf-8")
        os.replace(tmp, head)
    return digest


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every record of the log, oldest first (empty when there is no log yet); AuditError when a line was edited,
    inserted or deleted."""
    path = Path(path)
    if not path.exists():
        return []
    records, prev = [], GENESIS_SHA256
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AuditError(f"{path} line {number} is not JSON: the audit log was edited; restore it from a "
                             "backup") from None
        if not isinstance(record, dict) or record.get("prev_sha256") != prev:
            raise AuditError(f"{path} line {number} does not chain to the line before it: a line was edited, "
                             "inserted or deleted there; restore the log from a backup")
        records.append(record)
        prev = line_sha256(line)
    return records


def verify(path: str | Path) -> int:
    """The number of records when the chain is intact and ends at its head; AuditError naming the first broken
    line, or the cut-off end."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path}: no audit log there; give the file (serving.audit_log or registry.audit_log in "
                         "params.yaml)")
    records = read(path)
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
