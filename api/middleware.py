"""Per-request context: ids, tenant, log binding and one access-log line."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem

log = structlog.get_logger("erp.access")

_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/openapi.json")


class RequestContext:
    """Binds request id, correlation id and tenant to the request and to every log line.

    Until authentication lands, the tenant comes from the `X-Tenant-ID` header and is
    required on every route but the public ones.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = str(uuid.uuid4())
        correlation_id = headers.get("x-correlation-id") or request_id
        tenant_id = headers.get("x-tenant-id")
        path: str = scope["path"]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, correlation_id=correlation_id, tenant_id=tenant_id
        )
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, correlation_id=correlation_id, tenant_id=tenant_id)
        started = time.perf_counter()
        status = 500

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = MutableHeaders(scope=message)
                out["X-Request-ID"] = request_id
                out["X-Correlation-ID"] = correlation_id
            await send(message)

        try:
            if not _TOKEN.match(correlation_id):
                response = problem(400, "Bad request", "X-Correlation-ID must be 1-128 of "
                                   "letters, digits and . _ : -",
                                   errors=[{"field": "header.X-Correlation-ID",
                                            "message": "invalid format"}])
                await response(scope, receive, send_with_ids)
            elif not path.startswith(PUBLIC_PREFIXES) and not (tenant_id and _TOKEN.match(tenant_id)):
                response = problem(400, "Bad request", "the X-Tenant-ID header is required: "
                                   "1-128 of letters, digits and . _ : -",
                                   errors=[{"field": "header.X-Tenant-ID",
                                            "message": "missing or invalid"}])
                await response(scope, receive, send_with_ids)
            else:
                await self.app(scope, receive, send_with_ids)
        finally:
            log.info("request", method=scope["method"], path=path, status=status,
                     ms=round((time.perf_counter() - started) * 1000, 2))
            structlog.contextvars.clear_contextvars()
