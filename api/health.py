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


@operation(summary="Can take commands: PostgreSQL reachable (503 if not); NATS reported", errors=(503,))
async def readyz(request: Request) -> Response:
    """Ready while PostgreSQL answers. NATS down only delays publishing (events wait in the
    event store and the relay drains them after), so it is reported ("degraded") but does
    not take the instance out of a load balancer: that would turn a broker outage into an
    outage of every instance's API at once. So is a role of this instance (the relay, the
    projectors) that failed in the last 30 s: `failing` names it and says why."""
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
    failing = service.failing()
    ready = checks["postgresql"] == "ok"
    status = "not ready" if not ready else "ready" if checks["nats"] == "ok" and not failing else "degraded"
    return JSON({"status": status, "checks": checks,
                 "leading": sorted(service.leading), "failing": failing,
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
