"""The speech service through real HTTP on 127.0.0.1: `bentoml serve serving.service:NarratorService` with two
small voices in two tenants, registered and packaged the real way (tests/deployment.py).

Every endpoint, every error code, tenant isolation, the watermark (with the right voice and version) in every
format and in streams, streaming before the last sentence, the audit chain, metrics, batching, LRU eviction and
the web console in headless Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.services import free_port

# long enough for the payload (~10 s) with the tiny random voices at seed 7
LONG_TEXT = ("The lighthouse keeper climbed the spiral stairs before the storm arrived. Every morning the baker "
             "opened her shop at exactly six o'clock. A small boat drifted slowly across the quiet harbour.")
STREAM_TEXT = ("Hello there. The library on the hill holds more than ten thousand old maps. The old clock in the "
               "hallway chimed seven times. Snow covered the mountain village for most of the winter.")
# a lossless stream's samples against the whole file's, over the whole file's peak: sub-sentence chunks are decoded
# with a left context, not the whole sentence (measured: 1.5% with the tiny voices, inference.stream defaults)
STREAM_MAX_DIFFERENCE = 0.03
AUDIT_KEY = "audit-key-for-the-test-service-0123"  # the service seals its synthesis audit log with it
SETTINGS = {"serving": {"max_upload_mb": 4.0, "max_text_chars": 400, "rate_limit_per_minute": 600,
                        "rate_limit_burst": 20}}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.deployment import build_small_deployment

    return build_small_deployment(tmp_path_factory.mktemp("serving"), SETTINGS)


@pytest.fixture(scope="module")
def service(deployment, tmp_path_factory):
    """Base URL of a running service (a real `bentoml serve` process)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serving-log") / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:NarratorService",
                                    "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(REPO_ROOT)],
                                   cwd=REPO_ROOT, env={**deployment.env(port), "NARRATOR_AUDIT_KEY": AUDIT_KEY},
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _speech(service, key, **body) -> httpx.Response:
    return httpx.post(f"{service}/v1/speech", headers=_auth(key), json=body, timeout=120)


def _detect_bytes(data: bytes, suffix: str, deployment) -> dict:
    """Decode with ffmpeg (streams may carry "unknown length" headers) and look for the mark locally."""
    from narrator.registry import format_payload
    from models.watermark import detect

    decoded = subprocess.run(["ffmpeg", "-v", "error", "-f", suffix if suffix != "ogg" else "ogg", "-i", "-",
                              "-f", "f32le", "-ac", "1", "-ar", "32000", "-"], input=data, capture_output=True,
                             check=True).stdout
    samples = np.frombuffer(decoded, "<f4")
    found = detect(samples, 32000, deployment.watermark_key)
    return {"detected": found.detected, "payload": format_payload(found.payload), "seconds": len(samples) / 32000}


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.text
    return body["error"]["message"]


# -- endpoints ----------------------------------------------------------------------------------------------------


def test_health_ready_and_openapi(service):
    assert httpx.get(f"{service}/healthz").status_code == 200
    assert httpx.get(f"{service}/readyz").status_code == 200
    schema = httpx.get(f"{service}/v1/openapi.json").json()
    assert {"/v1/speech", "/v1/speech/stream", "/v1/voices", "/v1/watermark/detect"} <= set(schema["paths"])
    assert "SpeechRequest" in schema["components"]["schemas"]


def test_voices_lists_only_the_keys_tenant(service, deployment):
    acme = httpx.get(f"{service}/v1/voices", headers=_auth(deployment.keys["acme"])).json()
    globex = httpx.get(f"{service}/v1/voices", headers=_auth(deployment.keys["globex"])).json()
    assert [v["voice"] for v in acme["voices"]] == ["alice"] and acme["tenant"] == "acme"
    assert [v["voice"] for v in globex["voices"]] == ["bob"]
    alice = acme["voices"][0]
    assert alice["version"] == 1 and alice["watermark_payload"] == deployment.payloads["alice"]
    assert alice["evaluation"]["verdict"] == "pass" and "speaker_similarity" in alice["evaluation"]["metrics"]


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_every_format_carries_the_voices_watermark(service, deployment, fmt):
    rate = 32000 if fmt in ("wav", "flac") else 24000
    response = _speech(service, deployment.keys["acme"], voice="alice", text=LONG_TEXT, seed=7, format=fmt,
                       sample_rate_hz=rate)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(f"audio/{'mpeg' if fmt == 'mp3' else fmt}")
    assert response.headers["x-watermark-payload"] == deployment.payloads["alice"]
    local = _detect_bytes(response.content, fmt, deployment)
    assert local["seconds"] >= 10, "the test text must give enough audio for the payload"
    assert local["detected"] and local["payload"] == deployment.payloads["alice"]
    found = httpx.post(f"{service}/v1/watermark/detect", content=response.content, timeout=60,
                       headers={**_auth(deployment.keys["acme"]), "Content-Type": f"audio/{fmt}"}).json()
    assert found["detected"] and found["payload"] == deployment.payloads["alice"]
    assert (found["voice"], found["version"]) == ("alice", 1)


