"""The voice registry: MLflow's model registry, as every part of Narrator reads and writes it.

A voice VOICE is the registered model `registry.model_prefix + VOICE` (e.g. `narrator-alice`); each fine-tuned
result is a model version with its lineage as tags (written by `components/register.py`). This module holds what
the registration step, the service and the command line share:

- the client (`registry_client`), voice names (`model_name`) and lookups that fail with advice;
- voice ids and the watermark payload codec: 32 bits per (voice, version) = 16-bit voice id << 16 | 16-bit version.
  The voice id is allocated once per registered model (tag `voice_id`, unique in the registry): the first 16 bits
  of sha256(model name), or the next free id on a collision. `payload_for`, `lookup_payload`, `format_payload`
  and `parse_payload` convert;
- aliases: `challenger` (the newest version) and `champion` (the version that serves); `champion(s)` read them and
  `move_champion` moves one;
- the registry lock (`registry_locked`): registrations and approvals run one at a time per registry, so concurrent
  pipelines never share a voice id or race a version number or a promotion;
- the registry's audit events (`audit_event`), in the hash-chained log of `narrator/audit.py`.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from narrator import audit
from narrator.config import Params
from narrator.errors import NarratorError
from narrator.log import get_logger

log = get_logger("registry")

CHAMPION = "champion"  # the alias serving takes
CHALLENGER = "challenger"  # the alias of the newest registered version
TENANT_TAG = "tenant"  # the registered model tag naming the tenant that owns a voice
UNKNOWN = "unknown"

VOICE_ID_BITS = 16
VERSION_BITS = 16
PAYLOAD_BITS = VOICE_ID_BITS + VERSION_BITS  # models.watermark.PAYLOAD_BITS carries exactly this many
MAX_VOICE_ID = (1 << VOICE_ID_BITS) - 1
MAX_VERSION = (1 << VERSION_BITS) - 1
MAX_PAYLOAD = (1 << PAYLOAD_BITS) - 1
PAYLOAD_HEX_DIGITS = PAYLOAD_BITS // 4  # as `narrator watermark embed --payload` takes it
# The payload evaluation samples are marked with ("NARR"); its voice id is reserved, as is 0 ("no voice").
EVALUATION_PAYLOAD = 0x4E415252
RESERVED_VOICE_IDS = frozenset({0, EVALUATION_PAYLOAD >> VERSION_BITS})

VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PAYLOAD_HEX = re.compile(rf"[0-9a-fA-F]{{{PAYLOAD_HEX_DIGITS}}}")
MLFLOW_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
MLFLOW_EXISTS = "RESOURCE_ALREADY_EXISTS"
SEARCH_PAGE_SIZE = 1000


class RegistryError(NarratorError):
    """A voice cannot be registered, promoted, approved or traced; the message says what to do."""


class PayloadError(NarratorError):
    """A watermark payload is not 8 hex digits (32 bits)."""


@dataclass(frozen=True)
class Champion:
    """The `champion` version of one voice, as serving and bento builds read it."""

    voice: str
    model_name: str
    version: int
    tenant: str | None  # the registered model's `tenant` tag (registry.tenant at first registration)
    tags: dict[str, str]  # the version's tags: payload_hex, bento, verdict, metric.*, lineage ...


# -- names and lookups -------------------------------------------------------------------------------------------


def registry_client(params: Params):
    """An MLflow client of the registry (`registry.tracking_uri`, for tracking and model registry alike)."""
    from mlflow import MlflowClient

    uri = params.registry.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_voice_name(voice: str) -> None:
    if not VOICE_NAME.match(voice):
        raise RegistryError(f"voice name {voice!r} is not usable: use letters, digits, '.', '_' or '-' (up to 100, "
                            "starting with a letter or digit), e.g. alice or alice-en")


def model_name(voice: str, params: Params) -> str:
    """The registered model of `voice`."""
    check_voice_name(voice)
    return params.registry.model_prefix + voice


def _error_code(error: Exception) -> str | None:
    return getattr(error, "error_code", None)


def registered_model(client, name: str, voice: str):
    """The RegisteredModel `name`; RegistryError with advice when the voice is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as error:
        if _error_code(error) == MLFLOW_NOT_FOUND:
            raise RegistryError(f"no voice {voice!r} in the registry ({name} not found); register it with "
                                "`narrator register VOICE ...` or check registry.tracking_uri and "
                                "registry.model_prefix") from None
        raise


