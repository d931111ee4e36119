"""The service's contract through real HTTP (one `bentoml serve` for the module, tests/deployment.py's two voices in
two tenants): ready means the champions are loaded, the OpenAPI document states every status a route answers with,
every response carries a request id and security headers, keyed ones the rate limit, metrics are labelled by route
template and behind a `metrics` key, CORS only for the configured origins, and detection tells a tenant nothing of
another's voices. The first test is the first request after ready: keep it first.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import REPO_ROOT

ORIGIN = "https://app.example.com"
SETTINGS = {"serving": {"metrics_key_required": True, "cors_origins": [ORIGIN], "rate_limit_per_minute": 6000,
                        "rate_limit_burst": 400, "max_text_chars": 400, "max_upload_mb": 4.0}}
SENTENCE = "The old clock in the hallway chimed seven times."
LONG_TEXT = ("The lighthouse keeper climbed the spiral stairs before the storm arrived. Every morning the baker "
             "opened her shop at exactly six o'clock. A small boat drifted slowly across the quiet harbour.")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.deployment import build_small_deployment

    return build_small_deployment(tmp_path_factory.mktemp("contract"), SETTINGS)


@pytest.fixture(scope="module")
def metrics_key(deployment):
    from narrator.config import load_params
    from narrator.keys import KeyStore

    return KeyStore(load_params(deployment.params_file).serving.keys_file).create("ops", [], scopes=["metrics"])[0]


@pytest.fixture(scope="module")
def service(deployment, metrics_key, tmp_path_factory):
    from tests.deployment import running_service
    from tests.services import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("contract-log") / "serve.log"
    with running_service(deployment.env(port), port, log) as base:
        yield base


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _speech(service, key, **body) -> httpx.Response:
    return httpx.post(f"{service}/v1/speech", headers=_auth(key), json=body, timeout=120)


# -- ready means ready --------------------------------------------------------------------------------------------


def test_the_first_request_after_ready_costs_at_most_twice_a_warm_one(service, deployment):
    """/readyz said ready only once the champions were loaded and warmed up: no lazy load on the first request.
    The same work each time (greedy decoding: top_k 1 gives the same tokens whatever the seed), a new seed each
    time so no result comes from the cache."""
    acme = deployment.keys["acme"]
    timings, durations = [], set()
    for seed in range(1, 5):
        started = time.perf_counter()
        response = _speech(service, acme, voice="alice", text=SENTENCE, seed=seed, top_k=1)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        durations.add(response.headers["x-audio-duration-s"])
    assert len(durations) == 1, "not the same work each time"
    first, warm = timings[0], statistics.median(timings[1:])
    assert first <= 2 * warm, f"first request {first:.2f} s, warm {warm:.2f} s"


def test_preloading_stops_at_the_voice_limit_and_only_then_is_the_server_ready(deployment, monkeypatch):
    from narrator.config import load_params
    from serving.api import NarratorServer

    monkeypatch.setenv("NARRATOR_WATERMARK_KEY", deployment.watermark_key)
    server = NarratorServer(load_params(deployment.params_file, {"serving": {"max_voices": 1}}), device="cpu")
    try:
        assert not server.ready()  # nothing loaded yet: not ready
        assert server.preload() == [("alice", 1)]  # by name, as many as fit: one
        assert server.ready() and server.preload_problem is None
    finally:
        server.close()


# -- the contract document ------------------------------------------------------------------------------------------


def test_openapi_is_a_valid_3_1_document_with_a_bearer_scheme_and_the_real_error_body(service):
    from openapi_spec_validator import validate

    schema = httpx.get(f"{service}/v1/openapi.json").json()
    validate(schema)
    assert schema["openapi"].startswith("3.1")
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearer"][
            "description"]}
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["properties"]["error"]["required"] == ["code", "message"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    speech = schema["paths"]["/v1/speech"]["post"]
    assert {"bearer": []} in speech["security"]
    assert speech["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "X-RateLimit-Remaining" in speech["responses"]["200"]["headers"]
    assert "X-Request-Id" in speech["responses"]["500"]["headers"]
    for path in ("/v1/audio/speech", "/elevenlabs/v1/text-to-speech/{voice_id}"):  # the compatible routes too
        compat = schema["paths"][path]["post"]
        assert {"bearer": []} in compat["security"] and {"401", "429", "500"} <= set(compat["responses"]), path
        assert "X-Request-Id" in compat["responses"]["200"]["headers"]


def test_every_status_a_route_answers_with_is_in_the_document(service, deployment, metrics_key):
    """Each route with no key, a bad body, a voice of another tenant, an unknown voice, too much: the status it
    answers with is one the document lists for it, with the Error body when it is an error."""
    from narrator.audiofile import encode
    import numpy as np

    schema = httpx.get(f"{service}/v1/openapi.json").json()
    acme, wav = deployment.keys["acme"], encode(np.zeros(16000, np.float32), 16000, "wav")
    speech = {"voice": "alice", "text": "Hello."}
    cases = [
        ("get", "/v1/voices", {}, 401), ("get", "/v1/voices", {"headers": _auth(acme)}, 200),
        ("get", "/metrics", {}, 401), ("get", "/metrics", {"headers": _auth(acme)}, 403),
        ("get", "/metrics", {"headers": _auth(metrics_key)}, 200),
        ("post", "/v1/watermark/detect", {"content": wav}, 401),
        ("post", "/v1/watermark/detect", {"content": wav, "headers": _auth(acme)}, 200),
        ("post", "/v1/watermark/detect", {"content": b"not audio" * 10, "headers": _auth(acme)}, 422),
        ("post", "/v1/watermark/detect", {"content": b"\0" * (5 * 2 ** 20), "headers": _auth(acme)}, 413),
    ]
    for path in ("/v1/speech", "/v1/speech/stream"):
        cases += [
            ("post", path, {"json": speech}, 401),
            ("post", path, {"json": {**speech, "voice": "bob"}, "headers": _auth(acme)}, 403),
            ("post", path, {"json": {**speech, "voice": "nobody"}, "headers": _auth(acme)}, 404),
            ("post", path, {"json": {**speech, "text": "word " * 100}, "headers": _auth(acme)}, 413),
            ("post", path, {"json": {**speech, "top_p": 5}, "headers": _auth(acme)}, 422),
            ("post", path, {"content": b"{not json", "headers": {**_auth(acme), "Content-Type": "application/json"}},
             422),
            ("post", path, {"json": {**speech, "seed": 9}, "headers": _auth(acme)}, 200),
        ]
    for method, path, kwargs, expected in cases:
        response = httpx.request(method, f"{service}{path}", timeout=120, **kwargs)
        assert response.status_code == expected, (method, path, response.text)
        documented = schema["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code)
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
            assert documented[str(response.status_code)]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}


def test_the_docs_page_loads_only_what_the_service_ships(service):
    page = httpx.get(f"{service}/v1/docs")
    assert page.status_code == 200 and "Narrator API" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text and "http://" not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "cdn" not in csp
    script = httpx.get(f"{service}/v1/docs/docs.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "/v1/openapi.json" in script.text and "Bearer" in script.text and "http" not in script.text


# -- headers ------------------------------------------------------------------------------------------------------


def test_every_response_carries_a_request_id_and_security_headers(service, deployment):
    for response in (httpx.get(f"{service}/v1/voices"), httpx.get(f"{service}/no/such/path"),
                     httpx.get(f"{service}/v1/voices", headers=_auth(deployment.keys["acme"]))):
        assert len(response.headers["x-request-id"]) >= 16
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    mine = "trace-" + uuid.uuid4().hex
    assert httpx.get(f"{service}/v1/voices", headers={"X-Request-Id": mine}).headers["x-request-id"] == mine
    forged = httpx.get(f"{service}/v1/voices", headers={"X-Request-Id": "a b\tc" + "x" * 200})
    assert forged.headers["x-request-id"] != "a b\tc" + "x" * 200


def test_keyed_responses_carry_the_rate_limit(service, deployment):
    from narrator.config import load_params
    from narrator.keys import KeyStore

    key, _ = KeyStore(load_params(deployment.params_file).serving.keys_file).create("acme", ["*"])
    first = httpx.get(f"{service}/v1/voices", headers=_auth(key))
    second = httpx.get(f"{service}/v1/voices", headers=_auth(key))
    assert first.headers["x-ratelimit-limit"] == second.headers["x-ratelimit-limit"] == "400"
    assert int(second.headers["x-ratelimit-remaining"]) <= int(first.headers["x-ratelimit-remaining"]) == 399
    assert int(second.headers["x-ratelimit-reset"]) >= 1
    refused = _speech(service, key, voice="nobody", text="Hello.")  # errors after the charge carry it too
    assert refused.status_code == 404 and "x-ratelimit-remaining" in refused.headers


def test_the_rate_limit_headers_count_down_and_say_when_the_bucket_is_full_again(tmp_path):
    from serving.ratelimit import SqliteRateLimiter

    now = [1000.0]
    limiter = SqliteRateLimiter(tmp_path / "buckets.sqlite", per_minute=60, burst=3, clock=lambda: now[0])
    quotas = [limiter.take_quota("k") for _ in range(4)]
    assert [q.headers()["X-RateLimit-Remaining"] for q in quotas] == ["2", "1", "0", "0"]
    assert [q.headers()["X-RateLimit-Reset"] for q in quotas] == ["1", "2", "3", "3"]  # one token a second
    assert quotas[-1].wait_s == 1.0 and {q.headers()["X-RateLimit-Limit"] for q in quotas} == {"3"}
    now[0] += 2.0
    assert limiter.take_quota("k").headers()["X-RateLimit-Remaining"] == "1"


def test_the_console_sends_a_content_security_policy_and_may_not_be_framed(service):
    page = httpx.get(service)
    assert page.status_code == 200 and "Narrator console" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "'sha256-" in csp
    assert "unsafe-inline" not in csp and "media-src 'self' blob:" in csp
    assert page.headers["x-frame-options"] == "DENY"


def test_cors_answers_only_the_configured_origins(service, deployment):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{service}/v1/speech", headers={"Origin": ORIGIN, **preflight})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(f"{service}/v1/speech", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    simple = httpx.get(f"{service}/v1/voices", headers={"Origin": ORIGIN, **_auth(deployment.keys["acme"])})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-ratelimit-remaining" in simple.headers["access-control-expose-headers"].lower()


def test_no_cors_without_configured_origins():
    """serving.cors_origins is empty by default: no page of another origin may call the API."""
    from fastapi.testclient import TestClient

    from narrator.config import ServingConfig
    from serving.api import create_app

    client = TestClient(create_app(lambda: None, settings=ServingConfig()))
    response = client.options("/v1/speech", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers


def test_a_failure_no_handler_answered_is_a_json_500_with_the_request_id_and_is_counted():
    from fastapi.testclient import TestClient

    from narrator.config import ServingConfig
    from serving.api import create_app

    counted = []

    class Broken:
        def authorize(self, request):
            raise RuntimeError("the key store exploded")

        def observe(self, endpoint, status, seconds):
            counted.append((endpoint, status))

    client = TestClient(create_app(lambda: Broken(), settings=ServingConfig()), raise_server_exceptions=False)
    response = client.get("/v1/voices", headers={"X-Request-Id": "failing-1"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "failing-1"
    assert response.json()["error"]["code"] == "internal" and "failing-1" in response.json()["error"]["message"]
    assert "exploded" not in response.text and "Traceback" not in response.text
    assert counted == [("/v1/voices", 500)]


# -- metrics --------------------------------------------------------------------------------------------------------


def _series(service, key) -> list[str]:
    response = httpx.get(f"{service}/metrics", headers=_auth(key))
    assert response.status_code == 200, response.text
    return [line for line in response.text.splitlines() if line and not line.startswith("#")]


def test_metrics_need_a_key_with_the_metrics_scope(service, deployment, metrics_key):
    assert httpx.get(f"{service}/metrics").status_code == 401
    assert httpx.get(f"{service}/metrics", headers=_auth(deployment.keys["acme"])).status_code == 403
    assert any(line.startswith("narrator_requests_total") for line in _series(service, metrics_key))


def test_random_paths_leave_the_metrics_series_count_unchanged(service, deployment, metrics_key):
    with httpx.Client() as client:
        client.get(f"{service}/{uuid.uuid4().hex}")  # the `unmatched` series exist
        before = _series(service, metrics_key)
        for _ in range(200):
            path = "/".join(uuid.uuid4().hex[:8] for _ in range(3))
            assert client.get(f"{service}/v1/{path}").status_code == 404
        after = _series(service, metrics_key)
    assert len(after) == len(before), sorted(set(after) - set(before))[:10]
    assert not any("/v1/" in line and "endpoint=\"/v1/" in line and line.count("/") > 3 for line in after)
    unmatched = next(line for line in after if line.startswith('narrator_requests_total{endpoint="unmatched",'
                                                                'status="404"}'))
    assert float(unmatched.split()[-1]) >= 201


def test_every_status_is_counted_by_route_template(service, deployment, metrics_key):
    acme = deployment.keys["acme"]
    httpx.get(f"{service}/v1/voices", headers=_auth(acme))
    httpx.get(f"{service}/v1/voices")
    _speech(service, acme, voice="bob", text="Hello.")
    _speech(service, acme, voice="nobody", text="Hello.")
    _speech(service, acme, voice="alice", text="word " * 100)
    _speech(service, acme, voice="alice", text="Hello.", top_p=7)
    text = "\n".join(_series(service, metrics_key))
    for endpoint, status in (("/v1/voices", 200), ("/v1/voices", 401), ("/v1/speech", 403), ("/v1/speech", 404),
                             ("/v1/speech", 413), ("/v1/speech", 422)):
        assert f'narrator_requests_total{{endpoint="{endpoint}",status="{status}"}}' in text, (endpoint, status)
    assert 'narrator_request_seconds_count{endpoint="/v1/voices"}' in text
    assert "bentoml_service_request_total" not in text  # BentoML's raw-path series are off


# -- tenancy -------------------------------------------------------------------------------------------------------


def test_detection_with_another_tenants_key_says_only_that_the_voice_is_outside_the_tenant(service, deployment):
    wav = _speech(service, deployment.keys["acme"], voice="alice", text=LONG_TEXT, seed=7).content
    mine = httpx.post(f"{service}/v1/watermark/detect", content=wav, timeout=60,
                      headers={**_auth(deployment.keys["acme"]), "Content-Type": "audio/wav"}).json()
    assert mine["detected"] and (mine["payload"], mine["voice"]) == (deployment.payloads["alice"], "alice")
    other = httpx.post(f"{service}/v1/watermark/detect", content=wav, timeout=60,
                       headers={**_auth(deployment.keys["globex"]), "Content-Type": "audio/wav"})
    body = other.json()
    assert body["detected"] and body["note"] == "marked by a voice outside your tenant"
    assert body["payload"] is None and body["voice"] is None and body["version"] is None
    assert deployment.payloads["alice"] not in other.text and "alice" not in other.text


def _keys_create(deployment, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "keys", "create", *args, "--params",
                           str(deployment.params_file)], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=deployment.env(0))


def test_keys_create_refuses_a_voice_that_is_not_registered(deployment):
    done = _keys_create(deployment, "--tenant", "acme", "--voices", "alice,nobody")
    assert done.returncode == 2 and "no voice 'nobody' in the registry" in done.stderr and not done.stdout


def test_keys_create_refuses_another_tenants_voice(deployment):
    done = _keys_create(deployment, "--tenant", "acme", "--voices", "bob")
    assert done.returncode == 2 and "'bob' does not belong to tenant 'acme'" in done.stderr and not done.stdout


def test_keys_create_accepts_the_tenants_own_voices_and_scopes(deployment):
    done = _keys_create(deployment, "--tenant", "acme", "--voices", "alice", "--scopes", "metrics")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("nk_") and "voices alice, scopes metrics" in done.stderr
