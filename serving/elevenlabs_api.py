"""The ElevenLabs-compatible speech API, under /elevenlabs: what the `elevenlabs` package sends, spoken by a Narrator
voice (`ElevenLabs(base_url="http://HOST:3000/elevenlabs", api_key=KEY)`). Under its own base path because the
service's own GET /v1/voices has another shape.

    POST /elevenlabs/v1/text-to-speech/{voice_id}          {"text", "model_id", "voice_settings", ...} -> audio
    POST /elevenlabs/v1/text-to-speech/{voice_id}/stream   the same, streamed in sub-sentence chunks
    GET  /elevenlabs/v1/voices                             the key's voices, in ElevenLabs' shape
    GET  /elevenlabs/v1/voices/{voice_id}                  one of them
    GET  /elevenlabs/v2/voices                             the key's voices, searched and paged (voices.search)
    GET  /elevenlabs/v1/models                             the one model, `narrator`

Keys are the service's own, sent as `xi-api-key: KEY` (what the package sends) or `Authorization: Bearer KEY`, with
their tenants, scopes and rate limits; every output is watermarked and audited as on POST /v1/speech, whose
synthesis path this is.

The request, field by field:
- `voice_id`: a Narrator voice name (`alice`), optionally at its serving version (`alice@3`).
- `output_format` (query, default mp3_44100_128): CODEC_RATE[_BITRATE] with CODEC mp3, pcm (raw 16-bit
  little-endian mono), wav or opus, RATE one of serving.sample_rates_hz; the bitrate is the encoder's own (ignored).
  ulaw/alaw, a rate or a codec the service's encoders do not offer: 422.
- `voice_settings.speed` -> speed (0.5 to 2.0); `voice_settings.stability` (0 to 1) -> sampling temperature
  1.5 - stability (ElevenLabs' default 0.5 is Narrator's default temperature 1.0; more stable, less random);
  `similarity_boost`, `style`, `use_speaker_boost`: ignored (no such knob).
- `language_code`: en or zh speak that language; any other is ignored (auto), as ElevenLabs does.
- `seed`: the same seed, the same audio (ElevenLabs' 0..4294967295 is taken modulo 2**31).
- `model_id`, `previous_text`, `next_text`, request ids, pronunciation dictionaries, text normalisation, effects:
  accepted and ignored. `optimize_streaming_latency`, `enable_logging` (query): ignored.

Errors are ElevenLabs' `{"detail": {"status", "message"}}`; the package raises `ApiError` with the status code
(401 invalid_api_key, 403 forbidden, 404 voice_not_found, 429 rate_limit_exceeded with Retry-After, 503) and
`UnprocessableEntityError` for 422 (invalid values).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from narrator.keys import ApiKey
from serving import errors
from serving.api import ClosingStreamingResponse, NarratorServer, spoken, spoken_stream
from serving.compat import FieldError, bearer, check_version, speech_request, split_voice, translating_route
from serving.encode import FORMATS, media_type
from serving.voices import VoiceInfo

PREFIX = "/elevenlabs"
SPEECH_PATH = PREFIX + "/v1/text-to-speech/{voice_id}"
STREAM_PATH = SPEECH_PATH + "/stream"
VOICES_PATH = PREFIX + "/v1/voices"
SEARCH_PATH = PREFIX + "/v2/voices"
MODELS_PATH = PREFIX + "/v1/models"
MODEL_ID = "narrator"
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"
CODECS = {"mp3": "mp3", "pcm": "pcm", "wav": "wav", "opus": "opus"}  # ElevenLabs codec -> the service's format
_OUTPUT_FORMAT = re.compile(r"^(?P<codec>[a-z][a-z0-9]*)_(?P<rate>\d+)(?:_(?P<bitrate>\d+))?$")
FIELDS = {"text": "text", "speed": "voice_settings.speed", "temperature": "voice_settings.stability",
          "sample_rate_hz": "output_format", "format": "output_format"}  # ours -> ElevenLabs'
SEED_RANGE = 2 ** 31

_STATUSES = {401: "invalid_api_key", 403: "forbidden", 404: "voice_not_found", 413: "max_character_limit_exceeded",
             422: "invalid_request", 429: "rate_limit_exceeded", 503: "service_unavailable", 500: "internal_error"}


class VoiceSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    stability: float | None = Field(None, ge=0.0, le=1.0, description="-> temperature 1.5 - stability")
    similarity_boost: float | None = Field(None, description="ignored")
    style: float | None = Field(None, description="ignored")
    use_speaker_boost: bool | None = Field(None, description="ignored")
    speed: float | None = Field(None, description="speaking rate, 0.5 to 2.0")


class ElevenLabsSpeechRequest(BaseModel):
    """ElevenLabs' text-to-speech body; the fields Narrator has no knob for are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(..., min_length=1)
    model_id: str | None = Field(None, description="accepted, ignored: every voice speaks with `narrator`")
    language_code: str | None = Field(None, description="en or zh; any other is ignored (auto)")
    voice_settings: VoiceSettings | None = None
    seed: int | None = Field(None, ge=0, le=4294967295, description="the same seed, the same audio")
    previous_text: str | None = None
    next_text: str | None = None