def test_detect_names_no_voice_of_another_tenant_and_nothing_in_silence(service, deployment):
    wav = _speech(service, deployment.keys["acme"], voice="alice", text=LONG_TEXT, seed=7).content
    other = httpx.post(f"{service}/v1/watermark/detect", content=wav, timeout=60,
                       headers={**_auth(deployment.keys["globex"]), "Content-Type": "audio/wav"}).json()
    assert other["detected"] and other["voice"] is None and other["payload"] is None
    assert other["note"] == "marked by a voice outside your tenant"
    from narrator.audiofile import encode

    silence = encode(np.zeros(32000 * 4, np.float32), 32000, "wav")
    clean = httpx.post(f"{service}/v1/watermark/detect", content=silence, timeout=60,
                       headers={**_auth(deployment.keys["acme"]), "Content-Type": "audio/wav"}).json()
    assert not clean["detected"] and clean["payload"] is None


def test_the_service_speaks_exactly_what_evaluation_measured(service, deployment):
    """One synthesizer: the same voice, text and seed give identical samples through `narrator evaluate`'s
    synthesis path (its voice loading, reference choice and models.tts seeding rule) and through POST /v1/speech,
    which only adds the watermark."""
    from components.evaluate import evaluation_voice
    from narrator.audiofile import encode
    from narrator.config import load_params
    from serving.engine import WatermarkStream

    params = load_params(deployment.params_file)
    sovits, gpt = deployment.models["alice"]
    synth, reference, _ = evaluation_voice(deployment.features["alice"], str(sovits), str(gpt), params)
    speech = synth.speak(STREAM_TEXT, reference, "en", seed=11)
    marker = WatermarkStream(int(deployment.payloads["alice"], 16), deployment.watermark_key)
    expected = encode(np.concatenate([marker.push(part.samples) for part in speech.sentences]), 32000, "wav")

    served = _speech(service, deployment.keys["acme"], voice="alice", text=STREAM_TEXT, language="en", seed=11,
                     format="wav", sample_rate_hz=32000)
    assert served.status_code == 200, served.text
    assert len(speech.sentences) == 4 and served.content == expected


def test_concurrent_requests_each_hear_their_own_voice(service, deployment):
    """alice (acme) and bob (globex) at the same time, twice each: every output carries its own voice's mark."""
    results: dict[str, list[bytes]] = {"alice": [], "bob": []}

    def ask(voice: str, tenant: str) -> None:
        response = _speech(service, deployment.keys[tenant], voice=voice, text=LONG_TEXT, seed=7)
        assert response.status_code == 200, response.text
        results[voice].append(response.content)

    threads = [threading.Thread(target=ask, args=(v, deployment.tenants[v])) for v in ("alice", "bob") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for voice, outputs in results.items():
        assert len(outputs) == 2
        for data in outputs:
            assert _detect_bytes(data, "wav", deployment)["payload"] == deployment.payloads[voice]


@pytest.mark.parametrize("fmt", ["wav", "mp3"])  # in process; an ffmpeg process fed sentence by sentence
def test_stream_sends_audio_before_the_last_sentence(service, deployment, fmt):
    started = time.perf_counter()
    arrivals, data = [], b""
    with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(deployment.keys["globex"]), timeout=120,
                      json={"voice": "bob", "text": STREAM_TEXT, "seed": 3, "format": fmt,
                            "sample_rate_hz": 24000}) as response:
        # 24 kHz: the tiny random voice's payload reads back after a 32 kHz mp3 for a few seeds only, whole or
        # streamed (2 of 7 seeds a sentence at a time), and after a 24 kHz mp3 for each seed tried (3-6)
        assert response.status_code == 200
        assert response.headers["x-watermark-payload"] == deployment.payloads["bob"]
        for chunk in response.iter_raw():
            arrivals.append((time.perf_counter() - started, len(data) + len(chunk)))
            data += chunk
    first_at, first_size = arrivals[0]
    total_at = arrivals[-1][0]
    assert first_size < len(data) / 2, "the first chunk held most of the audio: it waited for the text"
    assert first_at < total_at - 0.2
    found = _detect_bytes(data, fmt, deployment)
    assert found["detected"] and found["payload"] == deployment.payloads["bob"]


