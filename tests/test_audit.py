"""The audit log (narrator/audit.py): appends that cost the same at any length, a chain sealed with the audit key,
verification that names the first edited, inserted or deleted record, logs from before keys still verifying, and
the same chain in a PostgreSQL table that processes on several machines append to."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from narrator import audit
from narrator.audit import AuditError
from tests.conftest import REPO_ROOT

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def _log(tmp_path: Path, records: int = 5, key: bytes | None = KEY, name: str = "audit.jsonl") -> Path:
    path = tmp_path / name
    for i in range(records):
        audit.append(path, {"event": "registered", "i": i}, key)
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _tampered(path: Path, lines: list[str], name: str) -> Path:
    """A copy of the log (and its head) holding `lines`."""
    copy = path.with_name(name)
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(audit.head_path(path), audit.head_path(copy))
    return copy


def _legacy_log(path: Path, records: int) -> None:
    """A log as written before records carried seq and mac: each line's prev_sha256 is the line before's sha256."""
    prev, lines = audit.GENESIS_SHA256, []
    for i in range(records):
        line = json.dumps({"event": "old", "i": i, "prev_sha256": prev}, sort_keys=True)
        lines.append(line)
        prev = audit.line_sha256(line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    audit.head_path(path).write_text(json.dumps({"last_sha256": prev}) + "\n", encoding="utf-8")


def _recomputed_without_key(lines: list[str], start: int, change) -> list[str]:
    """What a forger without the key can do: change record `start` (0-based) and recompute the plain-sha256 chain
    from there on, as an unkeyed writer would."""
    out = lines[:start]
    prev = json.loads(lines[start - 1])["mac"] if start else audit.GENESIS_SHA256
    for index, line in enumerate(lines[start:]):
        record = {k: v for k, v in json.loads(line).items() if k not in audit.CHAIN_FIELDS}
        if index == 0:
            record = change(record)
        new, prev = audit.new_line(record, start + index + 1, prev, None)
        out.append(new)
    return out


# -- appends --------------------------------------------------------------------------------------------------------


def test_each_record_carries_its_seq_the_previous_mac_and_its_own_hmac(tmp_path):
    path = _log(tmp_path, 3)
    records = [json.loads(line) for line in _lines(path)]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev_mac"] == audit.GENESIS_SHA256
    assert [r["prev_mac"] for r in records[1:]] == [r["mac"] for r in records[:-1]]
    assert all(r["chain"] == "hmac-sha256" for r in records)
    assert records[1]["mac"] == audit.seal(records[1], KEY) != audit.seal(records[1], OTHER_KEY)


def test_the_head_names_the_newest_record_and_the_log_size(tmp_path):
    path = _log(tmp_path, 4)
    head = json.loads(audit.head_path(path).read_text())
    assert head == {"seq": 4, "mac": json.loads(_lines(path)[-1])["mac"], "size_bytes": path.stat().st_size}


def test_an_append_reads_the_head_not_the_log(tmp_path):
    path = _log(tmp_path, 3)
    lines = _lines(path)
    path.write_text("\n".join(["x" * len(lines[0]), *lines[1:]]) + "\n")  # same size, unreadable first line
    audit.append(path, {"event": "after"}, KEY)
    assert json.loads(_lines(path)[-1])["seq"] == 4
    with pytest.raises(AuditError, match="line 1 was edited"):  # the append never looked at line 1
        audit.verify(path, KEY)


def test_an_append_after_a_crash_between_line_and_head_continues_from_the_newest_line(tmp_path):
    path = _log(tmp_path, 3)
    stale_head = audit.head_path(path).read_text()
    audit.append(path, {"event": "fourth"}, KEY)
    audit.head_path(path).write_text(stale_head)  # the crash: line 4 written, head still at 3
    audit.append(path, {"event": "fifth"}, KEY)
    assert audit.verify(path, KEY).records == 5


def test_an_append_after_a_torn_write_drops_the_torn_line(tmp_path):
    path = _log(tmp_path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"event": "half a rec')  # a crash in the middle of writing line 3
    audit.append(path, {"event": "next"}, KEY)
    assert [r["event"] for r in audit.read(path, KEY)] == ["registered", "registered", "next"]
    assert audit.verify(path, KEY).records == 3


def test_appends_after_records_were_cut_off_keep_the_gap_visible(tmp_path):
    path = _log(tmp_path, 4)
    path.write_text("\n".join(_lines(path)[:2]) + "\n")  # records 3 and 4 cut off; the head still names 4
    audit.append(path, {"event": "after the cut"}, KEY)
    with pytest.raises(AuditError, match=r"records 3 to 4 were deleted before .*audit.jsonl line 3"):
        audit.verify(path, KEY)


def test_several_processes_append_to_one_file_without_breaking_the_chain(tmp_path):
    path = tmp_path / "shared.jsonl"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_append_many, [(str(path), "a", 100), (str(path), "b", 100)])
    found = audit.verify(path, KEY)
    assert found.records == 200 and found.keyed == 200


def _append_many(location: str, writer: str, count: int) -> None:
    log = audit.open_log(location, KEY)
    for i in range(count):
        log.append({"event": "synthesis", "writer": writer, "i": i})


def test_a_record_may_not_set_the_chain_fields(tmp_path):
    with pytest.raises(AuditError, match="may not carry mac, seq"):
        audit.append(tmp_path / "a.jsonl", {"event": "x", "seq": 9, "mac": "f" * 64}, KEY)


# -- the key --------------------------------------------------------------------------------------------------------


def test_the_key_comes_from_the_environment_before_the_key_file(tmp_path):
    key_file = tmp_path / "audit.key"
    key_file.write_text("file-secret-0123456789\n")
    assert audit.load_key(str(key_file), environ={}) == b"file-secret-0123456789"
    assert audit.load_key(str(key_file), environ={audit.KEY_ENV: "env-secret-0123456789"}) == b"env-secret-0123456789"
    assert audit.load_key(None, environ={}) is None


def test_a_short_or_unreadable_key_is_refused_saying_what_to_do(tmp_path):
    with pytest.raises(AuditError, match="at least 16"):
        audit.load_key(None, environ={audit.KEY_ENV: "short"})
    with pytest.raises(AuditError, match="cannot read the audit key file .*missing.key"):
        audit.load_key(str(tmp_path / "missing.key"), environ={})


def test_a_keyed_log_verifies_with_its_key_and_says_so(tmp_path):
    found = audit.verify(_log(tmp_path, 5), KEY)
    assert (found.records, found.keyed, found.unkeyed) == (5, 5, 0)
    assert "5 sealed with the audit key" in found.summary() and "UNKEYED" not in found.summary()


def test_an_unkeyed_log_verifies_but_says_it_is_not_tamper_proof(tmp_path):
    found = audit.verify(_log(tmp_path, 3, key=None))
    assert (found.records, found.keyed, found.unkeyed) == (3, 0, 3)
    assert "3 UNKEYED records" in found.summary() and "not tamper-proof" in found.summary()


def test_a_chain_recomputed_without_the_key_fails_with_the_key(tmp_path):
    path = _log(tmp_path, 5)
    lines = _lines(path)
    # edit record 3, recompute it and every later record as sha256, and the head: all a forger without the key can do
    forged_lines = _recomputed_without_key(lines, 2, lambda r: {**r, "i": 99})
    forged = _tampered(path, forged_lines, "forged.jsonl")
    last = json.loads(forged_lines[-1])
    audit.head_path(forged).write_text(json.dumps({"seq": 5, "mac": last["mac"], "size_bytes": forged.stat().st_size}))
    with pytest.raises(AuditError, match="forged.jsonl line 3 is unkeyed but follows keyed records"):
        audit.verify(forged, KEY)
    # keeping the keyed label does not help: the plain sha256 is not the HMAC
    relabelled = [json.dumps({**json.loads(line), "chain": "hmac-sha256"}, sort_keys=True) for line in forged_lines]
    with pytest.raises(AuditError, match="relabelled.jsonl line 3 was edited: its content does not match its mac"):
        audit.verify(_tampered(path, relabelled, "relabelled.jsonl"), KEY)


def test_a_log_rewritten_entirely_without_the_key_fails_when_the_key_is_required(tmp_path):
    path = _log(tmp_path, 3)
    forged = _tampered(path, _recomputed_without_key(_lines(path), 0, lambda r: {**r, "i": 99}), "forged.jsonl")
    audit.head_path(forged).unlink()
    assert audit.verify(forged, KEY).keyed == 0  # intact as a chain, but nothing is sealed with the key
    done = _cli_verify(forged, "--require-key", env_key=KEY)
    assert done.returncode == 2 and "3 of 3 records are not sealed with the audit key" in done.stderr


def test_the_wrong_key_fails_at_the_first_record(tmp_path):
    with pytest.raises(AuditError, match="line 1 was edited.*not the one the log was written with"):
        audit.verify(_log(tmp_path, 3), OTHER_KEY)


def test_a_keyed_log_without_the_key_is_checked_for_links_only_and_says_so(tmp_path):
    found = audit.verify(_log(tmp_path, 3), None)
    assert (found.records, found.unchecked) == (3, 3)
    assert "3 keyed records NOT checked: no audit key given" in found.summary()


# -- verify names the first bad record ------------------------------------------------------------------------------


def test_verify_names_an_edited_line(tmp_path):
    path = _log(tmp_path, 5)
    lines = _lines(path)
    lines[2] = lines[2].replace('"i": 2', '"i": 7')
    with pytest.raises(AuditError, match=r"edited.jsonl line 3 was edited"):
        audit.verify(_tampered(path, lines, "edited.jsonl"), KEY)


def test_verify_names_an_inserted_line(tmp_path):
    path = _log(tmp_path, 5)
    lines = _lines(path)
    lines.insert(2, lines[0])  # a copy of record 1 inserted as line 3
    with pytest.raises(AuditError, match=r"inserted.jsonl line 3 was inserted"):
        audit.verify(_tampered(path, lines, "inserted.jsonl"), KEY)


def test_verify_names_an_inserted_forged_line(tmp_path):
    path = _log(tmp_path, 5)
    lines = _lines(path)
    lines.insert(4, lines[3].replace('"i": 3', '"i": 33'))
    with pytest.raises(AuditError, match=r"inserted.jsonl line 5 was inserted"):
        audit.verify(_tampered(path, lines, "inserted.jsonl"), KEY)


def test_verify_names_where_a_line_was_deleted(tmp_path):
    path = _log(tmp_path, 5)
    lines = _lines(path)
    del lines[1]
    with pytest.raises(AuditError, match=r"record 2 was deleted before .*deleted.jsonl line 2"):
        audit.verify(_tampered(path, lines, "deleted.jsonl"), KEY)


def test_verify_names_a_cut_off_end(tmp_path):
    path = _log(tmp_path, 5)
    with pytest.raises(AuditError, match=r"cut.jsonl line 4: the log ends before its newest record .*deleted from "
                                         r"the end"):
        audit.verify(_tampered(path, _lines(path)[:3], "cut.jsonl"), KEY)


def test_verify_names_a_line_that_is_not_a_record(tmp_path):
    path = _log(tmp_path, 3)
    lines = _lines(path)
    lines[1] = "{not json"
    with pytest.raises(AuditError, match=r"garbled.jsonl line 2 was edited: it is not an audit record"):
        audit.verify(_tampered(path, lines, "garbled.jsonl"), KEY)


def test_an_unkeyed_edit_with_its_own_mac_recomputed_is_named_by_the_broken_link(tmp_path):
    path = _log(tmp_path, 4, key=None)
    lines = _lines(path)
    lines[1] = _recomputed_without_key(lines, 1, lambda r: {**r, "i": 50})[1]  # only line 2 recomputed
    with pytest.raises(AuditError, match=r"recomputed.jsonl line 2 was edited and its mac recomputed"):
        audit.verify(_tampered(path, lines, "recomputed.jsonl"))


# -- logs from before keys ----------------------------------------------------------------------------------------


def test_a_legacy_log_verifies_as_unkeyed(tmp_path):
    path = tmp_path / "legacy.jsonl"
    _legacy_log(path, 4)
    found = audit.verify(path, KEY)
    assert (found.records, found.unkeyed) == (4, 4)


def test_new_records_continue_a_legacy_log_and_seal_it(tmp_path):
    path = tmp_path / "legacy.jsonl"
    _legacy_log(path, 4)
    audit.append(path, {"event": "new"}, KEY)
    audit.append(path, {"event": "newer"}, KEY)
    found = audit.verify(path, KEY)
    assert (found.records, found.keyed, found.unkeyed) == (6, 2, 4)
    assert [r.get("seq") for r in audit.read(path, KEY)] == [None] * 4 + [5, 6]
    lines = _lines(path)
    lines[1] = lines[1].replace('"i": 1', '"i": 8')  # an old record edited: the link to the next line breaks
    with pytest.raises(AuditError, match=r"line 3 does not chain to the line before it: the chain breaks between "
                                         r"line 2 and .*line 3"):
        audit.verify(_tampered(path, lines, "edited.jsonl"), KEY)


def test_a_legacy_log_cut_off_at_its_end_fails_against_its_old_head(tmp_path):
    path = tmp_path / "legacy.jsonl"
    _legacy_log(path, 4)
    path.write_text("\n".join(_lines(path)[:3]) + "\n")
    with pytest.raises(AuditError, match="deleted from the end"):
        audit.verify(path)


# -- the command ----------------------------------------------------------------------------------------------------


def _cli_verify(*arguments, env_key: bytes | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != audit.KEY_ENV}
    if env_key:
        env[audit.KEY_ENV] = env_key.decode()
    return subprocess.run([sys.executable, "-m", "cli", "audit", "verify", *map(str, arguments)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env)


def test_narrator_audit_verify_reports_keyed_records_and_names_an_edit(tmp_path):
    path = _log(tmp_path, 3)
    done = _cli_verify(path, env_key=KEY)
    assert done.returncode == 0 and "intact, 3 records chained; 3 sealed with the audit key" in done.stdout
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    assert _cli_verify(path, "--key-file", str(key_file)).returncode == 0
    lines = _lines(path)
    edited = _tampered(path, [lines[0], lines[1].replace('"i": 1', '"i": 4'), lines[2]], "edited.jsonl")
    done = _cli_verify(edited, "--key-file", str(key_file))
    assert done.returncode == 2 and "edited.jsonl line 2 was edited" in done.stderr


def test_narrator_audit_verify_takes_the_key_file_from_the_settings(tmp_path):
    path = _log(tmp_path, 2)
    key_file = tmp_path / "serving-audit.key"
    key_file.write_bytes(KEY)
    done = _cli_verify("--set", f"serving.audit_log={path}", "--set", f"serving.audit_key_file={key_file}")
    assert done.returncode == 0 and "2 sealed with the audit key" in done.stdout


# -- PostgreSQL -----------------------------------------------------------------------------------------------------


@pytest.fixture
def audit_url(postgres_service, request):
    from tests import services

    database = services.create_database(postgres_service, "audit_" + hashlib.sha1(request.node.name.encode())
                                        .hexdigest()[:10])
    return database + "?table=serving_audit"


@pytest.mark.services
def test_a_postgres_log_appends_reads_and_verifies_the_same_chain(audit_url):
    log = audit.open_log(audit_url, KEY)
    macs = [log.append({"event": "synthesis", "i": i}) for i in range(3)]
    records = audit.read(audit_url, KEY)
    assert [r["i"] for r in records] == [0, 1, 2] and [r["mac"] for r in records] == macs
    assert [r["prev_mac"] for r in records] == [audit.GENESIS_SHA256, *macs[:2]]
    found = audit.verify(audit_url, KEY)
    assert (found.records, found.keyed) == (3, 3) and "table serving_audit" in found.location


@pytest.mark.services
def test_two_processes_append_to_postgres_concurrently_without_breaking_the_chain(audit_url):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_append_many, [(audit_url, "a", 200), (audit_url, "b", 200)])
    found = audit.verify(audit_url, KEY)
    assert found.records == 400 and found.keyed == 400
    assert sorted(r["writer"] for r in audit.read(audit_url, KEY)).count("a") == 200


@pytest.mark.services
def test_a_postgres_log_names_an_edited_and_a_deleted_row(audit_url):
    import psycopg

    log = audit.open_log(audit_url, KEY)
    for i in range(4):
        log.append({"event": "synthesis", "i": i})
    connection, _ = audit.postgres_table(audit_url)
    with psycopg.connect(connection, autocommit=True) as db:
        db.execute("UPDATE serving_audit SET line = replace(line, '\"i\": 1', '\"i\": 9') WHERE seq = 2")
        with pytest.raises(AuditError, match=r"table serving_audit row 2 \(seq 2\) was edited"):
            audit.verify(audit_url, KEY)
        db.execute("DELETE FROM serving_audit WHERE seq = 2")
        with pytest.raises(AuditError, match=r"record 2 was deleted before .*row 2 \(seq 3\)"):
            audit.verify(audit_url, KEY)
        db.execute("DELETE FROM serving_audit WHERE seq >= 3")
        with pytest.raises(AuditError, match="deleted from the end"):
            audit.verify(audit_url, KEY)


@pytest.mark.services
def test_a_postgres_log_that_was_never_written_reads_empty_and_does_not_verify(audit_url):
    assert audit.read(audit_url, KEY) == []
    with pytest.raises(AuditError, match="no audit log there .*no table serving_audit"):
        audit.verify(audit_url, KEY)


@pytest.mark.services
def test_a_postgres_log_reconnects_when_the_server_dropped_its_connection(audit_url):
    import psycopg

    log = audit.open_log(audit_url, KEY)
    log.append({"event": "before"})
    connection, _ = audit.postgres_table(audit_url)
    with psycopg.connect(connection, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND pid <> pg_backend_pid()")
    log.append({"event": "after"})
    assert [r["event"] for r in audit.read(audit_url, KEY)] == ["before", "after"]


@pytest.mark.services
def test_narrator_audit_verify_reads_a_postgres_url(audit_url):
    audit.append(audit_url, {"event": "synthesis"}, KEY)
    done = _cli_verify(audit_url, env_key=KEY)
    assert done.returncode == 0 and "table serving_audit: intact, 1 records chained; 1 sealed" in done.stdout
    assert "@" not in done.stdout.split(":", 1)[1].split("table")[0]  # no credentials printed


@pytest.mark.services
def test_registrations_on_several_machines_take_turns_on_the_audit_databases_lock(audit_url):
    import threading
    import time

    from narrator.config import load_params
    from narrator.registry import registry_locked

    params = load_params(None, {"registry": {"tracking_uri": "http://mlflow.invalid:5000", "audit_log": audit_url}})
    held_s, order = 0.5, []
    entered = threading.Event()

    def first() -> None:
        with registry_locked(params):
            entered.set()
            order.append("first in")
            time.sleep(held_s)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait(10)
    started = time.perf_counter()
    with registry_locked(params):  # another connection, as another machine would hold
        waited_s = time.perf_counter() - started
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"] and waited_s >= held_s / 2
    assert not list(Path.cwd().glob("postgresql:*")), "no lock file was made from the URL"