def elevenlabs_error(error: errors.ApiError, param: str | None) -> JSONResponse:
    """Our refusal in ElevenLabs' error shape (`{"detail": {"status", "message"}}`); too long a text is 400."""
    status = 400 if error.status == 413 else error.status
    detail = {"status": _STATUSES.get(error.status, error.code), "message": error.message}
    if param:
        detail["param"] = param
    return JSONResponse({"detail": detail}, status_code=status, headers=error.headers)


def output_format(value: str, rates: tuple[int, ...]) -> tuple[str, int, str]:
    """`mp3_44100_128` -> ("mp3", 44100, "mp3"): the service's format, sample rate and file extension."""
    found = _OUTPUT_FORMAT.match(value)
    if not found:
        raise FieldError(errors.invalid(f"output_format {value!r} is not CODEC_RATE[_BITRATE] (e.g. "
                                        f"{DEFAULT_OUTPUT_FORMAT}, pcm_24000)"), "output_format")
    codec, rate = found["codec"], int(found["rate"])
    fmt = CODECS.get(codec)
    if fmt is None or fmt not in FORMATS:
        offered = [c for c, f in CODECS.items() if f in FORMATS]
        raise FieldError(errors.invalid(f"output_format {value!r}: the codec {codec!r} is not offered; use one of "
                                        f"{', '.join(offered)}"), "output_format")
    if rate not in rates:
        raise FieldError(errors.invalid(f"output_format {value!r}: {rate} Hz is not offered; use one of "
                                        f"{', '.join(map(str, rates))}"), "output_format")
    return fmt, rate, codec


def voice_entry(info: VoiceInfo) -> dict[str, Any]:
    """A Narrator voice as ElevenLabs describes a voice."""
    return {"voice_id": info.voice, "name": info.voice, "category": "professional",
            "description": f"Narrator voice {info.voice}, version {info.version}",
            "labels": {"version": str(info.version), "watermark_payload": info.payload_hex,
                       "verdict": str(info.evaluation.get("verdict", "unknown"))},
            "samples": None, "settings": None, "preview_url": None, "high_quality_base_model_ids": [MODEL_ID],
            "is_owner": True}


