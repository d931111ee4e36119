"""The ElevenLabs-compatible speech API (serving/elevenlabs_api.py, under /elevenlabs), driven by the stock
`elevenlabs` package as a user drives it, against a real `bentoml serve` with two small voices in two tenants
(tests/deployment.py).

The package speaks a Narrator voice whole (`text_to_speech.convert`) and streamed (`text_to_speech.stream`); each
output_format the service encodes decodes at its sample rate to the duration of the service's own POST /v1/speech
for the same text and seed, and carries the voice's watermark; voice_settings map onto the knobs that exist;
refusals are the package's own errors in ElevenLabs' `{"detail": {"status", "message"}}` shape.
"""

from __future__ import annotations


import httpx
import pytest
from elevenlabs import ElevenLabs, VoiceSettings
from elevenlabs.core.api_error import ApiError
from elevenlabs.errors import UnprocessableEntityError

from serving.encode import FORMATS
from tests.compat_audio import LONG_TEXT, SEED, SHORT_TEXT, TOLERANCE_S, decode, watermark
from tests.services import free_port

SETTINGS = {"serving": {"max_text_chars": 400, "rate_limit_per_minute": 600, "rate_limit_burst": 50}}
NO_RETRIES = {"max_retries": 0}
# output_format -> (the container ffmpeg reads, or "pcm"), sample rate
OUTPUT_FORMATS = {"mp3_44100_128": ("mp3", 44100), "mp3_22050_32": ("mp3", 22050), "wav_24000": ("wav", 24000),
                  "pcm_24000": ("pcm", 24000), "pcm_16000": ("pcm", 16000), "opus_48000_64": ("opus", 48000)}
# the service's streamed MP3 declares no frame count, so it decodes up to ~0.1 s longer than the whole file (issue 17,
# the streams work in serving/encode.py); strict: once that lands the unexpected pass fails and the mark goes


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.deployment import build_small_deployment

    return build_small_deployment(tmp_path_factory.mktemp("elevenlabs"), SETTINGS)


@pytest.fixture(scope="module")
def service(deployment, tmp_path_factory):
    from tests.deployment import running_service

    port = free_port()
    with running_service(deployment.env(port), port, tmp_path_factory.mktemp("elevenlabs-log") / "serve.log") as base:
        yield base


@pytest.fixture(scope="module")
def client(service, deployment) -> ElevenLabs:
    """The stock client with acme's key, its base URL the service's /elevenlabs."""
    return ElevenLabs(base_url=f"{service}/elevenlabs", api_key=deployment.keys["acme"], timeout=300)


def _own_speech(service, deployment, text: str, fmt: str = "wav", rate: int = 24000) -> bytes:
    """The service's own POST /v1/speech, seed 7."""
    response = httpx.post(f"{service}/v1/speech", timeout=300, headers={
        "Authorization": f"Bearer {deployment.keys['acme']}"}, json={
        "voice": "alice", "text": text, "seed": SEED, "format": fmt, "sample_rate_hz": rate})
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture(scope="module")
def reference(service, deployment) -> dict[str, float]:
    """Seconds of the service's own speech (24 kHz WAV, seed 7) per text."""
    return {text: decode(_own_speech(service, deployment, text), "wav").seconds for text in (SHORT_TEXT, LONG_TEXT)}


def _offered(output_format: str) -> tuple[str, int]:
    container, rate = OUTPUT_FORMATS[output_format]
    if container not in FORMATS:
        pytest.skip(f"the service's encoders (serving/encode.py) do not offer {container!r} yet")
    return container, rate


# -- speaking -----------------------------------------------------------------------------------------------------


def test_the_elevenlabs_package_speaks_a_narrator_voice_with_its_watermark(client, deployment, reference):
    data = b"".join(client.text_to_speech.convert("alice", text=LONG_TEXT, model_id="eleven_multilingual_v2",
                                                  output_format="wav_24000", seed=SEED))
    audio = decode(data, "wav")
    assert audio.sample_rate_hz == 24000 and audio.seconds >= 10
    assert audio.seconds == pytest.approx(reference[LONG_TEXT], abs=1e-3)
    assert watermark(audio, deployment.watermark_key) == (True, deployment.payloads["alice"])


