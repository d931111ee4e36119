"""What every HTTP answer of the service carries, whichever route gave it (the API's, the console, compatible APIs
added later): one ASGI middleware and the contract document.

`ServiceMiddleware` gives every response

- `X-Request-Id`: the caller's (letters, digits, `.`, `_`, `-`, at most 128) or a new one; also in error logs;
- `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` once the request's API key was charged
  (`note_quota`, called by `NarratorServer.authenticate` whichever route authenticates: the request's scope is in
  a context variable the worker threads see);
- `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and, unless the route
  set its own (the console, the docs page: `page_csp`), `Content-Security-Policy: default-src 'none';
  frame-ancestors 'none'`;

and counts it in `narrator_requests_total{endpoint, status}` and `narrator_request_seconds{endpoint}`, where the
endpoint is the matched route's template (`/v1/speech`, `/v1/voices/{voice}`) or `unmatched`: random paths never
add series. An exception no handler answered becomes the JSON 500 here, with its request id.

`openapi_document` post-processes FastAPI's document (OpenAPI 3.1) into the contract the service keeps: the
`bearer` scheme (and `X-API-Key`) on every operation that takes a key (`keyed_operations`), the real error body
(`Error`; a tagged, compatible API's operations keep their own error format, undescribed), and for every
operation each status it can answer with.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from narrator.log import get_logger

log = get_logger("serving.http")

REQUEST_ID = "X-Request-Id"
QUOTA_SCOPE_KEY = "narrator.quota"  # the ASGI scope entry holding the charged key's serving.ratelimit.Quota
UNMATCHED = "unmatched"  # the endpoint label of every path no route knows
_REQUEST_ID_FORMAT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
EXPOSED_HEADERS = ["X-Request-Id", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After",
                   "X-Voice", "X-Voice-Version", "X-Watermark-Payload", "X-Audio-Duration-S", "X-Output-Sha256",
                   "Content-Disposition"]


_REQUEST: contextvars.ContextVar[dict | None] = contextvars.ContextVar("narrator_request_scope", default=None)


def note_quota(quota: Any) -> None:
    """Put the charged key's quota (serving.ratelimit.Quota) on the response of the request being served."""
    scope = _REQUEST.get()
    if scope is not None:
        scope[QUOTA_SCOPE_KEY] = quota


def request_id(scope: dict) -> str:
    """The request's id: set by the middleware (the caller's when well-formed, else a new one)."""
    return scope.get("narrator.request_id", "")


def page_csp(html: str) -> str:
    """A Content-Security-Policy for a page of ours: its own inline scripts and styles (by sha256), scripts and
    styles from this origin, requests to this origin, audio from blobs; never framed."""
    hashes = {kind: " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                             for body in re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.S))
              for kind in ("script", "style")}
    return ("default-src 'none'; "
            f"script-src 'self' {hashes['script']}".rstrip() + "; "
            f"style-src 'self' {hashes['style']}".rstrip() + "; "
            "connect-src 'self'; img-src 'self' data:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


class ServiceMiddleware:
    """Request id, rate-limit and security headers, metrics by route template, the last-resort JSON 500 (see the
    module docstring). `observe(endpoint, status, seconds)` counts a finished request."""

    def __init__(self, app, observe: Callable[[str, int, float], None], unmatched: tuple[str, ...] = ()) -> None:
        self.app, self.observe, self.unmatched = app, observe, set(unmatched)

    def endpoint(self, scope: dict) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        return path if path and getattr(route, "name", None) not in self.unmatched else UNMATCHED

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        rid = incoming if _REQUEST_ID_FORMAT.match(incoming) else uuid.uuid4().hex
        scope["narrator.request_id"] = rid
        _REQUEST.set(scope)  # copied into the threads that run sync routes: note_quota reaches this scope
        started, status = time.perf_counter(), 0

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = {REQUEST_ID: rid, **SECURITY_HEADERS}
                if b"content-security-policy" not in present:
                    extra["Content-Security-Policy"] = API_CSP
                if (quota := scope.get(QUOTA_SCOPE_KEY)) is not None:
                    extra.update(quota.headers())
                headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()
                            if k.lower().encode("latin-1") not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:  # nothing answered it: the JSON 500, never a stack trace
            log.error("internal error (request %s): %s: %s", rid, type(error).__name__, error, exc_info=error)
            if status == 0:
                from starlette.responses import JSONResponse

                await JSONResponse({"error": {"code": "internal", "message": f"the service failed on this request "
                                                                             f"(request {rid}); it was logged, try "
                                                                             "again"}},
                                   status_code=500)(scope, receive, sending)
            status = status or 500
        finally:
            self.observe(self.endpoint(scope), status or 500, time.perf_counter() - started)


# -- the contract document ----------------------------------------------------------------------------------------

ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "description": "every refusal and failure: a stable code and a message that says what to change",
    "properties": {"error": {"type": "object", "required": ["code", "message"], "additionalProperties": False,
                             "properties": {
                                 "code": {"type": "string", "examples": ["unauthorized", "forbidden", "not_found",
                                                                         "too_large", "invalid_request",
                                                                         "rate_limited", "unavailable", "internal"]},
                                 "message": {"type": "string"}}}}}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
