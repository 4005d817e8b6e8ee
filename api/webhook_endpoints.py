"""A tenant's outbound webhooks (tier 2): endpoints for chosen ERP event types, and the
status of every delivery. The signing secret is shown once, at registration."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aggregates.errors import InvalidValue
from api import reads
from api import requests as rq
from api.auth import principal
from api.openapi import operation
from api.problems import problem
from api.requests import IDEMPOTENCY
from api.responses import JSON
from erp import credentials
from erp.commands import NotFound
from erp.idempotency import IdempotencyKey, IdempotencyKeyReused
from integrations.webhooks import not_public, secret_name
from streams.catalogue import PAYLOADS_BY_SUBJECT

BASE = "/api/v1/settings/webhooks"


class EndpointNotPublic(InvalidValue):
    """Webhooks go to public https addresses, not into the platform's own network."""


class RegisterEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://", max_length=2000)
    event_types: list[str] = Field(min_length=1, max_length=100)

    @field_validator("event_types")
    @classmethod
    def known(cls, event_types: list[str]) -> list[str]:
        unknown = sorted(set(event_types) - set(PAYLOADS_BY_SUBJECT))
        if unknown:
            raise ValueError(f"not events we publish: {', '.join(unknown)}")
        return sorted(set(event_types))


class Endpoint(BaseModel):
    endpoint_id: UUID
    url: str
    event_types: list[str]
    created_by: str
    created_at: datetime
    active: bool


class RegisteredEndpoint(Endpoint):
    secret: str = Field(description="the signing secret: shown once, keep it")


class Endpoints(BaseModel):
    items: list[Endpoint]


class Delivery(BaseModel):
    event_id: UUID
    event_type: str
    status: Literal["delivered", "retrying", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    updated_at: datetime


class Deliveries(BaseModel):
    items: list[Delivery]


_COLUMNS = ", ".join(Endpoint.model_fields)


@operation(scope="settings:write", summary="Register a webhook endpoint for chosen ERP event types",
           body=RegisterEndpoint, response=RegisteredEndpoint, status=201, errors=(400, 422, 503),
           headers=(IDEMPOTENCY,))
async def register(request: Request) -> Response:
    """With an Idempotency-Key a repeated registration answers the first (the same endpoint
    and secret), never a second endpoint that would get every event again."""
    cmd = await rq.body(request, RegisterEndpoint)
    ctx = await rq.command_context(request)  # validates the Idempotency-Key
    service = reads.service(request)
    if service.keyring is None:
        return problem(503, "Service unavailable", "webhooks need the tier-1 master keys")
    if not service.settings.webhook_private_addresses and (refused := await not_public(cmd.url)):
        raise EndpointNotPublic(f"url {cmd.url!r}: {refused}", field="url")
    await service.runner.check_tenant(rq.tenant(request))
    endpoint_id, secret, tenant = uuid4(), "whsec_" + secrets.token_urlsafe(32), rq.tenant(request)
    async with service.owner_pool.connection() as conn, conn.transaction():
        if ctx.idempotency is not None:
            cur = await conn.execute(
                "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, aggregate_id, version) "
                "VALUES (%s, %s, %s, %s, 1) ON CONFLICT DO NOTHING RETURNING aggregate_id",
                (tenant, ctx.idempotency.key, ctx.idempotency.fingerprint, endpoint_id))
            if await cur.fetchone() is None:  # the key's first request: answer it again
                return await _registered_before(conn, service.keyring, tenant, ctx.idempotency)
        await credentials.put(conn, service.keyring, tenant, secret_name(endpoint_id), secret,
                              actor=principal(request).subject)
        cur = await conn.execute(
            f"INSERT INTO webhook_endpoints (endpoint_id, tenant_id, url, event_types, created_by) "
            f"VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (endpoint_id, tenant, cmd.url, cmd.event_types, principal(request).subject))
        row = await cur.fetchone()
    assert row is not None
    return _registered(row, secret)


def _registered(row: Sequence[Any], secret: str) -> Response:
    found = dict(zip(list(Endpoint.model_fields), row, strict=True))
    return JSON({**found, "secret": secret}, status_code=201,
                headers={"Location": f"{BASE}/{found['endpoint_id']}"})


async def _registered_before(conn: Any, keyring: credentials.Keyring, tenant: str,
                             key: IdempotencyKey) -> Response:
    cur = await conn.execute("SELECT fingerprint, aggregate_id FROM idempotency_keys "
                             "WHERE tenant_id = %s AND key = %s", (tenant, key.key))
    fingerprint, endpoint_id = await cur.fetchone()
    if fingerprint != key.fingerprint:
        raise IdempotencyKeyReused(key.key)
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE endpoint_id = %s",
                             (endpoint_id,))
    row = await cur.fetchone()
    if row is None:  # deleted since: the key's answer is gone with it
        raise NotFound("webhook endpoint", endpoint_id)
    return _registered(row, await credentials.reveal(conn, keyring, tenant, secret_name(endpoint_id)))


@operation(scope="settings:read", summary="The tenant's webhook endpoints", response=Endpoints,
           errors=(503,))
async def list_endpoints(request: Request) -> Response:
    found = await reads.rows(request, f"SELECT {_COLUMNS} FROM webhook_endpoints ORDER BY created_at", ())
    return JSON({"items": found})


@operation(scope="settings:read", summary="Deliveries to one endpoint, latest first, with their status",
           response=Deliveries, errors=(404, 503))
async def deliveries(request: Request) -> Response:
    endpoint_id: UUID = request.path_params["endpoint_id"]
    mine = await reads.rows(request, "SELECT 1 FROM webhook_endpoints WHERE endpoint_id = %s", (endpoint_id,))
    if not mine:  # (row-level security: another tenant's endpoint is not found)
        raise NotFound("webhook endpoint", endpoint_id)
    found = await reads.rows(
        request, f"SELECT {', '.join(Delivery.model_fields)} FROM webhook_sends WHERE endpoint_id = %s "
        "ORDER BY updated_at DESC LIMIT 200", (endpoint_id,))
    return JSON({"items": found})


@operation(scope="settings:write", summary="Stop delivering to an endpoint", status=204, errors=(404,))
async def deactivate(request: Request) -> Response:
    endpoint_id: UUID = request.path_params["endpoint_id"]
    service = reads.service(request)
    async with service.owner_pool.connection() as conn:
        cur = await conn.execute("UPDATE webhook_endpoints SET active = false WHERE endpoint_id = %s "
                                 "AND tenant_id = %s AND active", (endpoint_id, rq.tenant(request)))
    if cur.rowcount != 1:
        raise NotFound("webhook endpoint", endpoint_id)
    return Response(status_code=204)


ROUTES = [
    Route(BASE, register, methods=["POST"]),
    Route(BASE, list_endpoints, methods=["GET"]),
    Route(BASE + "/{endpoint_id:uuid}/deliveries", deliveries, methods=["GET"]),
    Route(BASE + "/{endpoint_id:uuid}", deactivate, methods=["DELETE"]),
]
