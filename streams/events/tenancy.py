"""Tenant-wide records on the wire: the tenant and its settings, user references and
document number series."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import msgspec

from aggregates.numbering import DocumentSeries
from aggregates.tenant_settings import TenantSettings
from aggregates.user_reference import UserReference
from streams.events.base import Publication, domain_event


class StageSetting(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    probability: int


class ApprovalLevelSetting(msgspec.Struct, frozen=True, kw_only=True):
    min_amount: Decimal
    role: str


class SettingsInitialised(msgspec.Struct, frozen=True, kw_only=True):
    tenant_settings_id: UUID


class StagesConfigured(msgspec.Struct, frozen=True, kw_only=True):
    tenant_settings_id: UUID
    stages: list[StageSetting]


class ApprovalsConfigured(msgspec.Struct, frozen=True, kw_only=True):
    tenant_settings_id: UUID
    levels: list[ApprovalLevelSetting]


class TolerancesConfigured(msgspec.Struct, frozen=True, kw_only=True):
    tenant_settings_id: UUID
    over_receipt_percent: Decimal
    over_production_percent: Decimal
    over_consumption_percent: Decimal


class StatutoryOverridden(msgspec.Struct, frozen=True, kw_only=True):
    tenant_settings_id: UUID
    effective_from: str
    source: str
    changes: dict[str, Decimal]


class TenantDescribed(msgspec.Struct, frozen=True, kw_only=True):
    tenant_settings_id: UUID
    name: str
    status: str  # active | suspended


class BusinessTermsConfigured(msgspec.Struct, frozen=True, kw_only=True):
    tenant_settings_id: UUID
    currency: str
    payment_terms_days: int
    notifications: dict[str, list[str]]  # notifiable event -> channels
    receiving_warehouse_id: str | None = None  # since schema version 2


class UserReferenced(msgspec.Struct, frozen=True, kw_only=True):
    user_reference_id: UUID
    user_id: str
    email: str
    name: str
    active: bool


class SeriesStarted(msgspec.Struct, frozen=True, kw_only=True):
    series_id: UUID
    prefix: str
    year: int


class NumberIssued(msgspec.Struct, frozen=True, kw_only=True):
    series_id: UUID
    number: int


PUBLICATIONS: dict[type, Publication] = {
    domain_event(TenantSettings, "Initialised"): Publication(
        "erp.tenant_settings.initialised", SettingsInitialised, "tenant_settings",
        lambda e: SettingsInitialised(tenant_settings_id=e.originator_id)),
    domain_event(TenantSettings, "StagesConfigured"): Publication(
        "erp.tenant_settings.stages_configured", StagesConfigured, "tenant_settings",
        lambda e: StagesConfigured(tenant_settings_id=e.originator_id,
                                   stages=[StageSetting(**s) for s in e.stages])),
    domain_event(TenantSettings, "ApprovalsConfigured"): Publication(
        "erp.tenant_settings.approvals_configured", ApprovalsConfigured, "tenant_settings",
        lambda e: ApprovalsConfigured(tenant_settings_id=e.originator_id,
                                      levels=[ApprovalLevelSetting(**lv) for lv in e.levels])),
    domain_event(TenantSettings, "TolerancesConfigured"): Publication(
        "erp.tenant_settings.tolerances_configured", TolerancesConfigured, "tenant_settings",
        lambda e: TolerancesConfigured(
            tenant_settings_id=e.originator_id, over_receipt_percent=e.over_receipt_percent,
            over_production_percent=e.over_production_percent,
            over_consumption_percent=e.over_consumption_percent)),
    domain_event(TenantSettings, "StatutoryOverridden"): Publication(
        "erp.tenant_settings.statutory_overridden", StatutoryOverridden, "tenant_settings",
        lambda e: StatutoryOverridden(tenant_settings_id=e.originator_id,
                                      effective_from=e.effective_from, source=e.source,
                                      changes=e.changes)),
    domain_event(TenantSettings, "Described"): Publication(
        "erp.tenant_settings.described", TenantDescribed, "tenant_settings",
        lambda e: TenantDescribed(tenant_settings_id=e.originator_id, name=e.name, status=e.status)),
    domain_event(TenantSettings, "BusinessTermsConfigured"): Publication(
        "erp.tenant_settings.business_terms_configured", BusinessTermsConfigured, "tenant_settings",
        lambda e: BusinessTermsConfigured(tenant_settings_id=e.originator_id, currency=e.currency,
                                          payment_terms_days=e.payment_terms_days,
                                          notifications=e.notifications,
                                          receiving_warehouse_id=e.receiving_warehouse_id),
        schema_version=2),
    domain_event(UserReference, "Referenced"): Publication(
        "erp.user_reference.referenced", UserReferenced, "user_reference",
        lambda e: UserReferenced(user_reference_id=e.originator_id, user_id=e.user_id, email=e.email,
                                 name=e.name, active=e.active)),
    domain_event(UserReference, "Synced"): Publication(
        "erp.user_reference.synced", UserReferenced, "user_reference",
        lambda e: UserReferenced(user_reference_id=e.originator_id, user_id=e.user_id, email=e.email,
                                 name=e.name, active=e.active)),
    domain_event(DocumentSeries, "Started"): Publication(
        "erp.document_series.started", SeriesStarted, "document_series",
        lambda e: SeriesStarted(series_id=e.originator_id, prefix=e.prefix, year=e.year)),
    domain_event(DocumentSeries, "NumberIssued"): Publication(
        "erp.document_series.number_issued", NumberIssued, "document_series",
        lambda e: NumberIssued(series_id=e.originator_id, number=e.number)),
}