STATUS_TEXT = {
    401: "no API key, or an unknown or revoked one (`WWW-Authenticate: Bearer`)",
    403: "the key may not do this: a voice of another tenant or outside the key's voices, a missing scope",
    404: "no such voice (or endpoint)",
    413: "the text or upload is longer than the service takes (serving.max_text_chars, serving.max_upload_mb)",
    422: "a parameter is out of range, the body is not what the operation takes, or the audio cannot be decoded",
    429: "over the key's rate (`Retry-After` says when to come back)",
    500: "the service failed on this request; it was logged under its X-Request-Id",
    503: "the service cannot do this now (voice not loadable, key store or registry unreachable, no watermark key)",
}
_INT_HEADER = {"schema": {"type": "integer"}}
RATE_HEADERS = {"X-RateLimit-Limit": {"description": "requests the key may make at once (its bucket's size)",
                                      **_INT_HEADER},
                "X-RateLimit-Remaining": {"description": "requests left now", **_INT_HEADER},
                "X-RateLimit-Reset": {"description": "seconds until the bucket is full again", **_INT_HEADER}}
REQUEST_ID_HEADER = {REQUEST_ID: {"description": "the request's id (the caller's X-Request-Id when it sent a "
                                                 "well-formed one)", "schema": {"type": "string"}}}
KEYED_STATUSES = (401, 429, 503)  # what any operation that takes an API key may answer


def error_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    """`responses=` of a route: these error statuses with the Error body."""
    return {status: {"description": STATUS_TEXT[status], "content": {"application/json": {"schema": ERROR_REF}}}
            for status in statuses}


def keyed_operations(routes: list) -> set[tuple[str, str]]:
    """(method, path) of every route that takes an API key: one whose dependencies (at any depth) include a
    function named `authorized` (the service's and the compatible APIs' key checks are), whether or not it
    declares a security scheme itself."""
    from fastapi import routing

    def needs_key(dependant) -> bool:
        return any(getattr(d.call, "__name__", "") == "authorized" or needs_key(d) for d in dependant.dependencies)

    if hasattr(routing, "iter_route_contexts"):  # FastAPI >= 0.160: included routers stay routers; walk into them
        found = [c for c in routing.iter_route_contexts(routes) if isinstance(c.original_route, routing.APIRoute)]
    else:
        found = [r for r in routes if isinstance(r, routing.APIRoute)]
    return {(method.lower(), route.path) for route in found if needs_key(route.dependant) for method in route.methods}


def openapi_document(schema: dict[str, Any], bearer_scheme: str = "bearer",
                     keyed_ops: set[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """FastAPI's generated document made the contract: Error and the security schemes in components, on every
    operation each status it answers with (a keyed operation: 401, 429, 503; every one: 500) with the Error body
    (FastAPI's own 422 body, which the service never sends, replaced), the request-id header on every response and
    the rate-limit headers on a keyed operation's."""
    components = schema.setdefault("components", {})
    schemes = components.setdefault("securitySchemes", {})
    schemes[bearer_scheme] = {"type": "http", "scheme": "bearer",
                              "description": "an API key from `narrator keys create`: `Authorization: Bearer nk_...`"}
    schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key",
                         "description": "the same API key in a header of its own"}
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if (method, path) in keyed_ops and not operation.get("security"):
                operation["security"] = [{bearer_scheme: []}]
            responses = operation["responses"]
            security = operation.get("security", [])
            keyed = any(bearer_scheme in r for r in security) and {} not in security  # {}: the key is optional
            if keyed:
                operation["security"] = [{bearer_scheme: []}, {"apiKey": []}]  # either header
            wanted = set(KEYED_STATUSES if keyed else ()) | {500} | {int(s) for s in responses if s.isdigit()}
            native = not operation.get("tags")  # ours; a compatible API (tagged) answers in its own error format
            for status in sorted(wanted):
                key = str(status)
                if status >= 400 and (key not in responses or status == 422):
                    responses[key] = (error_responses(status)[status] if native else
                                      {"description": STATUS_TEXT[status] + " (in this API's own error format)"})
                response = responses[key]
                headers = response.setdefault("headers", {})
                headers.update(REQUEST_ID_HEADER)
                if keyed and status not in (401, 500):
                    headers.update(RATE_HEADERS)
                if status == 429:
                    headers["Retry-After"] = {"description": "seconds until a request may go", **_INT_HEADER}
                if status == 401:
                    headers["WWW-Authenticate"] = {"schema": {"type": "string", "const": "Bearer"}}
            operation["responses"] = {k: responses[k] for k in sorted(responses)}
    used = str(schema.get("paths", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}'" not in used:
            schemas.pop(name, None)
    return schema
