"""The service's state shared across workers and replicas: one rate-limit bucket per API key and one set of keys,
whether the service runs several worker processes on one machine (a SQLite bucket file beside the keys file) or
several replicas (Redis, `serving.state_url`).
"""

from __future__ import annotations

import math
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT

BURST = 5
PER_MINUTE = 6  # 0.1 token a second: a burst of requests lasting seconds earns almost nothing back
REQUESTS = 40


def _most_that_may_pass(elapsed_s: float) -> int:
    """One bucket's worth: the burst plus what the bucket refilled while the requests ran."""
    return BURST + math.floor(elapsed_s * PER_MINUTE / 60.0)


class _Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


# -- one machine: a bucket file shared by processes ---------------------------------------------------------------


def test_limiters_sharing_a_bucket_file_share_one_bucket_per_key(tmp_path):
    from serving.ratelimit import SqliteRateLimiter

    clock = _Clock()
    first, second = (SqliteRateLimiter(tmp_path / "buckets.sqlite", PER_MINUTE, BURST, clock) for _ in range(2))
    passed = [limiter.take("k1") == 0.0 for _ in range(REQUESTS) for limiter in (first, second)]
    assert sum(passed) == BURST
    assert first.take("k2") == 0.0, "another key has its own bucket"
    wait_s = second.take("k1")
    assert wait_s == pytest.approx(60.0 / PER_MINUTE)  # an empty bucket: one token's time
    clock.now_s += wait_s
    assert first.take("k1") == 0.0 and second.take("k1") > 0.0


def test_a_bucket_refills_at_the_rate_up_to_the_burst(tmp_path):
    from serving.ratelimit import SqliteRateLimiter

    clock = _Clock()
    limiter = SqliteRateLimiter(tmp_path / "buckets.sqlite", PER_MINUTE, BURST, clock)
    assert sum(limiter.take("k") == 0.0 for _ in range(BURST + 1)) == BURST
    clock.now_s += 3 * 60.0 / PER_MINUTE  # three tokens' time
    assert sum(limiter.take("k") == 0.0 for _ in range(BURST)) == 3
    clock.now_s += 3600.0  # a long rest fills the bucket to the burst, no further
    assert sum(limiter.take("k") == 0.0 for _ in range(2 * BURST)) == BURST


def _take_many(path: str, count: int, passed) -> None:
    from serving.ratelimit import SqliteRateLimiter

    limiter = SqliteRateLimiter(path, PER_MINUTE, BURST)
    for _ in range(count):
        if limiter.take("shared") == 0.0:
            with passed.get_lock():
                passed.value += 1


