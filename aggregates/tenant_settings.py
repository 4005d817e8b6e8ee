"""A tenant of the ERP service and its business settings (tier 2): name and status as the
auth service announces them; currency, payment terms, notification preferences, pipeline
stages, PO approval chain, tolerances and statutory rate overrides.

One aggregate per tenant with a derived id, created when the auth service announces the
tenant, with the defaults until an admin changes them. Other aggregates are handed these
values; they never load them. Each change is an event: its history says who changed what.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from aggregates.errors import InvalidValue
from aggregates.purchase_order import ApprovalChain, ApprovalLevel
from aggregates.statutory import InvalidRules, StatutoryRules, rules_for

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:tenant-settings")
CLOSED_STAGES = ("won", "lost")


@dataclass(frozen=True)
class Stage:
    name: str
    probability: int  # default win probability, percent, when an opportunity enters it


DEFAULT_STAGES = (
    Stage("qualification", 10), Stage("needs_analysis", 25),
    Stage("proposal", 50), Stage("negotiation", 75),
)


class InvalidStages(InvalidValue):
    pass


class InvalidTolerance(InvalidValue):
    pass


class InvalidStatutoryOverride(InvalidValue):
    pass


class InvalidTenant(InvalidValue):
    pass


class InvalidBusinessTerms(InvalidValue):
    pass


TENANT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # the auth service's ids: no spaces, no "*"
TENANT_STATUSES = ("active", "suspended")
NOTIFICATION_CHANNELS = frozenset({"email", "sms", "push"})
# Events a tenant may be notified of (the notifications service delivers them).
NOTIFIABLE = frozenset({
    "opportunity.won", "purchase_order.submitted", "purchase_order.approved",
    "purchase_order.received", "payroll.approved", "payroll.processed", "work_order.completed",
})


OVERRIDABLE = frozenset({
    "personal_relief", "secondary_employment_rate", "nssf_employee_rate", "nssf_employer_rate",
    "nssf_lower_limit", "nssf_upper_limit", "shif_rate", "shif_minimum",
    "housing_levy_employee_rate", "housing_levy_employer_rate",
})


def _override(effective_from: str, source: str, changes: dict[str, Any]) -> StatutoryRules:
    base = rules_for(effective_from[:7])
    return base.amended(effective_from, source, **{k: Decimal(str(v)) for k, v in changes.items()})


def _percent(value: Decimal, field: str) -> Decimal:
    if not value.is_finite() or not Decimal(0) <= value <= Decimal(100):
        raise InvalidTolerance(f"{field} must be between 0 and 100 percent, not {value}", field=field)
    return value


def valid_tenant_id(tenant_id: str) -> bool:
    return TENANT_ID.fullmatch(tenant_id) is not None


class TenantSettings(Aggregate):
    @staticmethod
    def id_for(tenant_id: str) -> UUID:
        return uuid5(_NAMESPACE, tenant_id)

    @classmethod
    def register(cls, tenant_id: str) -> TenantSettings:
        """A new tenant with the default settings."""
        if not valid_tenant_id(tenant_id):
            raise InvalidTenant(f"tenant id {tenant_id!r}: 1-128 of letters, digits and . _ : -",
                                field="tenant_id")
        return cls(tenant_id=tenant_id)

    @classmethod
    def create_id(cls, tenant_id: str) -> UUID:
        return cls.id_for(tenant_id)

    @event("Initialised")
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self._stages: list[dict[str, object]] = [
            {"name": s.name, "probability": s.probability} for s in DEFAULT_STAGES
        ]
        self._approvals: list[dict[str, object]] = [
            {"min_amount": a.min_amount, "role": a.role} for a in ApprovalChain().levels
        ]
        self.over_receipt_percent = Decimal(0)
        self.over_production_percent = Decimal(0)
        self.over_consumption_percent = Decimal(0)
        self.statutory_override_records: list[dict[str, Any]] = []
        self.name = tenant_id
        self.status = "active"
        self.currency = "KES"
        self.payment_terms_days = 30
        self.notifications: dict[str, list[str]] = {}
        self.receiving_warehouse_id: str | None = None

    def describe(self, name: str, status: str) -> bool:
        """The tenant's name and status from the auth service; answers whether they changed."""
        if not name.strip():
            raise InvalidTenant("a tenant needs a name", field="name")
        if status not in TENANT_STATUSES:
            raise InvalidTenant(f"status must be one of {', '.join(TENANT_STATUSES)}, not {status!r}",
                                field="status")
        if (name, status) == (self.name, self.status):
            return False
        self._described(name=name, status=status)
        return True

    @event("Described")
    def _described(self, name: str, status: str) -> None:
        self.name = name
        self.status = status

    def configure_business_terms(
        self, *, currency: str, payment_terms_days: int, notifications: dict[str, list[str]],
        receiving_warehouse_id: str | None = None,
    ) -> None:
        if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
            raise InvalidBusinessTerms(f"currency must be an ISO 4217 code, not {currency!r}",
                                       field="currency")
        if not 0 <= payment_terms_days <= 365:
            raise InvalidBusinessTerms("payment terms are 0 to 365 days", field="payment_terms_days")
        for name, channels in notifications.items():
            if name not in NOTIFIABLE:
                raise InvalidBusinessTerms(f"{name!r} is not a notifiable event; known: "
                                           f"{', '.join(sorted(NOTIFIABLE))}", field=f"notifications.{name}")
            if not set(channels) <= NOTIFICATION_CHANNELS:
                raise InvalidBusinessTerms(f"channels are {', '.join(sorted(NOTIFICATION_CHANNELS))}",
                                           field=f"notifications.{name}")
        self._business_terms_configured(
            currency=currency, payment_terms_days=payment_terms_days,
            notifications={k: sorted(set(v)) for k, v in sorted(notifications.items())},
            receiving_warehouse_id=(receiving_warehouse_id or "").strip() or None)

    class BusinessTermsConfigured(Aggregate.Event):
        """Version 2 added the receiving warehouse; a stored version 1 reads as having none."""

        currency: str
        payment_terms_days: int
        notifications: dict[str, list[str]]
        receiving_warehouse_id: str | None
        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["receiving_warehouse_id"] = None

    @event(BusinessTermsConfigured)
    def _business_terms_configured(
        self, currency: str, payment_terms_days: int, notifications: dict[str, list[str]],
        receiving_warehouse_id: str | None,
    ) -> None:
        self.currency = currency
        self.payment_terms_days = payment_terms_days
        self.notifications = notifications
        self.receiving_warehouse_id = receiving_warehouse_id  # where goods receipts go in inventory

    @property
    def statutory_overrides(self) -> tuple[StatutoryRules, ...]:
        """The tenant's own payroll rates, each a complete rule set from its date."""
        return tuple(_override(o["effective_from"], o["source"], o["changes"])
                     for o in self.statutory_override_records)

    def override_statutory(self, effective_from: str, source: str, changes: dict[str, Decimal]) -> None:
        """From `effective_from` ("YYYY-MM"), the rules in force then with `changes` applied."""
        unknown = sorted(set(changes) - OVERRIDABLE)
        if unknown or not changes:
            raise InvalidStatutoryOverride(
                f"rates that can be overridden: {', '.join(sorted(OVERRIDABLE))}; "
                f"not {', '.join(unknown) or 'nothing'}", field="changes")
        try:
            _override(effective_from, source, changes)  # refuses rates the rules would not accept
        except InvalidRules as refused:
            field = f"changes.{refused.field}" if refused.field else "changes"
            raise InvalidRules(refused.message, field=field) from None
        self._statutory_overridden(effective_from=effective_from, source=source,
                                   changes=dict(changes))

    @event("StatutoryOverridden")
    def _statutory_overridden(self, effective_from: str, source: str, changes: dict[str, Any]) -> None:
        kept = [o for o in self.statutory_override_records if o["effective_from"] != effective_from]
        self.statutory_override_records = sorted(
            [*kept, {"effective_from": effective_from, "source": source, "changes": changes}],
            key=lambda o: str(o["effective_from"]),
        )

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(Stage(str(s["name"]), int(str(s["probability"]))) for s in self._stages)

    @property
    def approval_chain(self) -> ApprovalChain:
        return ApprovalChain(tuple(ApprovalLevel(Decimal(str(a["min_amount"])), str(a["role"]))
                                   for a in self._approvals))

    def configure_stages(self, stages: Sequence[Stage]) -> None:
        names = [s.name for s in stages]
        if not stages:
            raise InvalidStages("at least one open stage is needed", field="stages")
        if len(set(names)) != len(names):
            raise InvalidStages("stage names must be unique", field="stages")
        for i, stage in enumerate(stages):
            if stage.name in CLOSED_STAGES or not stage.name.strip():
                raise InvalidStages(f"{stage.name!r} cannot be an open stage",
                                    field=f"stages.{i}.name")
            if not 0 <= stage.probability <= 100:
                raise InvalidStages("probability must be 0 to 100",
                                    field=f"stages.{i}.probability")
        self._stages_configured(stages=[{"name": s.name, "probability": s.probability}
                                        for s in stages])

    @event("StagesConfigured")
    def _stages_configured(self, stages: list[dict[str, object]]) -> None:
        self._stages = stages

    def configure_approvals(self, levels: Sequence[ApprovalLevel]) -> None:
        ApprovalChain(tuple(levels))  # refuses a chain that lets an order go unapproved
        self._approvals_configured(levels=[{"min_amount": lv.min_amount, "role": lv.role}
                                           for lv in levels])

    @event("ApprovalsConfigured")
    def _approvals_configured(self, levels: list[dict[str, object]]) -> None:
        self._approvals = levels

    def configure_tolerances(
        self, *, over_receipt_percent: Decimal, over_production_percent: Decimal,
        over_consumption_percent: Decimal,
    ) -> None:
        self._tolerances_configured(
            over_receipt_percent=_percent(over_receipt_percent, "over_receipt_percent"),
            over_production_percent=_percent(over_production_percent, "over_production_percent"),
            over_consumption_percent=_percent(over_consumption_percent, "over_consumption_percent"),
        )

    @event("TolerancesConfigured")
    def _tolerances_configured(
        self, over_receipt_percent: Decimal, over_production_percent: Decimal,
        over_consumption_percent: Decimal,
    ) -> None:
        self.over_receipt_percent = over_receipt_percent
        self.over_production_percent = over_production_percent
        self.over_consumption_percent = over_consumption_percent
