"""Chained audit logs: one JSON record per line (or per row of a PostgreSQL table), each sealed with a MAC that
covers the previous record's MAC, so editing, inserting or deleting a record breaks the chain exactly there.

Two logs use this format: the registry's (`registry.audit_log`: registrations, promotions, approvals, gate
failures, pipeline runs) and the service's (`serving.audit_log`: one record per synthesis). Besides its own
fields, each record carries

    seq       its position, 1 for the first record (so a deleted record leaves a visible gap)
    prev_mac  the previous record's mac (64 zeros for the first)
    chain     "hmac-sha256" (keyed) or "sha256" (unkeyed)
    mac       HMAC-SHA256 with the audit key (keyed), or plain sha256 (unkeyed), of the record's canonical JSON
              without `mac` (sorted keys, no spaces): that JSON holds seq and prev_mac, so the mac covers
              (previous mac + record)

The key is a secret from `$NARRATOR_AUDIT_KEY`, else from the file that `registry.audit_key_file` /
`serving.audit_key_file` names (a mounted secret). Without a key the log still chains (unkeyed, as before), but
anyone who can write it can recompute the chain: `verify` says so. With a key, a record edited without it no
longer verifies, and unkeyed records after a keyed one (a forged downgrade) are refused.

Where a log lives:
- a file (the default): JSON lines; `FILE.head` holds the newest record's seq and mac and the log's size in
  bytes, written under the same lock (POSIX `flock` on the log) as the append. An append reads only the head and
  writes one line, whatever the log's length; when the head is missing or stale (a log from before heads held
  sizes, a crash between the two writes) it reads what the head does not cover, once; a torn last line beyond
  the head (a crash mid-write: that append never returned) is dropped. Records cut off the end leave the head
  where it was, so the next append continues from it and the gap stays visible. Move FILE and FILE.head together.
- a PostgreSQL table: `postgresql://USER@HOST/DB?table=NAME` (table `narrator_audit` without `table`), created on
  first use, with a one-row `NAME_head` table that every append locks (`SELECT ... FOR UPDATE`): processes on
  several machines append one at a time. The password comes from `$PGPASSWORD` (or ~/.pgpass), not params.yaml.

Logs written before records carried seq and mac (lines with only `prev_sha256`, the sha256 of the line before)
still read and verify, as unkeyed; new records continue their chain.

    append(log, {"event": "registered", ...}, key)  -> the new record's mac
    read(log, key)                                  -> every record, oldest first (AuditError when broken)
    verify(log, key)                                -> a Verification (AuditError naming the first bad record)
    postgres_lock(url, name)                        -> an advisory lock in that database (the registry's lock)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from narrator.errors import NarratorError

GENESIS_SHA256 = "0" * 64  # prev_mac (and legacy prev_sha256) of the first record
KEY_ENV = "NARRATOR_AUDIT_KEY"
MIN_KEY_BYTES = 16  # shorter secrets are refused: an HMAC key should be at least this strong
KEYED, UNKEYED = "hmac-sha256", "sha256"
CHAIN_FIELDS = ("seq", "prev_mac", "chain", "mac")
LEGACY_FIELD = "prev_sha256"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_TABLE = "narrator_audit"
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


class AuditError(NarratorError):
    """An audit log's chain is broken; the message names the first broken record and what to do."""

    exit_code = 2


# -- keys, digests -------------------------------------------------------------------------------------------------


