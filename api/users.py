"""The tenant's users as the auth service knows them (the ERP does not manage users), and
the sync endpoint an SSO login or the auth service calls to keep a reference current."""

from __future__ import annotations

import asyncio
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import reads
from api import requests as rq
from api.openapi import operation
from api.reads import PageQuery
from api.requests import IDEMPOTENCY, CommandAccepted, accepted
from api.responses import JSON
from erp.commands import NothingChanged, tenancy
from erp.eventstore import Saved

BASE = "/api/v1/users"
PROJECTION = "users"


class SyncUser(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    user_id: str = Field(min_length=1, max_length=200, description="the auth service's user id")
    email: str = Field(default="", max_length=320)
    name: str = Field(default="", max_length=200)
    active: bool = True


class UserQuery(PageQuery):
    active: bool | None = None


class UserView(BaseModel):
    user_reference_id: UUID
    user_id: str
    email: str
    name: str
    active: bool
    version: int


class UserPage(BaseModel):
    items: list[UserView]
    next_cursor: str | None
    log_position: int


_COLUMNS = ", ".join(UserView.model_fields)


@operation(scope="users:write",
           summary="Create or update the reference to a user of the tenant (SSO user sync); "
                   "answers the current version when nothing changed",
           body=SyncUser, response=CommandAccepted, errors=(400, 403, 422, 503), headers=(IDEMPOTENCY,))
async def sync_user(request: Request) -> Response:
    cmd = await rq.body(request, SyncUser)
    try:
        saved = await tenancy.sync_user(reads.service(request).runner, await rq.command_context(request),
                                        cmd.user_id, cmd.email, cmd.name, cmd.active)
    except NothingChanged as unchanged:  # reading from the log's head shows it as it is
        head = await asyncio.to_thread(reads.service(request).store.recorder.max_notification_id)
        saved = Saved(unchanged.aggregate_id, unchanged.version, head or 0)
    return accepted(saved)


@operation(scope="users:read", summary="The tenant's users, newest first", query=UserQuery,
           response=UserPage, errors=(400, 422, 503))
async def list_users(request: Request) -> Response:
    params = rq.query(request, UserQuery)
    position = await reads.caught_up(request, PROJECTION, params)
    where, args = reads.filters(request, params, ("active",))
    rows, cursor = await reads.page(request, params, table="users", columns=_COLUMNS, where=where,
                                    args=args)
    return JSON({"items": [{k: r[k] for k in UserView.model_fields} for r in rows],
                 "next_cursor": cursor, "log_position": position})


ROUTES = [
    Route(BASE, list_users, methods=["GET"]),
    Route(BASE + "/sync", sync_user, methods=["POST"]),
]
