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
