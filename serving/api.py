"""The HTTP API (FastAPI, mounted into the BentoML service), versioned under /v1; OpenAPI at /v1/openapi.json.

    POST /v1/speech             JSON SpeechRequest -> audio (wav/pcm/flac/mp3/ogg/opus/aac) of the whole text
    POST /v1/speech/stream      the same, streamed: chunks of each sentence as its GPT tokens come (sub-sentence
                                streaming, inference.stream; how each format streams: serving/encode.py)
    GET  /v1/voices             the voices this key may use, with version and evaluation summary
    POST /v1/watermark/detect   raw audio body -> {"detected", "score", "payload", "voice", "version"}
    GET  /                      the web console
The OpenAI-compatible (/v1/audio/speech, /v1/models: serving/openai_api.py) and ElevenLabs-compatible
(/elevenlabs/v1/...: serving/elevenlabs_api.py) routes are mounted with `create_app(routers=...)` and speak through
`spoken` / `spoken_stream`, the synthesis path of /v1/speech and /v1/speech/stream.
    GET  /metrics               Prometheus (by route template; behind a `metrics` key when
                                serving.metrics_key_required)
    GET  /v1/docs               the contract, rendered by a page the service ships (no CDN)
(/healthz and /readyz are BentoML's, fed by `NarratorServer.ready`: ready once the champions are loaded.)
Every response, the compatible routes' included, carries X-Request-Id and security headers, keyed ones
X-RateLimit-*, and is counted by route template; CORS only for serving.cors_origins (serving/http.py).

Every request needs `Authorization: Bearer KEY` (or `X-API-Key: KEY`). Errors are JSON
`{"error": {"code", "message"}}`: 401 no or unknown key, 403 a voice outside the key's tenant or scope, 404 no such
voice, 413 text or upload too long, 422 bad parameters or undecodable audio, 429 over the key's rate, 503 the
service cannot synthesize now. Never a stack trace.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from narrator.audit import load_key as load_audit_key
from narrator.audiofile import encode
from narrator.config import Params, ServingConfig
from narrator.errors import NarratorError
from narrator.keys import ApiKey, open_key_store
from narrator.log import get_logger
from narrator.state import StateUnavailable
from serving import errors
from serving.audit import COMPLETED, Delivery, SynthesisAudit, SynthesisRecord, delivered, text_sha256
from serving.encode import FORMATS, AudioFormat, EncodeError, audio_format, media_type
from serving.engine import GptBatcher, Resampler, WatermarkStream, checked_sentences, sentences
from serving.http import (EXPOSED_HEADERS, ServiceMiddleware, error_responses, keyed_operations, note_quota,
                          openapi_document, page_csp, request_id)
from serving.ratelimit import open_rate_limiter
from serving.voices import LoadedVoice, VoiceCache, VoiceCatalog, VoiceInfo, VoiceUnavailable

log = get_logger("serving.api")

CONSOLE = Path(__file__).parent / "console" / "index.html"
DOCS_PAGE = Path(__file__).parent / "console" / "docs.html"
DOCS_SCRIPT = Path(__file__).parent / "console" / "docs.js"
API_VERSION = "v1"
# what each preloaded voice says once, unrecorded, before the service is ready: a sentence of ordinary length
WARM_UP_TEXT = "The service is warming up this voice before it says that it is ready."
OUTSIDE_TENANT = "marked by a voice outside your tenant"


class SpeechRequest(BaseModel):
    """What to say, in which voice, and how the audio comes back."""

    model_config = ConfigDict(extra="forbid")

    voice: str = Field(..., min_length=1, max_length=100, description="a voice from GET /v1/voices")
    text: str = Field(..., min_length=1, description="what to say (at most serving.max_text_chars characters)")
    language: Literal["auto", "en", "zh"] = "auto"
    text_type: Literal["auto", "text", "ssml"] = Field(
        "auto", description="ssml: the text is an SSML document of the supported subset (README: SSML); auto: SSML "
                            "when it starts with <speak, else plain text")
    speed: float = Field(1.0, ge=0.5, le=2.0, description="speaking rate, 1 = the narrator's")
    top_k: int = Field(15, ge=1, le=100)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    seed: int | None = Field(None, ge=0, le=2 ** 31 - 1, description="same seed, same audio")
    format: Literal[tuple(FORMATS)] = Field(  # type: ignore[valid-type]  (the registry's names)
        "wav", description="wav, pcm (raw s16le mono; rate in X-Audio-Sample-Rate-Hz), flac, mp3 (CBR), ogg "
                           "(Vorbis), opus (Ogg Opus), aac (ADTS)")
    sample_rate_hz: int = Field(32000, description="one of serving.sample_rates_hz")
    bitrate_kbps: int | None = Field(None, description="mp3/opus/aac only (default 128/64/128 kbps)")
    quality: Literal["fast", "checked"] = Field(
        "fast", description="checked: every sentence passes the narration quality guard (loops, duration per phone; "
                            "narrate.guard_limits) or is spoken again with the next seed, up to narrate.max_attempts; "
                            "slower, so off by default")


class Metrics:
    """The service's Prometheus metrics (BentoML serves them at /metrics with its own)."""

    def __init__(self) -> None:
        import prometheus_client as m  # imported here: BentoML sets PROMETHEUS_MULTIPROC_DIR before the worker's
        self.latency = m.Histogram(name="narrator_request_seconds", documentation="request latency",
                                   labelnames=["endpoint"],
                                   buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
        self.first_audio = m.Histogram(name="narrator_first_audio_seconds", documentation="time to first audio",
                                       labelnames=["endpoint"],
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
        self.rtf = m.Histogram(name="narrator_real_time_factor", documentation="synthesis seconds per audio second",
                               buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
        self.queue_depth = m.Gauge(name="narrator_queue_depth", documentation="syntheses in progress or waiting",
                                   multiprocess_mode="livesum")
        self.requests = m.Counter(name="narrator_requests_total", documentation="requests by route template "
                                  "(`unmatched`: no route) and status", labelnames=["endpoint", "status"])
        self.audio_seconds = m.Counter(name="narrator_audio_seconds_total", documentation="audio seconds served")


def exposition() -> tuple[bytes, str]:
    """Every worker's metrics (prometheus_client's multiprocess files when BentoML runs several) as text."""
    import prometheus_client
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prometheus_client.REGISTRY
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


@dataclass
class Synthesis:
    """A marked synthesis at 32 kHz, kept to re-encode (seeded requests only)."""

    samples: np.ndarray
    first_audio_s: float
    seconds: float


class NarratorServer:
    """Everything one service process holds: config, keys and rate limits (shared stores), voices, batcher, audit log, metrics."""

    def __init__(self, params: Params, metrics: Metrics | None = None, device: str = "auto") -> None:
        from models.watermark import WatermarkError, load_key

        self.params = params
        cfg = params.serving
        self.keys = open_key_store(cfg)  # shared by every worker (and with serving.state_url, every replica)
        self.limiter = open_rate_limiter(cfg)
        self.catalog = VoiceCatalog(params)
        self.cache = VoiceCache(params, device)
        self.batcher = GptBatcher(cfg.max_batch_size, cfg.max_latency_ms)
        self.audit = SynthesisAudit(cfg.audit_log, load_audit_key(cfg.audit_key_file))
        self.metrics = metrics
        self._results: OrderedDict[tuple, Synthesis] = OrderedDict()
        self._results_lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self.preloaded = threading.Event()  # set once the champions are loaded (or preloading is off)
        self.preload_problem: str | None = None
        try:
            self.watermark_key: bytes | None = load_key()
            self.key_problem = None
        except WatermarkError as error:
            self.watermark_key, self.key_problem = None, str(error)

    def ready(self) -> bool:
        """Ready when the champions are loaded (serving.preload_champions), the watermark key is loaded, the key
        store answers and the registry answers."""
        if not self.preloaded.is_set() or self.watermark_key is None or not self.keys.reachable():
            return False
        try:
            self.catalog.voices()
        except Exception:  # registry down: not ready
            return False
        return True

    def close(self) -> None:
        self.batcher.stop()

    def preload(self) -> list[tuple[str, int]]:
        """Load the champion voices (by name) while they fit serving.memory_budget_mb and serving.max_voices, and
        have each say `WARM_UP_TEXT` once (unrecorded) so the first request pays no first-call costs; then the
        service may say it is ready. A voice that cannot load is logged and skipped (its requests answer 503)."""
        cfg = self.params.serving
        try:
            if not cfg.preload_champions or self.watermark_key is None:
                return []
            largest = 0.0
            for info in sorted(self.catalog.voices().values(), key=lambda v: v.voice):
                if len(self.cache.loaded()) >= cfg.max_voices or self.cache.used_mb() + largest > cfg.memory_budget_mb:
                    log.info("preloaded %d voice(s); the rest load on first use (memory budget %g MB, %d voices)",
                             len(self.cache.loaded()), cfg.memory_budget_mb, cfg.max_voices)
                    break
                if not info.packaged:
                    continue
                try:
                    voice = self.cache.get(info)
                except VoiceUnavailable as error:
                    log.error("voice %s not preloaded: %s", info.voice, error)
                    continue
                largest = max(largest, voice.weight_mb)
                warm = SpeechRequest(voice=info.voice, text=WARM_UP_TEXT, language="en", seed=0)
                encode(np.concatenate(list(self.marked_sentences(voice, warm))), 32000, "wav")
            return self.cache.loaded()
        except Exception as error:  # the registry or a bundle failed: serve anyway, loading on first use
            self.preload_problem = f"{type(error).__name__}: {error}"
            log.error("preloading the champions failed (%s); voices load on first use", self.preload_problem)
            return self.cache.loaded()
        finally:
            self.preloaded.set()

    # -- helpers ------------------------------------------------------------------------------------------------

    def _track(self, delta: int) -> None:
        with self._in_flight_lock:
            self._in_flight += delta
            depth = self._in_flight
        if self.metrics:
            self.metrics.queue_depth.set(depth)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count a finished request by its route template (ServiceMiddleware counts every request)."""
        if self.metrics:
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(seconds)

    def authorize(self, request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        return self.authenticate(presented)

    def authenticate(self, presented: str | None) -> ApiKey:
        """The key behind a presented secret, after its rate limit (401 unknown or revoked, 429 over its rate)."""
        if not presented:
            raise errors.unauthorized("no API key: send `Authorization: Bearer KEY` (create one with "
                                      "`narrator keys create --tenant T --voices a,b`)")
        try:
            key = self.keys.authenticate(presented)
            quota = self.limiter.take_quota(key.id) if key is not None else None
        except StateUnavailable as error:
            log.error("%s", error)
            raise errors.unavailable("the service cannot check API keys right now; try again shortly") from None
        if key is None or quota is None:
            raise errors.unauthorized("the API key is unknown or revoked; ask for a new one")
        note_quota(quota)  # the response's X-RateLimit-* headers (serving/http.py), whichever route asked
        if quota.wait_s > 0:
            raise errors.rate_limited(quota.wait_s)
        return key

    def authorize_metrics(self, request: Request) -> None:
        """/metrics: open, or (serving.metrics_key_required) only for a key with the `metrics` scope."""
        if not self.params.serving.metrics_key_required:
            return
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        try:
            key = self.keys.authenticate(presented) if presented else None
        except StateUnavailable:
            raise errors.unavailable("the service cannot check API keys right now; try again shortly") from None
        if key is None:
            raise errors.unauthorized("/metrics needs an API key with the `metrics` scope (`narrator keys create "
                                      "--tenant T --scopes metrics`)")
        if not key.may("metrics"):
            raise errors.forbidden("this API key may not read /metrics: it lacks the `metrics` scope")

    def voice_for(self, key: ApiKey, voice: str) -> VoiceInfo:
        info = self.catalog.get(voice)
        if info is None:
            raise errors.not_found(f"no voice {voice!r} is serving; GET /v1/voices lists the voices this key may use")
        if not key.may_use(info.voice, info.tenant):
            raise errors.forbidden(f"this API key may not use voice {voice!r} (tenant {key.tenant!r}, voices "
                                   f"{', '.join(key.voices)})")
        return info

    def check(self, req: SpeechRequest) -> None:
        cfg = self.params.serving
        if len(req.text) > cfg.max_text_chars:
            raise errors.too_large(f"the text is {len(req.text)} characters; at most {cfg.max_text_chars} per "
                                   "request: split it")
        from models.text import split_sentences

        segments = self.segments(req)
        if segments is not None and req.quality == "checked":
            raise errors.invalid('quality "checked" takes plain text, not SSML: send the text without markup, or '
                                 'quality "fast"')
        if segments is not None:
            if not any(split_sentences(s.text, s.language) for s in segments if hasattr(s, "text")):
                raise errors.invalid("the SSML document has nothing to speak: give at least one word to synthesize")
        elif not req.text.strip() or not split_sentences(req.text, req.language):
            raise errors.invalid("the text has nothing to speak: give at least one word to synthesize")
        if req.sample_rate_hz not in cfg.sample_rates_hz:
            raise errors.invalid(f"sample_rate_hz {req.sample_rate_hz} is not offered; choose one of "
                                 f"{', '.join(map(str, cfg.sample_rates_hz))}")
        problem = audio_format(req.format).problem(req.sample_rate_hz, req.bitrate_kbps)
        if problem:
            raise errors.invalid(problem)
        if self.watermark_key is None:
            raise errors.unavailable("the watermark key is not configured, and no audio leaves unmarked; set "
                                     "$NARRATOR_WATERMARK_KEY or $NARRATOR_WATERMARK_KEY_FILE")

    def segments(self, req: SpeechRequest) -> list | None:
        """The request's SSML document as speech and pause segments (`models.text.ssml`), None for plain text; an
        unsupported or unsafe document is a 422 naming the element or attribute."""
        from models.text.ssml import SsmlError, SsmlLimits, is_ssml, parse_ssml

        if req.text_type == "text" or req.text_type == "auto" and not is_ssml(req.text):
            return None
        cfg = self.params.serving
        limits = SsmlLimits(max_break_s=cfg.ssml_max_break_s, break_strengths_s=dict(cfg.ssml_break_strengths_s),
                            max_elements=cfg.ssml_max_elements, max_depth=cfg.ssml_max_depth)
        try:
            return parse_ssml(req.text, req.language, limits)
        except SsmlError as error:
            raise errors.ApiError(422, "invalid_ssml", str(error)) from None

    def load(self, info: VoiceInfo) -> LoadedVoice:
        try:
            return self.cache.get(info)
        except VoiceUnavailable as error:
            raise errors.unavailable(str(error)) from None

    def settings(self, req: SpeechRequest):
        from models.tts import SamplingSettings

        return SamplingSettings(top_k=req.top_k, top_p=req.top_p, temperature=req.temperature, speed=req.speed)

    def marked_sentences(self, voice: LoadedVoice, req: SpeechRequest, stream: bool = False) -> Iterator[np.ndarray]:
        """Marked 32 kHz audio per sentence; with `stream` (the streamed routes) and `inference.stream.enabled`,
        per sub-sentence chunk (`quality: "checked"` stays per sentence: the guard judges whole sentences)."""
        marker = WatermarkStream(int(voice.info.payload_hex, 16), self.watermark_key)
        segments = self.segments(req)
        if req.quality == "checked":  # plain text only (check() refuses SSML with it)
            parts = checked_sentences(voice, req.text, req.language, self.settings(req), req.seed, self.batcher,
                                      self.params.narrate)
        else:
            chunking = self.params.inference.stream if stream and self.params.inference.stream.enabled else None
            parts = sentences(voice, req.text, req.language, self.settings(req), req.seed, self.batcher,
                              segments=segments, chunking=chunking)
        for part in parts:
            marked = marker.push(part.samples, complete=part.last)
            if len(marked):
                yield marked

    def synthesize(self, voice: LoadedVoice, req: SpeechRequest) -> Synthesis:
        key = (voice.key, req.text, req.text_type, req.language, req.speed, req.top_k, req.top_p, req.temperature,
               req.seed, req.quality)
        if req.seed is not None:
            with self._results_lock:
                if key in self._results:
                    self._results.move_to_end(key)
                    return self._results[key]
        started = time.perf_counter()
        parts, first = [], 0.0
        for samples in self.marked_sentences(voice, req):
            if not parts:
                first = time.perf_counter() - started
            parts.append(samples)
        result = Synthesis(np.concatenate(parts), first, time.perf_counter() - started)
        if req.seed is not None and self.params.serving.result_cache_items:
            with self._results_lock:
                self._results[key] = result
                while len(self._results) > self.params.serving.result_cache_items:
                    self._results.popitem(last=False)
        return result

    def record(self, key: ApiKey, voice: VoiceInfo, req: SpeechRequest, duration_s: float, sent: Delivery,
               stream: bool, request_id: str = "") -> None:
        """The audit record of one synthesis: `duration_s` audio seconds synthesized, `sent` what reached the
        client."""
        self.audit.append(SynthesisRecord(key_id=key.id, tenant=key.tenant, voice=voice.voice, version=voice.version,
                                          payload_hex=voice.payload_hex, text_sha256=text_sha256(req.text),
                                          language=req.language, format=req.format,
                                          sample_rate_hz=req.sample_rate_hz, duration_s=round(duration_s, 3),
                                          stream=stream, delivery=sent.delivery, bytes_sent=sent.bytes_sent,
                                          seconds_sent=round(sent.seconds_sent, 3), output_sha256=sent.output_sha256,
                                          request_id=request_id))
        if self.metrics:
            self.metrics.audio_seconds.inc(duration_s)

    def identify(self, payload_hex: str | None, key: ApiKey) -> dict[str, Any]:
        """Whose voice a detected payload is: the payload, voice and version only when the voice is in the key's
        tenant; otherwise only that it is marked by a voice outside the tenant (no payload: a payload names a
        voice id and version)."""
        if payload_hex is None:
            return {"payload": None, "voice": None, "version": None}
        from narrator.registry import lookup_payload, voice_tenants

        found = lookup_payload(int(payload_hex, 16), self.params)
        if found is not None:
            voice, version = found
            info = self.catalog.get(voice)
            tenant = info.tenant if info else voice_tenants(self.params).get(voice)
            if tenant == key.tenant:
                return {"payload": payload_hex, "voice": voice, "version": version}
        return {"payload": None, "voice": None, "version": None, "note": OUTSIDE_TENANT}


CLOSE_POLL_S = 0.05  # how often the end of a response retries closing a stream a worker thread is still inside


def _close(stream: Iterator[bytes]) -> None:
    """Close a generator, waiting while a worker thread is still inside it (speaking the chunk nobody will take)."""
    while True:
        try:
            stream.close()
            return
        except ValueError:  # "generator already executing"
            time.sleep(CLOSE_POLL_S)


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response whose body generator is closed when the response ends, however it ends: Starlette
    abandons the generator of a client that went away, so its synthesis would run on and its audit record be
    written (if ever) when the garbage collector gets to it. Closed here, the synthesis stops at once and the
    audit record says what was sent (serving.audit.delivered)."""

    def __init__(self, content: Iterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._stream = content

    async def __call__(self, scope, receive, send) -> None:
        import anyio

        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close, self._stream)


def _new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def _request_id(request: Request) -> str:
    """The id in a response's file name and audit record: the response's X-Request-Id (ServiceMiddleware: the
    request's when it is a plain token, else a new one)."""
    if given := request_id(request.scope):
        return given
    given = request.headers.get("x-request-id", "")
    return given if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", given) else _new_request_id()


def _audio_headers(info: VoiceInfo, fmt: AudioFormat, req: SpeechRequest, request_id: str) -> dict[str, str]:
    """Headers of every audio response, whole or streamed."""
    return {"X-Voice": info.voice, "X-Voice-Version": str(info.version), "X-Watermark-Payload": info.payload_hex,
            **fmt.headers(req.sample_rate_hz),
            "Content-Disposition": f'attachment; filename="{info.voice}-{request_id}.{fmt.extension}"'}


def _json_error(error: errors.ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _prepared(state: NarratorServer, req: SpeechRequest, key: ApiKey) -> tuple[VoiceInfo, LoadedVoice]:
    state.check(req)
    info = state.voice_for(key, req.voice)
    return info, state.load(info)


def spoken(state: NarratorServer, key: ApiKey, req: SpeechRequest, endpoint: str = f"/{API_VERSION}/speech",
           request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The whole text as one encoded file (audited, measured under `endpoint`) and its response headers: the
    synthesis path of POST /v1/speech, which the compatible APIs (serving/openai_api.py, elevenlabs_api.py) share.
    `request_id` names the file and the audit record (None: a new one)."""
    started = time.perf_counter()
    info, voice = _prepared(state, req, key)
    request_id = request_id or _new_request_id()
    state._track(+1)
    try:
        result = state.synthesize(voice, req)
    finally:
        state._track(-1)
    resampler = Resampler(req.sample_rate_hz)
    samples = resampler.push(result.samples, last=True)
    fmt = audio_format(req.format)
    try:
        body = fmt.encode(samples, req.sample_rate_hz, req.bitrate_kbps)
    except EncodeError as error:
        log.error("%s", error)
        raise errors.unavailable(f"the {req.format} encoder failed; try another format") from None
    duration_s = len(result.samples) / 32000
    digest = hashlib.sha256(body).hexdigest()
    state.record(key, info, req, duration_s, Delivery(COMPLETED, len(body), duration_s, digest), stream=False,
                 request_id=request_id)
    elapsed = time.perf_counter() - started
    if state.metrics:
        state.metrics.first_audio.labels(endpoint=endpoint).observe(elapsed)
        state.metrics.rtf.observe(result.seconds / max(duration_s, 1e-6))
    return body, {**_audio_headers(info, fmt, req, request_id), "X-Audio-Duration-S": f"{duration_s:.3f}",
                  "X-Audio-Sha256": digest, "X-Output-Sha256": digest}


def speak(state: NarratorServer, key: ApiKey, req: SpeechRequest, endpoint: str = f"/{API_VERSION}/speech",
          request_id: str | None = None) -> Response:
    body, headers = spoken(state, key, req, endpoint, request_id)
    return Response(body, media_type=media_type(req.format), headers=headers)


def spoken_stream(state: NarratorServer, key: ApiKey, req: SpeechRequest,
                  endpoint: str = f"/{API_VERSION}/speech/stream",
                  request_id: str | None = None) -> tuple[Iterator[bytes], dict[str, str]]:
    """The text as encoded chunks, sub-sentence pieces as soon as they are spoken (audited when the stream ends,
    completed or not; measured under `endpoint`), and the response headers: the synthesis path of
    POST /v1/speech/stream, shared with the compatible APIs. Close the iterator when the response ends."""
    started = time.perf_counter()
    info, voice = _prepared(state, req, key)
    fmt, request_id = audio_format(req.format), request_id or _new_request_id()

    synthesized_s = 0.0  # audio seconds synthesized so far

    def chunks() -> Iterator[tuple[bytes, float]]:
        """Encoded bytes as they become final, each with the audio seconds encoded up to and with them."""
        nonlocal synthesized_s
        encoder = fmt.stream(req.sample_rate_hz, req.bitrate_kbps)
        resampler = Resampler(req.sample_rate_hz)
        encoded_samples, first = 0, None
        state._track(+1)
        try:
            for samples in state.marked_sentences(voice, req, stream=True):
                synthesized_s += len(samples) / 32000
                resampled = resampler.push(samples)
                encoded_samples += len(resampled)
                data = encoder.write(resampled)
                if data:
                    if first is None:
                        first = time.perf_counter() - started
                        if state.metrics:
                            state.metrics.first_audio.labels(endpoint=endpoint).observe(first)
                    yield data, encoded_samples / req.sample_rate_hz
            rest = resampler.push(np.zeros(0, np.float32), last=True)
            encoded_samples += len(rest)
            yield encoder.write(rest) + encoder.close(), encoded_samples / req.sample_rate_hz
        finally:
            encoder.abort()  # after close(): nothing; a stream that ended early: its encoder process goes
            state._track(-1)

    def ended(sent: Delivery) -> None:
        """The stream ended (completed, or the client went away): record what was sent."""
        state.record(key, info, req, synthesized_s, sent, stream=True, request_id=request_id)
        elapsed = time.perf_counter() - started
        if state.metrics and synthesized_s:
            state.metrics.rtf.observe(elapsed / synthesized_s)

    return delivered(chunks(), ended), _audio_headers(info, fmt, req, request_id)


def speak_streamed(state: NarratorServer, key: ApiKey, req: SpeechRequest,
                   endpoint: str = f"/{API_VERSION}/speech/stream", request_id: str | None = None) -> StreamingResponse:
    stream, headers = spoken_stream(state, key, req, endpoint, request_id)
    return ClosingStreamingResponse(stream, media_type=media_type(req.format), headers=headers)


KEYED = error_responses(401, 429, 503)  # any operation that takes an API key
SPEECH_ERRORS = error_responses(401, 403, 404, 413, 422, 429, 503)
UNMATCHED_ROUTES = ("unknown",)  # the catch-all route's name: its requests count as `unmatched`


def create_app(server: Callable[[], NarratorServer], routers: Sequence[APIRouter] = (),
               settings: ServingConfig | None = None) -> FastAPI:
    """The API over the process's NarratorServer (`server()` returns it; BentoML builds it per worker), with
    `routers` (the compatible APIs) mounted before the catch-all 404; `settings` (serving.cors_origins) shape the
    middleware, which every route, the routers' included, goes through."""
    settings = settings or ServingConfig()
    app = FastAPI(title="Narrator", version=API_VERSION, openapi_url=f"/{API_VERSION}/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="Multi-voice, streaming, authenticated speech; every output carries the watermark. "
                              "Send an API key as `Authorization: Bearer KEY` (or `X-API-Key: KEY`). Every "
                              "response carries `X-Request-Id`; keyed ones `X-RateLimit-Limit`, "
                              "`X-RateLimit-Remaining` and `X-RateLimit-Reset`. Errors are `{\"error\": {\"code\", "
                              "\"message\"}}`.")
    bearer = HTTPBearer(auto_error=False, scheme_name="bearer")  # documents the scheme; `authorized` checks

    def observe(endpoint: str, status: int, seconds: float) -> None:
        try:
            state = server()
        except Exception:  # no server yet (starting): nothing to count into
            return
        if state is not None:
            state.observe(endpoint, status, seconds)

    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-Id",
                                          "xi-api-key"],
                           expose_headers=EXPOSED_HEADERS, max_age=600)
    app.add_middleware(ServiceMiddleware, observe=observe, unmatched=UNMATCHED_ROUTES)  # outermost

    def contract() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = openapi_document(get_openapi(
                title=app.title, version=app.version, openapi_version=app.openapi_version,
                description=app.description, routes=app.routes), keyed_ops=keyed_operations(app.routes))
        return app.openapi_schema

    app.openapi = contract

    @app.exception_handler(errors.ApiError)
    async def _api_error(_: Request, error: errors.ApiError):
        return _json_error(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in error.errors())
        return _json_error(errors.invalid(problems or "the request body is not valid"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(error.detail)}}, status_code=error.status_code)

    @app.exception_handler(NarratorError)
    async def _refused(_: Request, error: NarratorError):  # e.g. SynthesisError: text the front-end cannot speak
        return _json_error(errors.invalid(str(error)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception):
        log.error("internal error (request %s): %s: %s", request_id(request.scope), type(error).__name__, error,
                  exc_info=error)
        return JSONResponse({"error": {"code": "internal", "message": "the service failed on this request (request "
                                                                     f"{request_id(request.scope)}); it was logged, "
                                                                     "try again"}}, status_code=500)

    def authorized(request: Request, _: Any = Security(bearer)) -> ApiKey:
        return server().authorize(request)

    console_html = CONSOLE.read_text(encoding="utf-8")
    docs_html = DOCS_PAGE.read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def console() -> HTMLResponse:
        return HTMLResponse(console_html, headers={"Content-Security-Policy": page_csp(console_html)})

    @app.get(f"/{API_VERSION}/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """The contract rendered by a page of ours (docs.html + docs.js): no CDN, no third-party script."""
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": page_csp(docs_html)})

    @app.get(f"/{API_VERSION}/docs/docs.js", include_in_schema=False)
    def docs_script() -> Response:
        return Response(DOCS_SCRIPT.read_bytes(), media_type="text/javascript")

    @app.get("/metrics", summary="Prometheus metrics of every worker",
             responses={200: {"content": {"text/plain": {}}}, **error_responses(401, 403, 503)},
             openapi_extra={"security": [{}, {"bearer": []}, {"apiKey": []}]})
    def metrics(request: Request) -> Response:
        """Open unless serving.metrics_key_required: then only for a key with the `metrics` scope (401 without a
        key, 403 with one that lacks it)."""
        server().authorize_metrics(request)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get(f"/{API_VERSION}/voices", summary="the voices this key may use", responses=KEYED)
    def voices(key: ApiKey = Depends(authorized)) -> dict:
        state = server()
        found = [info.public() for info in state.catalog.voices().values() if key.may_use(info.voice, info.tenant)]
        return {"tenant": key.tenant, "voices": sorted(found, key=lambda v: v["voice"])}

    @app.post(f"/{API_VERSION}/speech", summary="the whole text as one audio file",
              responses={200: {"content": {media_type(f): {} for f in FORMATS}}, **SPEECH_ERRORS})
    def speech(req: SpeechRequest, request: Request, key: ApiKey = Depends(authorized)) -> Response:
        return speak(server(), key, req, request_id=_request_id(request))

    @app.post(f"/{API_VERSION}/speech/stream", summary="the text as audio, streamed in sub-sentence chunks",
              responses={200: {"content": {media_type(f): {} for f in FORMATS}}, **SPEECH_ERRORS})
    def speech_stream(req: SpeechRequest, request: Request, key: ApiKey = Depends(authorized)) -> StreamingResponse:
        """Duration and sha256 are known only when the stream ends (no trailers: uvicorn sends none); the audit
        record of the stream (serving.audit_log, found by the request id in the file name) holds them, with the
        bytes and seconds that reached the client."""
        return speak_streamed(server(), key, req, request_id=_request_id(request))

    @app.post(f"/{API_VERSION}/watermark/detect", summary="look for the watermark in an uploaded audio file",
              responses=error_responses(401, 413, 422, 429, 503), openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                  "type": "string", "format": "binary"}}}, "required": True}})
    async def detect(request: Request, key: ApiKey = Depends(authorized)) -> dict:
        import anyio

        state = server()
        limit = int(state.params.serving.max_upload_mb * 2 ** 20)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise errors.too_large(f"the upload is {int(declared) / 2 ** 20:.1f} MB; at most "
                                   f"{state.params.serving.max_upload_mb:g} MB")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise errors.too_large(f"the upload is over {state.params.serving.max_upload_mb:g} MB; send less")
        if not body:
            raise errors.invalid("send the audio file as the request body (Content-Type: audio/wav, ...)")
        return await anyio.to_thread.run_sync(_detect, state, bytes(body), request.headers.get("content-type", ""),
                                              key)

    for router in routers:
        app.include_router(router)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False,
                   name="unknown")
    def unknown(path: str) -> None:
        """Anything else: a JSON 404 (BentoML's own routes, /healthz /readyz /metrics, come first)."""
        raise errors.not_found(f"no such endpoint /{path}; the API lives under /{API_VERSION} (see "
                               f"/{API_VERSION}/openapi.json)")

    return app


_SUFFIXES = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/flac": ".flac",
             "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/ogg": ".ogg", "audio/opus": ".opus",
             "audio/aac": ".aac", "audio/mp4": ".m4a"}


def _detect(state: NarratorServer, body: bytes, content_type: str, key: ApiKey) -> dict:
    from models.watermark import detect
    from narrator.registry import format_payload
    from narrator.audiofile import read_audio
    from narrator.errors import AudioError

    if state.watermark_key is None:
        raise errors.unavailable(state.key_problem or "no watermark key")
    suffix = _SUFFIXES.get(content_type.split(";")[0].strip().lower(), ".bin")
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(body)
        tmp.flush()
        try:
            audio = read_audio(tmp.name)
        except AudioError:
            raise errors.invalid("the upload is not audio this service can decode (wav, flac, mp3, ogg, m4a)") from None
    if audio.sample_rate_hz < 8000:
        raise errors.invalid(f"the audio is sampled at {audio.sample_rate_hz} Hz; send at least 8 kHz")
    found = detect(audio.samples, audio.sample_rate_hz, state.watermark_key)
    return {"detected": bool(found.detected), "score": round(float(found.score), 2),
            "threshold": round(float(found.threshold), 2), "duration_s": round(audio.duration_s, 2),
            **state.identify(format_payload(found.payload), key)}
