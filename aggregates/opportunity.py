"""CRM opportunity: a possible sale moving through ordered stages to won or lost."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from eventsourcing.domain import Aggregate, event

from aggregates.errors import InvalidValue, RuleViolation

DEFAULT_STAGES = ("qualification", "needs_analysis", "proposal", "negotiation")
DEFAULT_CURRENCY = "KES"


class Status(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class OpportunityClosed(RuleViolation):
    pass


class UnknownStage(InvalidValue):
    pass


class AlreadyInStage(RuleViolation):
    pass


class AmountNotPositive(InvalidValue):
    pass


class ReasonRequired(InvalidValue):
    pass


def _positive(amount: Decimal, field: str) -> Decimal:
    if not amount.is_finite() or amount <= 0:
        raise AmountNotPositive(f"{field} must be greater than zero", field=field)
    return amount.quantize(Decimal("0.01"))


class Opportunity(Aggregate):
    @event("Opened")
    def __init__(
        self,
        tenant_id: str,
        customer_id: str,
        title: str,
        owner: str,
        stage: str,
        amount: Decimal | None,
        currency: str,
    ) -> None:
        self.tenant_id = tenant_id
        self.customer_id = customer_id
        self.title = title
        self.owner = owner
        self.stage = stage
        self.amount = amount
        self.currency = currency
        self.status = Status.OPEN
        self.lost_reason: str | None = None
        self.competitor: str | None = None

    @classmethod
    def open(
        cls,
        *,
        tenant_id: str,
        customer_id: str,
        title: str,
        owner: str,
        stage: str | None = None,
        amount: Decimal | None = None,
        currency: str = DEFAULT_CURRENCY,
        stages: tuple[str, ...] = DEFAULT_STAGES,
    ) -> Opportunity:
        stage = stage or stages[0]
        if stage not in stages:
            raise UnknownStage(f"stage {stage!r} is not one of {', '.join(stages)}", field="stage")
        if amount is not None:
            amount = _positive(amount, "amount")
        return cls(
            tenant_id=tenant_id,
            customer_id=customer_id,
            title=title,
            owner=owner,
            stage=stage,
            amount=amount,
            currency=currency,
        )

    def _require_open(self) -> None:
        if self.status is not Status.OPEN:
            raise OpportunityClosed(f"the opportunity is {self.status.value}; it cannot change")

    def change_stage(self, stage: str, *, stages: tuple[str, ...] = DEFAULT_STAGES) -> None:
        self._require_open()
        if stage not in stages:
            raise UnknownStage(f"stage {stage!r} is not one of {', '.join(stages)}", field="stage")
        if stage == self.stage:
            raise AlreadyInStage(f"the opportunity is already in stage {stage!r}")
        self._stage_changed(stage=stage, from_stage=self.stage)

    @event("StageChanged")
    def _stage_changed(self, stage: str, from_stage: str) -> None:
        self.stage = stage

    def win(self, amount: Decimal | None = None) -> None:
        self._require_open()
        if amount is None:
            amount = self.amount
        if amount is None:
            raise AmountNotPositive("a won opportunity needs an amount", field="amount")
        self._won(
            amount=_positive(amount, "amount"),
            currency=self.currency,
            customer_id=self.customer_id,
        )

    @event("Won")
    def _won(self, amount: Decimal, currency: str, customer_id: str) -> None:
        self.amount = amount
        self.status = Status.WON

    def lose(self, reason: str, competitor: str | None = None) -> None:
        self._require_open()
        if not reason.strip():
            raise ReasonRequired("a lost opportunity needs a reason", field="reason")
        self._lost(reason=reason.strip(), competitor=competitor)

    @event("Lost")
    def _lost(self, reason: str, competitor: str | None) -> None:
        self.status = Status.LOST
        self.lost_reason = reason
        self.competitor = competitor
