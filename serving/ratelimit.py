"""How often a key may call: a token bucket per API key (`serving.rate_limit_per_minute`, `rate_limit_burst`).

Who may call is the API key store's business (`narrator/keys.py`, shared with `narrator keys`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Token bucket per key id: `per_minute` requests a minute on average, `burst` at once.

    `take(key_id)` returns 0.0 when the request may go ahead, else the seconds until it may."""

    per_minute: int
    burst: int
    clock: object = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key_id: str) -> float:
        rate = self.per_minute / 60.0
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(key_id, _Bucket(float(self.burst), now))
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate
