"""The synthesis audit log: one record per synthesis, in the chained format of `narrator/audit.py`.

Record: time, key_id, tenant, voice, version, payload_hex (the watermark), text_sha256, language, format,
sample_rate_hz, duration_s (audio seconds synthesized), stream (bool), and what reached the client:
delivery ("completed", or "aborted" when a stream ended early: the client went away or synthesis failed
mid-stream), bytes_sent, seconds_sent (audio seconds in those bytes) and output_sha256 (of exactly those bytes);
request_id, the id in the response's file name (`VOICE-ID.EXT`), so the duration and digest of a stream, known
only at its end, can be found from the file a client kept;
plus the chain's seq, prev_mac, chain and mac. A stream's record is written when the stream ends, however it ends.
`narrator audit verify [FILE|URL]` names the first record that was edited, inserted or deleted, or a cut-off end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from narrator import audit

COMPLETED, ABORTED = "completed", "aborted"


@dataclass
class Delivery:
    """What of a response reached the client."""

    delivery: Literal["completed", "aborted"]
    bytes_sent: int
    seconds_sent: float  # audio seconds in the bytes sent
    output_sha256: str  # of the bytes sent


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
    stream: bool
    delivery: Literal["completed", "aborted"]
    bytes_sent: int
    seconds_sent: float
    output_sha256: str
    request_id: str = ""


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def delivered(chunks: Iterator[tuple[bytes, float]], on_end: Callable[[Delivery], None]) -> Iterator[bytes]:
    """The bytes of `chunks` ((bytes, audio seconds encoded up to and with them) pairs), calling `on_end` once
    when the stream ends, completed or not.

    A chunk counts as sent when the consumer comes back for the next one (the server has written it to the
    connection) or the stream completes; a chunk handed out when the client went away does not. Closing the stream
    early (GeneratorExit: the client disconnected) or a failure mid-stream closes `chunks` and records "aborted".
    """
    digest, bytes_sent, seconds_sent, outcome = hashlib.sha256(), 0, 0.0, ABORTED
    try:
        for data, audio_s in chunks:
            yield data
            digest.update(data)
            bytes_sent += len(data)
            seconds_sent = audio_s
        outcome = COMPLETED
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        on_end(Delivery(outcome, bytes_sent, seconds_sent, digest.hexdigest()))


class SynthesisAudit:
    """Appends synthesis records to `location`, a file (several service workers may share it: appends are locked)
    or a `postgresql://` URL (replicas on several machines share it); sealed with `key` when one is given."""

    def __init__(self, location: str | Path, key: bytes | None = None) -> None:
        self.log = audit.open_log(location, key)
        self.location = location

    def append(self, record: SynthesisRecord) -> str:
        """Append one record and move the head to it; returns its mac."""
        return self.log.append({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                "event": "synthesis", **asdict(record)})

    def records(self) -> list[dict]:
        return self.log.read()
