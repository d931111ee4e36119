"""How often a key may call: a token bucket per API key (`serving.rate_limit_per_minute`, `rate_limit_burst`),
shared by every process that serves the same keys.

A bucket holds at most `burst` tokens and gains `per_minute / 60` a second; a request takes one, or is refused with
the seconds until one is there. Where the buckets live decides who shares them:

- `serving.state_url` unset: a SQLite file beside the keys file (`bucket_file`), WAL mode, one short write
  transaction per request, so the workers of one process (`serving.workers`) and several services on one machine
  draw from one bucket per key;
- `serving.state_url: redis://...`: a hash per key in Redis, refilled and taken by one Lua script (atomic on the
  server, with the server's clock), so every replica draws from one bucket per key.

Who may call is the API key store's business (`narrator/keys.py`, shared with `narrator keys`).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from narrator import state

if TYPE_CHECKING:
    from narrator.config import ServingConfig

SECONDS_PER_MINUTE = 60.0
SQLITE_BUSY_TIMEOUT_S = 5.0  # a request waits this long at most for another worker's bucket write
BUCKET_FILE_SUFFIX = ".ratelimit.sqlite"
REDIS_BUCKET_PREFIX = state.STATE_PREFIX + "bucket:"


@dataclass(frozen=True)
class Quota:
    """A key's bucket after one request: what the X-RateLimit-* headers say."""

    limit: int  # the bucket's size (serving.rate_limit_burst): requests a key may make at once
    remaining: int  # whole requests left now
    reset_s: int  # seconds until the bucket is full again
    wait_s: float  # 0.0: this request went ahead; else the seconds until one may

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(self.reset_s)}


def quota(tokens: float, wait_s: float, rate_per_s: float, burst: int) -> Quota:
    return Quota(limit=burst, remaining=max(0, int(tokens)), reset_s=math.ceil(max(0.0, burst - tokens) / rate_per_s),
                 wait_s=wait_s)


class RateLimiter(Protocol):
    def take(self, key_id: str) -> float:
        """0.0 when the request may go ahead (a token was taken), else the seconds until it may."""

    def take_quota(self, key_id: str) -> Quota:
        """The same, with what is left of the key's bucket."""


def refill_and_take(tokens: float, updated_s: float, now_s: float, rate_per_s: float,
                    burst: int) -> tuple[float, float]:
    """The bucket after a request at `now_s`: (tokens left, seconds to wait; 0.0 when the request may go)."""
    tokens = min(float(burst), tokens + max(0.0, now_s - updated_s) * rate_per_s)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate_per_s


def bucket_file(keys_file: str | Path) -> Path:
    """The local bucket file beside the keys file: serving-keys.json -> serving-keys.ratelimit.sqlite."""
    keys = Path(keys_file)
    return keys.with_name(keys.stem + BUCKET_FILE_SUFFIX)


class SqliteRateLimiter:
    """Buckets in a SQLite file shared by processes on one machine; each take is one IMMEDIATE transaction (the
    write lock first, so two workers never refill from the same reading). Thread-safe."""

    def __init__(self, path: str | Path, per_minute: int, burst: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.rate_per_s, self.burst, self.clock = per_minute / SECONDS_PER_MINUTE, burst, clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a crash may forget the last takes: they refill anyway
        self._db.execute("CREATE TABLE IF NOT EXISTS buckets (key_id TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                         "updated_s REAL NOT NULL)")

    def take(self, key_id: str) -> float:
        return self.take_quota(key_id).wait_s

    def take_quota(self, key_id: str) -> Quota:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:  # locked past the busy timeout, or not writable
                raise state.StateUnavailable(f"the rate-limit file {self.path} cannot be written ({error}); check its "
                                             "folder is writable and on a local disk (several machines: set "
                                             "serving.state_url to a Redis)") from None
            try:
                now_s = self.clock()  # read under the write lock: takes are ordered as their clocks are
                row = self._db.execute("SELECT tokens, updated_s FROM buckets WHERE key_id = ?", (key_id,)).fetchone()
                tokens, updated_s = row if row else (float(self.burst), now_s)
                tokens, wait_s = refill_and_take(tokens, updated_s, now_s, self.rate_per_s, self.burst)
                self._db.execute("INSERT OR REPLACE INTO buckets (key_id, tokens, updated_s) VALUES (?, ?, ?)",
                                 (key_id, tokens, max(now_s, updated_s)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return quota(tokens, wait_s, self.rate_per_s, self.burst)


# KEYS[1]: the bucket; ARGV: tokens a second, burst, seconds until a bucket is full again (its expiry).
# The same arithmetic as `refill_and_take`, on Redis's clock so replicas' clocks never matter.
_TAKE_SCRIPT = """
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(saved[1]) or burst
local updated = tonumber(saved[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(math.max(now, updated)))
redis.call('EXPIRE', KEYS[1], ttl)
return {tostring(wait), tostring(tokens)}
"""


class RedisRateLimiter:
    """Buckets in Redis, one hash per key id, taken atomically by a Lua script (EVALSHA, loaded on first use).
    A bucket left alone until it is full again expires: a missing bucket is a full one."""

    def __init__(self, url: str, per_minute: int, burst: int) -> None:
        self.url = url
        self.rate_per_s, self.burst = per_minute / SECONDS_PER_MINUTE, burst
        self.ttl_s = int(burst / self.rate_per_s) + 1
        self._redis = state.connect(url)
        self._take = self._redis.register_script(_TAKE_SCRIPT)

    def take(self, key_id: str) -> float:
        return self.take_quota(key_id).wait_s

    def take_quota(self, key_id: str) -> Quota:
        import redis

        try:
            wait, tokens = self._take(keys=[REDIS_BUCKET_PREFIX + key_id],
                                      args=[self.rate_per_s, self.burst, self.ttl_s])
        except redis.RedisError as error:
            raise state.unavailable(self.url, error) from None
        return quota(float(tokens), float(wait), self.rate_per_s, self.burst)


def open_rate_limiter(serving: ServingConfig) -> RateLimiter:
    """Redis's buckets when `serving.state_url` is set, else the bucket file beside `serving.keys_file`."""
    if serving.state_url:
        return RedisRateLimiter(serving.state_url, serving.rate_limit_per_minute, serving.rate_limit_burst)
    return SqliteRateLimiter(bucket_file(serving.keys_file), serving.rate_limit_per_minute, serving.rate_limit_burst)
