"""The OpenAI-compatible speech API: what the `openai` package (and tools built on it: Open WebUI, LiveKit,
gateways) sends to `client.audio.speech.create(...)`, spoken by a Narrator voice.

    POST /v1/audio/speech    {"model", "input", "voice", "response_format", "speed", "stream_format",
                              "instructions"} -> audio (OpenAI's request shape)
    GET  /v1/models          the accepted `model` names, in OpenAI's list shape; GET /v1/models/{model} one

Keys are the service's own (`Authorization: Bearer KEY`, so `OpenAI(base_url="http://HOST:3000/v1", api_key=KEY)`),
with their tenants, scopes and rate limits; every output is watermarked and audited as on POST /v1/speech, whose
synthesis path this is.

The request, field by field:
- `voice`: a Narrator voice name (`alice`), optionally at its serving version (`alice@3`), or `{"id": "alice"}`.
- `model`: `tts-1`, `tts-1-hd`, `gpt-4o-mini-tts` or `narrator`; all speak the same way (the service's
  `inference.mode`), the name only has to be one of these.
- `response_format` (default mp3): audio at 24 kHz, as OpenAI's; `pcm` is raw 16-bit little-endian mono at 24 kHz.
  A format the service's encoders do not offer (serving/encode.py FORMATS) is refused with 400.
- `speed`: 0.5 to 2.0 (OpenAI allows 0.25 to 4.0; outside our range: 400 naming `speed`).
- `stream_format`: omitted -> the whole file (exact headers, X-Audio-Duration-S, X-Output-Sha256); `audio` -> the
  audio streamed in sub-sentence chunks as it is spoken; `sse` -> server-sent events `speech.audio.delta` (base64
  audio chunks) then `speech.audio.done` (its `usage` counts are not measured: 0).
- `instructions`: accepted and ignored (a Narrator voice has no style prompt).
- Narrator extensions (the openai package's `extra_body`): `seed` (the same seed, the same audio, as on
  /v1/speech) and `language` (auto/en/zh).

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`, so the package raises its own exceptions:
400 BadRequestError (invalid values, text too long), 401 AuthenticationError, 403 PermissionDeniedError (a voice
outside the key's tenant or scope), 404 NotFoundError (no such voice, version or model), 429 RateLimitError
(with Retry-After), 503 InternalServerError.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from narrator.keys import ApiKey
from serving import errors
from serving.api import ClosingStreamingResponse, NarratorServer, spoken, spoken_stream
from serving.compat import FieldError, bearer, check_version, speech_request, split_voice, translating_route
from serving.encode import FORMATS, media_type

SPEECH_PATH = "/v1/audio/speech"
MODELS_PATH = "/v1/models"
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "narrator")  # accepted `model` names; all speak alike
MODELS_CREATED = 1767225600  # 2026-01-01: when these names were first served (OpenAI's `created` field)
SAMPLE_RATE_HZ = 24000  # OpenAI's speech is 24 kHz in every format
# OpenAI's response_format -> the service's format (serving/encode.py FORMATS) and the file extension
RESPONSE_FORMATS = {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "wav", "pcm": "pcm"}
FIELDS = {"text": "input", "format": "response_format", "sample_rate_hz": "response_format"}  # ours -> OpenAI's

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                404: "invalid_request_error", 429: "requests"}


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=120)


class OpenAISpeechRequest(BaseModel):
    """OpenAI's speech request (POST /v1/audio/speech), plus Narrator's `seed` and `language`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description=f"one of {', '.join(MODELS)} (all speak alike)")
    input: str = Field(..., min_length=1, description="what to say")
    voice: str | VoiceId = Field(..., description="a Narrator voice (GET /v1/voices), optionally VOICE@VERSION")
    instructions: str | None = Field(None, description="accepted and ignored")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, description="0.5 to 2.0")
    stream_format: Literal["sse", "audio"] | None = Field(
        None, description="omitted: the whole file; audio: streamed raw audio; sse: server-sent events")
    seed: int | None = Field(None, description="Narrator extension: the same seed, the same audio")
    language: Literal["auto", "en", "zh"] = Field("auto", description="Narrator extension")

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