def test_stream_sends_several_watermarked_chunks_per_sentence(service, deployment):
    """Sub-sentence streaming (inference.stream): the three sentences arrive in more pieces than sentences, and
    the mark, embedded chunk by chunk, still reads back with the voice's payload."""
    from models.text import split_sentences
    from models.watermark import detect
    from narrator.registry import format_payload

    sentences = len(split_sentences(LONG_TEXT, "en"))
    pieces, data = 0, b""
    with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(deployment.keys["acme"]), timeout=120,
                      json={"voice": "alice", "text": LONG_TEXT, "seed": 7, "format": "pcm",
                            "sample_rate_hz": 32000}) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            pieces += 1
            data += chunk
    assert pieces > sentences + 1, f"{pieces} pieces for {sentences} sentences: not streamed within sentences"
    samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768
    found = detect(samples, 32000, deployment.watermark_key)
    assert found.detected and format_payload(found.payload) == deployment.payloads["alice"]


def test_watermark_stream_holds_a_chunks_last_column_back_until_the_next_push():
    """An incomplete push (a sub-sentence chunk) hands out only whole mark columns with one more column after them;
    the next push hands out the rest, and a complete push everything: the same samples in the end."""
    from serving.engine import WatermarkStream

    audio = (0.1 * np.random.default_rng(0).standard_normal(5 * 32000)).astype(np.float32)
    stream = WatermarkStream(0x1234ABCD, "key-for-the-test")
    first = stream.push(audio[:20000], complete=False)
    assert len(first) == (20000 - stream.margin) // stream.margin * stream.margin < 20000
    assert len(stream.push(audio[20000:20100], complete=False)) == 0  # not a whole column more
    rest = stream.push(audio[20100:], complete=True)
    assert len(first) + len(rest) == len(audio)
    assert not np.array_equal(np.concatenate([first, rest]), audio)  # marked


@pytest.fixture(scope="module")
def served_formats(service, deployment):
    """Every format of the registry, whole (POST /v1/speech) and streamed (POST /v1/speech/stream): the same
    voice, text, seed and rate. {format: (whole response, stream headers, stream bytes)}"""
    from serving.encode import FORMATS

    body = {"voice": "alice", "text": LONG_TEXT, "seed": 7, "sample_rate_hz": 24000}
    found = {}
    for fmt in FORMATS:
        whole = _speech(service, deployment.keys["acme"], **body, format=fmt)
        assert whole.status_code == 200, whole.text
        with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(deployment.keys["acme"]),
                          timeout=120, json={**body, "format": fmt}) as response:
            assert response.status_code == 200
            found[fmt] = (whole, response.headers, b"".join(response.iter_raw()))
    return found


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "ogg", "opus", "aac"])
def test_every_streamed_format_decodes_to_the_whole_files_duration(served_formats, deployment, fmt):
    """soundfile and ffprobe decode a stream to the whole file's duration (tests/test_encode.py's tolerances:
    equal, except mp3, whose stream carries no gapless tag, and the decoders soundfile lacks); lossless streams
    hold the whole file's samples up to the sub-sentence chunks' context (STREAM_MAX_DIFFERENCE); every stream
    carries the voice's watermark."""
    from models.watermark import detect
    from narrator.registry import format_payload
    from serving.encode import FORMATS
    from tests.decoders import SOUNDFILE_CANNOT_READ, ffprobe_decode, soundfile_decode
    from tests.test_encode import MP3_DELAY

    rate, spec = 24000, FORMATS[fmt]
    whole, _, stream = served_formats[fmt]
    low, high = (MP3_DELAY, MP3_DELAY + 575) if fmt == "mp3" else (0, 0)  # 576-sample frames at 24 kHz
    probes = [ffprobe_decode(data, fmt, rate) for data in (whole.content, stream)]
    assert [p.codec for p in probes] == [spec.codec] * 2
    extra = round((probes[1].seconds - probes[0].seconds) * rate)
    assert low <= extra <= high, f"ffprobe: the stream decodes to {extra} samples more than the whole file"
    assert probes[0].seconds >= 10
    if fmt not in SOUNDFILE_CANNOT_READ:
        whole_audio, whole_rate = soundfile_decode(whole.content, fmt, rate)
        assert abs(len(whole_audio) / whole_rate - float(whole.headers["x-audio-duration-s"])) < 0.002
        if fmt != "flac":  # a FLAC of unknown length is beyond libsndfile (serving/encode.py)
            stream_audio, stream_rate = soundfile_decode(stream, fmt, rate)
            extra = round((len(stream_audio) / stream_rate - len(whole_audio) / whole_rate) * rate)
            assert low <= extra <= high, f"soundfile: the stream decodes to {extra} samples more than the whole file"
    if spec.lossless:  # sub-sentence chunks: the whole decode's samples up to the chunks' context, no seams
        decoded = [np.frombuffer(subprocess.run(["ffmpeg", "-v", "error", *(["-f", "s16le", "-ar", "24000", "-ac", "1"]
                                                                             if fmt == "pcm" else []), "-i", "pipe:0",
                                                 "-f", "s16le", "pipe:1"], input=data, capture_output=True,
                                                check=True).stdout, "<i2").astype(np.float32) / 32768
                   for data in (whole.content, stream)]
        assert len(decoded[0]) == len(decoded[1])
        peak = np.abs(decoded[0]).max()
        assert np.abs(decoded[0] - decoded[1]).max() <= STREAM_MAX_DIFFERENCE * peak
    samples = subprocess.run(["ffmpeg", "-v", "error", *(["-f", "s16le", "-ar", "24000", "-ac", "1"]
                                                         if fmt == "pcm" else []), "-i", "pipe:0", "-f", "f32le",
                              "-ac", "1", "-ar", "32000", "pipe:1"], input=stream, capture_output=True,
                             check=True).stdout
    found = detect(np.frombuffer(samples, "<f4"), 32000, deployment.watermark_key)
    assert found.detected and format_payload(found.payload) == deployment.payloads["alice"]


