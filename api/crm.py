"""CRM routes: opportunities, the pipeline and the forecast."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import reads
from api import requests as rq
from api.openapi import operation
from api.reads import PageQuery, ReadQuery
from api.requests import IDEMPOTENCY, IF_MATCH, CommandAccepted, accepted
from api.responses import JSON
from erp.commands import NotFound
from erp.commands import crm as commands

PROJECTION = "opportunities"
BASE = "/api/v1/crm/opportunities"
COMMAND_ERRORS = (400, 404, 409, 412, 422, 503)

Money = Field(default=None, gt=0, max_digits=18, decimal_places=2)
Probability = Field(default=None, ge=0, le=100, description="percent; default: the stage's")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class OpenOpportunity(Body):
    customer_id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=200)
    owner: str = Field(min_length=1, max_length=200)
    stage: str | None = Field(default=None, max_length=64, description="default: the first stage")
    probability: int | None = Probability
    amount: Decimal | None = Money
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$",
                                 description="ISO 4217; default: the tenant's currency (its business terms)")
    expected_close: date | None = None
    source_lead_id: str | None = Field(default=None, max_length=200)


class UpdateOpportunity(Body):
    title: str | None = Field(default=None, min_length=1, max_length=200)
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    amount: Decimal | None = Money
    expected_close: date | None = None
    probability: int | None = Field(default=None, ge=0, le=100)


class ChangeStage(Body):
    stage: str = Field(min_length=1, max_length=64)
    probability: int | None = Probability


class WinOpportunity(Body):
    amount: Decimal | None = Field(default=None, gt=0, max_digits=18, decimal_places=2,
                                   description="the amount won; default: the opportunity's")


class LoseOpportunity(Body):
    reason: str = Field(min_length=1, max_length=500)
    competitor: str | None = Field(default=None, max_length=200)


class ReopenOpportunity(Body):
    reason: str = Field(min_length=1, max_length=500)


class ListQuery(PageQuery):
    stage: str | None = None
    owner: str | None = None
    customer_id: str | None = None
    status: Literal["open", "won", "lost"] | None = None


class StageStep(BaseModel):
    version: int
    stage: str
    status: str
    probability: int
    reason: str | None
    changed_at: datetime


class OpportunityView(BaseModel):
    opportunity_id: UUID
    tenant_id: str
    customer_id: str
    title: str
    owner: str
    stage: str
    status: str
    probability: int
    amount: Decimal | None
    currency: str
    expected_close: date | None
    source_lead_id: str | None
    lost_reason: str | None
    competitor: str | None
    invoice_id: str | None = Field(default=None, description="treasury's invoice, once it made one")
    invoice_status: str | None = None
    version: int
    log_position: int
    opened_at: datetime
    updated_at: datetime


class OpportunityDetail(OpportunityView):
    stage_history: list[StageStep]


class OpportunityPage(BaseModel):
    items: list[OpportunityView]
    next_cursor: str | None
    log_position: int = Field(description="the read model's position when it was read")


class PipelineStage(BaseModel):
    stage: str
    currency: str
    count: int
    total: Decimal
    weighted: Decimal = Field(description="sum of amount * probability / 100")


class Pipeline(BaseModel):
    stages: list[PipelineStage]
    log_position: int


class ForecastMonth(BaseModel):
    month: str | None = Field(description="YYYY-MM of the expected close; null: not set")
    currency: str
    count: int
    total: Decimal
    weighted: Decimal


class Forecast(BaseModel):
    months: list[ForecastMonth]
    log_position: int


_COLUMNS = ", ".join(OpportunityView.model_fields)
_HISTORY_COLUMNS = ", ".join(StageStep.model_fields)


def _opportunity_id(request: Request) -> UUID:
    opportunity_id: UUID = request.path_params["opportunity_id"]
    return opportunity_id


@operation(scope="crm:write",
           summary="Open an opportunity", body=OpenOpportunity, response=CommandAccepted,
           status=201, errors=(400, 409, 422, 503), headers=(IDEMPOTENCY,))
async def open_opportunity(request: Request) -> Response:
    cmd = await rq.body(request, OpenOpportunity)
    saved = await commands.open_opportunity(
        reads.service(request).runner, await rq.command_context(request),
        customer_id=cmd.customer_id, title=cmd.title, owner=cmd.owner, stage=cmd.stage,
        probability=cmd.probability, amount=cmd.amount, currency=cmd.currency,
        expected_close=cmd.expected_close.isoformat() if cmd.expected_close else None,
        source_lead_id=cmd.source_lead_id,
    )
    return accepted(saved, created_at=BASE)


@operation(scope="crm:write",
           summary="Change an open opportunity's details", body=UpdateOpportunity,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def update(request: Request) -> Response:
    cmd = await rq.body(request, UpdateOpportunity)
    saved = await commands.update_opportunity(
        reads.service(request).runner, await rq.command_context(request), _opportunity_id(request),
        title=cmd.title, owner=cmd.owner, amount=cmd.amount, probability=cmd.probability,
        expected_close=cmd.expected_close.isoformat() if cmd.expected_close else None,
    )
    return accepted(saved)


@operation(scope="crm:write",
           summary="Move an opportunity to another stage", body=ChangeStage,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def change_stage(request: Request) -> Response:
    cmd = await rq.body(request, ChangeStage)
    saved = await commands.change_stage(
        reads.service(request).runner, await rq.command_context(request), _opportunity_id(request),
        cmd.stage, cmd.probability,
    )
    return accepted(saved)


@operation(scope="crm:write",
           summary="Mark an opportunity won (publishes erp.opportunity.won)", body=WinOpportunity,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def win(request: Request) -> Response:
    cmd = await rq.body(request, WinOpportunity)
    saved = await commands.win(reads.service(request).runner, await rq.command_context(request),
                               _opportunity_id(request), cmd.amount)
    return accepted(saved)


@operation(scope="crm:write",
           summary="Mark an opportunity lost", body=LoseOpportunity, response=CommandAccepted,
           errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def lose(request: Request) -> Response:
    cmd = await rq.body(request, LoseOpportunity)
    saved = await commands.lose(reads.service(request).runner, await rq.command_context(request),
                                _opportunity_id(request), cmd.reason, cmd.competitor)
    return accepted(saved)


@operation(scope="crm:write",
           summary="Reopen a won or lost opportunity", body=ReopenOpportunity,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def reopen(request: Request) -> Response:
    cmd = await rq.body(request, ReopenOpportunity)
    saved = await commands.reopen(reads.service(request).runner, await rq.command_context(request),
                                  _opportunity_id(request), cmd.reason)
    return accepted(saved)


@operation(scope="crm:read",
           summary="List opportunities, newest first", query=ListQuery, response=OpportunityPage,
           errors=(400, 422, 503))
async def list_opportunities(request: Request) -> Response:
    params = rq.query(request, ListQuery)
    position = await reads.caught_up(request, PROJECTION, params)
    where, args = reads.filters(request, params, ("stage", "owner", "customer_id", "status"))
    rows, cursor = await reads.page(request, params, table="opportunities", columns=_COLUMNS,
                                    where=where, args=args, order_by="opened_position")
    return JSON({
        "items": [{k: r[k] for k in OpportunityView.model_fields} for r in rows],
        "next_cursor": cursor,
        "log_position": position,
    })


@operation(scope="crm:read",
           summary="One opportunity with its stage history", query=ReadQuery,
           response=OpportunityDetail, errors=(400, 404, 422, 503))
async def get_opportunity(request: Request) -> Response:
    await reads.caught_up(request, PROJECTION, rq.query(request, ReadQuery))
    opportunity_id, tenant = _opportunity_id(request), rq.tenant(request)
    found, history = await reads.rows_of_each(
        request,
        (f"SELECT {_COLUMNS} FROM opportunities WHERE opportunity_id = %s AND tenant_id = %s",
         (opportunity_id, tenant)),
        (f"SELECT {_HISTORY_COLUMNS} FROM opportunity_stage_history "
         "WHERE opportunity_id = %s AND tenant_id = %s ORDER BY version", (opportunity_id, tenant)),
    )
    if not found:
        raise NotFound("opportunity", opportunity_id)
    return JSON({**found[0], "stage_history": history},
                headers={"ETag": f'"{found[0]["version"]}"'})


@operation(scope="crm:read",
           summary="Open pipeline per stage: count, total and probability-weighted amount",
           query=ReadQuery, response=Pipeline, errors=(400, 422, 503))
async def pipeline(request: Request) -> Response:
    position = await reads.caught_up(request, PROJECTION, rq.query(request, ReadQuery))
    rows = await reads.rows(
        request,
        "SELECT stage, currency, count(*) AS count, coalesce(sum(amount), 0) AS total, "
        "round(coalesce(sum(amount * probability / 100.0), 0), 2) AS weighted "
        "FROM opportunities WHERE tenant_id = %s AND status = 'open' "
        "GROUP BY stage, currency ORDER BY stage, currency",
        (rq.tenant(request),),
    )
    return JSON({"stages": rows, "log_position": position})


@operation(scope="crm:read",
           summary="Forecast of open opportunities by expected-close month",
           query=ReadQuery, response=Forecast, errors=(400, 422, 503))
async def forecast(request: Request) -> Response:
    position = await reads.caught_up(request, PROJECTION, rq.query(request, ReadQuery))
    rows = await reads.rows(
        request,
        "SELECT to_char(expected_close, 'YYYY-MM') AS month, currency, count(*) AS count, "
        "coalesce(sum(amount), 0) AS total, "
        "round(coalesce(sum(amount * probability / 100.0), 0), 2) AS weighted "
        "FROM opportunities WHERE tenant_id = %s AND status = 'open' "
        "GROUP BY 1, currency ORDER BY 1 NULLS LAST, currency",
        (rq.tenant(request),),
    )
    return JSON({"months": rows, "log_position": position})


_ONE = BASE + "/{opportunity_id:uuid}"
ROUTES = [
    Route(BASE, open_opportunity, methods=["POST"]),
    Route(BASE, list_opportunities, methods=["GET"]),
    Route(_ONE, get_opportunity, methods=["GET"]),
    Route(_ONE + "/update", update, methods=["POST"]),
    Route(_ONE + "/stage", change_stage, methods=["POST"]),
    Route(_ONE + "/win", win, methods=["POST"]),
    Route(_ONE + "/lose", lose, methods=["POST"]),
    Route(_ONE + "/reopen", reopen, methods=["POST"]),
    Route("/api/v1/crm/pipeline", pipeline, methods=["GET"]),
    Route("/api/v1/crm/forecast", forecast, methods=["GET"]),
]