def openai_error(error: errors.ApiError, param: str | None) -> JSONResponse:
    """Our refusal in OpenAI's error shape and status (422 and 413 are OpenAI's 400)."""
    status = 400 if error.status in (413, 422) else error.status
    code = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded",
            413: "string_above_max_length"}.get(error.status, error.code)
    if error.status == 413 and param is None:
        param = "input"
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": error.message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=error.headers)


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "narrator"}


def _events(stream: Iterator[bytes]) -> Iterator[bytes]:
    """Audio chunks as OpenAI's speech events: `speech.audio.delta` (base64 audio) ..., `speech.audio.done`."""
    try:
        for data in stream:
            if data:
                event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
                yield f"data: {json.dumps(event)}\n\n".encode()
        done = {"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
        yield f"data: {json.dumps(done)}\n\n".encode()
    finally:
        stream.close()


def router(server: Callable[[], NarratorServer]) -> APIRouter:
    """The OpenAI-compatible routes over the process's NarratorServer."""
    api = APIRouter(route_class=translating_route(openai_error), tags=["OpenAI-compatible"])

    def authorized(request: Request) -> ApiKey:  # counted by route template, refusals too (serving/http.py)
        return server().authenticate(bearer(request) or request.headers.get("x-api-key"))

    @api.post(SPEECH_PATH, summary="OpenAI-compatible speech (the openai package's audio.speech.create)",
              responses={200: {"content": {**{media_type(f): {} for f in FORMATS}, "text/event-stream": {}}}})
    def audio_speech(body: OpenAISpeechRequest, key: ApiKey = Depends(authorized)) -> Response:
        state = server()
        if body.model not in MODELS:
            raise FieldError(errors.not_found(f"the model {body.model!r} does not exist here; use one of "
                                              f"{', '.join(MODELS)} (all speak alike)"), "model")
        fmt = RESPONSE_FORMATS[body.response_format]
        if fmt not in FORMATS:
            raise FieldError(errors.invalid(
                f"response_format {body.response_format!r} is not offered by this service yet; use one of "
                f"{', '.join(f for f in RESPONSE_FORMATS if RESPONSE_FORMATS[f] in FORMATS)}"), "response_format")
        name, version = split_voice(body.voice_name)
        req = speech_request(FIELDS, voice=name, text=body.input, speed=body.speed, seed=body.seed,
                             language=body.language, format=fmt, sample_rate_hz=SAMPLE_RATE_HZ)
        try:
            check_version(state.voice_for(key, name), version)
        except errors.ApiError as error:
            raise FieldError(error, "voice") from None
        if body.stream_format is None:
            audio, headers = spoken(state, key, req, SPEECH_PATH)
            headers["Content-Disposition"] = f'attachment; filename="speech.{body.response_format}"'
            return Response(audio, media_type=media_type(fmt), headers=headers)
        stream, headers = spoken_stream(state, key, req, SPEECH_PATH)
        if body.stream_format == "sse":
            return ClosingStreamingResponse(_events(stream), media_type="text/event-stream",
                                            headers={**headers, "Cache-Control": "no-cache"})
        return ClosingStreamingResponse(stream, media_type=media_type(fmt), headers=headers)

    @api.get(MODELS_PATH, summary="the accepted speech model names (OpenAI's list shape)")
    def models(_: ApiKey = Depends(authorized)) -> dict:
        return {"object": "list", "data": [_model(name) for name in MODELS]}

    @api.get(MODELS_PATH + "/{model}", summary="one accepted speech model name")
    def model(model: str, _: ApiKey = Depends(authorized)) -> dict:
        if model not in MODELS:
            raise FieldError(errors.not_found(f"the model {model!r} does not exist here; use one of "
                                              f"{', '.join(MODELS)}"), "model")
        return _model(model)

    return api
