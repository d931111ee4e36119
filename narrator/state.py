"""The service's shared state store: Redis when `serving.state_url` names one, so that every worker of every
replica sees the same API keys and the same rate-limit buckets.

The URL carries no secret: the password comes from $NARRATOR_STATE_PASSWORD (a Kubernetes Secret) unless the URL
has one itself. Every Redis key lives under `STATE_PREFIX`, so the store may share a Redis database with others.
"""

from __future__ import annotations

import os
from typing import Any

from narrator.errors import NarratorError

PASSWORD_ENV = "NARRATOR_STATE_PASSWORD"
STATE_PREFIX = "narrator:"
CONNECT_TIMEOUT_S = 2.0  # an unreachable Redis fails a request quickly (503) instead of hanging it
COMMAND_TIMEOUT_S = 2.0


class StateUnavailable(NarratorError):
    """The shared state store (Redis) cannot be reached or refuses us; the message says what to check."""

    exit_code = 2


def connect(url: str) -> Any:
    """A Redis client for `url` (connections are made lazily, on the first command)."""
    import redis

    options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": COMMAND_TIMEOUT_S,
                               "decode_responses": True}
    password = os.environ.get(PASSWORD_ENV)
    if password:
        options["password"] = password  # a password written in the URL wins over this one
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as error:
        raise StateUnavailable(f"serving.state_url {redact(url)!r} is not a usable Redis URL ({error}); use "
                               "redis://HOST:6379/0") from None


def redact(url: str) -> str:
    """`url` with any password replaced by ***, fit for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def unavailable(url: str, error: Exception) -> StateUnavailable:
    """The error to raise when a Redis command failed with `error` (a redis.RedisError)."""
    return StateUnavailable(f"the shared state store {redact(url)} did not answer ({type(error).__name__}: {error}); "
                            f"check that Redis runs and that serving.state_url and ${PASSWORD_ENV} are right")
