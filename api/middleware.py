"""Per-request context: ids, tenant, log binding and one access-log line."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import observe_request
from api.problems import BodyTooLarge, problem

log = structlog.get_logger("erp.access")

_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A JSON API: nothing may frame, embed or sniff it, and tenant data is never cached.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Cache-Control": "no-store",
}


_SECURITY_RAW = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                 for name, value in SECURITY_HEADERS.items()]
_SET_HERE = frozenset({b"x-request-id", b"x-correlation-id", *(name for name, _ in _SECURITY_RAW)})


class RequestContext:
    """Binds request id and correlation id to the request and to every log line (the
    tenant and caller are bound by `Authentication`), and writes one access-log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = str(uuid.uuid4())
        correlation_id = headers.get("x-correlation-id") or request_id
        path: str = scope["path"]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, correlation_id=correlation_id)
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, correlation_id=correlation_id)
        started = time.perf_counter()
        status = 500

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # in one pass over the raw headers (setting each one scanned them all)
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if bytes(h[0]).lower() not in _SET_HERE),
                    (b"x-request-id", request_id.encode()), (b"x-correlation-id", correlation_id.encode()),
                    *_SECURITY_RAW]
            await send(message)

        try:
            if "\x00" in path:  # no resource is named so, and PostgreSQL cannot compare such text
                await problem(404, "Not found", "no resource has a NUL character in its path")(
                    scope, receive, send_with_ids)
            elif not _TOKEN.match(correlation_id):
                response = problem(400, "Bad request", "X-Correlation-ID must be 1-128 of "
                                   "letters, digits and . _ : -",
                                   errors=[{"field": "header.X-Correlation-ID",
                                            "message": "invalid format"}])
                await response(scope, receive, send_with_ids)
            else:
                await self.app(scope, receive, send_with_ids)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            observe_request(scope["method"], getattr(route, "path", "unmatched"), status, seconds)
            log.info("request", method=scope["method"], path=path, status=status,
                     ms=round(seconds * 1000, 2))
            structlog.contextvars.clear_contextvars()


class BodyLimit:
    """Refuses request bodies over `max_bytes`: at once by Content-Length, or while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await problem(413, "Content too large", str(BodyTooLarge(self.max_bytes)))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)