def router(server: Callable[[], NarratorServer]) -> APIRouter:
    """The ElevenLabs-compatible routes over the process's NarratorServer."""
    api = APIRouter(route_class=translating_route(elevenlabs_error), tags=["ElevenLabs-compatible"])

    def authorized(request: Request) -> ApiKey:  # counted by route template, refusals too (serving/http.py)
        return server().authenticate(request.headers.get("xi-api-key") or bearer(request))

    def prepare(voice_id: str, body: ElevenLabsSpeechRequest, fmt_value: str, key: ApiKey):
        state = server()
        fmt, rate, codec = output_format(fmt_value, state.params.serving.sample_rates_hz)
        settings = body.voice_settings or VoiceSettings()
        language = body.language_code if body.language_code in ("en", "zh") else "auto"
        name, version = split_voice(voice_id)
        req = speech_request(FIELDS, voice=name, text=body.text, language=language,
                             speed=1.0 if settings.speed is None else settings.speed,
                             temperature=1.0 if settings.stability is None else 1.5 - settings.stability,
                             seed=None if body.seed is None else body.seed % SEED_RANGE, format=fmt,
                             sample_rate_hz=rate)
        check_version(state.voice_for(key, name), version)
        return state, req, codec

    @api.post(SPEECH_PATH, summary="ElevenLabs-compatible speech, the whole file (text_to_speech.convert)",
              responses={200: {"content": {media_type(f): {} for f in FORMATS}}})
    def text_to_speech(voice_id: str, body: ElevenLabsSpeechRequest,
                       output_format: str = Query(DEFAULT_OUTPUT_FORMAT),
                       optimize_streaming_latency: int | None = Query(None, description="ignored"),
                       enable_logging: bool | None = Query(None, description="ignored"),
                       key: ApiKey = Depends(authorized)) -> Response:
        state, req, codec = prepare(voice_id, body, output_format, key)
        audio, headers = spoken(state, key, req, SPEECH_PATH)
        headers["Content-Disposition"] = f'attachment; filename="{req.voice}.{codec}"'
        return Response(audio, media_type=media_type(req.format), headers=headers)

    @api.post(STREAM_PATH, summary="ElevenLabs-compatible speech, streamed (text_to_speech.stream)",
              responses={200: {"content": {media_type(f): {} for f in FORMATS}}})
    def text_to_speech_stream(voice_id: str, body: ElevenLabsSpeechRequest,
                              output_format: str = Query(DEFAULT_OUTPUT_FORMAT),
                              optimize_streaming_latency: int | None = Query(None, description="ignored"),
                              enable_logging: bool | None = Query(None, description="ignored"),
                              key: ApiKey = Depends(authorized)) -> ClosingStreamingResponse:
        state, req, _ = prepare(voice_id, body, output_format, key)
        stream, headers = spoken_stream(state, key, req, STREAM_PATH)
        return ClosingStreamingResponse(stream, media_type=media_type(req.format), headers=headers)

    def usable(key: ApiKey) -> list[VoiceInfo]:
        return sorted((info for info in server().catalog.voices().values() if key.may_use(info.voice, info.tenant)),
                      key=lambda info: info.voice)

    @api.get(VOICES_PATH, summary="the voices this key may use, in ElevenLabs' shape (voices.get_all)")
    def voices(show_legacy: bool | None = Query(None, description="ignored"),
               key: ApiKey = Depends(authorized)) -> dict:
        return {"voices": [voice_entry(info) for info in usable(key)]}

    @api.get(VOICES_PATH + "/{voice_id}", summary="one voice this key may use, in ElevenLabs' shape (voices.get)")
    def voice(voice_id: str, key: ApiKey = Depends(authorized)) -> dict:
        name, version = split_voice(voice_id)
        found = [info for info in usable(key) if info.voice == name]
        if not found:
            raise errors.not_found(f"no voice {voice_id!r} is serving for this key; GET {VOICES_PATH} lists them")
        check_version(found[0], version)
        return voice_entry(found[0])

    @api.get(SEARCH_PATH, summary="the voices this key may use, searched and paged (voices.search)")
    def search(search: str | None = Query(None, description="part of the voice name"),
               page_size: int = Query(10, ge=1, le=100), next_page_token: str | None = Query(None),
               include_total_count: bool = Query(True), key: ApiKey = Depends(authorized)) -> dict:
        found = [info for info in usable(key) if not search or search.lower() in info.voice.lower()]
        start = int(next_page_token) if next_page_token and next_page_token.isdigit() else 0
        page = found[start:start + page_size]
        more = start + page_size < len(found)
        return {"voices": [voice_entry(info) for info in page], "has_more": more, "total_count": len(found),
                "next_page_token": str(start + page_size) if more else None}

    @api.get(MODELS_PATH, summary="the one model, in ElevenLabs' shape (models.list)")
    def models(_: ApiKey = Depends(authorized)) -> list[dict]:
        return [{"model_id": MODEL_ID, "name": "Narrator (GPT-SoVITS)", "can_do_text_to_speech": True,
                 "can_do_voice_conversion": False, "description": "every Narrator voice speaks with it",
                 "languages": [{"language_id": "en", "name": "English"}, {"language_id": "zh", "name": "Chinese"}]}]

    return api