def test_a_stream_is_marked_and_as_long_as_the_whole_file(client, deployment, reference):
    data = b"".join(client.text_to_speech.stream("alice", text=LONG_TEXT, output_format="wav_24000", seed=SEED))
    audio = decode(data, "wav")
    assert audio.seconds == pytest.approx(reference[LONG_TEXT], abs=1e-3)
    assert watermark(audio, deployment.watermark_key) == (True, deployment.payloads["alice"])


def test_mp3_44100_is_the_default_output_format(client):
    audio = decode(b"".join(client.text_to_speech.convert("alice", text=SHORT_TEXT)), "mp3")
    assert (audio.codec, audio.sample_rate_hz) == ("mp3", 44100) and audio.seconds > 1


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_each_output_format_decodes_at_its_rate_to_the_services_own_duration(client, reference, output_format):
    container, rate = _offered(output_format)
    audio = decode(b"".join(client.text_to_speech.convert("alice", text=SHORT_TEXT, output_format=output_format,
                                                          seed=SEED)), container, rate)
    assert audio.sample_rate_hz == rate
    assert audio.seconds == pytest.approx(reference[SHORT_TEXT], abs=TOLERANCE_S)


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_each_streamed_output_format_decodes_to_the_whole_files_duration(client, reference, output_format):
    container, rate = _offered(output_format)
    audio = decode(b"".join(client.text_to_speech.stream("alice", text=SHORT_TEXT, output_format=output_format,
                                                         seed=SEED)), container, rate)
    assert audio.sample_rate_hz == rate
    assert audio.seconds == pytest.approx(reference[SHORT_TEXT], abs=TOLERANCE_S)


def test_default_voice_settings_speak_exactly_as_the_services_own_speech(client, service, deployment):
    settings = VoiceSettings(stability=0.5, speed=1.0, similarity_boost=0.75, style=0.0, use_speaker_boost=True)
    data = b"".join(client.text_to_speech.convert("alice", text=SHORT_TEXT, output_format="wav_24000", seed=SEED,
                                                  voice_settings=settings, language_code="en"))
    own = httpx.post(f"{service}/v1/speech", timeout=300, headers={
        "Authorization": f"Bearer {deployment.keys['acme']}"}, json={
        "voice": "alice", "text": SHORT_TEXT, "seed": SEED, "format": "wav", "sample_rate_hz": 24000,
        "language": "en"}).content
    assert data == own


def test_stability_is_the_sampling_temperature_and_speed_the_rate(client, reference):
    def spoken(**settings) -> bytes:
        return b"".join(client.text_to_speech.convert("alice", text=SHORT_TEXT, output_format="wav_24000", seed=SEED,
                                                      voice_settings=VoiceSettings(**settings)))

    assert spoken(stability=1.0) != spoken(stability=0.5)
    assert decode(spoken(speed=1.5), "wav").seconds < reference[SHORT_TEXT] * 0.85


def test_voices_lists_the_keys_voices_in_elevenlabs_shape(client, deployment):
    listed = client.voices.get_all().voices
    assert [(v.voice_id, v.name) for v in listed] == [("alice", "alice")]
    assert listed[0].labels["watermark_payload"] == deployment.payloads["alice"]
    assert client.voices.get("alice").voice_id == "alice"
    with pytest.raises(ApiError) as refused:
        client.voices.get("bob", request_options=NO_RETRIES)  # another tenant's voice is not there at all
    assert refused.value.status_code == 404


def test_voices_search_finds_the_keys_voices_by_name(client):
    found = client.voices.search(search="ali", page_size=5)
    assert [v.voice_id for v in found.voices] == ["alice"] and found.total_count == 1 and not found.has_more
    assert client.voices.search(search="bob").voices == []  # another tenant's voice is not there at all


def test_models_lists_the_narrator_model(client):
    models = client.models.list()
    assert [m.model_id for m in models] == ["narrator"] and models[0].can_do_text_to_speech


