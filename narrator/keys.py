"""API keys of the speech service: scoped to a tenant and its voices, stored hashed.

A key is `nk_<id>_<secret>`: the id (8 hex digits) names it in the audit log and `narrator keys list`; only
sha256(key) is stored. The keys file (serving.keys_file) is JSON:

    {"keys": [{"id": "1a2b3c4d", "sha256": "...", "tenant": "acme", "voices": ["alice", "bob"] or ["*"],
               "created_at": "...", "revoked": false, "label": "...", "scopes": ["metrics"]}]}

A key may use a voice when the voice belongs to the key's tenant (the registered model's `tenant` tag) and the
voice is in its list (`*`: every voice of the tenant). `scopes` grant what is not a voice: `metrics` lets a key read
/metrics when the service asks for a key there (serving.metrics_key_required). `check_voices` is what `narrator
keys create` asks before it makes a key: every named voice registered, and the tenant's. The file is re-read when it changes, so keys created or
revoked (`narrator keys`) while the service runs take effect at the next request.

With `serving.state_url` naming a Redis server, the same records live there instead (`RedisKeyStore`, one hash
`narrator:keys` of id -> record JSON), so every replica of the service and `narrator keys` on any machine see one
set of keys. `open_key_store(params.serving)` picks the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from narrator import state
from narrator.errors import NarratorError

if TYPE_CHECKING:
    from narrator.config import ServingConfig

KEY_PREFIX = "nk_"
ALL_VOICES = "*"
SCOPES = ("metrics",)  # what a key may be granted besides voices
_KEY_FORMAT = re.compile(r"^nk_([0-9a-f]{8})_[A-Za-z0-9_-]{20,}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyStoreError(NarratorError):
    """A key cannot be created, found or revoked; the message says what to do."""

    exit_code = 2


@dataclass
class ApiKey:
    """One stored key (never the secret itself)."""

    id: str
    sha256: str
    tenant: str
    voices: list[str]
    created_at: str
    revoked: bool = False
    label: str = ""
    scopes: list[str] = field(default_factory=list)

    def may(self, scope: str) -> bool:
        return not self.revoked and scope in self.scopes

    def may_use(self, voice: str, voice_tenant: str) -> bool:
        return (not self.revoked and voice_tenant == self.tenant
                and (ALL_VOICES in self.voices or voice in self.voices))


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _presented_id(presented: str | None) -> str | None:
    """The id part of a well-formed presented key, else None."""
    match = _KEY_FORMAT.match(presented.strip()) if presented else None
    return match.group(1) if match else None


def _matches(key: ApiKey | None, presented: str) -> bool:
    return key is not None and not key.revoked and hmac.compare_digest(key.sha256, _hash(presented.strip()))


def check_voices(tenant: str, voices: list[str], registered: dict[str, str]) -> None:
    """Refuse (KeyStoreError) a voice that is not registered (`registered`: voice -> its tenant) or belongs to
    another tenant than `tenant`; `*` names every voice of the tenant and is always accepted."""
    named = [v.strip() for v in voices if v.strip() and v.strip() != ALL_VOICES]
    unknown = [v for v in named if v not in registered]
    if unknown:
        raise KeyStoreError(f"no voice {', '.join(map(repr, unknown))} in the registry; `narrator lineage VOICE` or "
                            "the registry lists the registered voices (or use --voices '*' for all of the tenant's)")
    foreign = [v for v in named if registered[v] != tenant]
    if foreign:
        raise KeyStoreError(f"voice {', '.join(map(repr, foreign))} does not belong to tenant {tenant!r}; a key may "
                            "only name its own tenant's voices")


def _new_key(tenant: str, voices: list[str], label: str, taken: set[str],
             scopes: list[str] | None = None) -> tuple[str, ApiKey]:
    """A new secret and its record, with an id outside `taken`; refuses an unusable tenant, an unknown scope or a key
    that may do nothing."""
    if not _TENANT.match(tenant):
        raise KeyStoreError(f"tenant {tenant!r} is not usable: letters, digits, '.', '_' or '-', e.g. acme")
    voices = [v.strip() for v in voices if v.strip()]
    scopes = sorted({s.strip() for s in scopes or [] if s.strip()})
    if unknown := [s for s in scopes if s not in SCOPES]:
        raise KeyStoreError(f"unknown scope {', '.join(map(repr, unknown))}; scopes are {', '.join(SCOPES)}")
    if not voices and not scopes:
        raise KeyStoreError("name the voices the key may use: --voices alice,bob (or --voices '*' for all of the "
                            "tenant's voices), or a scope: --scopes metrics")
    key_id = secrets.token_hex(4)
    while key_id in taken:
        key_id = secrets.token_hex(4)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
    return secret, ApiKey(id=key_id, sha256=_hash(secret), tenant=tenant, voices=voices,
                          created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), label=label,
                          scopes=scopes)


class KeyStoreLike(Protocol):
    """What the service and `narrator keys` need of a key store (the file's or Redis's)."""

    location: str

    def keys(self) -> list[ApiKey]: ...

    def authenticate(self, presented: str | None) -> ApiKey | None: ...

    def create(self, tenant: str, voices: list[str], label: str = "",
               scopes: list[str] | None = None) -> tuple[str, ApiKey]: ...

    def revoke(self, key_id: str) -> ApiKey: ...

    def reachable(self) -> bool: ...


def open_key_store(serving: ServingConfig) -> KeyStoreLike:
    """Redis's store when `serving.state_url` is set, else the keys file `serving.keys_file`."""
    if serving.state_url:
        return RedisKeyStore(serving.state_url)
    return KeyStore(serving.keys_file)


