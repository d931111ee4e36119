"""What the compatible APIs (serving/openai_api.py, serving/elevenlabs_api.py) share: routes that answer errors in
their client's shape, the API key a client presents, and a voice named the way a client names it.

A compatible route translates its client's request into a `serving.api.SpeechRequest` and speaks through the
service's own synthesis path (`serving.api.spoken` / `spoken_stream`): the same keys, tenants, rate limits,
watermark, audit record and GPT batching as POST /v1/speech. Only the words on the wire differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from narrator.errors import NarratorError
from narrator.log import get_logger
from serving import errors
from serving.api import SpeechRequest
from serving.voices import VoiceInfo

log = get_logger("serving.compat")

Shape = Callable[[errors.ApiError, "str | None"], JSONResponse]  # an error (and the field it is about) -> response


def problems(error: RequestValidationError | ValidationError, fields: dict[str, str] | None = None
             ) -> tuple[str, str | None]:
    """A validation error as one message and the first field it is about, both in the client's field names
    (`fields`: ours -> theirs)."""
    fields = fields or {}
    found = error.errors()

    def where(e: dict) -> list[str]:
        return [fields.get(str(p), str(p)) for p in e["loc"] if p not in ("body", "query", "path")]

    message = "; ".join(f"{'.'.join(where(e)) or 'body'}: {e['msg']}" for e in found) or "the request is not valid"
    named = where(found[0]) if found else []
    return message, (named[0] if named else None)


def speech_request(fields: dict[str, str], **values: Any) -> SpeechRequest:
    """The service's request for a client's one; a value the service does not take is refused naming the
    client's field (`fields`: ours -> theirs)."""
    try:
        return SpeechRequest(**values)
    except ValidationError as error:
        message, param = problems(error, fields)
        raise FieldError(errors.invalid(message), param) from None


def translating_route(shape: Shape) -> type[APIRoute]:
    """A route class whose every refusal (our ApiError, a validation error of the body or query, a NarratorError
    such as text the front-end cannot speak, an unexpected failure) is answered by `shape` in the client's own
    error format, instead of the service's `{"error": {"code", "message"}}`."""

    class TranslatingRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def translated(request: Request):
                try:
                    return await handler(request)
                except FieldError as error:
                    return shape(error, error.param)
                except errors.ApiError as error:
                    return shape(error, None)
                except (RequestValidationError, ValidationError) as error:
                    message, param = problems(error)
                    return shape(errors.invalid(message), param)
                except StarletteHTTPException as error:
                    return shape(errors.ApiError(error.status_code, "http_error", str(error.detail)), None)
                except NarratorError as error:
                    return shape(errors.invalid(str(error)), None)
                except Exception as error:  # never a stack trace; logged
                    log.error("internal error: %s: %s", type(error).__name__, error, exc_info=error)
                    return shape(errors.ApiError(500, "internal", "the service failed on this request; it was "
                                                 "logged, try again"), None)

            return translated

    return TranslatingRoute


class FieldError(errors.ApiError):
    """A refusal that names the client's request field it is about (OpenAI's `param`)."""

    def __init__(self, error: errors.ApiError, param: str | None) -> None:
        super().__init__(error.status, error.code, error.message, error.headers)
        self.param = param


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def split_voice(name: str) -> tuple[str, int | None]:
    """`alice` or `alice@3` -> ("alice", None) or ("alice", 3); a version that is not a number is refused."""
    voice, _, version = name.partition("@")
    if not version:
        return voice, None
    if not version.isdigit():
        raise FieldError(errors.invalid(f"voice {name!r}: write a version as VOICE@N, N a version number (e.g. "
                                        "alice@3)"), "voice")
    return voice, int(version)


def check_version(info: VoiceInfo, version: int | None) -> None:
    """A voice asked for at a version must be serving that version (its champion)."""
    if version is not None and version != info.version:
        raise errors.not_found(f"voice {info.voice!r} serves version {info.version}, not {version}; ask for "
                               f"{info.voice!r} or {info.voice}@{info.version}")