def test_a_bearer_key_works_as_well_as_xi_api_key(service, deployment):
    response = httpx.post(f"{service}/elevenlabs/v1/text-to-speech/alice", params={"output_format": "wav_24000"},
                          headers={"Authorization": f"Bearer {deployment.keys['acme']}"},
                          json={"text": "Hello.", "seed": 1}, timeout=300)
    assert response.status_code == 200 and decode(response.content, "wav").seconds > 0.2


# -- refusals, as the package's own errors ------------------------------------------------------------------------


def _refused(call, status: int, detail_status: str) -> ApiError:
    with pytest.raises(ApiError) as refused:
        b"".join(call())
    assert refused.value.status_code == status
    assert refused.value.body["detail"]["status"] == detail_status and refused.value.body["detail"]["message"]
    return refused.value


def test_a_wrong_key_is_refused_with_401(service):
    stranger = ElevenLabs(base_url=f"{service}/elevenlabs", api_key="nk_00000000_" + "x" * 30)
    _refused(lambda: stranger.text_to_speech.convert("alice", text="Hello.", request_options=NO_RETRIES), 401,
             "invalid_api_key")
    with pytest.raises(ApiError) as refused:
        stranger.voices.get_all(request_options=NO_RETRIES)
    assert refused.value.status_code == 401


def test_an_unknown_voice_is_refused_with_404(client):
    _refused(lambda: client.text_to_speech.convert("nobody", text="Hello.", request_options=NO_RETRIES), 404,
             "voice_not_found")
    _refused(lambda: client.text_to_speech.stream("alice@9", text="Hello.", request_options=NO_RETRIES), 404,
             "voice_not_found")


def test_another_tenants_voice_is_refused_with_403(client):
    _refused(lambda: client.text_to_speech.convert("bob", text="Hello.", request_options=NO_RETRIES), 403,
             "forbidden")


@pytest.mark.parametrize("bad", [{"output_format": "ulaw_8000"}, {"output_format": "pcm_12345"},
                                 {"output_format": "loud"}, {"voice_settings": VoiceSettings(speed=3.0)},
                                 {"text": "!!! ..."}])
def test_values_the_service_does_not_take_raise_unprocessable_entity(client, bad):
    with pytest.raises(UnprocessableEntityError) as refused:
        b"".join(client.text_to_speech.convert("alice", **{"text": "Hello.", **bad}, request_options=NO_RETRIES))
    assert refused.value.body["detail"]["status"] == "invalid_request"


def test_too_long_a_text_is_refused_with_400(client):
    _refused(lambda: client.text_to_speech.convert("alice", text="word " * 100, request_options=NO_RETRIES), 400,
             "max_character_limit_exceeded")


def test_over_the_keys_rate_is_refused_with_429_and_retry_after(service, deployment):
    from narrator.config import load_params
    from narrator.keys import KeyStore

    key, _ = KeyStore(load_params(deployment.params_file).serving.keys_file).create("acme", ["*"])
    limited = ElevenLabs(base_url=f"{service}/elevenlabs", api_key=key)
    with pytest.raises(ApiError) as refused:
        for _ in range(200):
            limited.voices.get_all(request_options=NO_RETRIES)
    assert refused.value.status_code == 429 and int(refused.value.headers["retry-after"]) >= 1
    assert refused.value.body["detail"]["status"] == "rate_limit_exceeded"


def test_metrics_count_the_route_not_the_voice(client, service, deployment):
    b"".join(client.text_to_speech.convert("alice", text="Hello.", output_format="wav_24000", seed=1))
    metrics = httpx.get(f"{service}/metrics", headers={"Authorization": f"Bearer {deployment.keys['acme']}"}).text
    assert 'narrator_requests_total{endpoint="/elevenlabs/v1/text-to-speech/{voice_id}",status="200"}' in metrics
    ours = [line for line in metrics.splitlines() if line.startswith("narrator_")]  # (BentoML's own series are
    assert not [line for line in ours if "text-to-speech/alice" in line]  # the contract work's) one per route
