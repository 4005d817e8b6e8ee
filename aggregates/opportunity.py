"""CRM opportunity: a possible sale moving through the tenant's ordered stages to won or lost."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from enum import StrEnum

from eventsourcing.domain import Aggregate, event

from aggregates.errors import InvalidValue, RuleViolation
from aggregates.tenant_settings import DEFAULT_STAGES, Stage

DEFAULT_CURRENCY = "KES"


class Status(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class OpportunityClosed(RuleViolation):
    pass


class NotWon(RuleViolation):
    """Treasury invoices won opportunities only."""


class OpportunityOpen(RuleViolation):
    pass


class UnknownStage(InvalidValue):
    pass


class AlreadyInStage(RuleViolation):
    pass


class AmountNotPositive(InvalidValue):
    pass


class ReasonRequired(InvalidValue):
    pass


class ProbabilityOutOfRange(InvalidValue):
    pass


class InvalidCloseDate(InvalidValue):
    pass


class NothingToChange(InvalidValue):
    pass


def _positive(amount: Decimal, field: str = "amount") -> Decimal:
    if not amount.is_finite() or amount <= 0:
        raise AmountNotPositive(f"{field} must be greater than zero", field=field)
    return amount.quantize(Decimal("0.01"))


def _probability(value: int) -> int:
    if not 0 <= value <= 100:
        raise ProbabilityOutOfRange(f"probability must be 0 to 100, not {value}", field="probability")
    return value


def _close_date(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidCloseDate(f"expected_close {value!r} is not a date YYYY-MM-DD",
                               field="expected_close") from None


def _stage(name: str, stages: Sequence[Stage]) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    names = ", ".join(s.name for s in stages)
    raise UnknownStage(f"stage {name!r} is not one of {names}", field="stage")


def _required(text: str, field: str) -> str:
    if not text.strip():
        raise ReasonRequired(f"{field} must not be empty", field=field)
    return text.strip()


class Opportunity(Aggregate):
    @event("Opened")
    def __init__(
        self,
        tenant_id: str,
        customer_id: str,
        title: str,
        owner: str,
        stage: str,
        probability: int,
        amount: Decimal | None,
        currency: str,
        expected_close: str | None = None,
        source_lead_id: str | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.customer_id = customer_id
        self.title = title
        self.owner = owner
        self.stage = stage
        self.probability = probability
        self.amount = amount
        self.currency = currency
        self.expected_close = expected_close
        self.source_lead_id = source_lead_id
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
        probability: int | None = None,
        amount: Decimal | None = None,
        currency: str = DEFAULT_CURRENCY,
        expected_close: str | None = None,
        source_lead_id: str | None = None,
        stages: Sequence[Stage] = DEFAULT_STAGES,
    ) -> Opportunity:
        entered = _stage(stage, stages) if stage else stages[0]
        return cls(
            tenant_id=tenant_id,
            customer_id=_required(customer_id, "customer_id"),
            title=_required(title, "title"),
            owner=_required(owner, "owner"),
            stage=entered.name,
            probability=_probability(entered.probability if probability is None else probability),
            amount=None if amount is None else _positive(amount),
            currency=currency,
            expected_close=None if expected_close is None else _close_date(expected_close),
            source_lead_id=source_lead_id,
        )

    def _require_open(self) -> None:
        if self.status is not Status.OPEN:
            raise OpportunityClosed(
                f"the opportunity is {self.status.value}; reopen it before changing it"
            )

    def update(
        self,
        *,
        title: str | None = None,
        owner: str | None = None,
        amount: Decimal | None = None,
        expected_close: str | None = None,
        probability: int | None = None,
    ) -> None:
        self._require_open()
        changes: dict[str, object] = {}
        if title is not None and title.strip() != self.title:
            changes["title"] = _required(title, "title")
        if owner is not None and owner.strip() != self.owner:
            changes["owner"] = _required(owner, "owner")
        if amount is not None and _positive(amount) != self.amount:
            changes["amount"] = _positive(amount)
        if expected_close is not None and _close_date(expected_close) != self.expected_close:
            changes["expected_close"] = _close_date(expected_close)
        if probability is not None and _probability(probability) != self.probability:
            changes["probability"] = probability
        if not changes:
            raise NothingToChange("the request changes nothing")
        self._updated(changes=changes)

    @event("Updated")
    def _updated(self, changes: dict[str, object]) -> None:
        for name, value in changes.items():
            setattr(self, name, value)

    def change_stage(
        self, stage: str, *, probability: int | None = None, stages: Sequence[Stage] = DEFAULT_STAGES
    ) -> None:
        self._require_open()
        entered = _stage(stage, stages)
        if entered.name == self.stage:
            raise AlreadyInStage(f"the opportunity is already in stage {stage!r}")
        self._stage_changed(
            stage=entered.name, from_stage=self.stage,
            probability=_probability(entered.probability if probability is None else probability),
        )

    @event("StageChanged")
    def _stage_changed(self, stage: str, from_stage: str, probability: int) -> None:
        self.stage = stage
        self.probability = probability

    def win(self, amount: Decimal | None = None) -> None:
        self._require_open()
        amount = self.amount if amount is None else amount
        if amount is None:
            raise AmountNotPositive("a won opportunity needs an amount", field="amount")
        self._won(amount=_positive(amount), currency=self.currency, customer_id=self.customer_id)

    @event("Won")
    def _won(self, amount: Decimal, currency: str, customer_id: str) -> None:
        self.amount = amount
        self.status = Status.WON
        self.probability = 100

    def lose(self, reason: str, competitor: str | None = None) -> None:
        self._require_open()
        self._lost(reason=_required(reason, "reason"), competitor=competitor)

    @event("Lost")
    def _lost(self, reason: str, competitor: str | None) -> None:
        self.status = Status.LOST
        self.probability = 0
        self.lost_reason = reason
        self.competitor = competitor

    def link_invoice(self, invoice_id: str, status: str) -> bool:
        """Treasury's invoice for this won opportunity (treasury.invoice.created); answers
        whether anything changed."""
        if self.status is not Status.WON:
            raise NotWon(f"opportunity {self.id} is {self.status.value}; only a won one is invoiced")
        invoice_id = _required(invoice_id, "invoice_id")
        if (invoice_id, status) == (getattr(self, "invoice_id", None), getattr(self, "invoice_status", None)):
            return False
        self._invoice_linked(invoice_id=invoice_id, status=status)
        return True

    @event("InvoiceLinked")
    def _invoice_linked(self, invoice_id: str, status: str) -> None:
        self.invoice_id = invoice_id
        self.invoice_status = status

    def reopen(self, reason: str, *, stages: Sequence[Stage] = DEFAULT_STAGES) -> None:
        """Back to the stage it closed in (or the first, if that stage no longer exists)."""
        if self.status is Status.OPEN:
            raise OpportunityOpen("the opportunity is open already")
        stage = next((s for s in stages if s.name == self.stage), stages[0])
        self._reopened(reason=_required(reason, "reason"), from_status=self.status.value,
                       stage=stage.name, probability=stage.probability)

    @event("Reopened")
    def _reopened(self, reason: str, from_status: str, stage: str, probability: int) -> None:
        self.status = Status.OPEN
        self.stage = stage
        self.probability = probability
        self.lost_reason = None
        self.competitor = None
