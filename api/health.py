"""Liveness, readiness and the API description."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.openapi import operation
from api.responses import JSON


@operation(summary="The process is alive")
async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


@operation(summary="PostgreSQL and NATS are reachable (503 if not)", errors=(503,))
async def readyz(request: Request) -> Response:
    service = request.app.state.service
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with service.read_pool.connection() as conn:
                await conn.execute("SELECT 1")
        checks["postgresql"] = "ok"
    except Exception as error:
        checks["postgresql"] = f"unreachable: {type(error).__name__}"
    checks["nats"] = "ok" if service.nc.is_connected else "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSON({"status": "ready" if ready else "not ready", "checks": checks,
                 "leading": sorted(service.leading),
                 "inbound": [{"consumer": c.durable, "handled": c.handled, "parked": c.terminated,
                              "pending": c.pending} for c in service.inbound],
                 "peers": service.peer_policy.health()},
                status_code=200 if ready else 503)


@operation(summary="This document")
async def openapi(request: Request) -> Response:
    return JSON(request.app.state.openapi)


@operation(summary="The event catalogue: an AsyncAPI 3 document of every event we publish")
async def asyncapi(request: Request) -> Response:
    return JSON(request.app.state.asyncapi)


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/asyncapi.json", asyncapi, methods=["GET"]),
]
