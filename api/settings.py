"""Tenant settings routes (tier 2: business users' configuration)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

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
from erp.eventstore import event_metadata

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


class BusinessTerms(Body):
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217; the default for new documents")
    payment_terms_days: int = Field(ge=0, le=365, description="default days to pay")
    notifications: dict[str, list[Literal["email", "sms", "push"]]] = Field(
        default_factory=dict, description="notifiable event (e.g. payroll.processed) -> channels")
    receiving_warehouse_id: str | None = Field(
        default=None, max_length=200,
        description="inventory's warehouse that goods received on purchase orders go into")


class SettingsView(BaseModel):
    name: str
    status: str = Field(description="active or suspended, as the auth service announced")
    currency: str
    payment_terms_days: int
    notifications: dict[str, list[str]]
    receiving_warehouse_id: str | None
    stages: list[StageModel]
    approval_levels: list[ApprovalLevelModel]
    over_receipt_percent: Decimal
    over_production_percent: Decimal
    over_consumption_percent: Decimal
    statutory_overrides: list[StatutoryOverride]
    version: int


class SettingsChange(BaseModel):
    version: int
    change: str = Field(description="the event, e.g. StagesConfigured")
    changed_at: datetime
    changed_by: str = Field(description="the user or service:<name>; empty for the system")
    details: dict[str, Any]


class SettingsHistory(BaseModel):
    changes: list[SettingsChange]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


@operation(scope="settings:read",
           summary="The tenant's business settings (defaults until configured)",
           response=SettingsView, errors=(400, 503))
async def get_settings(request: Request) -> Response:
    load = Loader(_service(request).runner.store, rq.tenant(request))
    settings: TenantSettings = await asyncio.to_thread(load.settings)
    version = settings.version
    return JSON({
        "name": settings.name, "status": settings.status, "currency": settings.currency,
        "payment_terms_days": settings.payment_terms_days, "notifications": settings.notifications,
        "receiving_warehouse_id": settings.receiving_warehouse_id,
        "stages": [{"name": s.name, "probability": s.probability} for s in settings.stages],
        "approval_levels": [{"min_amount": lv.min_amount, "role": lv.role}
                            for lv in settings.approval_chain.levels],
        "over_receipt_percent": settings.over_receipt_percent,
        "over_production_percent": settings.over_production_percent,
        "over_consumption_percent": settings.over_consumption_percent,
        "statutory_overrides": settings.statutory_override_records,
        "version": version,
    }, headers={"ETag": f'"{version}"'})


@operation(scope="settings:write",
           summary="Set the opportunity stages and their default probabilities",
           body=ConfigureStages, response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def configure_stages(request: Request) -> Response:
    cmd = await rq.body(request, ConfigureStages)
    stages = [Stage(s.name, s.probability) for s in cmd.stages]
    saved = await configure(_service(request).runner, await rq.command_context(request),
                            lambda settings: settings.configure_stages(stages))
    return accepted(saved)


@operation(scope="settings:write",
           summary="Set the purchase-order approval chain", body=ConfigureApprovals,
           response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def configure_approvals(request: Request) -> Response:
    cmd = await rq.body(request, ConfigureApprovals)
    levels = [ApprovalLevel(lv.min_amount, lv.role) for lv in cmd.levels]
    saved = await configure(_service(request).runner, await rq.command_context(request),
                            lambda settings: settings.configure_approvals(levels))
    return accepted(saved)


@operation(scope="settings:write",
           summary="Set over-receipt, over-production and over-consumption tolerances",
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


@operation(scope="settings:write",
           summary="Override payroll rates for this tenant from a month on",
           body=StatutoryOverride, response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def override_statutory(request: Request) -> Response:
    cmd = await rq.body(request, StatutoryOverride)
    saved = await configure(
        _service(request).runner, await rq.command_context(request),
        lambda settings: settings.override_statutory(cmd.effective_from, cmd.source, cmd.changes),
    )
    return accepted(saved)


@operation(scope="settings:write",
           summary="Set the default currency, payment terms and notification preferences",
           body=BusinessTerms, response=CommandAccepted, errors=(400, 409, 412, 422, 503),
           headers=(IF_MATCH, IDEMPOTENCY))
async def configure_business_terms(request: Request) -> Response:
    cmd = await rq.body(request, BusinessTerms)
    saved = await configure(
        _service(request).runner, await rq.command_context(request),
        lambda settings: settings.configure_business_terms(
            currency=cmd.currency, payment_terms_days=cmd.payment_terms_days,
            notifications={k: list(v) for k, v in cmd.notifications.items()},
            receiving_warehouse_id=cmd.receiving_warehouse_id),
    )
    return accepted(saved)


_NOT_DETAILS = frozenset({"originator_id", "originator_version", "timestamp", "metadata"})


@operation(scope="settings:read",
           summary="Every change of the tenant's settings: what, when and by whom, oldest first",
           response=SettingsHistory, errors=(400, 403, 503))
async def settings_history(request: Request) -> Response:
    store = _service(request).runner.store
    await asyncio.to_thread(Loader(store, rq.tenant(request)).settings)  # refuses an unknown tenant
    events: list[Any] = await asyncio.to_thread(
        lambda: list(store.repository.event_store.get(TenantSettings.id_for(rq.tenant(request)))))
    return JSON({"changes": [{
        "version": e.originator_version, "change": type(e).__name__, "changed_at": e.timestamp,
        "changed_by": event_metadata(e).get("actor", ""),
        "details": {k: v for k, v in vars(e).items() if k not in _NOT_DETAILS},
    } for e in events]})


ROUTES = [
    Route(BASE, get_settings, methods=["GET"]),
    Route(BASE + "/history", settings_history, methods=["GET"]),
    Route(BASE + "/business-terms", configure_business_terms, methods=["POST"]),
    Route(BASE + "/stages", configure_stages, methods=["POST"]),
    Route(BASE + "/approvals", configure_approvals, methods=["POST"]),
    Route(BASE + "/tolerances", configure_tolerances, methods=["POST"]),
    Route(BASE + "/statutory-overrides", override_statutory, methods=["POST"]),
]
