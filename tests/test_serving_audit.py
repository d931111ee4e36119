"""What the synthesis audit log records of a response (serving/audit.py): a stream's record is written when the
stream ends and holds what was actually sent, completed or aborted; the real-HTTP checks are in
tests/test_serving.py."""

from __future__ import annotations

import hashlib

import pytest

from serving.audit import Delivery, SynthesisAudit, SynthesisRecord, delivered

CHUNKS = [(b"RIFF-header", 0.0), (b"a" * 100, 0.5), (b"b" * 100, 1.0), (b"c" * 50, 1.25)]  # (bytes, seconds so far)


def _stream(chunks=CHUNKS, fail_after: int | None = None):
    """A chunk source that remembers whether it was closed (as the service's synthesis generator is)."""
    state = {"closed": False}

    def source():
        try:
            for index, chunk in enumerate(chunks):
                if fail_after is not None and index == fail_after:
                    raise RuntimeError("synthesis failed")
                yield chunk
        finally:
            state["closed"] = True

    return source(), state


def test_a_stream_read_to_its_end_is_recorded_as_completed_with_every_byte():
    ends: list[Delivery] = []
    source, _ = _stream()
    data = b"".join(delivered(source, ends.append))
    assert ends == [Delivery("completed", len(data), 1.25, hashlib.sha256(data).hexdigest())]


def test_a_stream_closed_early_is_recorded_as_aborted_with_only_the_bytes_sent():
    ends: list[Delivery] = []
    source, state = _stream()
    stream = delivered(source, ends.append)
    first, second = next(stream), next(stream)  # the server came back for the second chunk: the first was sent
    stream.close()  # the client went away while the second chunk was being written
    assert ends == [Delivery("aborted", len(first), 0.0, hashlib.sha256(first).hexdigest())]
    assert state["closed"], "the synthesis behind the stream was not stopped"
    assert second == CHUNKS[1][0]


def test_a_stream_aborted_after_some_audio_records_the_audio_seconds_sent():
    ends: list[Delivery] = []
    stream = delivered(_stream()[0], ends.append)
    sent = [next(stream) for _ in range(3)]
    stream.close()
    assert ends[0].bytes_sent == len(sent[0]) + len(sent[1]) and ends[0].seconds_sent == 0.5
    assert ends[0].output_sha256 == hashlib.sha256(sent[0] + sent[1]).hexdigest()


def test_a_stream_whose_synthesis_fails_midway_is_recorded_as_aborted():
    ends: list[Delivery] = []
    stream = delivered(_stream(fail_after=2)[0], ends.append)
    with pytest.raises(RuntimeError):
        list(stream)
    assert ends[0].delivery == "aborted" and ends[0].bytes_sent == len(CHUNKS[0][0]) + len(CHUNKS[1][0])


def test_the_synthesis_record_holds_the_delivery(tmp_path):
    log = SynthesisAudit(tmp_path / "audit.jsonl", b"s" * 32)
    log.append(SynthesisRecord(key_id="0a1b2c3d", tenant="acme", voice="alice", version=1, payload_hex="ab",
                               text_sha256="t" * 64, language="en", format="wav", sample_rate_hz=32000,
                               duration_s=2.0, stream=True, delivery="aborted", bytes_sent=44, seconds_sent=0.0,
                               output_sha256="o" * 64))
    (record,) = log.records()
    assert (record["event"], record["delivery"], record["bytes_sent"], record["seconds_sent"]) == (
        "synthesis", "aborted", 44, 0.0)
    assert record["chain"] == "hmac-sha256" and record["seq"] == 1


@pytest.mark.services
def test_two_service_workers_seal_their_records_into_one_postgres_audit_log(postgres_service, tmp_path):
    """The service as replicas run it: serving.audit_log on PostgreSQL, $NARRATOR_AUDIT_KEY, two processes."""
    import socket
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from narrator import audit
    from tests import services
    from tests.conftest import REPO_ROOT
    from tests.deployment import build_small_deployment, running_service

    url = services.create_database(postgres_service, "serving_audit_workers") + "?table=serving_audit"
    deployment = build_small_deployment(tmp_path / "deployment", {"serving": {"audit_log": url, "workers": 2}})
    key = "audit-key-of-the-two-workers-0123"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with running_service({**deployment.env(port), audit.KEY_ENV: key}, port, tmp_path / "serve.log") as base:
        def speak(i: int) -> int:
            return httpx.post(f"{base}/v1/speech", headers={"Authorization": f"Bearer {deployment.keys['acme']}"},
                              json={"voice": "alice", "text": f"Record number {i}.", "seed": i}, timeout=120
                              ).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(speak, range(6))) == [200] * 6
    found = audit.verify(url, key.encode())
    assert (found.records, found.keyed) == (6, 6)
    records = audit.read(url, key.encode())
    assert all(r["delivery"] == "completed" and r["voice"] == "alice" for r in records)
    done = subprocess.run([sys.executable, "-m", "cli", "audit", "verify", url], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**deployment.env(port), audit.KEY_ENV: key})
    assert done.returncode == 0 and "6 records chained; 6 sealed with the audit key" in done.stdout