def load_key(key_file: str | None = None, environ: dict[str, str] | None = None) -> bytes | None:
    """The audit key from $NARRATOR_AUDIT_KEY, else from `key_file`; None when neither is set (an unkeyed log)."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        key = env[KEY_ENV].strip().encode("utf-8")
        source = f"${KEY_ENV}"
    elif key_file:
        try:
            key = Path(key_file).expanduser().read_bytes().strip()
        except OSError as error:
            raise AuditError(f"cannot read the audit key file {key_file} ({error.strerror}); fix the audit_key_file "
                             f"setting or set {KEY_ENV}") from None
        source = str(key_file)
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise AuditError(f"the audit key in {source} is {len(key)} bytes; use at least {MIN_KEY_BYTES}, e.g. "
                         "`python -c \"import secrets; print(secrets.token_hex(32))\"`")
    return key


def line_sha256(line: str) -> str:
    """sha256 of one line of a log (without its newline): what a legacy line's successor holds as prev_sha256."""
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's mac covers: its JSON without `mac`, keys sorted, no spaces."""
    fields = {k: v for k, v in record.items() if k != "mac"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal(record: dict[str, Any], key: bytes | None) -> str:
    """The mac of a record (with seq, prev_mac and chain in it): HMAC-SHA256 with `key`, or sha256 without."""
    data = canonical(record)
    return hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()


def new_line(record: dict[str, Any], seq: int, prev_mac: str, key: bytes | None) -> tuple[str, str]:
    """The log line of `record` as record number `seq` after `prev_mac`, and its mac."""
    clash = sorted(set(record) & {*CHAIN_FIELDS, LEGACY_FIELD})
    if clash:
        raise AuditError(f"an audit record may not carry {', '.join(clash)}: the log sets those itself; rename them")
    sealed = {**record, "seq": seq, "prev_mac": prev_mac, "chain": KEYED if key else UNKEYED}
    sealed = json.loads(json.dumps(sealed, ensure_ascii=False))  # seal what a reader will parse back (tuples...)
    sealed["mac"] = seal(sealed, key)
    return json.dumps(sealed, sort_keys=True, ensure_ascii=False), sealed["mac"]


# -- checking a chain ----------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One parsed line: where it claims to be in the chain and whether its own mac holds (None: not checkable)."""

    record: dict[str, Any]
    seq: int | None  # None for a legacy line
    prev: str
    digest: str  # what the next record's prev_mac (or prev_sha256) must be
    chain: str  # KEYED, UNKEYED or "legacy"
    sealed: bool | None  # True: its mac matches its content; False: it does not; None: keyed but no key given


def _parse(line: str, key: bytes | None) -> _Entry | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if "mac" not in record:
        if not isinstance(record.get(LEGACY_FIELD), str):
            return None
        return _Entry(record, None, record[LEGACY_FIELD], line_sha256(line), "legacy", True)
    seq, prev, chain, mac = (record.get(f) for f in CHAIN_FIELDS)
    if not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(mac, str) or chain not in (KEYED,
                                                                                                        UNKEYED):
        return None
    if chain == KEYED:
        sealed = None if key is None else hmac.compare_digest(seal(record, key), mac)
    else:
        sealed = hmac.compare_digest(seal(record, None), mac)
    return _Entry(record, seq, prev, mac, chain, sealed)


@dataclass
class Verification:
    """What `verify` found: an intact chain of `records`, how many of them are keyed and how many are not."""

    location: str
    records: int
    keyed: int  # records whose HMAC was checked with the key
    unkeyed: int  # records chained by plain sha256 (written without a key, or before keys existed)
    unchecked: int  # keyed records whose HMAC could not be checked (no key given)

    def summary(self) -> str:
        """One line for people: intact, how many records, and how far the chain can be trusted."""
        text = f"{self.location}: intact, {self.records} records chained"
        if self.keyed:
            text += f"; {self.keyed} sealed with the audit key (HMAC-SHA256)"
        if self.unchecked:
            text += (f"; {self.unchecked} keyed records NOT checked: no audit key given (set {KEY_ENV} or the "
                     "audit_key_file setting)")
        if self.unkeyed:
            text += (f"; {self.unkeyed} UNKEYED records (sha256 only): not tamper-proof, anyone who can write the "
                     f"log can recompute their chain (set {KEY_ENV} or the audit_key_file setting where it is "
                     "written)")
        return text


class _Chain:
    """Walks the lines of a log in order, naming the first record that was edited, inserted or deleted."""

    def __init__(self, lines: list[str], key: bytes | None, where) -> None:
        self.lines, self.key, self.where = lines, key, where  # where(i): "FILE line i" for 1-based position i

    @staticmethod
    def _fits(entry: _Entry | None, prev: str, seq: int, keyed_seen: bool, new_seen: bool) -> bool:
        """Whether `entry` can be record number `seq` after the record whose digest is `prev`."""
        if entry is None or entry.sealed is False or entry.prev != prev:
            return False
        if entry.chain == "legacy":
            return not new_seen
        return entry.seq == seq and not (keyed_seen and entry.chain == UNKEYED)

    def walk(self) -> tuple[list[dict[str, Any]], list[_Entry]]:
        records, entries = [], []
        prev, seq, keyed_seen, new_seen = GENESIS_SHA256, 1, False, False
        for i, line in enumerate(self.lines, start=1):
            entry = _parse(line, self.key)
            if not self._fits(entry, prev, seq, keyed_seen, new_seen):
                self._explain(i, entry, prev, seq, keyed_seen, new_seen)
            records.append(entry.record)
            entries.append(entry)
            prev, seq = entry.digest, seq + 1
            keyed_seen |= entry.chain == KEYED
            new_seen |= entry.chain != "legacy"
        return records, entries

    def _explain(self, i: int, entry: _Entry | None, prev: str, seq: int, keyed_seen: bool, new_seen: bool) -> None:
        here = self.where(i)
        restore = "restore the log from a backup"
        if i < len(self.lines) and self._fits(_parse(self.lines[i], self.key), prev, seq, keyed_seen, new_seen):
            raise AuditError(f"{here} was inserted: the record after it continues the chain from the record "
                             f"before it; remove it or {restore}")
        if entry is None:
            raise AuditError(f"{here} was edited: it is not an audit record (not JSON, or its seq, prev_mac, chain "
                             f"or mac is missing); {restore}")
        if entry.sealed is False:
            hint = (" (or the audit key is not the one the log was written with)"
                    if entry.chain == KEYED and not keyed_seen else "")
            raise AuditError(f"{here} was edited: its content does not match its mac{hint}; {restore}")
        if entry.chain == UNKEYED and keyed_seen:
            raise AuditError(f"{here} is unkeyed but follows keyed records: it was forged or edited without the "
                             f"audit key (or written by a process without {KEY_ENV}); {restore}")
        if entry.chain == "legacy":
            if new_seen:
                raise AuditError(f"{here} is in the old format after records with seq and mac: it was inserted or "
                                 f"edited; {restore}")
            place = f"between line {i - 1} and {here}" if i > 1 else f"before {here}"
            raise AuditError(f"{here} does not chain to the line before it: the chain breaks {place} (a line was "
                             "edited, inserted or deleted there; old-format records carry no sequence numbers to "
                             f"tell which); {restore}")
        if entry.seq > seq:
            missing = f"record {seq} was" if entry.seq == seq + 1 else f"records {seq} to {entry.seq - 1} were"
            raise AuditError(f"{missing} deleted before {here} (it is record {entry.seq}, but record {seq} was "
                             f"expected there); {restore}")
        if entry.seq < seq:
            raise AuditError(f"{here} was inserted: it claims to be record {entry.seq}, which the log already "
                             f"holds; remove it or {restore}")
        if i == 1:
            raise AuditError(f"{here} was edited: its prev_mac does not start a chain; {restore}")
        raise AuditError(f"{self.where(i - 1)} was edited and its mac recomputed: {here} still chains to the "
                         f"original; {restore}")


def check_lines(lines: list[str], key: bytes | None, where) -> tuple[list[dict[str, Any]], list[_Entry]]:
    """The records of these lines after checking their chain; AuditError naming the first bad one."""
    return _Chain(lines, key, where).walk()


def _tally(location: str, entries: list[_Entry]) -> Verification:
    keyed = sum(e.chain == KEYED and e.sealed is True for e in entries)
    unchecked = sum(e.chain == KEYED and e.sealed is None for e in entries)
    return Verification(location, len(entries), keyed, len(entries) - keyed - unchecked, unchecked)


def _state(line: str, position: int) -> tuple[int, str]:
    """(seq, digest) of a log's line at 1-based `position`: what the next record continues from."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict) and isinstance(record.get("seq"), int) and isinstance(record.get("mac"), str):
        return record["seq"], record["mac"]
    return position, line_sha256(line)


# -- files ---------------------------------------------------------------------------------------------------------


def head_path(path: str | Path) -> Path:
    """The file naming the newest record (seq, mac) and the log's size: `FILE.head` beside `FILE`."""
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


@dataclass
class Head:
    seq: int  # the newest record's seq (the number of records)
    mac: str  # the newest record's mac
    size_bytes: int | None  # the log's size after the newest record (None in a legacy head)


class FileLog:
    """An audit log in a JSON-lines file (several processes on one machine or a shared filesystem may append)."""

    def __init__(self, path: str | Path, key: bytes | None = None) -> None:
        self.path, self.key = Path(path), key
        self.location = str(self.path)

    def head(self) -> Head | None:
        """What FILE.head says (None when absent or unreadable)."""
        try:
            data = json.loads(head_path(self.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        if isinstance(data.get("seq"), int) and isinstance(data.get("mac"), str):
            return Head(data["seq"], data["mac"], data.get("size_bytes"))
        if isinstance(data.get("last_sha256"), str):  # written before heads held seq and size
            return Head(-1, data["last_sha256"], None)
        return None

    def _continue_from(self, handle) -> tuple[int, str]:
        """(seq, mac) of the newest record, from the head; reads the log only where the head does not cover it."""
        size = os.fstat(handle.fileno()).st_size
        head = self.head()
        if head is not None and head.size_bytes is not None:
            if size <= head.size_bytes:  # as the head says, or cut off: continue from the head so the gap shows
                return head.seq, head.mac
            handle.seek(head.size_bytes)  # written after the head (a crash between the two writes): read only that
            data = handle.read(size - head.size_bytes)
            if not data.endswith(b"\n"):  # a torn line: the append writing it never returned, so drop it
                data = data[:data.rfind(b"\n") + 1]
                handle.truncate(head.size_bytes + len(data))
            tail = data.decode("utf-8", "replace").splitlines()
            start = head.seq
        else:  # no head, or one from before heads held sizes: read the log once
            handle.seek(0)
            data = handle.read()
            if data and not data.endswith(b"\n"):  # end the last line (verify names it if it is torn)
                handle.write(b"\n")
            tail = data.decode("utf-8", "replace").splitlines()
            start = 0
        if not tail:
            return (head.seq, head.mac) if head is not None and head.size_bytes is not None else (0, GENESIS_SHA256)
        return _state(tail[-1], start + len(tail))

    def append(self, record: dict[str, Any]) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle, exclusive(handle):
            seq, prev = self._continue_from(handle)
            line, mac = new_line(record, seq + 1, prev, self.key)
            handle.seek(0, os.SEEK_END)
            handle.write(line.encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            head = head_path(self.path)
            tmp = head.with_name(head.name + ".tmp")
            tmp.write_text(json.dumps({"seq": seq + 1, "mac": mac, "size_bytes": handle.tell()}) + "\n",
                           encoding="utf-8")
            os.replace(tmp, head)
        return mac

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []

    def read(self) -> list[dict[str, Any]]:
        return check_lines(self.lines(), self.key, lambda i: f"{self.path} line {i}")[0]

    def verify(self) -> Verification:
        if not self.path.exists():
            raise AuditError(f"{self.path}: no audit log there; give the file or URL (serving.audit_log or "
                             "registry.audit_log in params.yaml)")
        lines = self.lines()
        _, entries = check_lines(lines, self.key, lambda i: f"{self.path} line {i}")
        head = self.head()
        if head is not None:
            _check_head(head, entries, f"{self.path} line {len(lines) + 1}", head_path(self.path).name)
        return _tally(self.location, entries)


def _check_head(head: Head, entries: list[_Entry], after_last: str, head_name: str) -> None:
    """The chain must reach the record the head names (else records were cut off the end)."""
    if head.seq < 0:  # a legacy head: the newest line's sha256
        if not entries or entries[-1].digest != head.mac:
            raise AuditError(f"{after_last}: the log ends before its newest record ({head_name} names "
                             f"{head.mac[:12]}...): records were deleted from the end; restore the log from a backup")
        return
    if head.seq > len(entries):
        raise AuditError(f"{after_last}: the log ends before its newest record ({head_name} names record {head.seq}, "
                         f"the log holds {len(entries)}): records were deleted from the end; restore the log from a "
                         "backup")
    if head.seq and entries[head.seq - 1].digest != head.mac:
        raise AuditError(f"record {head.seq} is not the one {head_name} names: the log was rewritten; restore it "
                         "from a backup")


# -- PostgreSQL ----------------------------------------------------------------------------------------------------


def is_postgres(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def postgres_table(url: str) -> tuple[str, str]:
    """(connection URL without `table`, table name) of a `postgresql://...?table=NAME` log URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    table = next((v for k, v in query if k == "table"), DEFAULT_TABLE)
    if not _TABLE_NAME.match(table):
        raise AuditError(f"audit table {table!r} in {parts.scheme}://{parts.hostname}/...: use lower-case letters, "
                         "digits and _ (at most 51), starting with a letter")
    rest = urlencode([(k, v) for k, v in query if k != "table"])
    return urlunsplit(parts._replace(query=rest)), table


class PostgresLog:
    """An audit log in a PostgreSQL table: processes on any machine append one at a time (the head row's lock)."""

    def __init__(self, url: str, key: bytes | None = None) -> None:
        self.conninfo, self.table = postgres_table(url)
        parts = urlsplit(url)
        self.location = f"{parts.scheme}://{parts.hostname or ''}{parts.path} table {self.table}"  # no password
        self.key = key
        self._connection = None
        self._created = False  # the tables were made (or found) through this object
        self._lock = threading.Lock()  # one connection per log object, shared by a process's threads in turn

    def _connect(self):
        import psycopg

        if self._connection is None or self._connection.closed or self._connection.broken:
            try:
                self._connection = psycopg.connect(self.conninfo)
            except psycopg.OperationalError as error:
                raise AuditError(f"cannot reach the audit log's database {self.location}: "
                                 f"{str(error).strip().splitlines()[0]}; check the URL and that PostgreSQL is up"
                                 ) from None
        return self._connection

    def _create(self, connection) -> None:
        from psycopg import sql

        records, head = sql.Identifier(self.table), sql.Identifier(self.table + "_head")
        with connection.transaction():  # one creator at a time: CREATE IF NOT EXISTS races otherwise
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("narrator_audit:" + self.table,))
            connection.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (seq bigint PRIMARY KEY, line text NOT NULL)")
                               .format(records))
            connection.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (one boolean PRIMARY KEY DEFAULT true "
                                       "CHECK (one), seq bigint NOT NULL, mac text NOT NULL)").format(head))
            connection.execute(sql.SQL("INSERT INTO {} (one, seq, mac) VALUES (true, 0, %s) ON CONFLICT DO NOTHING")
                               .format(head), (GENESIS_SHA256,))
        self._created = True

    def append(self, record: dict[str, Any]) -> str:
        """Append in one transaction that locks the head row; a connection the server dropped (a restart, an idle
        timeout) is replaced and the append tried once more."""
        import psycopg

        for attempt in range(2):
            try:
                with self._lock:
                    connection = self._connect()
                    if not self._created:
                        self._create(connection)
                    return self._append(connection, record)
            except psycopg.OperationalError as error:
                if attempt:
                    raise AuditError(f"the audit record was not written to {self.location}: "
                                     f"{str(error).strip().splitlines()[0]}; check that PostgreSQL is up") from None
        raise AssertionError("unreachable")

    def _append(self, connection, record: dict[str, Any]) -> str:
        from psycopg import sql

        records, head = sql.Identifier(self.table), sql.Identifier(self.table + "_head")
        with connection.transaction():
            seq, prev = connection.execute(sql.SQL("SELECT seq, mac FROM {} FOR UPDATE").format(head)).fetchone()
            line, mac = new_line(record, seq + 1, prev, self.key)
            connection.execute(sql.SQL("INSERT INTO {} (seq, line) VALUES (%s, %s)").format(records), (seq + 1, line))
            connection.execute(sql.SQL("UPDATE {} SET seq = %s, mac = %s").format(head), (seq + 1, mac))
        return mac

    def _rows(self) -> tuple[list[tuple[int, str]], Head] | None:
        """The rows in seq order and the head row; None when the tables do not exist (nothing was appended)."""
        from psycopg import sql

        with self._lock:
            connection = self._connect()
            with connection.transaction():
                exists = connection.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                                            (self.table, self.table + "_head")).fetchone()[0]
                if not exists:
                    return None
                rows = connection.execute(sql.SQL("SELECT seq, line FROM {} ORDER BY seq").format(
                    sql.Identifier(self.table))).fetchall()
                seq, mac = connection.execute(sql.SQL("SELECT seq, mac FROM {}").format(
                    sql.Identifier(self.table + "_head"))).fetchone()
        return rows, Head(seq, mac, None)

    def _where(self, rows: list[tuple[int, str]]):
        return lambda i: f"{self.location} row {i} (seq {rows[i - 1][0]})"

    def read(self) -> list[dict[str, Any]]:
        found = self._rows()
        if found is None:
            return []
        rows, _ = found
        return check_lines([line for _, line in rows], self.key, self._where(rows))[0]

    def verify(self) -> Verification:
        found = self._rows()
        if found is None:
            raise AuditError(f"{self.location}: no audit log there (no table {self.table} or {self.table}_head); "
                             "check the URL's database and ?table=")
        rows, head = found
        _, entries = check_lines([line for _, line in rows], self.key, self._where(rows))
        _check_head(head, entries, f"{self.location} after row {len(rows)}", f"{self.table}_head")
        return _tally(self.location, entries)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


@contextmanager
def postgres_lock(url: str, name: str) -> Iterator[None]:
    """Hold the PostgreSQL advisory lock `name` in the database of `url` (a log URL) until the block ends: one
    holder at a time on any machine; the server releases it if the holder dies (its connection closes)."""
    import psycopg

    conninfo, _ = postgres_table(url)
    try:
        connection = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as error:
        raise AuditError(f"cannot reach the database of {url.split('@')[-1]} to take the lock {name!r}: "
                         f"{str(error).strip().splitlines()[0]}; check the URL and that PostgreSQL is up") from None
    with connection:
        connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))