class KeyStore:
    """The keys file, re-read when its modification time changes. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def _load(self) -> dict[str, ApiKey]:
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._keys = None, {}
                return self._keys
            stamp = (stat.st_mtime, stat.st_size)
            if stamp != self._stamp:
                data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
                self._keys = {k["id"]: ApiKey(**k) for k in data.get("keys", [])}
                self._stamp = stamp
            return self._keys

    def keys(self) -> list[ApiKey]:
        return list(self._load().values())

    def reachable(self) -> bool:
        return True  # a missing keys file is an empty store

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The stored key matching `presented` (not revoked), or None."""
        key_id = _presented_id(presented)
        if key_id is None:
            return None
        key = self._load().get(key_id)
        return key if _matches(key, presented) else None

    def _write(self, keys: list[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"keys": [asdict(k) for k in keys]}, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def create(self, tenant: str, voices: list[str], label: str = "",
               scopes: list[str] | None = None) -> tuple[str, ApiKey]:
        """A new key for `tenant` limited to `voices` (["*"]: all the tenant's voices): (the secret, shown once,
        and its stored record)."""
        existing = self.keys()
        secret, record = _new_key(tenant, voices, label, {k.id for k in existing}, scopes)
        self._write(existing + [record])
        return secret, record

    def revoke(self, key_id: str) -> ApiKey:
        keys = self.keys()
        for key in keys:
            if key.id == key_id:
                key.revoked = True
                self._write(keys)
                return key
        raise KeyStoreError(f"no key {key_id!r} in {self.location}; `narrator keys list` shows the ids")


class RedisKeyStore:
    """The same records in Redis (`serving.state_url`): one hash, id -> record JSON, read at every request so a
    key created or revoked anywhere takes effect at once on every replica. Thread-safe (redis-py's pool)."""

    HASH = state.STATE_PREFIX + "keys"

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = f"Redis {state.redact(url)}"
        self._redis = state.connect(url)

    @contextmanager
    def _answering(self) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as error:
            raise state.unavailable(self.url, error) from None

    @staticmethod
    def _record(raw: str | None) -> ApiKey | None:
        return ApiKey(**json.loads(raw)) if raw else None

    def keys(self) -> list[ApiKey]:
        with self._answering():
            found = self._redis.hgetall(self.HASH)
        return sorted((ApiKey(**json.loads(raw)) for raw in found.values()), key=lambda k: (k.created_at, k.id))

    def reachable(self) -> bool:
        import redis

        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def authenticate(self, presented: str | None) -> ApiKey | None:
        key_id = _presented_id(presented)
        if key_id is None:
            return None
        with self._answering():
            key = self._record(self._redis.hget(self.HASH, key_id))
        return key if _matches(key, presented) else None

    def create(self, tenant: str, voices: list[str], label: str = "",
               scopes: list[str] | None = None) -> tuple[str, ApiKey]:
        taken: set[str] = set()
        with self._answering():
            while True:  # HSETNX: two creators drawing the same id cannot overwrite each other
                secret, record = _new_key(tenant, voices, label, taken, scopes)
                if self._redis.hsetnx(self.HASH, record.id, json.dumps(asdict(record))):
                    return secret, record
                taken.add(record.id)

    def revoke(self, key_id: str) -> ApiKey:
        with self._answering():
            key = self._record(self._redis.hget(self.HASH, key_id))
            if key is None:
                raise KeyStoreError(f"no key {key_id!r} in {self.location}; `narrator keys list` shows the ids")
            key.revoked = True
            self._redis.hset(self.HASH, key_id, json.dumps(asdict(key)))
        return key
