"""The OpenAI-compatible speech API (serving/openai_api.py), driven by the stock `openai` package as a user drives
it, against a real `bentoml serve` with two small voices in two tenants (tests/deployment.py).

The package speaks a Narrator voice whole, streamed and as server-sent events; every response format the service
encodes decodes to the duration of the service's own POST /v1/speech for the same text and seed, at OpenAI's
24 kHz, and carries the voice's watermark; refusals are the package's own exceptions.
"""

from __future__ import annotations

import base64
import hashlib
import json

import httpx
import openai
import pytest

from serving.encode import FORMATS
from tests.compat_audio import LONG_TEXT, SEED, SHORT_TEXT, TOLERANCE_S, decode, watermark
from tests.services import free_port

SETTINGS = {"serving": {"max_text_chars": 400, "rate_limit_per_minute": 600, "rate_limit_burst": 50}}
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # OpenAI's response_format values
OPENAI_RATE_HZ = 24000
# the service's streamed MP3 declares no frame count, so it decodes ~0.08 s longer than the whole file (issue 17,
# the streams work in serving/encode.py): its stream test passes once that lands (strict: an unexpected pass fails,
# so the mark is removed then)
OPUS_DECODED_RATE_HZ = 48000  # decoders give Ogg Opus back at 48 kHz, whatever rate went in


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.deployment import build_small_deployment

    return build_small_deployment(tmp_path_factory.mktemp("openai"), SETTINGS)


@pytest.fixture(scope="module")
def service(deployment, tmp_path_factory):
    from tests.deployment import running_service

    port = free_port()
    with running_service(deployment.env(port), port, tmp_path_factory.mktemp("openai-log") / "serve.log") as base:
        yield base


@pytest.fixture(scope="module")
def client(service, deployment) -> openai.OpenAI:
    """The stock client, pointed at the service with acme's key (no retries: a refusal is seen at once)."""
    return openai.OpenAI(base_url=f"{service}/v1", api_key=deployment.keys["acme"], max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(service, deployment) -> dict[str, float]:
    """The service's own POST /v1/speech, 24 kHz WAV, seed 7: text -> seconds."""
    seconds = {}
    for text in (SHORT_TEXT, LONG_TEXT):
        response = httpx.post(f"{service}/v1/speech", timeout=300, headers={
            "Authorization": f"Bearer {deployment.keys['acme']}"}, json={
            "voice": "alice", "text": text, "seed": SEED, "format": "wav", "sample_rate_hz": OPENAI_RATE_HZ})
        assert response.status_code == 200, response.text
        seconds[text] = decode(response.content, "wav").seconds
    return seconds


def _offered(fmt: str) -> None:
    if fmt not in FORMATS:
        pytest.skip(f"the service's encoders (serving/encode.py) do not offer {fmt!r} yet")


def _speak(client: openai.OpenAI, **kwargs) -> bytes:
    body = {"model": "tts-1", "voice": "alice", "input": SHORT_TEXT, **kwargs}
    return client.audio.speech.create(**body, extra_body={"seed": SEED}).content


# -- speaking -----------------------------------------------------------------------------------------------------


def test_the_openai_package_speaks_a_narrator_voice_with_its_watermark(client, deployment, reference):
    audio = decode(client.audio.speech.create(model="gpt-4o-mini-tts", voice="alice", input=LONG_TEXT,
                                              response_format="wav", instructions="Speak calmly.",
                                              extra_body={"seed": SEED}).content, "wav")
    assert audio.sample_rate_hz == OPENAI_RATE_HZ and audio.seconds >= 10
    assert audio.seconds == pytest.approx(reference[LONG_TEXT], abs=1e-3)
    assert watermark(audio, deployment.watermark_key) == (True, deployment.payloads["alice"])


def test_mp3_is_the_default_format(client):
    audio = decode(client.audio.speech.create(model="tts-1", voice="alice", input=SHORT_TEXT).content, "mp3")
    assert audio.codec == "mp3" and audio.sample_rate_hz == OPENAI_RATE_HZ and audio.seconds > 1


def _decoded_rate_hz(fmt: str) -> int:
    return OPUS_DECODED_RATE_HZ if fmt == "opus" else OPENAI_RATE_HZ


@pytest.mark.parametrize("fmt", OPENAI_FORMATS)
def test_each_response_format_decodes_to_the_services_own_duration(client, reference, fmt):
    _offered(fmt)
    audio = decode(_speak(client, response_format=fmt), fmt)
    assert audio.sample_rate_hz == _decoded_rate_hz(fmt)
    assert audio.seconds == pytest.approx(reference[SHORT_TEXT], abs=TOLERANCE_S)


@pytest.mark.parametrize("fmt", OPENAI_FORMATS)
def test_each_streamed_format_decodes_to_the_whole_files_duration(client, reference, fmt):
    _offered(fmt)
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alice", input=SHORT_TEXT, response_format=fmt, stream_format="audio",
            extra_body={"seed": SEED}) as response:
        assert response.headers["x-voice"] == "alice"
        chunks = list(response.iter_bytes())
    audio = decode(b"".join(chunks), fmt)
    assert audio.sample_rate_hz == _decoded_rate_hz(fmt)
    assert audio.seconds == pytest.approx(reference[SHORT_TEXT], abs=TOLERANCE_S)