def model_version(client, name: str, version: int):
    """The ModelVersion `version` of `name`; RegistryError listing the versions there are."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if _error_code(error) == MLFLOW_NOT_FOUND:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
            raise RegistryError(f"{name} has no version {version}; its versions are "
                                f"{', '.join(map(str, versions)) or 'none'}") from None
        raise


def all_registered_models(client) -> list:
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=SEARCH_PAGE_SIZE, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def alias_version(model, alias: str) -> int | None:
    """The version an alias of a RegisteredModel points at (stores differ: int or str), or None."""
    version = model.aliases.get(alias)
    return None if version is None else int(version)


def version_aliases(client, name: str, version: int) -> list[str]:
    return sorted(model_version(client, name, version).aliases or [])


def ensure_registered_model(client, name: str, voice: str):
    """The registered model `name` of `voice`, created with the next free 16-bit voice id (its `voice_id` tag, the
    high half of every watermark payload of the voice) if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if _error_code(error) != MLFLOW_NOT_FOUND:
            raise
        try:
            client.create_registered_model(name, tags={"voice": voice}, description=f"Narrator voice {voice!r}")
        except MlflowException as create_error:  # created meanwhile by a concurrent registration
            if _error_code(create_error) != MLFLOW_EXISTS:
                raise
        model = client.get_registered_model(name)
    if "voice_id" not in model.tags:
        client.set_registered_model_tag(name, "voice_id", str(_free_voice_id(client, name)))
        model = client.get_registered_model(name)
    return model


def _free_voice_id(client, name: str) -> int:
    """The first 16 bits of sha256(name), or the next id no other registered model uses."""
    used = {int(m.tags["voice_id"]) for m in all_registered_models(client)
            if m.name != name and m.tags.get("voice_id", "").isdigit()}
    start = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) & MAX_VOICE_ID
    for offset in range(MAX_VOICE_ID + 1):
        candidate = (start + offset) & MAX_VOICE_ID
        if candidate not in used and candidate not in RESERVED_VOICE_IDS:
            return candidate
    raise RegistryError(f"all {MAX_VOICE_ID + 1} watermark voice ids are taken; delete unused registered models")


# -- the watermark payload codec ---------------------------------------------------------------------------------


def compose_payload(voice_id: int, version: int) -> int:
    """voice id << 16 | version."""
    if not 0 < version <= MAX_VERSION:
        raise RegistryError(f"version {version} does not fit the {VERSION_BITS}-bit watermark field; register the "
                            "voice under a new name")
    return (voice_id << VERSION_BITS) | version


def format_payload(payload: int | None) -> str | None:
    """0xC0FFEE -> '00c0ffee'; None stays None."""
    return None if payload is None else f"{payload:0{PAYLOAD_HEX_DIGITS}x}"


def parse_payload(payload_hex: str) -> int:
    """'00c0ffee' -> 0x00C0FFEE. Exactly 8 hex digits; anything else raises PayloadError."""
    text = str(payload_hex).strip()
    if not _PAYLOAD_HEX.fullmatch(text):
        raise PayloadError(f"payload {payload_hex!r} is not {PAYLOAD_HEX_DIGITS} hex digits; give e.g. --payload "
                           "00c0ffee")
    return int(text, 16)


def payload_for(voice: str, version: int, params: Params) -> int:
    """The 32-bit watermark payload of a registered (voice, version): voice id << 16 | version."""
    client = registry_client(params)
    name = model_name(voice, params)
    model = registered_model(client, name, voice)
    model_version(client, name, version)
    return compose_payload(int(model.tags["voice_id"]), version)