@pytest.mark.parametrize("fmt", ["wav", "pcm", "mp3", "opus", "aac"])
def test_audio_responses_name_their_file_rate_and_digest(served_formats, deployment, fmt):
    from serving.encode import FORMATS

    spec = FORMATS[fmt]
    whole, stream_headers, stream = served_formats[fmt]
    for headers in (whole.headers, stream_headers):
        assert headers["content-type"] == spec.content_type
        assert headers["x-audio-sample-rate-hz"] == "24000" and headers["x-audio-channels"] == "1"
        disposition = headers["content-disposition"]
        assert disposition.startswith('attachment; filename="alice-') and disposition.endswith(f'.{spec.extension}"')
        assert ("x-audio-encoding" in headers) == (fmt == "pcm")
    assert whole.headers["content-disposition"] != stream_headers["content-disposition"]  # one id per response
    assert int(whole.headers["content-length"]) == len(whole.content)
    assert whole.headers["x-audio-sha256"] == hashlib.sha256(whole.content).hexdigest()
    assert float(whole.headers["x-audio-duration-s"]) >= 10
    # a stream's duration and digest are known only at its end: its audit record, found by the id in the file
    # name, holds them (uvicorn sends no HTTP trailers)
    assert "x-audio-sha256" not in stream_headers and "content-length" not in stream_headers
    from narrator.config import load_params

    request_id = stream_headers["content-disposition"].split('"')[1][len("alice-"):-len(spec.extension) - 1]
    path = Path(load_params(deployment.params_file).serving.audit_log)
    deadline = time.monotonic() + 10
    while not (found := [r for r in _stream_records(path) if r.get("request_id") == request_id]):
        assert time.monotonic() < deadline, "no audit record of the stream"
        time.sleep(0.1)
    record = found[0]
    assert record["output_sha256"] == hashlib.sha256(stream).hexdigest() and record["bytes_sent"] == len(stream)
    assert record["delivery"] == "completed" and record["format"] == fmt
    assert abs(record["seconds_sent"] - float(whole.headers["x-audio-duration-s"])) < 0.01


def test_a_format_refuses_a_rate_or_bitrate_it_cannot_carry(service, deployment):
    key = deployment.keys["acme"]
    base = {"voice": "alice", "text": "Hello there.", "seed": 1}
    message = _error(_speech(service, key, **base, format="flac", bitrate_kbps=128), 422, "invalid_request")
    assert "flac takes no bitrate" in message
    message = _error(_speech(service, key, **base, format="mp3", sample_rate_hz=24000, bitrate_kbps=320), 422,
                     "invalid_request")
    assert "160" in message
    from tests.decoders import mp3_frame_bitrates

    fine = _speech(service, key, **base, format="mp3", sample_rate_hz=44100, bitrate_kbps=64)
    assert fine.status_code == 200 and set(mp3_frame_bitrates(fine.content)) == {64}


# -- errors -------------------------------------------------------------------------------------------------------


