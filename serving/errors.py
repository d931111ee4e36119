"""Errors the service answers with: JSON `{"error": {"code": "...", "message": "..."}}` and an HTTP status.

4xx are the caller's mistakes (the message says what to change); 5xx are ours and never carry a stack trace.
"""

from __future__ import annotations

from narrator.errors import NarratorError


class ApiError(NarratorError):
    """A request the service refuses: `status` (HTTP), a stable `code` and a plain `message`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def rate_limited(retry_after_s: float) -> ApiError:
    seconds = max(1, int(retry_after_s + 0.999))
    return ApiError(429, "rate_limited", f"too many requests for this API key; retry in {seconds} s",
                    {"Retry-After": str(seconds)})


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message)