def lookup_payload(payload: int, params: Params) -> tuple[str, int] | None:
    """The (voice, version) a watermark payload belongs to, or None when no registered version has it."""
    if not 0 <= payload <= MAX_PAYLOAD:
        raise RegistryError(f"payload {payload!r} is not a {PAYLOAD_BITS}-bit number ({PAYLOAD_HEX_DIGITS} hex "
                            "digits)")
    voice_id, version = payload >> VERSION_BITS, payload & MAX_VERSION
    client = registry_client(params)
    for model in all_registered_models(client):
        if model.tags.get("voice_id") == str(voice_id):
            try:
                model_version(client, model.name, version)
            except RegistryError:
                return None
            return model.tags.get("voice", model.name.removeprefix(params.registry.model_prefix)), version
    return None


# -- champions ---------------------------------------------------------------------------------------------------


def _champion_of(client, model, voice: str) -> Champion | None:
    version = alias_version(model, CHAMPION)
    if version is None:
        return None
    tags = dict(client.get_model_version(model.name, str(version)).tags)
    return Champion(voice=voice, model_name=model.name, version=version, tenant=model.tags.get(TENANT_TAG) or None,
                    tags=tags)


def champion(voice: str, params: Params) -> Champion | None:
    """`voice`'s champion, or None while it has none; RegistryError when the voice is not registered."""
    client = registry_client(params)
    return _champion_of(client, registered_model(client, model_name(voice, params), voice), voice)


def champions(params: Params) -> list[Champion]:
    """The champion of every voice in the registry (registered models named `registry.model_prefix + VOICE`)."""
    prefix = params.registry.model_prefix
    client = registry_client(params)
    found = []
    for model in all_registered_models(client):
        if model.name.startswith(prefix):
            voice = model.tags.get("voice") or model.name.removeprefix(prefix)
            if (best := _champion_of(client, model, voice)) is not None:
                found.append(best)
    return found


def voice_tenants(params: Params) -> dict[str, str]:
    """Every registered voice (champion or not) and the tenant that owns it (its `tenant` tag, else
    serving.default_tenant)."""
    prefix = params.registry.model_prefix
    found = {}
    for model in all_registered_models(registry_client(params)):
        if model.name.startswith(prefix):
            voice = model.tags.get("voice") or model.name.removeprefix(prefix)
            found[voice] = model.tags.get(TENANT_TAG) or params.serving.default_tenant
    return found


