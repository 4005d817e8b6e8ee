"""Procurement events on the wire.

`erp.purchase_order.created` and `erp.purchase_order.received` are catalogued by the
integration guide; `received` carries exactly the guide's four fields (treasury
creates the bill from it). `goods_received` is one per goods receipt, for inventory
to record the stock movement.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from aggregates.purchase_order import PurchaseOrder
from streams.events.base import Publication, domain_event

AGGREGATE_TYPE = "purchase_order"


class PurchaseOrderLine(msgspec.Struct, frozen=True, kw_only=True):
    line_no: int
    item_id: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    tax_code: str | None  # a treasury tax code
    tax_rate: Decimal  # percent, as looked up from the tax code when the line was entered
    net_amount: Decimal
    tax_amount: Decimal
    total_amount: Decimal


class GoodsReceiptLine(msgspec.Struct, frozen=True, kw_only=True):
    line_no: int
    item_id: str
    unit: str
    accepted_quantity: Decimal
    rejected_quantity: Decimal


class PurchaseOrderCreated(msgspec.Struct, frozen=True, kw_only=True):
    """Integration guide: `erp.purchase_order.created` (notifications)."""

    purchase_order_id: UUID
    number: str
    vendor_id: str
    currency: str
    lines: list[PurchaseOrderLine]
    total_amount: Decimal
    requested_by: str
    required_by: str | None
    ordered_on: str


class PurchaseOrderLinesChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The whole set of lines after one was added, updated or removed."""

    purchase_order_id: UUID
    change: str  # added | updated | removed
    line_no: int
    lines: list[PurchaseOrderLine]
    total_amount: Decimal


class PurchaseOrderSubmitted(msgspec.Struct, frozen=True, kw_only=True):
    purchase_order_id: UUID
    required_roles: list[str]
    total_amount: Decimal
    currency: str
    exchange_rate_to_kes: Decimal | None
    amount_kes: Decimal


class PurchaseOrderApproved(msgspec.Struct, frozen=True, kw_only=True):
    purchase_order_id: UUID
    approver_id: str
    role: str
    fully_approved: bool


class PurchaseOrderRejected(msgspec.Struct, frozen=True, kw_only=True):
    purchase_order_id: UUID
    approver_id: str
    reason: str


class PurchaseOrderGoodsReceived(msgspec.Struct, frozen=True, kw_only=True):
    purchase_order_id: UUID
    receipt_id: str
    received_on: str
    vendor_id: str
    lines: list[GoodsReceiptLine]


class PurchaseOrderReceived(msgspec.Struct, frozen=True, kw_only=True):
    """Integration guide: `erp.purchase_order.received` (treasury bill, inventory). Once per
    order, when every line has come or when a partly received order is short-closed;
    `total_amount` is what the goods accepted come to, priced and taxed as ordered."""

    purchase_order_id: UUID
    vendor_id: str
    total_amount: Decimal
    currency: str


class PurchaseOrderCancelled(msgspec.Struct, frozen=True, kw_only=True):
    purchase_order_id: UUID
    reason: str


class PurchaseOrderClosed(msgspec.Struct, frozen=True, kw_only=True):
    purchase_order_id: UUID
    reason: str | None
    short_closed: bool


def _lines(records: list[dict[str, Any]]) -> list[PurchaseOrderLine]:
    return [PurchaseOrderLine(**r) for r in records]


class PurchaseOrderBillLinked(msgspec.Struct, frozen=True, kw_only=True):
    """Treasury billed the order (from treasury.bill.created)."""

    purchase_order_id: UUID
    bill_id: str
    status: str


PUBLICATIONS: dict[type, Publication] = {
    domain_event(PurchaseOrder, "Created"): Publication(
        "erp.purchase_order.created", PurchaseOrderCreated, AGGREGATE_TYPE,
        lambda e: PurchaseOrderCreated(
            purchase_order_id=e.originator_id, number=e.number, vendor_id=e.vendor_id,
            currency=e.currency, lines=_lines(e.lines), total_amount=e.total_amount,
            requested_by=e.requested_by, required_by=e.required_by, ordered_on=e.ordered_on,
        ),
    ),
    domain_event(PurchaseOrder, "LinesChanged"): Publication(
        "erp.purchase_order.lines_changed", PurchaseOrderLinesChanged, AGGREGATE_TYPE,
        lambda e: PurchaseOrderLinesChanged(
            purchase_order_id=e.originator_id, change=e.change, line_no=e.line_no,
            lines=_lines(e.lines), total_amount=e.total_amount,
        ),
    ),
    domain_event(PurchaseOrder, "Submitted"): Publication(
        "erp.purchase_order.submitted", PurchaseOrderSubmitted, AGGREGATE_TYPE,
        lambda e: PurchaseOrderSubmitted(
            purchase_order_id=e.originator_id, required_roles=list(e.required_roles),
            total_amount=e.total_amount, currency=e.currency,
            exchange_rate_to_kes=e.exchange_rate_to_kes, amount_kes=e.amount_kes,
        ),
    ),
    domain_event(PurchaseOrder, "Approved"): Publication(
        "erp.purchase_order.approved", PurchaseOrderApproved, AGGREGATE_TYPE,
        lambda e: PurchaseOrderApproved(
            purchase_order_id=e.originator_id, approver_id=e.approver_id, role=e.role,
            fully_approved=e.fully_approved,
        ),
    ),
    domain_event(PurchaseOrder, "Rejected"): Publication(
        "erp.purchase_order.rejected", PurchaseOrderRejected, AGGREGATE_TYPE,
        lambda e: PurchaseOrderRejected(
            purchase_order_id=e.originator_id, approver_id=e.approver_id, reason=e.reason
        ),
    ),
    domain_event(PurchaseOrder, "GoodsReceived"): Publication(
        "erp.purchase_order.goods_received", PurchaseOrderGoodsReceived, AGGREGATE_TYPE,
        lambda e: PurchaseOrderGoodsReceived(
            purchase_order_id=e.originator_id, receipt_id=e.receipt_id, received_on=e.received_on,
            vendor_id=e.vendor_id, lines=[GoodsReceiptLine(**r) for r in e.lines],
        ),
    ),
    domain_event(PurchaseOrder, "Received"): Publication(
        "erp.purchase_order.received", PurchaseOrderReceived, AGGREGATE_TYPE,
        lambda e: PurchaseOrderReceived(
            purchase_order_id=e.originator_id, vendor_id=e.vendor_id,
            total_amount=e.total_amount, currency=e.currency,
        ),
    ),
    domain_event(PurchaseOrder, "BillLinked"): Publication(
        "erp.purchase_order.bill_linked", PurchaseOrderBillLinked, AGGREGATE_TYPE,
        lambda e: PurchaseOrderBillLinked(purchase_order_id=e.originator_id, bill_id=e.bill_id,
                                          status=e.status),
    ),
    domain_event(PurchaseOrder, "Cancelled"): Publication(
        "erp.purchase_order.cancelled", PurchaseOrderCancelled, AGGREGATE_TYPE,
        lambda e: PurchaseOrderCancelled(purchase_order_id=e.originator_id, reason=e.reason),
    ),
    domain_event(PurchaseOrder, "Closed"): Publication(
        "erp.purchase_order.closed", PurchaseOrderClosed, AGGREGATE_TYPE,
        lambda e: PurchaseOrderClosed(
            purchase_order_id=e.originator_id, reason=e.reason, short_closed=e.short_closed
        ),
    ),
}
