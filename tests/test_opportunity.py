"""The opportunity's rules, without servers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aggregates.errors import InvalidValue, RuleViolation
from aggregates.opportunity import (
    AlreadyInStage,
    AmountNotPositive,
    NothingToChange,
    Opportunity,
    OpportunityClosed,
    OpportunityOpen,
    ReasonRequired,
    Status,
    UnknownStage,
)
from aggregates.tenant_settings import DEFAULT_STAGES, Stage


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


# Probability, stages from settings, edits, reopening.


CUSTOM = (Stage("lead", 5), Stage("demo", 40), Stage("contract", 90))


def test_entering_a_stage_sets_its_default_probability_unless_given() -> None:
    o = opened(stages=CUSTOM)
    assert (o.stage, o.probability) == ("lead", 5)
    o.change_stage("demo", stages=CUSTOM)
    assert o.probability == 40
    o.change_stage("contract", probability=70, stages=CUSTOM)
    assert o.probability == 70


def test_stages_are_the_tenants() -> None:
    with pytest.raises(UnknownStage):
        opened(stages=CUSTOM).change_stage("proposal", stages=CUSTOM)


def test_won_is_certain_and_lost_is_hopeless() -> None:
    won, lost = opened(), opened()
    won.win(Decimal(5))
    lost.lose("budget")
    assert (won.probability, lost.probability) == (100, 0)


def test_a_closed_opportunity_reopens_in_its_stage_with_a_reason() -> None:
    o = opened()
    o.change_stage("proposal")
    o.lose("price", competitor="Acme")
    with pytest.raises(ReasonRequired):
        o.reopen("  ")
    o.reopen("they came back")
    assert (o.status, o.stage, o.probability, o.lost_reason) == (Status.OPEN, "proposal", 50, None)
    with pytest.raises(OpportunityOpen):
        o.reopen("again")


def test_a_closed_opportunity_cannot_be_edited() -> None:
    o = opened()
    o.win(Decimal(1))
    with pytest.raises(OpportunityClosed):
        o.update(title="new")


def test_an_edit_records_only_what_changed() -> None:
    o = opened(amount=Decimal(100))
    o.update(title="Fleet tracking", amount=Decimal("150.5"), expected_close="2026-12-31")
    changes = o.collect_events()[-1].changes  # type: ignore[attr-defined]
    assert changes == {"amount": Decimal("150.50"), "expected_close": "2026-12-31"}
    with pytest.raises(NothingToChange):
        o.update(title="Fleet tracking")


def test_probability_and_close_date_are_checked() -> None:
    from aggregates.opportunity import InvalidCloseDate, ProbabilityOutOfRange

    with pytest.raises(ProbabilityOutOfRange):
        opened(probability=101)
    with pytest.raises(InvalidCloseDate):
        opened(expected_close="31/12/2026")


class OpportunityMachine(RuleBasedStateMachine):
    """Random commands; after each, the invariants hold and replay gives the same state."""

    def __init__(self) -> None:
        super().__init__()
        self.o = opened()
        self.events = list(self.o.collect_events())

    def _try(self, command: object) -> None:
        try:
            command()  # type: ignore[operator]
        except (RuleViolation, InvalidValue):
            assert not self.o.pending_events  # a refused command changes nothing
        self.events += self.o.collect_events()

    @rule(stage=st.sampled_from([s.name for s in DEFAULT_STAGES] + ["nowhere"]),
          probability=st.one_of(st.none(), st.integers(-5, 105)))
    def change_stage(self, stage: str, probability: int | None) -> None:
        self._try(lambda: self.o.change_stage(stage, probability=probability))

    @rule(amount=st.one_of(st.none(), st.decimals(-10, 10**7, places=2)))
    def win(self, amount: Decimal | None) -> None:
        self._try(lambda: self.o.win(amount))

    @rule(reason=st.sampled_from(["", "price", "timing"]))
    def lose(self, reason: str) -> None:
        self._try(lambda: self.o.lose(reason))

    @rule(reason=st.sampled_from(["", "back"]))
    def reopen(self, reason: str) -> None:
        self._try(lambda: self.o.reopen(reason))

    @rule(title=st.sampled_from(["A", "B"]), probability=st.integers(0, 100))
    def update(self, title: str, probability: int) -> None:
        self._try(lambda: self.o.update(title=title, probability=probability))

    @invariant()
    def holds(self) -> None:
        o = self.o
        assert 0 <= o.probability <= 100
        assert o.stage in {s.name for s in DEFAULT_STAGES}
        if o.status is Status.WON:
            assert o.probability == 100 and o.amount is not None and o.amount > 0
        if o.status is Status.LOST:
            assert o.probability == 0 and o.lost_reason
        assert o.version == len(self.events)
        copy: Opportunity | None = None
        for e in self.events:
            copy = e.mutate(copy)
        assert copy == o


OpportunityMachine.TestCase.settings = hsettings(max_examples=60, stateful_step_count=25,
                                                 deadline=None)
test_random_command_sequences_keep_the_invariants = OpportunityMachine.TestCase



def test_only_a_won_opportunity_is_invoiced_and_a_repeat_changes_nothing() -> None:
    from aggregates.opportunity import NotWon

    opportunity = Opportunity.open(tenant_id="t", customer_id="c", title="t", owner="o")
    with pytest.raises(NotWon):
        opportunity.link_invoice("INV-1", "sent")
    opportunity.win(Decimal(10))
    assert opportunity.link_invoice("INV-1", "sent") and not opportunity.link_invoice("INV-1", "sent")
    assert opportunity.link_invoice("INV-1", "paid")  # treasury's status moves on
    assert (opportunity.invoice_id, opportunity.invoice_status) == ("INV-1", "paid")