def move_champion(client, name: str, version: int, by: str) -> int | None:
    """Point `champion` at `version`, tag who and when; returns the previous champion's version (or None)."""
    previous = alias_version(client.get_registered_model(name), CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    for key, value in {"promoted_by": by, "promoted_at": now(), "pending_approval": "false"}.items():
        client.set_model_version_tag(name, str(version), key, value)
    return previous


# -- who, when, lock and audit -----------------------------------------------------------------------------------


def actor() -> str:
    """Who runs this process (recorded as registered_by / by)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return UNKNOWN


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


LOCAL_SCHEMES = ("sqlite:", "file:")  # registries in a local file; any other URI scheme (http, https, postgresql,
                                     # databricks, ...) names a registry that processes on other machines share
LOCK_NAMESPACE = b"narrator registry lock\0"  # hashed before the registry URI into the advisory lock key
LOCK_CONNECT_TIMEOUT_S = 10


def is_registry_server(tracking_uri: str) -> bool:
    """Whether the registry is a server (http/https) or database that processes on other machines register in
    too: any URI but a sqlite database, a file:// store or a plain path."""
    uri = tracking_uri.lower()
    return "://" in uri and not uri.startswith(LOCAL_SCHEMES)


def registry_lock_path(params: Params) -> Path:
    """The file whose lock serialises registrations and approvals (`registry.lock_file`; default: beside the
    sqlite database, or beside the audit log for another local store)."""
    from narrator.tracking import sqlite_database

    if params.registry.lock_file:
        return Path(params.registry.lock_file).expanduser()
    beside = sqlite_database(params.registry.tracking_uri) or Path(params.registry.audit_log)
    return beside.expanduser().with_suffix(".lock")


def registry_lock_key(tracking_uri: str) -> int:
    """The PostgreSQL advisory lock key of a registry: the first 64 bits of sha256 over the registry URI (as
    written, without a trailing '/'), as the signed bigint `pg_advisory_lock` takes."""
    digest = hashlib.sha256(LOCK_NAMESPACE + tracking_uri.rstrip("/").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def redact_url(url: str) -> str:
    """A URL with its password replaced by ***, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


REGISTRY_LOCK_NAME = "narrator-registry"  # the advisory lock's name when the registry audit log is on PostgreSQL


@contextmanager
def registry_locked(params: Params) -> Iterator[None]:
    """One registration or approval at a time against this registry: voice ids, version numbers and the champion
    move are decided under this lock, so concurrent pipelines neither share a voice id nor race a promotion.

    Where the lock lives, first match wins:
    - `registry.lock_url`: PostgreSQL's session advisory lock keyed by the registry URI (`registry_lock_key`), so
      processes on every machine that reach the database queue on it; a process that dies drops its connection
      and the lock with it;
    - a registry that is not sqlite, with `registry.audit_log` on PostgreSQL and no `lock_file`: an advisory lock
      in the audit log's database (one setting fewer for a cluster that shares its audit log);
    - a registry server (http/https, postgresql) otherwise: refused, since a file on one machine serialises
      nothing on another;
    - else a file lock (`registry_lock_path`)."""
    from narrator.tracking import sqlite_database

    cfg = params.registry
    if cfg.lock_url:
        with _advisory_locked(cfg.lock_url, registry_lock_key(cfg.tracking_uri)):
            yield
        return
    if cfg.lock_file is None and sqlite_database(cfg.tracking_uri) is None and audit.is_postgres(cfg.audit_log):
        with audit.postgres_lock(cfg.audit_log, REGISTRY_LOCK_NAME):
            yield
        return
    if is_registry_server(cfg.tracking_uri):
        raise RegistryError(f"registry.tracking_uri {redact_url(cfg.tracking_uri)} is a server that other machines "
                            "register in too, and a local file lock cannot serialise them: set registry.lock_url to a "
                            "PostgreSQL database every registering machine reaches (e.g. --set "
                            "registry.lock_url=postgresql://USER@HOST:5432/DB), or put registry.audit_log in one")
    path = registry_lock_path(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle, audit.exclusive(handle):
        yield


@contextmanager
def _advisory_locked(url: str, key: int) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock `key` in the database `url` for the block (waiting for it)."""
    import psycopg

    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=LOCK_CONNECT_TIMEOUT_S,
                                     application_name=f"narrator registry lock (pid {os.getpid()})")
    except psycopg.Error as error:
        raise RegistryError(f"cannot reach the registry lock database registry.lock_url {redact_url(url)} "
                            f"({str(error).strip()}); check the URL, the credentials and that PostgreSQL is "
                            "up") from None
    try:
        connection.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            try:
                released = connection.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone()[0]
            except psycopg.Error:
                released = False
            if not released:  # the session ended meanwhile, and the lock with it
                log.warning("the registry lock %d was no longer held when released (the connection to %s dropped)",
                            key, redact_url(url))
    finally:
        connection.close()


def audit_event(params: Params, event: str, **details: Any) -> str:
    """Append one event (time, event, details) to the registry's audit log (`registry.audit_log`)."""
    return audit.append(params.registry.audit_log, {"time": now(), "event": event, **details},
                        audit.load_key(params.registry.audit_key_file))


def version_audit(params: Params, event: str, name: str, voice: str, version: int, by: str, **details: Any) -> None:
    """An audit event about one model version (registered, promoted, approved)."""
    audit_event(params, event, model=name, voice=voice, version=version, by=by, **details)