# -- one interface over both ---------------------------------------------------------------------------------------


def open_log(location: str | Path, key: bytes | None = None) -> FileLog | PostgresLog:
    """The log at `location`: a `postgresql://` URL or a file path."""
    return PostgresLog(str(location), key) if is_postgres(location) else FileLog(location, key)


def append(location: str | Path, record: dict[str, Any], key: bytes | None = None) -> str:
    """Append `record` (plus seq, prev_mac, chain, mac) and move the head to it; returns the record's mac."""
    log = open_log(location, key)
    try:
        return log.append(record)
    finally:
        if isinstance(log, PostgresLog):
            log.close()


def read(location: str | Path, key: bytes | None = None) -> list[dict[str, Any]]:
    """Every record of the log, oldest first (empty when there is no log yet); AuditError when a record was
    edited, inserted or deleted."""
    log = open_log(location, key)
    try:
        return log.read()
    finally:
        if isinstance(log, PostgresLog):
            log.close()


def verify(location: str | Path, key: bytes | None = None) -> Verification:
    """The intact chain's Verification (records, keyed, unkeyed); AuditError naming the first edited, inserted or
    deleted record, or the cut-off end."""
    log = open_log(location, key)
    try:
        return log.verify()
    finally:
        if isinstance(log, PostgresLog):
            log.close()
