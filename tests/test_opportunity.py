"""The opportunity's rules, without servers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aggregates.opportunity import (
    AlreadyInStage,
    AmountNotPositive,
    Opportunity,
    OpportunityClosed,
    ReasonRequired,
    Status,
    UnknownStage,
)


def opened(**overrides: object) -> Opportunity:
    fields: dict[str, object] = {
        "tenant_id": "t1", "customer_id": "c1", "title": "Fleet tracking", "owner": "alice",
    }
    fields.update(overrides)
    return Opportunity.open(**fields)  # type: ignore[arg-type]


def event_names(opportunity: Opportunity) -> list[str]:
    return [type(e).__name__ for e in opportunity.collect_events()]


def test_opens_in_the_first_stage_in_kes() -> None:
    o = opened()
    assert (o.stage, o.currency, o.status, o.version) == ("qualification", "KES", Status.OPEN, 1)
    assert event_names(o) == ["Opened"]


def test_cannot_open_in_an_unknown_stage() -> None:
    with pytest.raises(UnknownStage) as refused:
        opened(stage="maybe")
    assert refused.value.field == "stage"


def test_moves_between_stages_and_remembers_where_from() -> None:
    o = opened()
    o.change_stage("proposal")
    events = o.collect_events()
    assert o.stage == "proposal"
    assert (events[-1].stage, events[-1].from_stage) == ("proposal", "qualification")  # type: ignore[attr-defined]


def test_moving_to_the_current_stage_is_refused() -> None:
    with pytest.raises(AlreadyInStage):
        opened().change_stage("qualification")


def test_win_records_amount_currency_and_customer_in_the_event() -> None:
    o = opened(currency="USD")
    o.win(Decimal("2500.5"))
    won = o.collect_events()[-1]
    assert o.status is Status.WON
    assert (won.amount, won.currency, won.customer_id) == (Decimal("2500.50"), "USD", "c1")  # type: ignore[attr-defined]


def test_win_uses_the_opportunity_amount_when_none_is_given() -> None:
    o = opened(amount=Decimal("900"))
    o.win()
    assert o.amount == Decimal("900.00")


@pytest.mark.parametrize("amount", [None, Decimal("0"), Decimal("-5"), Decimal("NaN")])
def test_cannot_win_without_a_positive_amount(amount: Decimal | None) -> None:
    with pytest.raises(AmountNotPositive):
        opened().win(amount)


def test_lose_needs_a_reason() -> None:
    with pytest.raises(ReasonRequired):
        opened().lose("   ")


def test_lose_records_reason_and_competitor() -> None:
    o = opened()
    o.lose("price", competitor="Acme")
    assert (o.status, o.lost_reason, o.competitor) == (Status.LOST, "price", "Acme")


@pytest.mark.parametrize("close", [lambda o: o.win(Decimal(1)), lambda o: o.lose("no budget")])
def test_a_closed_opportunity_cannot_change(close: object) -> None:
    o = opened()
    close(o)  # type: ignore[operator]
    with pytest.raises(OpportunityClosed):
        o.change_stage("proposal")
    with pytest.raises(OpportunityClosed):
        o.win(Decimal(1))
    with pytest.raises(OpportunityClosed):
        o.lose("again")


def test_replaying_the_events_rebuilds_the_same_state() -> None:
    o = opened()
    o.change_stage("negotiation")
    o.win(Decimal("10"))
    events = o.collect_events()
    copy: Opportunity | None = None
    for e in events:
        copy = e.mutate(copy)
    assert copy == o
