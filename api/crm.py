"""CRM routes: opportunities."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import requests as rq
from api.openapi import operation
from api.problems import BadRequest
from api.responses import JSON
from erp.bootstrap import Service
from erp.eventstore import Saved
from erp.handlers import NotFound

PROJECTION = "opportunities"
BASE = "/api/v1/crm/opportunities"
_IF_MATCH = (("If-Match", 'the version the change is based on, e.g. "3": no retry on a clash'),)

Money = Field(gt=0, max_digits=18, decimal_places=2)
Text = Field(min_length=1, max_length=200)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class OpenOpportunity(_Body):
    customer_id: str = Text
    title: str = Text
    owner: str = Text
    stage: str | None = Field(default=None, max_length=64, description="default: the first stage")
    amount: Decimal | None = Field(default=None, gt=0, max_digits=18, decimal_places=2)
    currency: str = Field(default="KES", pattern=r"^[A-Z]{3}$", description="ISO 4217")


class ChangeStage(_Body):
    stage: str = Field(min_length=1, max_length=64)


class WinOpportunity(_Body):
    amount: Decimal | None = Field(
        default=None, gt=0, max_digits=18, decimal_places=2,
        description="the amount won; default: the opportunity's amount",
    )


class LoseOpportunity(_Body):
    reason: str = Field(min_length=1, max_length=500)
    competitor: str | None = Field(default=None, max_length=200)


class CommandAccepted(BaseModel):
    opportunity_id: UUID
    version: int = Field(description="the aggregate's version after the command")
    log_position: int = Field(description="pass as min_position to read your write")


class ReadQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_position: int | None = Field(
        default=None, ge=0, description="wait until the read model has applied this log position"
    )
    timeout: float = Field(default=2.0, gt=0, le=30, description="seconds to wait at most")


class ListQuery(ReadQuery):
    stage: str | None = None
    owner: str | None = None
    customer_id: str | None = None
    status: Literal["open", "won", "lost"] | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")


class OpportunityView(BaseModel):
    opportunity_id: UUID
    tenant_id: str
    customer_id: str
    title: str
    owner: str
    stage: str
    status: str
    amount: Decimal | None
    currency: str
    lost_reason: str | None
    competitor: str | None
    version: int
    log_position: int
    opened_at: datetime
    updated_at: datetime


class OpportunityPage(BaseModel):
    items: list[OpportunityView]
    next_cursor: str | None
    log_position: int = Field(description="the read model's position when it was read")


_COLUMNS = ", ".join(OpportunityView.model_fields)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _accepted(saved: Saved, status: int = 200) -> Response:
    headers = {"ETag": f'"{saved.version}"'}
    if status == 201:
        headers["Location"] = f"{BASE}/{saved.aggregate_id}"
    return JSON(
        CommandAccepted(opportunity_id=saved.aggregate_id, version=saved.version,
                        log_position=saved.position),
        status_code=status, headers=headers,
    )


async def _caught_up(request: Request, params: ReadQuery) -> int:
    service = _service(request)
    if params.min_position is not None:
        timeout = min(params.timeout, service.settings.read_wait_max_seconds)
        await service.positions.wait(PROJECTION, params.min_position, timeout)
    return service.positions.position(PROJECTION)


@operation(summary="Open an opportunity", body=OpenOpportunity, response=CommandAccepted,
           status=201, errors=(400, 409, 422, 503))
async def open_opportunity(request: Request) -> Response:
    cmd = await rq.body(request, OpenOpportunity)
    saved = await _service(request).commands.open_opportunity(
        rq.command_context(request), customer_id=cmd.customer_id, title=cmd.title,
        owner=cmd.owner, stage=cmd.stage, amount=cmd.amount, currency=cmd.currency,
    )
    return _accepted(saved, 201)


@operation(summary="Move an opportunity to another stage", body=ChangeStage,
           response=CommandAccepted, errors=(400, 404, 409, 412, 422, 503), headers=_IF_MATCH)
async def change_stage(request: Request) -> Response:
    cmd = await rq.body(request, ChangeStage)
    saved = await _service(request).commands.change_opportunity_stage(
        rq.command_context(request), request.path_params["opportunity_id"], cmd.stage
    )
    return _accepted(saved)


@operation(summary="Mark an opportunity won (publishes erp.opportunity.won)", body=WinOpportunity,
           response=CommandAccepted, errors=(400, 404, 409, 412, 422, 503), headers=_IF_MATCH)
async def win(request: Request) -> Response:
    cmd = await rq.body(request, WinOpportunity)
    saved = await _service(request).commands.win_opportunity(
        rq.command_context(request), request.path_params["opportunity_id"], cmd.amount
    )
    return _accepted(saved)


@operation(summary="Mark an opportunity lost", body=LoseOpportunity, response=CommandAccepted,
           errors=(400, 404, 409, 412, 422, 503), headers=_IF_MATCH)
async def lose(request: Request) -> Response:
    cmd = await rq.body(request, LoseOpportunity)
    saved = await _service(request).commands.lose_opportunity(
        rq.command_context(request), request.path_params["opportunity_id"], cmd.reason,
        cmd.competitor,
    )
    return _accepted(saved)


@operation(summary="List opportunities, newest first", query=ListQuery, response=OpportunityPage,
           errors=(400, 422, 503))
async def list_opportunities(request: Request) -> Response:
    params = rq.query(request, ListQuery)
    position = await _caught_up(request, params)
    where = ["tenant_id = %s"]
    args: list[Any] = [rq.tenant(request)]
    for column in ("stage", "owner", "customer_id", "status"):
        value = getattr(params, column)
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    if params.cursor is not None:
        if not params.cursor.isdigit():
            raise BadRequest("cursor must be a next_cursor from a previous page",
                             field="query.cursor")
        where.append("opened_position < %s")
        args.append(int(params.cursor))
    sql = (f"SELECT {_COLUMNS}, opened_position FROM opportunities WHERE {' AND '.join(where)} "
           "ORDER BY opened_position DESC LIMIT %s")
    async with _service(request).read_pool.connection() as conn:
        cur = await conn.execute(sql, [*args, params.limit + 1])
        rows = await cur.fetchall()
    names = [*OpportunityView.model_fields, "opened_position"]
    records = [dict(zip(names, row, strict=True)) for row in rows]
    more = len(records) > params.limit
    records = records[: params.limit]
    return JSON({
        "items": [{k: r[k] for k in OpportunityView.model_fields} for r in records],
        "next_cursor": str(records[-1]["opened_position"]) if more else None,
        "log_position": position,
    })


@operation(summary="One opportunity", query=ReadQuery, response=OpportunityView,
           errors=(400, 404, 422, 503))
async def get_opportunity(request: Request) -> Response:
    params = rq.query(request, ReadQuery)
    await _caught_up(request, params)
    opportunity_id: UUID = request.path_params["opportunity_id"]
    async with _service(request).read_pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM opportunities WHERE opportunity_id = %s AND tenant_id = %s",
            (opportunity_id, rq.tenant(request)),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound("opportunity", opportunity_id)
    return JSON(dict(zip(OpportunityView.model_fields, row, strict=True)),
                headers={"ETag": f'"{row[11]}"'})


ROUTES = [
    Route(BASE, open_opportunity, methods=["POST"]),
    Route(BASE, list_opportunities, methods=["GET"]),
    Route(BASE + "/{opportunity_id:uuid}", get_opportunity, methods=["GET"]),
    Route(BASE + "/{opportunity_id:uuid}/stage", change_stage, methods=["POST"]),
    Route(BASE + "/{opportunity_id:uuid}/win", win, methods=["POST"]),
    Route(BASE + "/{opportunity_id:uuid}/lose", lose, methods=["POST"]),
]
