"""Purchase orders read models: the orders (status, totals, approvals so far), their lines
with ordered, accepted and rejected quantities, and the goods receipts line by line.
A vendor's open commitments are a query over the orders and lines (see api/procurement.py).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from projections.base import (
    STEP,
    Delivered,
    Statements,
    rows_of,
    to_json,
    unbounded_numeric,
    versioned_change,
)
from streams.events import procurement as p

DDL = """
CREATE TABLE IF NOT EXISTS purchase_orders (
    purchase_order_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    number text NOT NULL,
    vendor_id text NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    requested_by text NOT NULL,
    required_by date,
    ordered_on date NOT NULL,
    line_count integer NOT NULL,
    net_amount numeric NOT NULL,
    tax_amount numeric NOT NULL,
    total_amount numeric NOT NULL,
    exchange_rate_to_kes numeric,
    amount_kes numeric,
    required_roles text[] NOT NULL DEFAULT '{}',
    approvals jsonb NOT NULL DEFAULT '[]',
    rejection_reason text,
    cancel_reason text,
    close_reason text,
    short_closed boolean NOT NULL DEFAULT false,
    version integer NOT NULL,
    created_position bigint NOT NULL,
    log_position bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
ALTER TABLE purchase_orders ADD COLUMN IF NOT EXISTS bill_id text;
ALTER TABLE purchase_orders ADD COLUMN IF NOT EXISTS bill_status text;
CREATE INDEX IF NOT EXISTS purchase_orders_tenant_created
    ON purchase_orders (tenant_id, created_position DESC);
CREATE INDEX IF NOT EXISTS purchase_orders_tenant_status ON purchase_orders (tenant_id, status);
CREATE INDEX IF NOT EXISTS purchase_orders_tenant_vendor
    ON purchase_orders (tenant_id, vendor_id, status);
CREATE INDEX IF NOT EXISTS purchase_orders_tenant_number ON purchase_orders (tenant_id, number);
CREATE TABLE IF NOT EXISTS purchase_order_lines (
    purchase_order_id uuid NOT NULL,
    line_no integer NOT NULL,
    tenant_id text NOT NULL,
    item_id text NOT NULL,
    description text NOT NULL,
    quantity numeric NOT NULL,
    unit text NOT NULL,
    unit_price numeric NOT NULL,
    tax_code text,
    tax_rate numeric NOT NULL,
    net_amount numeric NOT NULL,
    tax_amount numeric NOT NULL,
    total_amount numeric NOT NULL,
    accepted_quantity numeric NOT NULL DEFAULT 0,
    rejected_quantity numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (purchase_order_id, line_no)
);
CREATE TABLE IF NOT EXISTS purchase_order_receipts (
    purchase_order_id uuid NOT NULL,
    receipt_id text NOT NULL,
    line_no integer NOT NULL,
    tenant_id text NOT NULL,
    received_on date NOT NULL,
    item_id text NOT NULL,
    unit text NOT NULL,
    accepted_quantity numeric NOT NULL,
    rejected_quantity numeric NOT NULL,
    version integer NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (purchase_order_id, receipt_id, line_no)
);
""" + unbounded_numeric("purchase_orders", "purchase_order_lines")

# The order's row changes only on top of the version before it, so a replayed event is a
# no-op. Lines and receipts change first, and only while the order is still at the
# version they build on (`base`), so they too change once.
_NEXT = "version = %(v)s, log_position = %(pos)s, updated_at = %(at)s"
_WHERE = "WHERE purchase_order_id = %(id)s AND version = %(v)s - 1"
_AT_BASE = "EXISTS (SELECT 1 FROM purchase_orders WHERE purchase_order_id = %(id)s AND version = %(base)s)"

# A change's lines travel as one JSON array, all inserted by one statement.
_LINE_COLUMNS = ("line_no, item_id, description, quantity, unit, unit_price, tax_code, tax_rate, "
                 "net_amount, tax_amount, total_amount")
_LINE_TYPES = """line_no integer, item_id text, description text,
    quantity numeric, unit text, unit_price numeric, tax_code text, tax_rate numeric, net_amount numeric,
    tax_amount numeric, total_amount numeric"""
_LINES = f"jsonb_to_recordset(%(lines)s::jsonb) AS l({_LINE_TYPES})"

# Row-set statements (`Statements.add_row`) for the commonest changes: a batch's orders share
# each execution. A created order's lines go in only if the order was not there before the
# statement (both parts see the table as it was), so a replay inserts neither.
_CREATED = f"""
WITH r AS (SELECT * FROM {rows_of(f"{STEP}, tenant text, number text, vendor_id text, currency text, "
                                  "requested_by text, required_by date, ordered_on date, line_count integer, "
                                  "net numeric, tax numeric, total numeric, lines jsonb")}),
lines AS (
    INSERT INTO purchase_order_lines (purchase_order_id, tenant_id, {_LINE_COLUMNS})
    SELECT r.id, r.tenant, l.* FROM r, jsonb_to_recordset(r.lines) AS l({_LINE_TYPES})
    WHERE NOT EXISTS (SELECT 1 FROM purchase_orders o WHERE o.purchase_order_id = r.id)
    ON CONFLICT (purchase_order_id, line_no) DO NOTHING)
INSERT INTO purchase_orders (purchase_order_id, tenant_id, number, vendor_id, currency, status,
    requested_by, required_by, ordered_on, line_count, net_amount, tax_amount, total_amount,
    version, created_position, log_position, created_at, updated_at)
SELECT r.id, r.tenant, r.number, r.vendor_id, r.currency, 'draft', r.requested_by, r.required_by,
    r.ordered_on, r.line_count, r.net, r.tax, r.total, r.v, r.pos, r.pos, r.at, r.at FROM r
ON CONFLICT (purchase_order_id) DO NOTHING
"""


def _change(columns: str, assignments: str) -> str:
    return versioned_change("purchase_orders", "purchase_order_id", columns, assignments)


_SUBMITTED = _change("roles text[], rate numeric, amount_kes numeric",
                     "status = 'submitted', required_roles = r.roles, approvals = '[]', "
                     "exchange_rate_to_kes = r.rate, amount_kes = r.amount_kes, rejection_reason = NULL")
_APPROVED = _change("role text, approver_id text, fully boolean",
                    "approvals = t.approvals || jsonb_build_array(jsonb_build_object("
                    "'role', r.role, 'approver_id', r.approver_id, 'approved_at', r.at)), "
                    "status = CASE WHEN r.fully THEN 'approved' ELSE t.status END")
_REJECTED = _change("reason text", "status = 'draft', rejection_reason = r.reason, approvals = '[]', "
                    "required_roles = '{}', exchange_rate_to_kes = NULL, amount_kes = NULL")
_RECEIVED = _change("", "status = 'received'")
_BILLED = _change("bill_id text, status text", "bill_id = r.bill_id, bill_status = r.status")
_CANCELLED = _change("reason text", "status = 'cancelled', cancel_reason = r.reason")
_CLOSED = _change("reason text, short_closed boolean",
                  "status = 'closed', close_reason = r.reason, short_closed = r.short_closed")

# The rest: a statement per change (goods receipts and line changes touch several tables).
_DROP_LINES = f"DELETE FROM purchase_order_lines WHERE purchase_order_id = %(id)s AND {_AT_BASE}"
_PUT_LINES = f"""
INSERT INTO purchase_order_lines (purchase_order_id, tenant_id, {_LINE_COLUMNS})
SELECT %(id)s, %(tenant)s, l.* FROM {_LINES}
WHERE {_AT_BASE}
ON CONFLICT (purchase_order_id, line_no) DO NOTHING
"""
_LINES_CHANGED = f"""
UPDATE purchase_orders SET line_count = %(line_count)s, net_amount = %(net)s, tax_amount = %(tax)s,
    total_amount = %(total)s, {_NEXT} {_WHERE}
"""
_RECEIPT_LINE = f"""
INSERT INTO purchase_order_receipts (purchase_order_id, receipt_id, line_no, tenant_id,
    received_on, item_id, unit, accepted_quantity, rejected_quantity, version, recorded_at)
SELECT %(id)s, %(receipt_id)s::text, %(line_no)s, %(tenant)s, %(received_on)s::date,
    %(item_id)s::text, %(unit)s::text, %(accepted)s, %(rejected)s, %(v)s, %(at)s
WHERE {_AT_BASE}
ON CONFLICT DO NOTHING
"""
_LINE_RECEIVED = f"""
UPDATE purchase_order_lines SET accepted_quantity = accepted_quantity + %(accepted)s,
    rejected_quantity = rejected_quantity + %(rejected)s
WHERE purchase_order_id = %(id)s AND line_no = %(line_no)s AND {_AT_BASE}
"""
_GOODS_RECEIVED = f"UPDATE purchase_orders SET status = 'partially_received', {_NEXT} {_WHERE}"


def _totals(lines: list[p.PurchaseOrderLine]) -> dict[str, Any]:
    return {
        "line_count": len(lines),
        "net": sum((line.net_amount for line in lines), Decimal(0)),
        "tax": sum((line.tax_amount for line in lines), Decimal(0)),
    }


class PurchaseOrdersProjection:
    name = "purchase_orders"
    ddl = DDL
    _reads: dict[str, type[Any]] = {
        "erp.purchase_order.created": p.PurchaseOrderCreated,
        "erp.purchase_order.lines_changed": p.PurchaseOrderLinesChanged,
        "erp.purchase_order.submitted": p.PurchaseOrderSubmitted,
        "erp.purchase_order.approved": p.PurchaseOrderApproved,
        "erp.purchase_order.rejected": p.PurchaseOrderRejected,
        "erp.purchase_order.goods_received": p.PurchaseOrderGoodsReceived,
        "erp.purchase_order.received": p.PurchaseOrderReceived,
        "erp.purchase_order.cancelled": p.PurchaseOrderCancelled,
        "erp.purchase_order.closed": p.PurchaseOrderClosed,
        "erp.purchase_order.bill_linked": p.PurchaseOrderBillLinked,
    }

    def reads(self, subject: str) -> type[Any] | None:
        return self._reads.get(subject)

    def apply(self, out: Statements, event: Delivered) -> None:
        assert event.envelope is not None
        data: Any = event.envelope.data
        tenant, at = event.envelope.tenant_id, event.envelope.timestamp
        v = event.aggregate_version
        key = data.purchase_order_id
        step = {"id": key, "v": v, "pos": event.log_position, "at": at}

        match data:
            case p.PurchaseOrderCreated():
                out.add_row(_CREATED, key, {
                    **step, **_totals(data.lines), "tenant": tenant, "number": data.number,
                    "vendor_id": data.vendor_id, "currency": data.currency,
                    "requested_by": data.requested_by, "required_by": data.required_by,
                    "ordered_on": data.ordered_on, "total": data.total_amount, "lines": data.lines,
                })
            case p.PurchaseOrderLinesChanged():
                # The event carries the whole set of lines after the change: replace them.
                out.add(_DROP_LINES, {"id": key, "base": v - 1})
                out.add(_PUT_LINES, {"id": key, "tenant": tenant, "base": v - 1,
                                     "lines": to_json(data.lines)})
                out.add(_LINES_CHANGED, {**step, **_totals(data.lines), "total": data.total_amount})
            case p.PurchaseOrderSubmitted():
                out.add_row(_SUBMITTED, key, {
                    **step, "roles": data.required_roles, "rate": data.exchange_rate_to_kes,
                    "amount_kes": data.amount_kes,
                })
            case p.PurchaseOrderApproved():
                out.add_row(_APPROVED, key, {**step, "role": data.role, "approver_id": data.approver_id,
                                             "fully": data.fully_approved})
            case p.PurchaseOrderRejected():
                out.add_row(_REJECTED, key, {**step, "reason": data.reason})
            case p.PurchaseOrderGoodsReceived():
                for line in data.lines:
                    received = {**step, "base": v - 1, "line_no": line.line_no,
                                "accepted": line.accepted_quantity,
                                "rejected": line.rejected_quantity}
                    out.add(_RECEIPT_LINE, {
                        **received, "tenant": tenant, "receipt_id": data.receipt_id,
                        "received_on": data.received_on, "item_id": line.item_id,
                        "unit": line.unit,
                    })
                    out.add(_LINE_RECEIVED, received)
                out.add(_GOODS_RECEIVED, step)
            case p.PurchaseOrderReceived():
                out.add_row(_RECEIVED, key, step)
            case p.PurchaseOrderBillLinked():
                out.add_row(_BILLED, key, {**step, "bill_id": data.bill_id, "status": data.status})
            case p.PurchaseOrderCancelled():
                out.add_row(_CANCELLED, key, {**step, "reason": data.reason})
            case p.PurchaseOrderClosed():
                out.add_row(_CLOSED, key, {**step, "reason": data.reason, "short_closed": data.short_closed})
