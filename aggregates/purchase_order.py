"""Procurement: a purchase order, from draft through approval by amount to goods receipt.

Lifecycle: draft → submitted → approved (→ partially_received) → received → closed.
A draft may be cancelled, and so may a submitted or approved order until goods arrive;
a rejected order goes back to draft. An order partly received may be short-closed.

Money rounds to cents once, at the line: net = round(quantity * unit price), tax =
round(net * tax rate / 100), line total = net + tax; the order total is the sum of the
line totals. Approval thresholds are in KES: an order in another currency is submitted
with its exchange rate to KES (refused without one), and the roles it needs are fixed
at submission from the converted amount.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate, event

from aggregates.errors import InvalidValue, RuleViolation
from aggregates.money import amount_in_cents, to_cents

DEFAULT_CURRENCY = "KES"
THRESHOLD_CURRENCY = "KES"  # the currency of every approval threshold
ZERO = Decimal(0)
HUNDRED = Decimal(100)

_NUMBER = re.compile(r"PO-\d{4}-\d{6}")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")


class Status(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    PARTIALLY_RECEIVED = "partially_received"
    RECEIVED = "received"
    CLOSED = "closed"
    CANCELLED = "cancelled"


CANCELLABLE = frozenset({Status.DRAFT, Status.SUBMITTED, Status.APPROVED})
RECEIVABLE = frozenset({Status.APPROVED, Status.PARTIALLY_RECEIVED})


# Values the rules never accept (422).


class InvalidNumber(InvalidValue):
    pass


class NotADecimal(InvalidValue):
    pass


class InvalidDate(InvalidValue):
    pass


class RequiredByInPast(InvalidValue):
    pass


class InvalidCurrency(InvalidValue):
    pass


class InvalidQuantity(InvalidValue):
    pass


class InvalidPrice(InvalidValue):
    pass


class InvalidTaxRate(InvalidValue):
    pass


class TaxCodeRequired(InvalidValue):
    pass


class BlankField(InvalidValue):
    pass


class ReasonRequired(InvalidValue):
    pass


class ExchangeRateRequired(InvalidValue):
    pass


class InvalidExchangeRate(InvalidValue):
    pass


class InvalidApprovalChain(InvalidValue):
    pass


class InvalidTolerance(InvalidValue):
    pass


class EmptyReceipt(InvalidValue):
    pass


class EmptyReceiptLine(InvalidValue):
    pass


class UnknownLine(InvalidValue):
    pass


class AmbiguousItem(InvalidValue):
    pass


class LineReceivedTwice(InvalidValue):
    pass


# The order's state forbids it (409).


class NotDraft(RuleViolation):
    pass


class NoLines(RuleViolation):
    pass


class NotAwaitingApproval(RuleViolation):
    pass


class RoleNotRequired(RuleViolation):
    pass


class RoleAlreadyApproved(RuleViolation):
    pass


class SelfApproval(RuleViolation):
    pass


class ApproverAlreadyApproved(RuleViolation):
    pass


class NotBillable(RuleViolation):
    """Treasury bills approved (or received, closed) orders only."""


class NotApproved(RuleViolation):
    pass


class DuplicateReceipt(RuleViolation):
    pass


class OverReceipt(RuleViolation):
    def __init__(
        self,
        *,
        line_no: int,
        item_id: str,
        ordered: Decimal,
        already_received: Decimal,
        attempted: Decimal,
        limit: Decimal,
        tolerance: Decimal,
    ) -> None:
        super().__init__(
            f"line {line_no} ({item_id}): ordered {ordered}, already received {already_received}, "
            f"attempted {attempted}; at most {limit} may be accepted (tolerance {tolerance}%)",
            field="lines",
        )
        self.line_no = line_no
        self.ordered = ordered
        self.already_received = already_received
        self.attempted = attempted
        self.limit = limit


class NotCancellable(RuleViolation):
    pass


class AlreadyBilled(NotCancellable):
    pass


class ReceiptTooLarge(RuleViolation):
    pass


class NotClosable(RuleViolation):
    pass


# Per-tenant configuration, passed into the commands.


@dataclass(frozen=True)
class ApprovalLevel:
    min_amount: Decimal  # KES; the level applies from this amount up
    role: str


@dataclass(frozen=True)
class ApprovalChain:
    """Who must approve an order of a given amount (in KES).

    A level with minimum 0 is required, so that no order goes unapproved.
    """

    levels: tuple[ApprovalLevel, ...] = (
        ApprovalLevel(Decimal(0), "approver"),
        ApprovalLevel(Decimal(100_000), "finance"),
        ApprovalLevel(Decimal(1_000_000), "director"),
    )

    def __post_init__(self) -> None:
        roles = [level.role for level in self.levels]
        if any(not role.strip() for role in roles) or len(set(roles)) != len(roles):
            raise InvalidApprovalChain("approval roles must be named and distinct", field="levels")
        if any(not level.min_amount.is_finite() or level.min_amount < 0 for level in self.levels):
            raise InvalidApprovalChain("approval thresholds must be 0 or more", field="levels")
        if not any(level.min_amount == 0 for level in self.levels):
            raise InvalidApprovalChain("one approval level must start at 0", field="levels")

    def roles_for(self, amount_kes: Decimal) -> list[str]:
        ordered = sorted(self.levels, key=lambda level: level.min_amount)
        return [level.role for level in ordered if amount_kes >= level.min_amount]


# Lines.


@dataclass(frozen=True)
class OrderLine:
    """A line as the requester enters it; `tax_rate` is the percent of `tax_code` at entry."""

    item_id: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    tax_code: str | None = None
    tax_rate: Decimal = ZERO


@dataclass(frozen=True)
class PurchaseOrderLine:
    line_no: int
    item_id: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    tax_code: str | None
    tax_rate: Decimal
    net_amount: Decimal
    tax_amount: Decimal
    total_amount: Decimal
    accepted_quantity: Decimal = ZERO
    rejected_quantity: Decimal = ZERO

    @property
    def fully_accepted(self) -> bool:
        return self.accepted_quantity >= self.quantity

    def acceptance_limit(self, tolerance: Decimal) -> Decimal:
        return self.quantity * (1 + tolerance / HUNDRED)

    @property
    def accepted_amount(self) -> Decimal:
        """What the accepted goods come to, priced and taxed as the line is (rounded once)."""
        if self.accepted_quantity == self.quantity:
            return self.total_amount
        return sum(_priced(self.accepted_quantity, self.unit_price, self.tax_rate), ZERO)

    def as_event_record(self) -> dict[str, Any]:
        """The line as it is entered, for events (received quantities are events of their own)."""
        return {
            "line_no": self.line_no,
            "item_id": self.item_id,
            "description": self.description,
            "quantity": self.quantity,
            "unit": self.unit,
            "unit_price": self.unit_price,
            "tax_code": self.tax_code,
            "tax_rate": self.tax_rate,
            "net_amount": self.net_amount,
            "tax_amount": self.tax_amount,
            "total_amount": self.total_amount,
        }

    @classmethod
    def from_event_record(cls, record: dict[str, Any]) -> PurchaseOrderLine:
        return cls(**record)


def _decimal(value: object, name: str) -> Decimal:
    # int is exact; float is refused so that no binary fraction reaches money.
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise NotADecimal(f"{name} must be a decimal number, not {value!r}", field=name)
    amount = Decimal(value)
    if not amount.is_finite():
        raise NotADecimal(f"{name} must be a finite number, not {value}", field=name)
    return amount


def _not_blank(value: str, name: str) -> str:
    if not value.strip():
        raise BlankField(f"{name} must not be blank", field=name)
    return value.strip()


def _iso_date(value: str, name: str) -> date:
    if _ISO_DATE.fullmatch(value):
        with suppress(ValueError):  # e.g. 2026-02-30
            return date.fromisoformat(value)
    raise InvalidDate(f"{name} must be a date as YYYY-MM-DD, not {value!r}", field=name)


def _reason(reason: str) -> str:
    if not reason.strip():
        raise ReasonRequired("a reason is required", field="reason")
    return reason.strip()


def _priced(quantity: Decimal, unit_price: Decimal, tax_rate: Decimal) -> tuple[Decimal, Decimal]:
    """Net and tax of `quantity` at `unit_price`: the net rounded to cents once, the tax on it."""
    net = amount_in_cents(quantity * unit_price, "unit_price", "quantity * unit_price")
    return net, to_cents(net * tax_rate / HUNDRED)


def price_line(line_no: int, line: OrderLine) -> PurchaseOrderLine:
    """Checks an entered line and prices it, rounding to cents once at the line."""
    item_id = _not_blank(line.item_id, "item_id")
    unit = _not_blank(line.unit, "unit")
    quantity = _decimal(line.quantity, "quantity")
    if quantity <= 0:
        raise InvalidQuantity(f"quantity must be greater than zero, not {quantity}", field="quantity")
    unit_price = _decimal(line.unit_price, "unit_price")
    if unit_price < 0:
        raise InvalidPrice(f"unit_price must not be negative, not {unit_price}", field="unit_price")
    tax_rate = _decimal(line.tax_rate, "tax_rate")
    if not ZERO <= tax_rate <= HUNDRED:
        raise InvalidTaxRate(f"tax_rate must be a percent from 0 to 100, not {tax_rate}", field="tax_rate")
    tax_code = (line.tax_code or "").strip() or None
    if tax_rate and tax_code is None:
        raise TaxCodeRequired("a taxed line names the treasury tax code its rate comes from",
                              field="tax_code")
    net, tax = _priced(quantity, unit_price, tax_rate)
    return PurchaseOrderLine(
        line_no=line_no, item_id=item_id, description=line.description.strip(), quantity=quantity,
        unit=unit, unit_price=unit_price, tax_code=tax_code, tax_rate=tax_rate,
        net_amount=net, tax_amount=tax, total_amount=net + tax,
    )


def _total(records: Sequence[dict[str, Any]]) -> Decimal:
    return sum((r["total_amount"] for r in records), ZERO)


# Receipts name a line by its number (int) or by its item (str).
LineRef = int | str


class PurchaseOrder(Aggregate):
    @event("Created")
    def __init__(
        self,
        tenant_id: str,
        number: str,
        vendor_id: str,
        currency: str,
        lines: list[dict[str, Any]],
        total_amount: Decimal,
        requested_by: str,
        required_by: str | None,
        ordered_on: str,
    ) -> None:
        self.tenant_id = tenant_id
        self.number = number
        self.vendor_id = vendor_id
        self.currency = currency
        self.requested_by = requested_by
        self.required_by = required_by
        self.ordered_on = ordered_on
        self.status = Status.DRAFT
        self.lines: list[PurchaseOrderLine] = []
        self.total_amount = ZERO
        self._set_lines(lines, total_amount)
        self.required_roles: list[str] = []
        self.approvals: dict[str, str] = {}  # role -> approver_id
        self.exchange_rate_to_kes: Decimal | None = None
        self.rejection_reason: str | None = None
        self.receipt_ids: list[str] = []
        self.cancel_reason: str | None = None
        self.close_reason: str | None = None

    @classmethod
    def create(
        cls,
        *,
        tenant_id: str,
        number: str,
        vendor_id: str,
        currency: str = DEFAULT_CURRENCY,
        lines: Sequence[OrderLine] = (),
        requested_by: str,
        required_by: str | None = None,
        today: str,
    ) -> PurchaseOrder:
        if not _NUMBER.fullmatch(number):
            raise InvalidNumber(f"number must look like PO-YYYY-NNNNNN, not {number!r}", field="number")
        if not _CURRENCY.fullmatch(currency):
            raise InvalidCurrency(f"currency must be a 3-letter ISO code, not {currency!r}",
                                  field="currency")
        ordered_on = _iso_date(today, "today")
        if required_by is not None and _iso_date(required_by, "required_by") < ordered_on:
            raise RequiredByInPast(f"required_by {required_by} is before today ({today})",
                                   field="required_by")
        records = []
        for index, line in enumerate(lines):
            try:
                records.append(price_line(index + 1, line).as_event_record())
            except InvalidValue as error:  # named as the body names it: lines.<index>.<field>
                error.field = f"lines.{index}" + (f".{error.field}" if error.field else "")
                raise
        return cls(
            tenant_id=_not_blank(tenant_id, "tenant_id"),
            number=number,
            vendor_id=_not_blank(vendor_id, "vendor_id"),
            currency=currency,
            lines=records,
            total_amount=_total(records),
            requested_by=_not_blank(requested_by, "requested_by"),
            required_by=required_by,
            ordered_on=today,
        )

    def _set_lines(self, records: list[dict[str, Any]], total_amount: Decimal) -> None:
        # Copies: the event keeps its own list, the aggregate its own lines.
        self.lines = [PurchaseOrderLine.from_event_record(dict(r)) for r in records]
        self.total_amount = total_amount

    # Lines (draft only).

    def _require_draft(self, doing: str) -> None:
        if self.status is not Status.DRAFT:
            raise NotDraft(f"the purchase order is {self.status.value}; only a draft can {doing}")

    def _line(self, line_no: int) -> PurchaseOrderLine:
        for line in self.lines:
            if line.line_no == line_no:
                return line
        raise UnknownLine(f"the purchase order has no line {line_no}", field="line_no")

    def _next_line_no(self) -> int:
        return max((line.line_no for line in self.lines), default=0) + 1

    def add_line(self, line: OrderLine) -> int:
        self._require_draft("change its lines")
        added = price_line(self._next_line_no(), line)
        self._change_lines("added", added.line_no, [*self.lines, added])
        return added.line_no

    def update_line(self, line_no: int, line: OrderLine) -> None:
        self._require_draft("change its lines")
        self._line(line_no)
        updated = price_line(line_no, line)
        self._change_lines("updated", line_no,
                           [updated if old.line_no == line_no else old for old in self.lines])

    def remove_line(self, line_no: int) -> None:
        self._require_draft("change its lines")
        self._line(line_no)
        self._change_lines("removed", line_no, [old for old in self.lines if old.line_no != line_no])

    def _change_lines(self, change: str, line_no: int, lines: list[PurchaseOrderLine]) -> None:
        records = [line.as_event_record() for line in lines]
        self._lines_changed(change=change, line_no=line_no, lines=records, total_amount=_total(records))

    @event("LinesChanged")
    def _lines_changed(
        self, change: str, line_no: int, lines: list[dict[str, Any]], total_amount: Decimal
    ) -> None:
        self._set_lines(lines, total_amount)

    # Approval.

    def submit(
        self,
        *,
        chain: ApprovalChain | None = None,
        exchange_rate_to_kes: Decimal | None = None,
    ) -> None:
        self._require_draft("be submitted")
        if not self.lines:
            raise NoLines("a purchase order needs at least one line to be submitted")
        if self.currency == THRESHOLD_CURRENCY:
            if exchange_rate_to_kes is not None and exchange_rate_to_kes != 1:
                raise InvalidExchangeRate(
                    f"a KES order has no exchange rate other than 1, not {exchange_rate_to_kes}",
                    field="exchange_rate_to_kes",
                )
            rate = None
            amount_kes = self.total_amount
        else:
            if exchange_rate_to_kes is None:
                raise ExchangeRateRequired(
                    f"approval thresholds are in KES: a {self.currency} order needs its "
                    f"exchange rate to KES",
                    field="exchange_rate_to_kes",
                )
            rate = _decimal(exchange_rate_to_kes, "exchange_rate_to_kes")
            if rate <= 0:
                raise InvalidExchangeRate(f"exchange_rate_to_kes must be positive, not {rate}",
                                          field="exchange_rate_to_kes")
            amount_kes = amount_in_cents(self.total_amount * rate, "exchange_rate_to_kes",
                                         "total_amount * exchange_rate_to_kes")
        self._submitted(
            required_roles=(chain or ApprovalChain()).roles_for(amount_kes),
            total_amount=self.total_amount,
            currency=self.currency,
            exchange_rate_to_kes=rate,
            amount_kes=amount_kes,
        )

    @event("Submitted")
    def _submitted(
        self,
        required_roles: list[str],
        total_amount: Decimal,
        currency: str,
        exchange_rate_to_kes: Decimal | None,
        amount_kes: Decimal,
    ) -> None:
        self.status = Status.SUBMITTED
        self.required_roles = list(required_roles)
        self.approvals = {}
        self.exchange_rate_to_kes = exchange_rate_to_kes
        self.rejection_reason = None

    @property
    def pending_roles(self) -> list[str]:
        return [role for role in self.required_roles if role not in self.approvals]

    def require_submitted(self, doing: str) -> None:
        if self.status is not Status.SUBMITTED:
            raise NotAwaitingApproval(
                f"the purchase order is {self.status.value}; only a submitted one can be {doing}"
            )

    def approve(self, approver_id: str, role: str) -> None:
        self.require_submitted("approved")
        approver_id = _not_blank(approver_id, "approver_id")
        if approver_id == self.requested_by:
            raise SelfApproval(f"{approver_id} requested this purchase order and cannot approve it")
        if role not in self.required_roles:
            raise RoleNotRequired(
                f"role {role!r} is not needed; this purchase order needs "
                f"{', '.join(self.required_roles)}",
                field="role",
            )
        if role in self.approvals:
            raise RoleAlreadyApproved(f"role {role!r} was already approved by {self.approvals[role]}",
                                      field="role")
        if approver_id in self.approvals.values():
            raise ApproverAlreadyApproved(f"{approver_id} has already approved this purchase order")
        self._approved(
            approver_id=approver_id,
            role=role,
            fully_approved=set(self.pending_roles) == {role},
        )

    @event("Approved")
    def _approved(self, approver_id: str, role: str, fully_approved: bool) -> None:
        self.approvals[role] = approver_id
        if fully_approved:
            self.status = Status.APPROVED

    def reject(self, approver_id: str, reason: str) -> None:
        self.require_submitted("rejected")
        approver_id = _not_blank(approver_id, "approver_id")
        if approver_id == self.requested_by:
            raise SelfApproval(
                f"{approver_id} requested this purchase order and cannot reject it; cancel it instead"
            )
        self._rejected(approver_id=approver_id, reason=_reason(reason))

    @event("Rejected")
    def _rejected(self, approver_id: str, reason: str) -> None:
        self.status = Status.DRAFT
        self.rejection_reason = reason
        self.approvals = {}
        self.required_roles = []
        self.exchange_rate_to_kes = None

    # Goods receipt.

    def _resolve(self, ref: LineRef) -> PurchaseOrderLine:
        if isinstance(ref, bool):
            raise UnknownLine(f"a receipt line names a line number or an item, not {ref!r}", field="lines")
        if isinstance(ref, int):
            for line in self.lines:
                if line.line_no == ref:
                    return line
            raise UnknownLine(f"the purchase order has no line {ref}", field="lines")
        matches = [line for line in self.lines if line.item_id == ref]
        if not matches:
            raise UnknownLine(f"the purchase order has no line for item {ref!r}", field="lines")
        if len(matches) > 1:
            raise AmbiguousItem(
                f"item {ref!r} is on lines {', '.join(str(m.line_no) for m in matches)}; "
                f"name the line number",
                field="lines",
            )
        return matches[0]

    def link_bill(self, bill_id: str, status: str) -> bool:
        """Treasury's bill for this order (treasury.bill.created); answers whether it changed."""
        if self.status in (Status.DRAFT, Status.SUBMITTED, Status.CANCELLED):
            raise NotBillable(f"purchase order {self.number} is {self.status.value}; it cannot be billed")
        if not bill_id.strip():
            raise InvalidValue("a bill needs its id", field="bill_id")
        if (bill_id, status) == (getattr(self, "bill_id", None), getattr(self, "bill_status", None)):
            return False
        self._bill_linked(bill_id=bill_id, status=status)
        return True

    @event("BillLinked")
    def _bill_linked(self, bill_id: str, status: str) -> None:
        self.bill_id = bill_id
        self.bill_status = status

    def receive(
        self,
        receipt_id: str,
        lines: Sequence[tuple[LineRef, Decimal, Decimal]],
        *,
        received_on: str,
        today: str,
        tolerance: Decimal = ZERO,
    ) -> None:
        """Records one goods receipt, dated `received_on` (from the order's date to `today`);
        `tolerance` is the over-receipt allowance in percent."""
        if self.status is Status.RECEIVED:
            raise NotApproved("every line of the purchase order is already received")
        if self.status not in RECEIVABLE:
            raise NotApproved(f"the purchase order is {self.status.value}; goods are received only "
                              f"against an approved order")
        receipt_id = _not_blank(receipt_id, "receipt_id")
        if receipt_id in self.receipt_ids:
            raise DuplicateReceipt(f"goods receipt {receipt_id} is already recorded", field="receipt_id")
        if not self.ordered_on <= _iso_date(received_on, "received_on").isoformat() <= today:
            raise InvalidDate(f"received_on {received_on} must be from the order's date ({self.ordered_on}) "
                              f"to today ({today})", field="received_on")
        tolerance = _decimal(tolerance, "tolerance")
        if tolerance < 0:
            raise InvalidTolerance(f"tolerance must not be negative, not {tolerance}", field="tolerance")
        if not lines:
            raise EmptyReceipt("a goods receipt needs at least one line", field="lines")
        records: list[dict[str, Any]] = []
        for ref, accepted_qty, rejected_qty in lines:
            line = self._resolve(ref)
            if any(r["line_no"] == line.line_no for r in records):
                raise LineReceivedTwice(f"line {line.line_no} appears twice in receipt {receipt_id}",
                                        field="lines")
            accepted = _decimal(accepted_qty, "accepted_quantity")
            rejected = _decimal(rejected_qty, "rejected_quantity")
            if accepted < 0 or rejected < 0 or accepted + rejected <= 0:
                raise EmptyReceiptLine(
                    f"line {line.line_no}: accepted ({accepted}) and rejected ({rejected}) must not be "
                    f"negative and must add up to more than zero",
                    field="lines",
                )
            limit = line.acceptance_limit(tolerance)
            if line.accepted_quantity + accepted > limit:
                raise OverReceipt(
                    line_no=line.line_no, item_id=line.item_id, ordered=line.quantity,
                    already_received=line.accepted_quantity, attempted=accepted, limit=limit,
                    tolerance=tolerance,
                )
            if rejected > limit:  # rejected goods go back (and may be replaced): no more than the line
                raise ReceiptTooLarge(
                    f"line {line.line_no} ({line.item_id}): rejected {rejected} is more than the line "
                    f"orders ({limit}: ordered {line.quantity}, tolerance {tolerance}%)", field="lines")
            records.append({
                "line_no": line.line_no,
                "item_id": line.item_id,
                "unit": line.unit,
                "accepted_quantity": accepted,
                "rejected_quantity": rejected,
            })
        self._goods_received(receipt_id=receipt_id, received_on=received_on, lines=records,
                             vendor_id=self.vendor_id)
        if all(line.fully_accepted for line in self.lines):
            self._billable()

    @event("GoodsReceived")
    def _goods_received(
        self, receipt_id: str, received_on: str, lines: list[dict[str, Any]], vendor_id: str
    ) -> None:
        received = {r["line_no"]: r for r in lines}
        self.lines = [
            replace(
                line,
                accepted_quantity=line.accepted_quantity + received[line.line_no]["accepted_quantity"],
                rejected_quantity=line.rejected_quantity + received[line.line_no]["rejected_quantity"],
            )
            if line.line_no in received
            else line
            for line in self.lines
        ]
        self.receipt_ids.append(receipt_id)
        self.status = Status.PARTIALLY_RECEIVED

    def _billable(self) -> None:
        """`Received` (treasury makes the bill from it) for what the goods accepted come to: the
        order's total when every line came as ordered."""
        self._received(vendor_id=self.vendor_id, currency=self.currency,
                       total_amount=sum((line.accepted_amount for line in self.lines), ZERO))

    @event("Received")
    def _received(self, vendor_id: str, total_amount: Decimal, currency: str) -> None:
        self.status = Status.RECEIVED

    # Ending.

    def cancel(self, reason: str) -> None:
        if self.status not in CANCELLABLE:
            raise NotCancellable(
                f"the purchase order is {self.status.value}; it can be cancelled only before goods arrive"
            )
        if getattr(self, "bill_id", None):
            raise AlreadyBilled(f"treasury has billed purchase order {self.number} (bill "
                                f"{self.bill_id}): it can no longer be cancelled")
        self._cancelled(reason=_reason(reason))

    @event("Cancelled")
    def _cancelled(self, reason: str) -> None:
        self.status = Status.CANCELLED
        self.cancel_reason = reason

    def close(self, reason: str | None = None) -> None:
        """Closes a received order, or short-closes a partly received one (with a reason)."""
        if self.status is Status.RECEIVED:
            self._closed(reason=(reason or "").strip() or None, short_closed=False)
        elif self.status is Status.PARTIALLY_RECEIVED:
            reason = _reason(reason or "")
            if any(line.accepted_quantity for line in self.lines):
                self._billable()  # what did come is billed; the rest never will be
            self._closed(reason=reason, short_closed=True)
        else:
            raise NotClosable(
                f"the purchase order is {self.status.value}; only a received or partly received "
                f"order can be closed"
            )

    @event("Closed")
    def _closed(self, reason: str | None, short_closed: bool) -> None:
        self.status = Status.CLOSED
        self.close_reason = reason
