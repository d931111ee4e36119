"""Cost of one audit-log append at 1k and at 100k records (narrator/audit.py, issue 16).

An append reads only the log's head (seq, mac, size) and writes one line (fsync) and the head, so its cost should
not grow with the log: the goal is 100k/1k within 1.5x. For comparison, "before" is the append this replaced,
which re-read the whole file (`--before` appends per size; 0 skips it). The logs are written directly in the valid
keyed format (`narrator.audit.new_line`), not through 100k fsynced appends; each measured append is then
timed on its own, taking the logs in turn so that each size meets the same load. With `--postgres URL` the same
for a PostgreSQL table (rows loaded with COPY; each append is one transaction that locks the head row).

    python -m bench.audit [--sizes 1000 100000] [--appends 300] [--before 20] [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from narrator import audit

KEY = b"bench audit key 0123456789abcdef"
RECORD = {"time": "2026-12-06T00:00:00.000+00:00", "event": "synthesis", "key_id": "0a1b2c3d", "tenant": "acme",
          "voice": "alice", "version": 3, "payload_hex": "1a2b3c4d", "text_sha256": "7" * 64, "language": "en",
          "format": "wav", "sample_rate_hz": 32000, "duration_s": 4.2, "stream": True, "delivery": "completed",
          "bytes_sent": 268844, "seconds_sent": 4.2, "output_sha256": "5" * 64}  # a typical synthesis record


def chained_lines(records: int) -> tuple[list[str], str]:
    """`records` valid keyed log lines and the newest mac."""
    lines, prev = [], audit.GENESIS_SHA256
    for seq in range(1, records + 1):
        line, prev = audit.new_line({**RECORD, "i": seq}, seq, prev, KEY)
        lines.append(line)
    return lines, prev


def write_file_log(path: Path, records: int) -> None:
    """A keyed log of `records` records and its head, written directly."""
    lines, mac = chained_lines(records)
    data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
    path.write_bytes(data)
    audit.head_path(path).write_text(json.dumps({"seq": records, "mac": mac, "size_bytes": len(data)}) + "\n")


def append_before(path: Path, record: dict) -> None:
    """The append this replaced: read the whole log under the lock to find the newest line, then append."""
    with open(path, "a+", encoding="utf-8") as handle, audit.exclusive(handle):
        handle.seek(0)
        lines = handle.read().splitlines()
        seq, prev = audit._state(lines[-1], len(lines)) if lines else (0, audit.GENESIS_SHA256)
        line, mac = audit.new_line(record, seq + 1, prev, KEY)
        handle.seek(0, os.SEEK_END)
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        head = audit.head_path(path)
        tmp = head.with_name(head.name + ".tmp")
        tmp.write_text(json.dumps({"seq": seq + 1, "mac": mac, "size_bytes": handle.tell()}) + "\n")
        os.replace(tmp, head)


def time_alternating(appends: dict[int, object], count: int) -> dict[int, list[float]]:
    """Milliseconds of each of `count` appends per log, taking the logs in turn (1k, 100k, 1k, ...) so that every
    size meets the same disk and machine load."""
    timings = {size: [] for size in appends}
    for i in range(count):
        for size, append in appends.items():
            started = time.perf_counter()
            append({**RECORD, "i": -i})
            timings[size].append((time.perf_counter() - started) * 1000)
    return timings


def file_rows(sizes: list[int], appends: int, before: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as work:
        paths, built_s = {}, {}
        for size in sizes:
            paths[size] = Path(work) / f"log-{size}.jsonl"
            started = time.perf_counter()
            write_file_log(paths[size], size)
            built_s[size] = time.perf_counter() - started
        now = time_alternating({size: audit.FileLog(path, KEY).append for size, path in paths.items()}, appends)
        rows += [{"store": "file", "variant": "head (now)", "size": size, "built_s": built_s[size], "ms": now[size]}
                 for size in sizes]
        if before:
            old = time_alternating({size: (lambda r, p=path: append_before(p, r)) for size, path in paths.items()},
                                   before)
            rows += [{"store": "file", "variant": "full read (before)", "size": size, "built_s": built_s[size],
                      "ms": old[size]} for size in sizes]
        for size, path in paths.items():
            assert audit.verify(path, KEY).records == size + appends + before
    return rows


def postgres_rows(url: str, sizes: list[int], appends: int) -> list[dict]:
    import psycopg

    logs, built_s = {}, {}
    for size in sizes:
        table = f"bench_audit_{size}"
        log = logs[size] = audit.PostgresLog(f"{url}{'&' if '?' in url else '?'}table={table}", KEY)
        with psycopg.connect(log.conninfo, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}, {table}_head")
        started = time.perf_counter()
        lines, mac = chained_lines(size)
        connection = log._connect()
        log._create(connection)
        with connection.transaction(), connection.cursor() as cursor:
            with cursor.copy(f"COPY {table} (seq, line) FROM STDIN") as copy:
                for seq, line in enumerate(lines, start=1):
                    copy.write_row((seq, line))
            cursor.execute(f"UPDATE {table}_head SET seq = %s, mac = %s", (size, mac))
        built_s[size] = time.perf_counter() - started
    now = time_alternating({size: log.append for size, log in logs.items()}, appends)
    for size, log in logs.items():
        assert log.verify().records == size + appends
        log.close()
    return [{"store": "postgresql", "variant": "head row (now)", "size": size, "built_s": built_s[size],
             "ms": now[size]} for size in sizes]


def table(rows: list[dict]) -> str:
    lines = ["| store | append | records in the log | appends | median ms | p90 ms | vs the smallest log |",
             "|---|---|---:|---:|---:|---:|---:|"]
    smallest = {}
    for r in rows:
        median = statistics.median(r["ms"])
        p90 = statistics.quantiles(r["ms"], n=10)[-1] if len(r["ms"]) > 1 else median
        base = smallest.setdefault((r["store"], r["variant"]), median)
        lines.append(f"| {r['store']} | {r['variant']} | {r['size']:,} | {len(r['ms'])} | {median:.2f} | {p90:.2f} | "
                     f"{median / base:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100000], help="records in the log before "
                                                                                     "the timed appends")
    parser.add_argument("--appends", type=int, default=300, help="timed appends per log")
    parser.add_argument("--before", type=int, default=20, help="timed appends of the replaced full-read append "
                                                               "per log (0: skip)")
    parser.add_argument("--postgres", metavar="URL", help="also time a PostgreSQL log (postgresql://USER@HOST/DB)")
    args = parser.parse_args()
    print(f"audit-log append: keyed records of {len(json.dumps(RECORD)) + 200} bytes or so, fsync per append; "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = file_rows(args.sizes, args.appends, args.before)
    if args.postgres:
        rows += postgres_rows(args.postgres, args.sizes, args.appends)
    print(table(rows))
    print("building the logs: " + ", ".join(f"{r['store']} {r['size']:,} records in {r['built_s']:.1f} s"
                                           for r in rows if r["variant"] != "full read (before)"))


if __name__ == "__main__":
    main()
