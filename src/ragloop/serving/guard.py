"""What every request passes before the API sees it: the API key, the body's type, size and encoding.

    >>> app.add_middleware(RequestGuard, api_key="s3cret", max_body_bytes=MAX_BODY_BYTES)

In order, a request is refused with
    401  when the server has an API key and the request does not send it (`Authorization: Bearer KEY`;
         compared with `hmac.compare_digest`). The page, its docs, HEAD / and /ready stay open: they
         hold nothing but what every copy of ragloop serves, and whether this one takes requests.
    415  a body that is not declared `application/json`: a browser sends a cross-site form or a
         `text/plain` fetch without asking the server first (a "simple request"), so the type is
         what keeps another site's page from posting questions through a visitor's browser.
    413  a body over `max_body_bytes`: by its Content-Length before any of it is read, or, without
         one (chunked), as soon as that many bytes have arrived.
    422  a body that is not UTF-8 (JSON between machines is UTF-8; RFC 8259).
Errors are shaped like FastAPI's validation errors: {"detail": [{"type", "loc", "msg"}]}.
The body checks apply to requests the app has a route for: another method or path passes on, for the
app's own 405 or 404. `document_refusals` adds these answers to /openapi.json, so the schema tells them.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.routing import Match

from ragloop.serving.schemas import MAX_BODY_BYTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# served without the API key: the page, its docs, and /ready, which a load balancer's health check asks
# (most cannot send a header) and which says only whether the server takes requests
OPEN_PATHS = frozenset({"/", "/docs", "/openapi.json", "/ready"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_ECHO = 80  # characters of a client's input an error message may repeat


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """A client's text shortened for an error message (with how much was left out)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def check_api_key(key: str) -> str:
    """An API key must fit in an HTTP header: visible ASCII, no spaces."""
    if not key or not all(33 <= ord(c) <= 126 for c in key):
        raise ValueError("an API key must be non-empty printable ASCII without spaces")
    return key


class RequestGuard:
    """ASGI middleware: authentication and body checks in front of the app (see the module docstring)."""

    def __init__(self, app: ASGIApp, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.key = check_api_key(api_key).encode("ascii") if api_key is not None else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self.key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            sent = headers.get(b"authorization")
            await _error(send, 401, "unauthorized", ["header", "authorization"],
                         "wrong API key" if sent else "this server needs an API key: send Authorization: Bearer KEY",
                         {b"www-authenticate": b"Bearer"})
            return
        if scope["method"] not in BODY_METHODS or not _routed(scope):
            await self.app(scope, receive, send)
            return
        if not await self._headers_accepted(headers, send):
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            await _error(send, 422, "body_not_utf8", ["body"],
                         f"body is not valid UTF-8 JSON (byte {e.start}: {e.reason})")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _headers_accepted(self, headers: dict[bytes, bytes], send: Send) -> bool:
        """The body's declared type and length: False (and the refusal sent) for a wrong one."""
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            got = headers.get(b"content-type", b"").decode("latin-1")
            await _error(send, 415, "unsupported_media_type", ["header", "content-type"],
                         f"the body must be JSON sent as Content-Type: application/json (got {clip(got)!r})"
                         if got else "the body must be JSON sent as Content-Type: application/json (got none)")
            return False
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _error(send, 400, "bad_content_length", ["header", "content-length"],
                             "Content-Length is not a number")
                return False
            if int(length) > self.max_body:
                await self._too_large(send)
                return False
        return True

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, at most max_body bytes of it (a chunked body has no length up front); None
        when the client left or the body was too large (and the 413 sent)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        # compare_digest takes time independent of where the key and the token differ
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def _too_large(self, send: Send) -> None:
        await _error(send, 413, "body_too_large", ["body"],
                     f"the body is over {self.max_body} bytes (a question is at most a few kilobytes)")


def _routed(scope: Scope) -> bool:
    """Whether the app (Starlette puts it in the scope) has a route for this method and path; True outside
    one. PUT /health is the app's 405, not a 415 for its missing body."""
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None)
    return routes is None or any(route.matches(scope)[0] is Match.FULL for route in routes)


REFUSAL = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "array", "items": {
    "type": "object", "required": ["type", "loc", "msg"],
    "properties": {"type": {"type": "string"}, "loc": {"type": "array", "items": {"type": "string"}},
                   "msg": {"type": "string"}}}}}}


def document_refusals(openapi: dict, api_key: bool, shapes: dict[str, str] | None = None) -> dict:
    """`openapi` (the app's schema) with the guard's answers: 413 and 415 on every operation that takes a
    body and, when the server has an API key, 401 on every operation but the open ones (OPEN_PATHS).
    `shapes`: path prefix -> the schema component its refusals are shaped as (another error body than
    "Refusal", e.g. OpenAI's under /v1/).
    Changed in place, returned."""
    openapi.setdefault("components", {}).setdefault("schemas", {})["Refusal"] = REFUSAL
    for path, operations in openapi.get("paths", {}).items():
        shape = next((name for prefix, name in (shapes or {}).items() if path.startswith(prefix)), "Refusal")
        refusal = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}}}
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": "the body is over the server's limit", **refusal})
                responses.setdefault("415", {"description": "the body is not sent as application/json", **refusal})
            if api_key and path not in OPEN_PATHS:
                responses.setdefault("401", {"description": "no API key, or a wrong one", **refusal})
    return openapi


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` for the app that gives it the body already read, then whatever `receive` brings."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replay


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def error_body(kind: str, loc: list[str], msg: str) -> bytes:
    """A refusal's JSON body, shaped like FastAPI's validation errors (also the HTTP parser's: protocol.py)."""
    return json.dumps({"detail": [{"type": kind, "loc": loc, "msg": msg}]}).encode()


async def _error(send: Send, status: int, kind: str, loc: list[str], msg: str,
                 headers: dict[bytes, bytes] | None = None) -> None:
    body = error_body(kind, loc, msg)
    extra = list((headers or {}).items())
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})
