"""Tenant settings routes (tier 2: business users' configuration)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aggregates.purchase_order import ApprovalLevel
from aggregates.tenant_settings import Stage, TenantSettings
from api import requests as rq
from api.openapi import operation
from api.requests import IDEMPOTENCY, IF_MATCH, CommandAccepted, accepted
from api.responses import JSON
from erp.bootstrap import Service
from erp.commands import Loader
from erp.commands.settings import configure

BASE = "/api/v1/settings"
Percent = Field(ge=0, le=100, max_digits=5, decimal_places=2)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class StageModel(Body):
    name: str = Field(min_length=1, max_length=64)
    probability: int = Field(ge=0, le=100, description="default win probability, percent")


class ConfigureStages(Body):
    stages: list[StageModel] = Field(min_length=1, max_length=30,
                                     description="open stages in pipeline order")


class ApprovalLevelModel(Body):
    min_amount: Decimal = Field(ge=0, max_digits=18, decimal_places=2, description="KES")
    role: str = Field(min_length=1, max_length=64)


class ConfigureApprovals(Body):
    levels: list[ApprovalLevelModel] = Field(min_length=1, max_length=10)


class ConfigureTolerances(Body):
    over_receipt_percent: Decimal = Percent
    over_production_percent: Decimal = Percent
    over_consumption_percent: Decimal = Percent


class StatutoryOverride(Body):
    effective_from: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")
    source: str = Field(min_length=1, max_length=200, description="the notice or decision")
    changes: dict[str, Decimal] = Field(
        min_length=1, description="rates as fractions (0.015) and amounts in KES, by name")


class SettingsView(BaseModel):
    stages: list[StageModel]
    approval_levels: list[ApprovalLevelModel]
    over_receipt_percent: Decimal
    over_production_percent: Decimal
    over_consumption_percent: Decimal
    statutory_overrides: list[StatutoryOverride]
    version: int = Field(description="0: never configured, defaults apply")


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


@operation(summary="The tenant's business settings (defaults until configured)",
           response=SettingsView, errors=(400, 503))
async def get_settings(request: Request) -> Response:
    load = Loader(_service(request).runner.store, rq.tenant(request))
    settings: TenantSettings = await asyncio.to_thread(load.settings)
    version = settings.version if not settings.pending_events else 0
    return JSON({
        "stages": [{"name": s.name, "probability": s.probability} for s in settings.stages],
        "approval_levels": [{"min_amount": lv.min_amount, "role": lv.role}
                            for lv in settings.approval_chain.levels],
        "over_receipt_percent": settings.over_receipt_percent,
        "over_production_percent": settings.over_production_percent,
        "over_consumption_percent": settings.over_consumption_percent,
        "statutory_overrides": settings.statutory_override_records,
        "version": version,
    }, headers={"ETag": f'"{version}"'})


@operation(summary="Set the opportunity stages and their default probabilities",
           body=ConfigureStages, response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def configure_stages(request: Request) -> Response:
    cmd = await rq.body(request, ConfigureStages)
    stages = [Stage(s.name, s.probability) for s in cmd.stages]
    saved = await configure(_service(request).runner, await rq.command_context(request),
                            lambda settings: settings.configure_stages(stages))
    return accepted(saved)


@operation(summary="Set the purchase-order approval chain", body=ConfigureApprovals,
           response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def configure_approvals(request: Request) -> Response:
    cmd = await rq.body(request, ConfigureApprovals)
    levels = [ApprovalLevel(lv.min_amount, lv.role) for lv in cmd.levels]
    saved = await configure(_service(request).runner, await rq.command_context(request),
                            lambda settings: settings.configure_approvals(levels))
    return accepted(saved)


@operation(summary="Set over-receipt, over-production and over-consumption tolerances",
           body=ConfigureTolerances, response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def configure_tolerances(request: Request) -> Response:
    cmd = await rq.body(request, ConfigureTolerances)
    saved = await configure(
        _service(request).runner, await rq.command_context(request),
        lambda settings: settings.configure_tolerances(
            over_receipt_percent=cmd.over_receipt_percent,
            over_production_percent=cmd.over_production_percent,
            over_consumption_percent=cmd.over_consumption_percent,
        ),
    )
    return accepted(saved)


@operation(summary="Override payroll rates for this tenant from a month on",
           body=StatutoryOverride, response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def override_statutory(request: Request) -> Response:
    cmd = await rq.body(request, StatutoryOverride)
    saved = await configure(
        _service(request).runner, await rq.command_context(request),
        lambda settings: settings.override_statutory(cmd.effective_from, cmd.source, cmd.changes),
    )
    return accepted(saved)


ROUTES = [
    Route(BASE, get_settings, methods=["GET"]),
    Route(BASE + "/stages", configure_stages, methods=["POST"]),
    Route(BASE + "/approvals", configure_approvals, methods=["POST"]),
    Route(BASE + "/tolerances", configure_tolerances, methods=["POST"]),
    Route(BASE + "/statutory-overrides", override_statutory, methods=["POST"]),
]