def test_errors_are_json_with_a_code(service, deployment, tmp_path):
    from narrator.keys import KeyStore
    from narrator.config import load_params

    acme, body = deployment.keys["acme"], {"voice": "alice", "text": "Hello."}
    _error(httpx.post(f"{service}/v1/speech", json=body), 401, "unauthorized")
    _error(httpx.post(f"{service}/v1/speech", json=body, headers=_auth("nk_00000000_" + "x" * 30)), 401,
           "unauthorized")
    _error(httpx.get(f"{service}/v1/voices", headers=_auth("not-a-key")), 401, "unauthorized")
    # tenant isolation: acme's key never reaches globex's voice, on any endpoint
    _error(_speech(service, acme, voice="bob", text="Hello."), 403, "forbidden")
    with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(acme),
                      json={"voice": "bob", "text": "Hello."}) as response:
        response.read()
        _error(response, 403, "forbidden")
    # a key of the right tenant but scoped to other voices
    store = KeyStore(load_params(deployment.params_file).serving.keys_file)
    scoped, _ = store.create("acme", ["carol"])
    _error(_speech(service, scoped, voice="alice", text="Hello."), 403, "forbidden")
    revoked, record = store.create("acme", ["*"])
    store.revoke(record.id)
    _error(_speech(service, revoked, voice="alice", text="Hello."), 401, "unauthorized")
    _error(_speech(service, acme, voice="nobody", text="Hello."), 404, "not_found")
    _error(_speech(service, acme, voice="alice", text="word " * 200), 413, "too_large")
    _error(httpx.post(f"{service}/v1/watermark/detect", content=b"\0" * (5 * 2 ** 20),
                      headers={**_auth(acme), "Content-Type": "audio/wav"}), 413, "too_large")
    for bad in ({"top_p": 2.0}, {"format": "aiff"}, {"sample_rate_hz": 12345}, {"speed": 0}, {"colour": "red"},
                {"language": "fr"}, {"seed": -1}, {"text": ""}, {"text": "!!! ..."}):
        message = _error(_speech(service, acme, **{**body, **bad}), 422, "invalid_request")
        assert message
    _error(httpx.post(f"{service}/v1/speech", headers={**_auth(acme), "Content-Type": "application/json"},
                      content=b"{not json"), 422, "invalid_request")
    _error(httpx.post(f"{service}/v1/watermark/detect", content=b"this is not audio at all" * 100,
                      headers={**_auth(acme), "Content-Type": "audio/wav"}), 422, "invalid_request")
    _error(httpx.get(f"{service}/v1/nothing-here", headers=_auth(acme)), 404, "not_found")


def _longest_quiet_run_s(samples: np.ndarray, rate: int, floor_db: float = -60.0) -> float:
    quiet = np.concatenate([[0], (np.abs(samples) < 10 ** (floor_db / 20)).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(quiet))
    return float((edges[1::2] - edges[::2]).max()) / rate if len(edges) else 0.0


def test_ssml_breaks_are_silences_and_unsupported_markup_is_a_422_naming_it(service, deployment):
    """SSML (models/text/ssml.py) through the service: a <break> is silence of its length in the marked output, an
    element outside the subset or a DOCTYPE (billion laughs, external entities) is refused at once, naming it."""
    import io

    import soundfile

    from tests.text.test_ssml import EXTERNAL_ENTITY

    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 9}">' for i in range(1, 6))  # 9^5 (within max_text_chars)
    billion_laughs = f'<!DOCTYPE speak [<!ENTITY l0 "lol">{laughs}]><speak>&l5;</speak>'

    acme = deployment.keys["acme"]
    ssml = '<speak>Hello there, my reader. <break time="700ms"/> The old clock chimed seven times.</speak>'
    plain = _speech(service, acme, voice="alice", text=ssml.replace('<break time="700ms"/>', "")
                    .replace("<speak>", "").replace("</speak>", ""), language="en", seed=7, sample_rate_hz=32000)
    marked = _speech(service, acme, voice="alice", text=ssml, language="en", seed=7, sample_rate_hz=32000)
    assert plain.status_code == 200 and marked.status_code == 200, marked.text
    quiet_s = _longest_quiet_run_s(soundfile.read(io.BytesIO(marked.content), dtype="float32")[0], 32000)
    assert abs(quiet_s - 0.7) <= 0.02, quiet_s  # one 20 ms frame
    assert _longest_quiet_run_s(soundfile.read(io.BytesIO(plain.content), dtype="float32")[0], 32000) < 0.6

    for body, named in (("<speak>Hi <emphasis>now</emphasis></speak>", "<emphasis>"),
                        ('<speak><prosody pitch="high">Hi</prosody></speak>', "'pitch' of <prosody>"),
                        (billion_laughs, "DOCTYPE"), (EXTERNAL_ENTITY, "DOCTYPE")):
        started = time.perf_counter()
        response = _speech(service, acme, voice="alice", text=body, text_type="ssml")
        assert named in _error(response, 422, "invalid_ssml") and time.perf_counter() - started < 5
    with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(acme),
                      json={"voice": "alice", "text": "<speak><voice>x</voice></speak>"}) as response:
        response.read()
        assert "<voice>" in _error(response, 422, "invalid_ssml")
    # plain text is cleaned of terminal escapes and control characters before the front-end
    dirty = _speech(service, acme, voice="alice", text="\x1b[31mHello\x1b[0m there.\x07", language="en", seed=3)
    clean = _speech(service, acme, voice="alice", text="Hello there.", language="en", seed=3)
    assert dirty.status_code == 200 and dirty.content == clean.content


