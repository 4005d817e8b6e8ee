"""Tier-1 configuration routes: a tenant's integration credentials, for superusers only.

A value goes in once and never comes out: answers carry a masked hint and metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import reads
from api import requests as rq
from api.auth import principal
from api.openapi import operation
from api.problems import BadRequest, problem
from api.responses import JSON
from erp import credentials
from erp.commands import NotFound

BASE = "/api/v1/integrations/credentials"
NAME = r"^[a-z0-9][a-z0-9._-]{0,99}$"


class SetCredential(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(min_length=1, max_length=8192, description="never shown again")


class CredentialView(BaseModel):
    name: str
    key_id: str = Field(description="the master key it is encrypted under")
    hint: str = Field(description="masked: the last 4 characters of a long value at most")
    created_at: datetime
    updated_at: datetime
    updated_by: str


class CredentialList(BaseModel):
    items: list[CredentialView]


def _view(info: credentials.CredentialInfo) -> dict[str, Any]:
    return {"name": info.name, "key_id": info.key_id, "hint": info.hint, "created_at": info.created_at,
            "updated_at": info.updated_at, "updated_by": info.updated_by}


@asynccontextmanager
async def _owner_connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The credentials table is not the API role's to read: these rare calls connect as the
    owner, for a registered and active tenant only."""
    service = reads.service(request)
    await service.runner.check_tenant(rq.tenant(request))
    async with service.owner_pool.connection() as conn:
        yield conn


# Where the service calls out for a tenant (`peer.<service>.url`, `.credential`): set by the
# platform's operators (`erp secrets set`), not through the API, so that no tenant can aim the
# service's requests at the platform's own network or open the circuit breaker of a peer that
# other tenants share.
OPERATORS_ONLY = ("peer.",)


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    return name


# The signing secrets of the tenant's webhook endpoints: made with the endpoint, gone with it.
SERVICE_MANAGED = ("webhook-out.",)


def _reserved(name: str) -> Response | None:
    if name.startswith(OPERATORS_ONLY):
        return problem(403, "Forbidden", f"credential {name!r}: peer.* credentials say where the service "
                       "calls out and are set by the platform's operators (erp secrets set)")
    if name.startswith(SERVICE_MANAGED):
        return problem(403, "Forbidden", f"credential {name!r} signs a webhook endpoint's deliveries: it is "
                       "made when the endpoint is registered (/api/v1/settings/webhooks)")
    return None


@operation(scope="credentials:manage", summary="The tenant's integration credentials (hints only)",
           response=CredentialList, errors=(503,))
async def list_credentials(request: Request) -> Response:
    async with _owner_connection(request) as conn:
        found = await credentials.describe(conn, rq.tenant(request))
    return JSON({"items": [_view(info) for info in found]})


@operation(scope="credentials:manage",
           summary="Set an integration credential, encrypted at rest (AES-256-GCM)",
           body=SetCredential, response=CredentialView, errors=(400, 403, 422, 503))
async def set_credential(request: Request) -> Response:
    if refused := _reserved(_name(request)):
        return refused
    cmd = await rq.body(request, SetCredential)
    keyring = reads.service(request).keyring
    if keyring is None:
        return problem(503, "Service unavailable",
                       "no master keys are configured (ERP_SECRET_KEYS or ERP_SECRET_KEYS_FILE)")
    try:
        async with _owner_connection(request) as conn:
            info = await credentials.put(conn, keyring, rq.tenant(request), _name(request), cmd.value,
                                         actor=principal(request).subject)
    except credentials.InvalidCredential as error:
        raise BadRequest(str(error), field="path.name") from None
    return JSON(_view(info))


@operation(scope="credentials:manage", summary="Delete an integration credential", errors=(403, 404),
           status=204)
async def delete_credential(request: Request) -> Response:
    if refused := _reserved(_name(request)):
        return refused
    async with _owner_connection(request) as conn:
        deleted = await credentials.delete(conn, rq.tenant(request), _name(request))
    if not deleted:
        raise NotFound("credential", _name(request))
    return Response(status_code=204)


ROUTES = [
    Route(BASE, list_credentials, methods=["GET"]),
    Route(BASE + "/{name:str}", set_credential, methods=["PUT"]),
    Route(BASE + "/{name:str}", delete_credential, methods=["DELETE"]),
]
