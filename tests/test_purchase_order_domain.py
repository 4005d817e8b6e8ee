"""The purchase order's rules, without servers."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import msgspec
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, Mapper, UUIDAsHex
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aggregates.errors import DomainError, InvalidValue, RuleViolation
from aggregates.purchase_order import (
    AlreadyBilled,
    AmbiguousItem,
    ApprovalChain,
    ApprovalLevel,
    ApproverAlreadyApproved,
    BlankField,
    DuplicateReceipt,
    EmptyReceipt,
    EmptyReceiptLine,
    ExchangeRateRequired,
    InvalidApprovalChain,
    InvalidDate,
    InvalidExchangeRate,
    InvalidNumber,
    InvalidPrice,
    InvalidQuantity,
    InvalidTaxRate,
    InvalidTolerance,
    LineReceivedTwice,
    NoLines,
    NotADecimal,
    NotApproved,
    NotAwaitingApproval,
    NotCancellable,
    NotClosable,
    NotDraft,
    OrderLine,
    OverReceipt,
    PurchaseOrder,
    ReasonRequired,
    ReceiptTooLarge,
    RequiredByInPast,
    RoleAlreadyApproved,
    RoleNotRequired,
    SelfApproval,
    Status,
    TaxCodeRequired,
    UnknownLine,
)
from streams import envelope
from streams.events.procurement import PUBLICATIONS, PurchaseOrderReceived

D = Decimal
TODAY = "2026-02-01"
LATER = "2026-03-01"  # the day goods are recorded as received, at the latest
CENT = Decimal("0.01")


def line(
    item_id: str = "item-1",
    quantity: str = "10",
    unit_price: str = "100",
    tax_rate: str = "0",
    tax_code: str | None = None,
    unit: str = "pcs",
) -> OrderLine:
    return OrderLine(
        item_id=item_id, description=f"{item_id} description", quantity=D(quantity), unit=unit,
        unit_price=D(unit_price), tax_code=tax_code, tax_rate=D(tax_rate),
    )


def draft(*lines: OrderLine, **overrides: Any) -> PurchaseOrder:
    fields: dict[str, Any] = {
        "tenant_id": "t1", "number": "PO-2026-000001", "vendor_id": "vendor-1",
        "lines": list(lines) or [line()], "requested_by": "requester", "today": TODAY,
    }
    fields.update(overrides)
    return PurchaseOrder.create(**fields)


def approved(*lines: OrderLine, **overrides: Any) -> PurchaseOrder:
    po = draft(*lines, **overrides)
    po.submit()
    for n, role in enumerate(po.required_roles):
        po.approve(f"approver-{n}", role)
    return po


def names(po: PurchaseOrder) -> list[str]:
    return [type(e).__name__ for e in po.collect_events()]


def last_event(po: PurchaseOrder) -> Any:
    return po.collect_events()[-1]


def mapper() -> Mapper[Any]:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


def through_the_store(events: Sequence[Any]) -> list[Any]:
    """The events as the relay and a replay see them: after JSON storage."""
    m = mapper()
    return [m.to_domain_event(m.to_stored_event(e)) for e in events]


def replay(events: Sequence[Any]) -> PurchaseOrder | None:
    po: PurchaseOrder | None = None
    for e in events:
        po = e.mutate(po)
    return po


# Creating and pricing.


def test_creates_a_draft_in_kes_with_priced_lines() -> None:
    po = draft(line(quantity="3", unit_price="10.005", tax_rate="16", tax_code="VAT16"))
    only = po.lines[0]
    assert (po.status, po.currency, po.tenant_id, po.number) == (
        Status.DRAFT, "KES", "t1", "PO-2026-000001"
    )
    # net = round(30.015) = 30.02; tax = round(30.02 * 16%) = round(4.8032) = 4.80
    assert (only.line_no, only.net_amount, only.tax_amount, only.total_amount) == (
        1, D("30.02"), D("4.80"), D("34.82")
    )
    assert po.total_amount == D("34.82")
    created = last_event(po)
    assert type(created).__name__ == "Created"
    assert (created.total_amount, created.requested_by, created.lines[0]["tax_code"]) == (
        D("34.82"), "requester", "VAT16"
    )


def test_rounds_each_line_once_and_sums_the_rounded_lines() -> None:
    # Each line 1 * 0.005 rounds up to 0.01; rounding the sum instead would give 0.01.
    po = draft(line("a", "1", "0.005"), line("b", "1", "0.005"))
    assert [x.net_amount for x in po.lines] == [D("0.01"), D("0.01")]
    assert po.total_amount == D("0.02")


def test_tax_is_computed_on_the_rounded_net() -> None:
    # net = round(0.125) = 0.13; tax on 0.13 at 50% = 0.065 -> 0.07 (on 0.125 it would be 0.06)
    po = draft(line(quantity="1", unit_price="0.125", tax_rate="50", tax_code="X"))
    assert (po.lines[0].net_amount, po.lines[0].tax_amount, po.total_amount) == (
        D("0.13"), D("0.07"), D("0.20")
    )


@pytest.mark.parametrize("number", ["PO-26-000001", "PO-2026-1", "po-2026-000001", "PO-2026-0000001", ""])
def test_number_must_look_like_po_year_sequence(number: str) -> None:
    with pytest.raises(InvalidNumber) as refused:
        draft(number=number)
    assert refused.value.field == "number"


def test_required_by_cannot_be_before_today() -> None:
    with pytest.raises(RequiredByInPast) as refused:
        draft(required_by="2026-01-31")
    assert refused.value.field == "required_by"
    assert draft(required_by=TODAY).required_by == TODAY


@pytest.mark.parametrize("overrides", [{"today": "01/02/2026"}, {"required_by": "2026-02-30"},
                                       {"required_by": "20260301"}])
def test_dates_must_be_iso(overrides: dict[str, str]) -> None:
    with pytest.raises(InvalidDate):
        draft(**overrides)


@pytest.mark.parametrize(
    ("entered", "error", "field"),
    [
        (line(quantity="0"), InvalidQuantity, "quantity"),
        (line(quantity="-1"), InvalidQuantity, "quantity"),
        (line(unit_price="-0.01"), InvalidPrice, "unit_price"),
        (line(tax_rate="101", tax_code="X"), InvalidTaxRate, "tax_rate"),
        (line(tax_rate="16"), TaxCodeRequired, "tax_code"),
        (line(item_id="  "), BlankField, "item_id"),
        (line(quantity="NaN"), NotADecimal, "quantity"),
        (OrderLine("i", "d", 1.5, "pcs", D(1)), NotADecimal, "quantity"),  # type: ignore[arg-type]
    ],
)
def test_a_line_needs_positive_quantity_and_price_not_below_zero(
    entered: OrderLine, error: type[InvalidValue], field: str
) -> None:
    with pytest.raises(error) as refused:
        draft(line(), entered)  # the second line: named as the body names it
    assert refused.value.field == f"lines.1.{field}"


def test_a_free_line_is_allowed() -> None:
    assert draft(line(unit_price="0")).total_amount == D("0.00")


def test_lines_can_be_added_updated_and_removed_in_draft() -> None:
    po = draft(line("a", "1", "100"))
    po.collect_events()
    assert po.add_line(line("b", "2", "50")) == 2
    po.update_line(1, line("a", "3", "100"))
    po.remove_line(2)
    events = po.collect_events()
    assert [(e.change, e.line_no) for e in events] == [("added", 2), ("updated", 1), ("removed", 2)]  # type: ignore[attr-defined]
    assert [e.total_amount for e in events] == [D("200.00"), D("400.00"), D("300.00")]  # type: ignore[attr-defined]
    assert (len(po.lines), po.total_amount) == (1, D("300.00"))


def test_changing_an_unknown_line_is_refused() -> None:
    with pytest.raises(UnknownLine):
        draft().update_line(9, line())
    with pytest.raises(UnknownLine):
        draft().remove_line(9)


def test_lines_cannot_change_once_submitted() -> None:
    po = draft()
    po.submit()
    with pytest.raises(NotDraft):
        po.add_line(line("b"))
    with pytest.raises(NotDraft):
        po.update_line(1, line())
    with pytest.raises(NotDraft):
        po.remove_line(1)


# Submission and approval.


def test_cannot_submit_without_lines() -> None:
    po = draft()
    po.remove_line(1)
    with pytest.raises(NoLines):
        po.submit()
    assert po.status is Status.DRAFT


@pytest.mark.parametrize(
    ("unit_price", "roles"),
    [
        ("99999.99", ["approver"]),
        ("100000", ["approver", "finance"]),
        ("999999.99", ["approver", "finance"]),
        ("1000000", ["approver", "finance", "director"]),
    ],
)
def test_the_roles_needed_depend_on_the_amount(unit_price: str, roles: list[str]) -> None:
    po = draft(line(quantity="1", unit_price=unit_price))
    po.submit()
    submitted = last_event(po)
    assert po.status is Status.SUBMITTED
    assert po.required_roles == submitted.required_roles == roles


def test_a_tenant_chain_sets_its_own_thresholds() -> None:
    chain = ApprovalChain((ApprovalLevel(D(0), "manager"), ApprovalLevel(D(500), "cfo")))
    po = draft(line(quantity="1", unit_price="500"))
    po.submit(chain=chain)
    assert po.required_roles == ["manager", "cfo"]


@pytest.mark.parametrize(
    "levels",
    [
        (ApprovalLevel(D(10), "approver"),),
        (ApprovalLevel(D(0), "approver"), ApprovalLevel(D(10), "approver")),
        (ApprovalLevel(D(0), "approver"), ApprovalLevel(D(-1), "finance")),
        (),
    ],
)
def test_a_chain_starts_at_zero_with_distinct_roles(levels: tuple[ApprovalLevel, ...]) -> None:
    with pytest.raises(InvalidApprovalChain):
        ApprovalChain(levels)


def test_a_foreign_currency_order_needs_an_exchange_rate_to_kes() -> None:
    po = draft(line(quantity="1", unit_price="1000"), currency="USD")
    with pytest.raises(ExchangeRateRequired) as refused:
        po.submit()
    assert refused.value.field == "exchange_rate_to_kes"
    with pytest.raises(InvalidExchangeRate):
        po.submit(exchange_rate_to_kes=D(0))
    po.submit(exchange_rate_to_kes=D("129.5"))
    submitted = last_event(po)
    # USD 1,000 is KES 129,500: above the finance threshold.
    assert (submitted.amount_kes, submitted.exchange_rate_to_kes) == (D("129500.00"), D("129.5"))
    assert po.required_roles == ["approver", "finance"]


def test_a_kes_order_takes_no_exchange_rate_but_one() -> None:
    with pytest.raises(InvalidExchangeRate):
        draft().submit(exchange_rate_to_kes=D(2))
    po = draft()
    po.submit(exchange_rate_to_kes=D(1))
    assert last_event(po).exchange_rate_to_kes is None


def test_the_requester_cannot_approve_their_own_order() -> None:
    po = draft()
    po.submit()
    with pytest.raises(SelfApproval):
        po.approve("requester", "approver")


def test_an_approver_cannot_approve_twice_even_in_another_role() -> None:
    po = draft(line(quantity="1", unit_price="200000"))
    po.submit()
    po.approve("alice", "approver")
    with pytest.raises(ApproverAlreadyApproved):
        po.approve("alice", "finance")
    with pytest.raises(RoleAlreadyApproved):
        po.approve("bob", "approver")


def test_only_a_role_still_needed_may_approve() -> None:
    po = draft()
    po.submit()
    with pytest.raises(RoleNotRequired) as refused:
        po.approve("alice", "director")
    assert refused.value.field == "role"


def test_approved_only_when_every_role_is_in() -> None:
    po = draft(line(quantity="2", unit_price="600000"))
    po.submit()
    po.collect_events()
    po.approve("carol", "director")
    po.approve("alice", "approver")
    assert (po.status, po.pending_roles) == (Status.SUBMITTED, ["finance"])
    po.approve("bob", "finance")
    events = po.collect_events()
    assert [(e.approver_id, e.role, e.fully_approved) for e in events] == [  # type: ignore[attr-defined]
        ("carol", "director", False), ("alice", "approver", False), ("bob", "finance", True)
    ]
    assert po.status is Status.APPROVED


def test_approval_needs_a_submitted_order() -> None:
    with pytest.raises(NotAwaitingApproval):
        draft().approve("alice", "approver")
    with pytest.raises(NotAwaitingApproval):
        approved().approve("zed", "approver")


def test_reject_returns_to_draft_with_the_reason_and_clears_approvals() -> None:
    po = draft(line(quantity="1", unit_price="200000"))
    po.submit()
    po.approve("alice", "approver")
    po.reject("bob", "  price too high  ")
    rejected = last_event(po)
    assert (po.status, po.rejection_reason, po.approvals, po.required_roles) == (
        Status.DRAFT, "price too high", {}, []
    )
    assert (rejected.approver_id, rejected.reason) == ("bob", "price too high")
    # Changed and resubmitted, it needs approvals again, by the new amount.
    po.update_line(1, line(quantity="1", unit_price="5000"))
    po.submit()
    assert (po.required_roles, po.approvals, po.rejection_reason) == (["approver"], {}, None)
    po.approve("alice", "approver")
    assert po.status is Status.APPROVED


def test_reject_needs_a_reason_and_is_not_the_requesters() -> None:
    po = draft()
    po.submit()
    with pytest.raises(ReasonRequired):
        po.reject("bob", " ")
    with pytest.raises(SelfApproval):
        po.reject("requester", "changed my mind")


# Goods receipt.


def test_cannot_receive_unless_approved() -> None:
    po = draft()
    po.submit()
    with pytest.raises(NotApproved):
        po.receive("GR-1", [(1, D(1), D(0))], received_on=TODAY, today=LATER)


def test_cannot_receive_more_than_ordered() -> None:
    po = approved(line(quantity="10"))
    with pytest.raises(OverReceipt) as refused:
        po.receive("GR-1", [(1, D(11), D(0))], received_on=TODAY, today=LATER)
    error = refused.value
    assert (error.line_no, error.ordered, error.already_received, error.attempted) == (1, D(10), D(0), D(11))
    assert "line 1" in error.message and "ordered 10" in error.message and "attempted 11" in error.message


def test_over_receipt_counts_what_was_already_accepted() -> None:
    po = approved(line(quantity="10"))
    po.receive("GR-1", [(1, D(6), D(0))], received_on=TODAY, today=LATER)
    with pytest.raises(OverReceipt) as refused:
        po.receive("GR-2", [(1, D(5), D(0))], received_on=TODAY, today=LATER)
    assert (refused.value.already_received, refused.value.attempted) == (D(6), D(5))
    assert "already received 6" in refused.value.message


def test_tolerance_allows_accepting_up_to_the_percent_over() -> None:
    po = approved(line(quantity="10"))
    po.receive("GR-1", [(1, D("10.5"), D(0))], received_on=TODAY, today=LATER, tolerance=D(5))
    assert po.status is Status.RECEIVED
    po2 = approved(line(quantity="10"))
    with pytest.raises(OverReceipt):
        po2.receive("GR-1", [(1, D("10.6"), D(0))], received_on=TODAY, today=LATER, tolerance=D(5))
    with pytest.raises(InvalidTolerance):
        po2.receive("GR-1", [(1, D(1), D(0))], received_on=TODAY, today=LATER, tolerance=D(-1))


def test_rejected_quantity_does_not_count_as_received() -> None:
    po = approved(line(quantity="10"))
    po.receive("GR-1", [(1, D(8), D(10))], received_on=TODAY, today=LATER)
    assert (po.lines[0].accepted_quantity, po.lines[0].rejected_quantity, po.status) == (
        D(8), D(10), Status.PARTIALLY_RECEIVED
    )
    po.receive("GR-2", [(1, D(2), D(0))], received_on=TODAY, today=LATER)
    assert po.status is Status.RECEIVED


def test_a_receipt_rejects_no_more_than_the_line_orders() -> None:
    po = approved(line(quantity="10"))
    with pytest.raises(ReceiptTooLarge) as refused:
        po.receive("GR-1", [(1, D(8), D("10.001"))], received_on=TODAY, today=LATER)
    assert "rejected 10.001 is more than the line orders" in str(refused.value)
    po.receive("GR-1", [(1, D(8), D(11))], received_on=TODAY, today=LATER, tolerance=D(10))


@pytest.mark.parametrize("received_on", ["2026-01-31", "2026-03-02"])
def test_goods_are_received_from_the_order_date_to_today(received_on: str) -> None:
    with pytest.raises(InvalidDate) as refused:
        approved().receive("GR-1", [(1, D(1), D(0))], received_on=received_on, today=LATER)
    assert refused.value.field == "received_on"


def test_a_received_order_says_so_when_more_goods_come() -> None:
    po = approved(line(quantity="10"))
    po.receive("GR-1", [(1, D(10), D(0))], received_on=TODAY, today=LATER)
    with pytest.raises(NotApproved, match="already received"):
        po.receive("GR-2", [(1, D(1), D(0))], received_on=TODAY, today=LATER, tolerance=D(10))


def test_a_billed_order_cannot_be_cancelled() -> None:
    po = approved()
    po.link_bill("BILL-7", "draft")
    with pytest.raises(AlreadyBilled) as refused:
        po.cancel("not needed")
    assert "BILL-7" in str(refused.value) and po.status is Status.APPROVED


@pytest.mark.parametrize(("accepted", "rejected"), [("0", "0"), ("-1", "2"), ("2", "-1")])
def test_a_receipt_line_needs_some_quantity_and_none_negative(accepted: str, rejected: str) -> None:
    with pytest.raises(EmptyReceiptLine):
        approved().receive("GR-1", [(1, D(accepted), D(rejected))], received_on=TODAY, today=LATER)


def test_a_receipt_needs_lines_and_names_each_once() -> None:
    po = approved(line("a"), line("b"))
    with pytest.raises(EmptyReceipt):
        po.receive("GR-1", [], received_on=TODAY, today=LATER)
    with pytest.raises(LineReceivedTwice):
        po.receive("GR-1", [(1, D(1), D(0)), ("a", D(1), D(0))], received_on=TODAY, today=LATER)
    with pytest.raises(InvalidDate):
        po.receive("GR-1", [(1, D(1), D(0))], received_on="yesterday", today=LATER)


def test_a_receipt_id_used_twice_is_refused() -> None:
    po = approved(line(quantity="10"))
    po.receive("GR-1", [(1, D(1), D(0))], received_on=TODAY, today=LATER)
    with pytest.raises(DuplicateReceipt) as refused:
        po.receive("GR-1", [(1, D(1), D(0))], received_on=TODAY, today=LATER)
    assert refused.value.field == "receipt_id"
    assert po.lines[0].accepted_quantity == D(1)


def test_receipt_lines_name_a_line_number_or_a_unique_item() -> None:
    po = approved(line("a"), line("b"), line("b"))
    po.receive("GR-1", [("a", D(1), D(0))], received_on=TODAY, today=LATER)
    assert po.lines[0].accepted_quantity == D(1)
    with pytest.raises(AmbiguousItem):
        po.receive("GR-2", [("b", D(1), D(0))], received_on=TODAY, today=LATER)
    with pytest.raises(UnknownLine):
        po.receive("GR-2", [("zzz", D(1), D(0))], received_on=TODAY, today=LATER)
    with pytest.raises(UnknownLine):
        po.receive("GR-2", [(7, D(1), D(0))], received_on=TODAY, today=LATER)


def test_each_goods_receipt_is_an_event_inventory_can_record() -> None:
    po = approved(line("a", quantity="10", unit="kg"), line("b", quantity="4"))
    po.collect_events()
    po.receive("GR-1", [("a", D(6), D(1)), (2, D(4), D(0))], received_on="2026-02-03", today=LATER)
    events = po.collect_events()
    assert [type(e).__name__ for e in events] == ["GoodsReceived"]
    receipt = events[0]
    assert (receipt.receipt_id, receipt.received_on, receipt.vendor_id) == (  # type: ignore[attr-defined]
        "GR-1", "2026-02-03", "vendor-1"
    )
    assert receipt.lines == [  # type: ignore[attr-defined]
        {"line_no": 1, "item_id": "a", "unit": "kg", "accepted_quantity": D(6), "rejected_quantity": D(1)},
        {"line_no": 2, "item_id": "b", "unit": "pcs", "accepted_quantity": D(4), "rejected_quantity": D(0)},
    ]


def test_receiving_every_line_in_full_emits_received_with_the_guides_fields() -> None:
    po = approved(line("a", quantity="10"), line("b", quantity="1", unit_price="0.5"), currency="KES")
    po.collect_events()
    po.receive("GR-1", [(1, D(10), D(0))], received_on=TODAY, today=LATER)
    assert names(po) == ["GoodsReceived"]
    po.receive("GR-2", [(2, D(1), D(0))], received_on=TODAY, today=LATER)
    events = po.collect_events()
    assert [type(e).__name__ for e in events] == ["GoodsReceived", "Received"]
    payload = PUBLICATIONS[type(events[1])].to_payload(events[1])
    assert msgspec.to_builtins(payload) == {
        "purchase_order_id": str(po.id), "vendor_id": "vendor-1", "total_amount": "1000.50",
        "currency": "KES",
    }
    assert po.status is Status.RECEIVED


# Ending.


def test_close_a_received_order() -> None:
    po = approved(line(quantity="1"))
    po.receive("GR-1", [(1, D(1), D(0))], received_on=TODAY, today=LATER)
    po.close()
    assert (po.status, last_event(po).short_closed) == (Status.CLOSED, False)


def test_short_close_a_partly_received_order_needs_a_reason_and_bills_what_came() -> None:
    po = approved(line("a", quantity="10", unit_price="100.05", tax_rate="16", tax_code="VAT"),
                  line("b", quantity="3"))
    po.receive("GR-1", [(1, D("4.5"), D(1))], received_on=TODAY, today=LATER)
    po.collect_events()
    with pytest.raises(ReasonRequired):
        po.close()
    po.close("vendor discontinued the item")
    events = po.collect_events()
    assert [type(e).__name__ for e in events] == ["Received", "Closed"]
    # 4.5 x 100.05 = 450.225 -> 450.23 net, 72.04 VAT; nothing of line b
    assert events[0].total_amount == D("522.27")  # type: ignore[attr-defined]
    assert (po.status, events[1].short_closed, events[1].reason) == (  # type: ignore[attr-defined]
        Status.CLOSED, True, "vendor discontinued the item"
    )


def test_a_short_closed_order_of_which_nothing_was_accepted_is_not_billed() -> None:
    po = approved(line(quantity="10"))
    po.receive("GR-1", [(1, D(0), D(2))], received_on=TODAY, today=LATER)
    po.collect_events()
    po.close("all of it was damaged")
    assert names(po) == ["Closed"]


def test_goods_accepted_over_the_order_within_tolerance_are_billed_as_they_came() -> None:
    po = approved(line(quantity="10", unit_price="100"))
    po.collect_events()
    po.receive("GR-1", [(1, D(11), D(0))], received_on=TODAY, today=LATER, tolerance=D(10))
    assert last_event(po).total_amount == D("1100.00")


@pytest.mark.parametrize("status_of", [lambda: draft(), lambda: approved()])
def test_an_order_not_received_cannot_be_closed(status_of: Callable[[], PurchaseOrder]) -> None:
    with pytest.raises(NotClosable):
        status_of().close("why not")


@pytest.mark.parametrize("submit", [False, True])
def test_cancel_with_a_reason_until_goods_arrive(submit: bool) -> None:
    po = draft()
    if submit:
        po.submit()
    with pytest.raises(ReasonRequired):
        po.cancel("")
    po.cancel("budget cut")
    assert (po.status, po.cancel_reason) == (Status.CANCELLED, "budget cut")
    with pytest.raises(NotCancellable):
        po.cancel("again")
    with pytest.raises(NotDraft):
        po.submit()


def test_an_approved_order_can_be_cancelled_but_not_after_a_receipt() -> None:
    po = approved()
    po.cancel("vendor cannot deliver")
    assert po.status is Status.CANCELLED
    po2 = approved(line(quantity="10"))
    po2.receive("GR-1", [(1, D(0), D(1))], received_on=TODAY, today=LATER)  # even all rejected: goods arrived
    with pytest.raises(NotCancellable):
        po2.cancel("too late")


# Events: replay and wire.


def lifecycle_events() -> list[Any]:
    """Every kind of event a purchase order emits."""
    po = draft(line("a", quantity="10", unit_price="12000", tax_rate="16", tax_code="VAT16"))
    po.add_line(line("b", quantity="2"))
    po.submit()
    po.reject("fin", "split the delivery")
    po.remove_line(2)
    po.submit()
    po.approve("alice", "approver")
    po.approve("fin", "finance")
    assert po.link_bill("BILL-1", "open") and not po.link_bill("BILL-1", "open")
    po.receive("GR-1", [("a", D(4), D(1))], received_on="2026-02-05", today=LATER)
    po.receive("GR-2", [(1, D(6), D(0))], received_on="2026-02-06", today=LATER)
    po.close()
    short = approved(number="PO-2026-000002")
    short.receive("GR-9", [(1, D(1), D(0))], received_on=TODAY, today=LATER)
    short.close("rest not needed")
    cancelled = draft(number="PO-2026-000003", currency="USD")
    cancelled.cancel("duplicate")
    return [*po.collect_events(), *short.collect_events(), *cancelled.collect_events()]


def test_replaying_the_stored_events_rebuilds_the_same_order() -> None:
    po = approved(line("a", quantity="10"), line("b", quantity="3", unit_price="0.333"))
    po.receive("GR-1", [(1, D(10), D(2)), (2, D(1), D(0))], received_on=TODAY, today=LATER)
    events = po.collect_events()
    assert replay(events) == po
    assert replay(through_the_store(events)) == po


def test_every_event_has_a_publication_whose_payload_encodes() -> None:
    event_classes = {
        value for value in vars(PurchaseOrder).values()
        if isinstance(value, type) and issubclass(value, Aggregate.Event) and value is not PurchaseOrder.Event
    }
    assert event_classes == set(PUBLICATIONS)
    emitted = through_the_store(lifecycle_events())
    assert {type(e) for e in emitted} == event_classes
    for e in emitted:
        publication = PUBLICATIONS[type(e)]
        assert publication.subject.startswith("erp.purchase_order.")
        data = publication.to_payload(e)
        assert isinstance(data, publication.payload)
        wire = envelope.encode(envelope.Envelope(
            event_id=envelope.event_id(e.originator_id, e.originator_version),
            event_type=publication.subject, tenant_id="t1",
            timestamp=datetime(2026, 2, 1, tzinfo=UTC), data=data,
        ))
        assert envelope.decode(wire, publication.payload).data == data


def test_the_received_payload_has_exactly_the_guides_fields() -> None:
    assert [f.name for f in msgspec.structs.fields(PurchaseOrderReceived)] == [
        "purchase_order_id", "vendor_id", "total_amount", "currency"
    ]
    received = next(e for e in through_the_store(lifecycle_events()) if type(e).__name__ == "Received")
    wire = envelope.encode(envelope.Envelope(
        event_id=envelope.event_id(received.originator_id, received.originator_version),
        event_type="erp.purchase_order.received", tenant_id="t1",
        timestamp=datetime(2026, 2, 1, tzinfo=UTC),
        data=PUBLICATIONS[type(received)].to_payload(received),
    ))
    data = msgspec.json.decode(wire)["data"]
    assert data == {"purchase_order_id": str(received.originator_id), "vendor_id": "vendor-1",
                    "total_amount": 139200.0, "currency": "KES"}


# Properties: random command sequences keep the invariants.

STATUSES = list(Status)
LIFECYCLE = {
    (Status.DRAFT, Status.SUBMITTED), (Status.DRAFT, Status.CANCELLED),
    (Status.SUBMITTED, Status.APPROVED), (Status.SUBMITTED, Status.DRAFT),
    (Status.SUBMITTED, Status.CANCELLED),
    (Status.APPROVED, Status.PARTIALLY_RECEIVED), (Status.APPROVED, Status.RECEIVED),
    (Status.APPROVED, Status.CANCELLED),
    (Status.PARTIALLY_RECEIVED, Status.RECEIVED), (Status.PARTIALLY_RECEIVED, Status.CLOSED),
    (Status.RECEIVED, Status.CLOSED),
}
PEOPLE = ["requester", "alice", "bob", "carol"]
ROLES = ["approver", "finance", "director", "clerk"]
RATES = {"KES": None, "USD": D("129.5")}

quantities = st.sampled_from([D("0.5"), D(1), D(2), D(3), D("7.25")])
prices = st.sampled_from([D(0), D("9.99"), D("1234.567"), D(50_000), D(400_000)])
entered_lines = st.builds(
    OrderLine,
    item_id=st.sampled_from(["a", "b", "c"]),
    description=st.just("goods"),
    quantity=quantities,
    unit=st.just("pcs"),
    unit_price=prices,
    tax_code=st.just("VAT16"),
    tax_rate=st.sampled_from([D(0), D(8), D(16)]),
)
receipt_quantities = st.sampled_from([D(0), D("0.5"), D(1), D(2), D(3), D(8)])
receipt_lines = st.lists(
    st.tuples(st.one_of(st.integers(1, 4), st.sampled_from(["a", "b", "c"])),
              receipt_quantities, receipt_quantities),
    min_size=1, max_size=3,
)


def expected_roles(amount_kes: Decimal) -> list[str]:
    return [role for role, floor in (("approver", 0), ("finance", 100_000), ("director", 1_000_000))
            if amount_kes >= floor]


class PurchaseOrderMachine(RuleBasedStateMachine):
    po: PurchaseOrder
    tolerance: Decimal
    may_cancel: bool

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.short_closed = False

    @initialize(
        currency=st.sampled_from(["KES", "USD"]),
        tolerance=st.sampled_from([D(0), D(5), D(50)]),
        lines=st.lists(entered_lines, min_size=1, max_size=3),
        may_cancel=st.booleans(),
        start_in=st.sampled_from([Status.DRAFT, Status.SUBMITTED, Status.APPROVED]),
    )
    def create(
        self, currency: str, tolerance: Decimal, lines: list[OrderLine], may_cancel: bool, start_in: Status
    ) -> None:
        self.tolerance = tolerance
        self.may_cancel = may_cancel  # half the runs never cancel, so more of them reach receipts
        self.po = PurchaseOrder.create(tenant_id="t1", number="PO-2026-000042", vendor_id="v1",
                                       currency=currency, lines=lines, requested_by="requester",
                                       today=TODAY)
        # Many runs start further along (by the same commands), so receipts get their share.
        if start_in is not Status.DRAFT:
            self.po.submit(exchange_rate_to_kes=RATES[currency])
        if start_in is Status.APPROVED:
            for approver, role in zip(PEOPLE[1:], self.po.required_roles, strict=False):
                self.po.approve(approver, role)
        assert self.po.status is start_in
        self.events.extend(self.po.collect_events())

    def attempt(self, command: Callable[[], object]) -> bool:
        """Runs a command; a refused one must leave the order exactly as it was."""
        before = copy.deepcopy(self.po)
        status = self.po.status
        try:
            command()
        except DomainError as refused:
            assert isinstance(refused, (RuleViolation, InvalidValue)) and refused.message
            assert self.po == before and not self.po.pending_events
            return False
        assert status == self.po.status or (status, self.po.status) in LIFECYCLE
        self.events.extend(self.po.collect_events())
        return True

    @rule(entered=entered_lines)
    def add_line(self, entered: OrderLine) -> None:
        self.attempt(lambda: self.po.add_line(entered))

    @rule(line_no=st.integers(1, 5), entered=entered_lines)
    def update_line(self, line_no: int, entered: OrderLine) -> None:
        self.attempt(lambda: self.po.update_line(line_no, entered))

    @rule(line_no=st.integers(1, 5))
    def remove_line(self, line_no: int) -> None:
        self.attempt(lambda: self.po.remove_line(line_no))

    @rule(with_rate=st.sampled_from([True, True, False]))
    def submit(self, with_rate: bool) -> None:
        rate = RATES[self.po.currency] if with_rate else None
        if self.attempt(lambda: self.po.submit(exchange_rate_to_kes=rate)):
            amount_kes = self.po.total_amount * (rate or 1)
            assert self.po.required_roles == expected_roles(amount_kes.quantize(CENT, ROUND_HALF_UP))

    @rule(approver=st.sampled_from(PEOPLE), role=st.sampled_from(ROLES))
    def approve(self, approver: str, role: str) -> None:
        self.attempt(lambda: self.po.approve(approver, role))

    @precondition(lambda self: self.po.status is Status.SUBMITTED)
    @rule(data=st.data())
    def approve_a_needed_role(self, data: st.DataObject) -> None:
        # Often someone who has approved already, or the requester: both must be refused.
        approver = data.draw(st.sampled_from(PEOPLE))
        role = data.draw(st.sampled_from(self.po.required_roles))
        self.attempt(lambda: self.po.approve(approver, role))

    @precondition(lambda self: self.po.status is Status.SUBMITTED)
    @rule()
    def approve_a_pending_role(self) -> None:
        approver = next(p for p in PEOPLE[1:] if p not in self.po.approvals.values())
        assert self.attempt(lambda: self.po.approve(approver, self.po.pending_roles[0]))

    # Blank reasons (refused) are likelier, so that orders live long enough to be received.
    @rule(approver=st.sampled_from(PEOPLE), reason=st.sampled_from(["", "", "too dear"]))
    def reject(self, approver: str, reason: str) -> None:
        self.attempt(lambda: self.po.reject(approver, reason))

    @precondition(lambda self: self.may_cancel)
    @rule(reason=st.sampled_from(["", "", "not needed"]))
    def cancel(self, reason: str) -> None:
        self.attempt(lambda: self.po.cancel(reason))

    @precondition(lambda self: self.po.status in (Status.APPROVED, Status.PARTIALLY_RECEIVED))
    @rule(receipt_id=st.sampled_from(["GR-1", "GR-2", "GR-3", "GR-4", "GR-5"]), lines=receipt_lines)
    def receive(self, receipt_id: str, lines: list[tuple[int | str, Decimal, Decimal]]) -> None:
        self.attempt(lambda: self.po.receive(receipt_id, lines, received_on=TODAY, today=LATER,
                                             tolerance=self.tolerance))

    @precondition(lambda self: self.po.status in (Status.APPROVED, Status.PARTIALLY_RECEIVED))
    @rule(data=st.data())
    def receive_some_lines(self, data: st.DataObject) -> None:
        picked = data.draw(st.lists(st.sampled_from(self.po.lines), min_size=1,
                                    unique_by=lambda x: x.line_no))
        # What is outstanding, or shares of the ordered quantity that together often go
        # beyond it (and beyond the tolerance).
        shares = st.sampled_from([None, None, D(0), D("0.25"), D("0.5"), D(1), D("1.05"), D("1.5")])
        lines: list[tuple[int | str, Decimal, Decimal]] = []
        for x in picked:
            share = data.draw(shares)
            accepted = x.quantity - x.accepted_quantity if share is None else share * x.quantity
            lines.append((x.line_no, accepted, data.draw(st.sampled_from([D(0), D(0), D(1)]))))
        self.attempt(lambda: self.po.receive(f"GR-{len(self.events)}", lines, received_on=TODAY, today=LATER,
                                             tolerance=self.tolerance))

    @rule(reason=st.sampled_from([None, "rest not needed"]))
    def close(self, reason: str | None) -> None:
        was = self.po.status
        if self.attempt(lambda: self.po.close(reason)):
            self.short_closed = was is Status.PARTIALLY_RECEIVED

    @invariant()
    def accepted_never_exceeds_ordered_plus_tolerance(self) -> None:
        for x in self.po.lines:
            assert x.accepted_quantity <= x.quantity * (1 + self.tolerance / 100)

    @invariant()
    def received_iff_every_line_fully_accepted(self) -> None:
        all_in = bool(self.po.lines) and all(x.fully_accepted for x in self.po.lines)
        if self.po.status in (Status.APPROVED, Status.PARTIALLY_RECEIVED, Status.RECEIVED):
            assert (self.po.status is Status.RECEIVED) == all_in
        if self.po.status is Status.CLOSED and not self.short_closed:
            assert all_in

    @invariant()
    def total_is_the_sum_of_lines_rounded_at_the_line(self) -> None:
        for x in self.po.lines:
            net = (x.quantity * x.unit_price).quantize(CENT, ROUND_HALF_UP)
            tax = (net * x.tax_rate / 100).quantize(CENT, ROUND_HALF_UP)
            assert (x.net_amount, x.tax_amount, x.total_amount) == (net, tax, net + tax)
        assert self.po.total_amount == sum((x.total_amount for x in self.po.lines), D(0))

    @invariant()
    def approvals_are_needed_roles_by_distinct_people_not_the_requester(self) -> None:
        approvers = list(self.po.approvals.values())
        assert set(self.po.approvals) <= set(self.po.required_roles)
        assert len(set(approvers)) == len(approvers)
        assert self.po.requested_by not in approvers
        if self.po.status is Status.SUBMITTED:
            assert self.po.pending_roles
        if self.po.status is Status.APPROVED:
            assert set(self.po.approvals) == set(self.po.required_roles)

    def teardown(self) -> None:
        if not hasattr(self, "po"):
            return
        assert replay(self.events) == self.po
        assert replay(through_the_store(self.events)) == self.po


PurchaseOrderMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_random_command_sequences_keep_the_invariants = PurchaseOrderMachine.TestCase
