"""API keys of the speech service: scoped to a tenant and its voices, stored hashed.

A key is `nk_<id>_<secret>`: the id (8 hex digits) names it in the audit log and `narrator keys list`; only
sha256(key) is stored. The keys file (serving.keys_file) is JSON:

    {"keys": [{"id": "1a2b3c4d", "sha256": "...", "tenant": "acme", "voices": ["alice", "bob"] or ["*"],
               "created_at": "...", "revoked": false, "label": "..."}]}

A key may use a voice when the voice belongs to the key's tenant (the registered model's `tenant` tag) and the
voice is in its list (`*`: every voice of the tenant). The file is re-read when it changes, so keys created or
revoked (`narrator keys`) while the service runs take effect at the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from narrator.errors import NarratorError

KEY_PREFIX = "nk_"
ALL_VOICES = "*"
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

    def may_use(self, voice: str, voice_tenant: str) -> bool:
        return (not self.revoked and voice_tenant == self.tenant
                and (ALL_VOICES in self.voices or voice in self.voices))


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """The keys file, re-read when its modification time changes. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The stored key matching `presented` (not revoked), or None."""
        if not presented:
            return None
        match = _KEY_FORMAT.match(presented.strip())
        if not match:
            return None
        key = self._load().get(match.group(1))
        if key is None or key.revoked or not hmac.compare_digest(key.sha256, _hash(presented.strip())):
            return None
        return key

    def _write(self, keys: list[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"keys": [asdict(k) for k in keys]}, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def create(self, tenant: str, voices: list[str], label: str = "") -> tuple[str, ApiKey]:
        """A new key for `tenant` limited to `voices` (["*"]: all the tenant's voices): (the secret, shown once,
        and its stored record)."""
        if not _TENANT.match(tenant):
            raise KeyStoreError(f"tenant {tenant!r} is not usable: letters, digits, '.', '_' or '-', e.g. acme")
        voices = [v.strip() for v in voices if v.strip()]
        if not voices:
            raise KeyStoreError("name the voices the key may use: --voices alice,bob (or --voices '*' for all of the "
                            "tenant's voices)")
        existing = self.keys()
        ids = {k.id for k in existing}
        key_id = secrets.token_hex(4)
        while key_id in ids:
            key_id = secrets.token_hex(4)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        record = ApiKey(id=key_id, sha256=_hash(secret), tenant=tenant, voices=voices,
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), label=label)
        self._write(existing + [record])
        return secret, record

    def revoke(self, key_id: str) -> ApiKey:
        keys = self.keys()
        for key in keys:
            if key.id == key_id:
                key.revoked = True
                self._write(keys)
                return key
        raise KeyStoreError(f"no key {key_id!r} in {self.path}; `narrator keys list` shows the ids")