def test_rate_limit_per_key(service, deployment):
    from narrator.config import load_params
    from narrator.keys import KeyStore

    key, _ = KeyStore(load_params(deployment.params_file).serving.keys_file).create("acme", ["*"])
    responses = [httpx.get(f"{service}/v1/voices", headers=_auth(key)) for _ in range(45)]
    statuses = [r.status_code for r in responses]
    assert statuses[0] == 200 and 429 in statuses
    limited = responses[statuses.index(429)]  # the first refused request says when to come back
    assert int(limited.headers["retry-after"]) >= 1
    _error(limited, 429, "rate_limited")
    # another key is not affected
    assert httpx.get(f"{service}/v1/voices", headers=_auth(deployment.keys["globex"])).status_code == 200


# -- audit, metrics -----------------------------------------------------------------------------------------------


def test_audit_log_records_every_synthesis_and_detects_tampering(service, deployment, tmp_path):
    from narrator.config import load_params
    from serving.audit import text_sha256

    text = "An audited sentence."
    for fmt in ("flac", "ogg", "wav"):  # three records at least, whichever tests ran before
        response = _speech(service, deployment.keys["globex"], voice="bob", text=text, seed=1, format=fmt)
        assert response.status_code == 200
    path = Path(load_params(deployment.params_file).serving.audit_log)
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["voice"] == "bob" and last["version"] == 1 and last["text_sha256"] == text_sha256(text)
    assert last["output_sha256"] == response.headers["x-output-sha256"]
    assert last["payload_hex"] == deployment.payloads["bob"] and last["key_id"] == deployment.keys["globex"][3:11]
    assert last["duration_s"] > 0 and last["chain"] == "hmac-sha256" and "mac" in last and "time" in last
    assert (last["delivery"], last["bytes_sent"]) == ("completed", len(response.content))
    assert last["seconds_sent"] == last["duration_s"] and not last["stream"]
    assert len(lines) >= 3

    def verify(file: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", "audit", "verify", str(file)],
                              capture_output=True, text=True, cwd=REPO_ROOT,
                              env={**os.environ, "NARRATOR_AUDIT_KEY": AUDIT_KEY})

    intact = verify(path)
    assert intact.returncode == 0 and "sealed with the audit key" in intact.stdout and "UNKEYED" not in intact.stdout

    def tampered(name: str, change) -> Path:
        copy = tmp_path / name
        copy.write_text("\n".join(change(list(lines))) + "\n")
        shutil.copy(path.with_name(path.name + ".head"), copy.with_name(copy.name + ".head"))
        return copy

    edited = tampered("edited.jsonl", lambda ls: [ls[0].replace('"voice": "', '"voice": "x')] + ls[1:])
    done = verify(edited)
    assert done.returncode == 2 and "edited.jsonl line 1 was edited" in done.stderr
    deleted = tampered("deleted.jsonl", lambda ls: ls[:1] + ls[2:])
    done = verify(deleted)
    assert done.returncode == 2 and "record 2 was deleted before" in done.stderr and "line 2" in done.stderr
    cut = tampered("cut.jsonl", lambda ls: ls[:-1])
    done = verify(cut)
    assert done.returncode == 2 and "deleted from the end" in done.stderr


def _stream_records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["stream"]]


def test_a_stream_the_client_reads_to_the_end_is_recorded_as_completed(service, deployment):
    from narrator.config import load_params

    path = Path(load_params(deployment.params_file).serving.audit_log)
    with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(deployment.keys["acme"]), timeout=120,
                      json={"voice": "alice", "text": "One sentence. And another.", "seed": 5}) as response:
        data = b"".join(response.iter_raw())
    deadline = time.monotonic() + 10
    while not any(r["output_sha256"] == hashlib.sha256(data).hexdigest() for r in _stream_records(path)):
        assert time.monotonic() < deadline, "no audit record of the completed stream"
        time.sleep(0.1)
    last = _stream_records(path)[-1]
    assert (last["delivery"], last["bytes_sent"]) == ("completed", len(data))
    assert last["seconds_sent"] == pytest.approx((len(data) - 44) / 2 / 32000, abs=1e-3)  # 16-bit wav, 32 kHz