def test_sse_events_carry_the_audio_in_base64_deltas_then_done(client, deployment, reference):
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alice", input=LONG_TEXT, response_format="wav", stream_format="sse",
            extra_body={"seed": SEED}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1]["type"] == "speech.audio.done" and "usage" in events[-1]
    audio = decode(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), "wav")
    assert audio.seconds == pytest.approx(reference[LONG_TEXT], abs=1e-3)
    assert watermark(audio, deployment.watermark_key) == (True, deployment.payloads["alice"])


def test_speed_changes_the_duration(client, reference):
    fast = decode(_speak(client, response_format="wav", speed=1.5), "wav")
    assert fast.seconds < reference[SHORT_TEXT] * 0.85


def test_a_voice_is_named_plainly_at_its_version_or_as_an_id_object(client):
    plain = _speak(client, response_format="wav")
    assert _speak(client, response_format="wav", voice="alice@1") == plain
    assert _speak(client, response_format="wav", voice={"id": "alice"}) == plain


def test_models_lists_the_accepted_model_names(client):
    listed = client.models.list()
    assert {m.id for m in listed.data} == {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "narrator"}
    assert all(m.object == "model" and m.owned_by == "narrator" for m in listed.data)
    assert client.models.retrieve("tts-1-hd").id == "tts-1-hd"


def test_the_synthesis_is_audited_like_the_services_own(client, deployment):
    from narrator.config import load_params

    raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alice", input="An audited sentence.",
                                                       response_format="flac", extra_body={"seed": 3})
    body = raw.content
    assert raw.headers["x-output-sha256"] == hashlib.sha256(body).hexdigest()
    log = load_params(deployment.params_file).serving.audit_log
    with open(log, encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    last = next(r for r in reversed(records) if r.get("output_sha256") == hashlib.sha256(body).hexdigest())
    assert (last["voice"], last["format"], last["sample_rate_hz"], last["stream"]) == ("alice", "flac", 24000, False)


# -- refusals, as the package's own exceptions ---------------------------------------------------------------------


def test_a_wrong_key_raises_authentication_error(service):
    stranger = openai.OpenAI(base_url=f"{service}/v1", api_key="nk_00000000_" + "x" * 30, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.audio.speech.create(model="tts-1", voice="alice", input="Hello.")
    assert refused.value.code == "invalid_api_key" and refused.value.type == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_an_unknown_voice_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as refused:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hello.")
    assert refused.value.param == "voice" and "nobody" in refused.value.message
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="alice@9", input="Hello.")


def test_another_tenants_voice_raises_permission_denied(client):
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.audio.speech.create(model="tts-1", voice="bob", input="Hello.")
    assert refused.value.param == "voice"


def test_an_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as refused:
        client.audio.speech.create(model="tts-2-ultra", voice="alice", input="Hello.")
    assert refused.value.param == "model"


@pytest.mark.parametrize("bad, param", [({"speed": 3.0}, "speed"), ({"input": "word " * 100}, "input"),
                                        ({"input": "!!! ..."}, None), ({"voice": "alice@one"}, "voice")])
def test_values_the_service_does_not_take_raise_bad_request(client, bad, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**{"model": "tts-1", "voice": "alice", "input": "Hello.", **bad})
    assert refused.value.type == "invalid_request_error" and refused.value.message
    assert param is None or refused.value.param == param


def test_a_format_the_service_does_not_encode_yet_raises_bad_request(client):
    missing = [f for f in OPENAI_FORMATS if f not in FORMATS]
    if not missing:
        pytest.skip("every OpenAI format is offered")
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(model="tts-1", voice="alice", input="Hello.", response_format=missing[0])
    assert refused.value.param == "response_format"


def test_over_the_keys_rate_raises_rate_limit_error_with_retry_after(service, deployment):
    from narrator.config import load_params
    from narrator.keys import KeyStore

    key, _ = KeyStore(load_params(deployment.params_file).serving.keys_file).create("acme", ["*"])
    limited = openai.OpenAI(base_url=f"{service}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(200):
            limited.models.list()
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.code == "rate_limit_exceeded"


def test_the_schema_documents_the_compatible_routes(service):
    schema = httpx.get(f"{service}/v1/openapi.json").json()
    assert {"/v1/audio/speech", "/v1/models", "/v1/models/{model}", "/elevenlabs/v1/text-to-speech/{voice_id}",
            "/elevenlabs/v1/text-to-speech/{voice_id}/stream", "/elevenlabs/v1/voices"} <= set(schema["paths"])
    body = schema["components"]["schemas"]["OpenAISpeechRequest"]
    assert {"model", "input", "voice"} <= set(body["required"])
    assert set(body["properties"]["response_format"]["enum"]) == set(OPENAI_FORMATS)