def test_processes_racing_on_a_bucket_file_pass_one_buckets_worth(tmp_path):
    context = multiprocessing.get_context("fork")
    passed = context.Value("i", 0)
    path = str(tmp_path / "buckets.sqlite")
    started = time.monotonic()
    workers = [context.Process(target=_take_many, args=(path, REQUESTS, passed)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    elapsed_s = time.monotonic() - started
    assert all(worker.exitcode == 0 for worker in workers)
    assert BURST <= passed.value <= _most_that_may_pass(elapsed_s)


def test_the_bucket_file_lies_beside_the_keys_file():
    from serving.ratelimit import bucket_file

    assert str(bucket_file("/srv/narrator/serving-keys.json")) == "/srv/narrator/serving-keys.ratelimit.sqlite"


def test_state_url_must_name_redis():
    from narrator.config import load_params
    from narrator.errors import ConfigError

    with pytest.raises(ConfigError, match="not a Redis URL"):
        load_params(overrides={"serving": {"state_url": "postgresql://db/narrator"}})
    assert load_params(overrides={"serving": {"state_url": "redis://redis:6379/0"}}).serving.state_url


# -- a real service with two workers ------------------------------------------------------------------------------


def test_two_workers_pass_at_most_one_buckets_worth_of_a_burst(tmp_path):
    """The regression: each worker held its own bucket, so a key got about twice its burst through."""
    from tests.deployment import bare_service, running_service
    from tests.services import free_port

    env, key = bare_service(tmp_path, {"workers": 2, "rate_limit_per_minute": PER_MINUTE, "rate_limit_burst": BURST})
    port = free_port()
    with running_service(env, port, tmp_path / "serve.log") as base:
        def call(_: int) -> int:  # a connection each, so that both workers get their share
            return httpx.get(f"{base}/v1/voices", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(call, range(REQUESTS)))
        elapsed_s = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    assert BURST <= statuses.count(200) <= _most_that_may_pass(elapsed_s), (statuses, elapsed_s)


# -- replicas: Redis ----------------------------------------------------------------------------------------------


def _redis_params(redis_service):
    from narrator.config import load_params

    return load_params(overrides={"serving": {"state_url": redis_service.url, "rate_limit_per_minute": PER_MINUTE,
                                              "rate_limit_burst": BURST}})


@pytest.mark.services
def test_replicas_sharing_redis_pass_one_buckets_worth(redis_service):
    import secrets

    from serving.ratelimit import open_rate_limiter

    params = _redis_params(redis_service)
    replicas = [open_rate_limiter(params.serving) for _ in range(2)]
    key_id = secrets.token_hex(4)
    started = time.monotonic()
    passed = sum(replica.take(key_id) == 0.0 for _ in range(REQUESTS) for replica in replicas)
    elapsed_s = time.monotonic() - started
    assert BURST <= passed <= _most_that_may_pass(elapsed_s)
    wait_s = replicas[0].take(key_id)
    assert 0.0 < wait_s <= 60.0 / PER_MINUTE


@pytest.mark.services
def test_replicas_racing_on_redis_pass_one_buckets_worth(redis_service):
    import secrets

    from serving.ratelimit import open_rate_limiter

    params = _redis_params(redis_service)
    key_id = secrets.token_hex(4)
    replicas = [open_rate_limiter(params.serving) for _ in range(4)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = list(pool.map(lambda i: replicas[i % len(replicas)].take(key_id), range(REQUESTS)))
    elapsed_s = time.monotonic() - started
    assert BURST <= waits.count(0.0) <= _most_that_may_pass(elapsed_s)


@pytest.mark.services
def test_a_key_created_through_one_replica_authenticates_through_another(redis_service):
    from narrator.keys import RedisKeyStore, open_key_store

    params = _redis_params(redis_service)
    one, other = open_key_store(params.serving), open_key_store(params.serving)
    assert isinstance(one, RedisKeyStore)
    secret, record = one.create("acme", ["alice", "bob"], label="replicas")
    found = other.authenticate(secret)
    assert found is not None and found.id == record.id and found.tenant == "acme" and found.voices == ["alice", "bob"]
    assert other.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    one.revoke(record.id)
    assert other.authenticate(secret) is None
    assert record.id in {k.id for k in other.keys() if k.revoked}


@pytest.mark.services
def test_redis_stores_only_the_hash_of_a_key(redis_service):
    import redis

    from narrator.keys import RedisKeyStore

    store = RedisKeyStore(redis_service.url)
    secret, record = store.create("acme", ["*"])
    stored = redis.Redis.from_url(redis_service.url, decode_responses=True).hget(RedisKeyStore.HASH, record.id)
    assert secret not in stored and record.sha256 in stored


@pytest.mark.services
def test_keys_cli_creates_lists_and_revokes_keys_in_redis(redis_service, tmp_path):
    from narrator.keys import RedisKeyStore

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"serving": {"state_url": redis_service.url,
                                                  "keys_file": str(tmp_path / "keys.json")}}))
    run = [sys.executable, "-m", "cli", "keys"]
    created = subprocess.run(run + ["create", "--tenant", "globex", "--voices", "*", "--params", str(params)],
                             capture_output=True, text=True, cwd=REPO_ROOT)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    key_id = secret.split("_")[1]
    assert "Redis redis://" in created.stderr and not (tmp_path / "keys.json").exists()
    assert RedisKeyStore(redis_service.url).authenticate(secret).tenant == "globex"
    listed = subprocess.run(run + ["list", "--params", str(params)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert key_id in listed.stdout and "tenant globex" in listed.stdout
    revoked = subprocess.run(run + ["revoke", key_id, "--params", str(params)], capture_output=True, text=True,
                             cwd=REPO_ROOT)
    assert revoked.returncode == 0, revoked.stderr
    assert RedisKeyStore(redis_service.url).authenticate(secret) is None


def test_an_unreachable_redis_is_a_clear_error_not_a_hang():
    from narrator.keys import RedisKeyStore
    from narrator.state import StateUnavailable
    from serving.ratelimit import RedisRateLimiter
    from tests.services import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisKeyStore(url)
    assert not store.reachable()
    with pytest.raises(StateUnavailable, match="did not answer") as refused:
        store.authenticate("nk_0123abcd_" + "x" * 24)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(StateUnavailable, match="serving.state_url"):
        RedisRateLimiter(url, PER_MINUTE, BURST).take("k")


def test_the_service_answers_503_and_is_not_ready_while_redis_is_unreachable(tmp_path, monkeypatch):
    from narrator.config import load_params
    from serving.api import NarratorServer
    from serving.errors import ApiError
    from tests.services import free_port

    class _Request:  # what authorize reads of a request
        headers = {"authorization": "Bearer nk_0123abcd_" + "x" * 24}

    monkeypatch.setenv("NARRATOR_WATERMARK_KEY", "test-serving-state")
    params = load_params(overrides={"serving": {"state_url": f"redis://127.0.0.1:{free_port()}/0",
                                                "audit_log": str(tmp_path / "audit.jsonl")}})
    server = NarratorServer(params, device="cpu")
    try:
        with pytest.raises(ApiError) as refused:
            server.authorize(_Request())
        assert refused.value.status == 503 and "try again" in refused.value.message
        assert not server.ready()
    finally:
        server.close()