def test_a_stream_the_client_abandons_is_recorded_as_aborted_with_what_was_sent(service, deployment):
    from narrator.config import load_params

    path = Path(load_params(deployment.params_file).serving.audit_log)
    before = len(_stream_records(path))
    with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(deployment.keys["globex"]), timeout=120,
                      json={"voice": "bob", "text": STREAM_TEXT, "seed": 4, "format": "wav"}) as response:
        received = next(response.iter_raw())  # the first sentence; then the client hangs up
    deadline = time.monotonic() + 30
    while len(_stream_records(path)) == before:
        assert time.monotonic() < deadline, "no audit record of the abandoned stream"
        time.sleep(0.1)
    record = _stream_records(path)[-1]
    assert record["delivery"] == "aborted" and record["voice"] == "bob"
    assert len(received) <= record["bytes_sent"] and record["seconds_sent"] < record["duration_s"]
    assert record["seconds_sent"] == pytest.approx((record["bytes_sent"] - 44) / 2 / 32000, abs=1e-3)


def _service_ffmpegs(service: str) -> list[int]:
    """The ffmpeg processes (stream encoders) under the `bentoml serve` process listening on `service`'s port."""
    port, children, names = service.rsplit(":", 1)[1], {}, {}
    root = None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        names[int(entry)] = stat.split("(", 1)[1].rsplit(")", 1)[0]
        if b"bentoml" in b" ".join(command) and b"--port" in command and port.encode() in command:
            root = int(entry)
    assert root is not None, "the service's process was not found"
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found += [child for child in children.get(pid, []) if names.get(child) == "ffmpeg"]
        todo += children.get(pid, [])
    return found


def test_an_abandoned_stream_ends_its_encoder_process(service, deployment):
    """A client that hangs up on an mp3 stream: the stream's ffmpeg process ends with it."""
    with httpx.stream("POST", f"{service}/v1/speech/stream", headers=_auth(deployment.keys["acme"]), timeout=120,
                      json={"voice": "alice", "text": LONG_TEXT, "seed": 9, "format": "mp3"}) as response:
        next(response.iter_raw())
        assert _service_ffmpegs(service), "the mp3 stream is encoded by an ffmpeg process"
    deadline = time.monotonic() + 30
    while _service_ffmpegs(service):
        assert time.monotonic() < deadline, "the abandoned stream's ffmpeg process is still running"
        time.sleep(0.2)


def test_metrics_expose_latency_first_audio_rtf_and_queue_depth(service, deployment):
    assert _speech(service, deployment.keys["acme"], voice="alice", text="Metrics please.", seed=2).status_code == 200
    text = httpx.get(f"{service}/metrics").text
    for name in ("narrator_request_seconds_bucket", "narrator_first_audio_seconds_bucket",
                 "narrator_real_time_factor_bucket", "narrator_queue_depth", "narrator_requests_total",
                 "narrator_audio_seconds_total"):
        assert name in text, name
    assert 'narrator_requests_total{endpoint="/v1/speech",status="200"}' in text


# -- the console --------------------------------------------------------------------------------------------------


def test_console_in_headless_chromium(service, deployment, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed")
    page = httpx.get(service)
    assert page.status_code == 200 and "Narrator console" in page.text
    url = f"{service}/#key={deployment.keys['acme']}"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    assert "alice" in dom and "bob" not in dom and "1 voice(s) for tenant acme" in dom
    # type text, listen: the player gets the audio, the download link appears, the watermark is reported
    spoken = subprocess.run(common + ["--dump-dom", url + "&say=Hello%20from%20the%20console."], capture_output=True,
                            text=True, timeout=90).stdout
    assert f"watermark {deployment.payloads['alice']}" in spoken and 'download="alice.wav"' in spoken
    assert 'id="player" controls="" src="blob:' in spoken
    shot = tmp_path / "console.png"
    subprocess.run(common + ["--window-size=1000,900", f"--screenshot={shot}", url], capture_output=True,
                   timeout=90)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (900, 1000) and image.std() > 5  # not a blank page


# -- in-process parts ---------------------------------------------------------------------------------------------


def test_cache_evicts_the_least_recently_used_voice(deployment):
    from narrator.config import load_params
    from serving.voices import VoiceCache, VoiceCatalog

    params = load_params(deployment.params_file, {"serving": {"max_voices": 1}})
    catalog, cache = VoiceCatalog(params), VoiceCache(params, "cpu")
    alice = cache.get(catalog.get("alice"))
    assert cache.loaded() == [("alice", 1)]
    bob = cache.get(catalog.get("bob"))
    assert cache.loaded() == [("bob", 1)] and cache.evictions == 1
    assert alice.synth is not bob.synth and alice.info.payload_hex != bob.info.payload_hex
    assert cache.get(catalog.get("bob")) is bob  # a hit is not a reload


def test_concurrent_unseeded_decodes_are_batched(deployment):
    from models.tts import SamplingSettings
    from narrator.config import load_params
    from serving.engine import GptBatcher, sentences
    from serving.voices import VoiceCache, VoiceCatalog

    params = load_params(deployment.params_file)
    voice = VoiceCache(params, "cpu").get(VoiceCatalog(params).get("alice"))
    batcher = GptBatcher(max_batch_size=4, max_latency_ms=200)
    outputs = []

    def speak() -> None:
        outputs.append(list(sentences(voice, "Hello there.", "en", SamplingSettings(), None, batcher)))

    threads = [threading.Thread(target=speak) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        batcher.stop()
    assert len(outputs) == 4 and all(len(o[0].samples) > 0 for o in outputs)
    assert batcher.batched_jobs == 4 and batcher.batches < 4
    assert not batcher.running  # stopped means stopped: no decode outlives it into interpreter shutdown


def test_a_fast_mode_service_speaks_with_bfloat16_sovits_and_int8_gpt_batches(deployment):
    import torch

    from models.tts import SamplingSettings
    from narrator.config import load_params
    from serving.engine import GptBatcher, sentences
    from serving.voices import VoiceCache, VoiceCatalog

    params = load_params(deployment.params_file, {"inference": {"mode": "fast"}})
    voice = VoiceCache(params, "cpu").get(VoiceCatalog(params).get("alice"))
    assert voice.synth.mode == "fast" and next(voice.synth.sovits.parameters()).dtype == torch.bfloat16
    batcher = GptBatcher(max_batch_size=2, max_latency_ms=0)
    try:
        out = list(sentences(voice, "Hello there.", "en", SamplingSettings(), 5, batcher))
    finally:
        batcher.stop()
    assert out and out[0].samples.dtype == np.float32 and np.isfinite(out[0].samples).all()


def test_keys_cli_shows_the_key_once_and_stores_only_its_hash(tmp_path, deployment):
    import yaml

    params = tmp_path / "params.yaml"  # the deployment's registry (alice and bob are registered), a keys file of its own
    settings = yaml.safe_load(deployment.params_file.read_text())
    params.write_text(yaml.safe_dump({"registry": settings["registry"],
                                      "serving": {"keys_file": str(tmp_path / "keys.json")}}))
    run = [sys.executable, "-m", "cli"]
    created = subprocess.run(run + ["keys", "create", "--tenant", "acme", "--voices", "alice,*", "--params",
                                    str(params)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    stored = (tmp_path / "keys.json").read_text()
    assert secret.startswith("nk_") and secret not in stored
    listed = subprocess.run(run + ["keys", "list", "--params", str(params)], capture_output=True, text=True,
                            cwd=REPO_ROOT).stdout
    key_id = secret.split("_")[1]
    assert key_id in listed and "tenant acme" in listed and "alice,*" in listed
    revoked = subprocess.run(run + ["keys", "revoke", key_id, "--params", str(params)], capture_output=True,
                             text=True, cwd=REPO_ROOT)
    assert revoked.returncode == 0
    from narrator.keys import KeyStore

    assert KeyStore(tmp_path / "keys.json").authenticate(secret) is None


# -- packaging and `narrator serve` (slow: a bento build, a second service) ------------------------------------


@pytest.mark.slow
def test_package_builds_the_champions_bento(deployment):
    env = deployment.env(0)
    done = subprocess.run([sys.executable, "-m", "cli", "package", "alice", "--params",
                           str(deployment.params_file)], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert "narrator:alice-v1" in done.stdout
    bento = deployment.bentoml_home / "bentos" / "narrator" / "alice-v1"
    manifest = (bento / "bento.yaml").read_text()
    assert "narrator-alice:v1" in manifest and "voice: alice" in manifest
    assert (bento / "src" / "serving" / "service.py").exists() and not (bento / "src" / "tests").exists()
    refused = subprocess.run([sys.executable, "-m", "cli", "package", "nobody", "--params",
                              str(deployment.params_file)], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert refused.returncode == 2 and "no voice 'nobody'" in refused.stderr


@pytest.mark.slow
def test_narrator_serve_runs_the_service(deployment):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--params", str(deployment.params_file),
                                "--host", "127.0.0.1", "--port", str(port)], cwd=REPO_ROOT, env=deployment.env(port),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        voices = httpx.get(f"http://127.0.0.1:{port}/v1/voices", headers=_auth(deployment.keys["globex"])).json()
        assert [v["voice"] for v in voices["voices"]] == ["bob"]
        process.send_signal(signal.SIGTERM)  # as a supervisor stops it: the front only, not its process group
        assert process.wait(timeout=45) == 0  # the service shut down cleanly
        with pytest.raises(httpx.HTTPError):  # the service went with it: nothing answers on the port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
