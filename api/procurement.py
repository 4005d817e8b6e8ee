"""Procurement routes: purchase orders, their lines, approval, goods receipt, and a vendor's
open commitments.

The requester, approvers and rejecters are the authenticated user; approving for a role
needs that role in the user's token.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aggregates.purchase_order import LineRef, OrderLine
from api import reads
from api import requests as rq
from api.auth import principal
from api.openapi import operation
from api.reads import PageQuery, ReadQuery
from api.requests import IDEMPOTENCY, IF_MATCH, CommandAccepted, accepted
from api.responses import JSON
from erp.commands import NotFound
from erp.commands import procurement as commands
from erp.identity import Forbidden

PROJECTION = "purchase_orders"
BASE = "/api/v1/procurement/purchase-orders"
COMMAND_ERRORS = (400, 404, 409, 412, 422, 503)
COMMAND_HEADERS = (IF_MATCH, IDEMPOTENCY)

Quantity = Field(gt=0, max_digits=18, decimal_places=6)
Received = Field(default=Decimal(0), ge=0, max_digits=18, decimal_places=6)
Reason = Field(min_length=1, max_length=500)
Status = Literal["draft", "submitted", "approved", "partially_received", "received", "closed",
                 "cancelled"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Line(Body):
    item_id: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=500)
    quantity: Decimal = Quantity
    unit: str = Field(min_length=1, max_length=32)
    unit_price: Decimal = Field(ge=0, max_digits=18, decimal_places=2)
    tax_code: str | None = Field(default=None, max_length=64,
                                 description="the treasury tax code the rate comes from")
    tax_rate: Decimal = Field(default=Decimal(0), ge=0, le=100, max_digits=5, decimal_places=2,
                              description="percent, as the tax code gives it today")

    def entered(self) -> OrderLine:
        return OrderLine(item_id=self.item_id, description=self.description,
                         quantity=self.quantity, unit=self.unit, unit_price=self.unit_price,
                         tax_code=self.tax_code, tax_rate=self.tax_rate)


class CreatePurchaseOrder(Body):
    vendor_id: str = Field(min_length=1, max_length=200)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$",
                                 description="ISO 4217; default: the tenant's currency (its business terms)")
    required_by: date | None = None
    lines: list[Line] = Field(default_factory=list, max_length=500)


class UpdateLine(Line):
    line_no: int = Field(ge=1)


class RemoveLine(Body):
    line_no: int = Field(ge=1)


class Submit(Body):
    exchange_rate_to_kes: Decimal | None = Field(
        default=None, gt=0, max_digits=18, decimal_places=6,
        description="KES per unit of the order's currency; required unless it is KES",
    )


class Approve(Body):
    role: str = Field(min_length=1, max_length=64, description="the approval level approved")


class Reject(Body):
    reason: str = Reason


class ReceiptLine(Body):
    line_no: int | None = Field(default=None, ge=1, description="the line; or name its item_id")
    item_id: str | None = Field(default=None, min_length=1, max_length=200)
    accepted_quantity: Decimal = Received
    rejected_quantity: Decimal = Received

    @model_validator(mode="after")
    def names_one_line(self) -> ReceiptLine:
        if (self.line_no is None) == (self.item_id is None):
            raise ValueError("name the line by exactly one of line_no and item_id")
        return self

    def received(self) -> tuple[LineRef, Decimal, Decimal]:
        ref: LineRef = self.line_no if self.line_no is not None else str(self.item_id)
        return ref, self.accepted_quantity, self.rejected_quantity


class Receive(Body):
    receipt_id: str | None = Field(
        default=None, min_length=1, max_length=100,
        description="the goods receipt's id, refused if already recorded; without it a new id "
                    "is made, and only an Idempotency-Key keeps a resent request from counting twice",
    )
    received_on: date | None = Field(default=None, description="default: today")
    lines: list[ReceiptLine] = Field(min_length=1, max_length=500)


class Cancel(Body):
    reason: str = Reason


class Close(Body):
    reason: str | None = Field(default=None, max_length=500,
                               description="required to short-close a partly received order")


class ListQuery(PageQuery):
    status: Status | None = None
    vendor_id: str | None = None
    number: str | None = None


class Approval(BaseModel):
    role: str
    approver_id: str
    approved_at: datetime


class PurchaseOrderView(BaseModel):
    purchase_order_id: UUID
    tenant_id: str
    number: str
    vendor_id: str
    currency: str
    status: Status
    requested_by: str
    required_by: date | None
    ordered_on: date
    line_count: int
    net_amount: Decimal
    tax_amount: Decimal
    total_amount: Decimal
    exchange_rate_to_kes: Decimal | None
    amount_kes: Decimal | None = Field(description="the total in KES that set the approvals")
    required_roles: list[str]
    approvals: list[Approval]
    pending_roles: list[str]
    rejection_reason: str | None
    cancel_reason: str | None
    close_reason: str | None
    short_closed: bool
    bill_id: str | None = Field(default=None, description="treasury's bill, once it made one")
    bill_status: str | None = None
    version: int
    log_position: int
    created_at: datetime
    updated_at: datetime


class LineView(BaseModel):
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
    accepted_quantity: Decimal
    rejected_quantity: Decimal
    open_quantity: Decimal = Field(description="ordered but not yet accepted")


class ReceiptLineView(BaseModel):
    line_no: int
    item_id: str
    unit: str
    accepted_quantity: Decimal
    rejected_quantity: Decimal


class ReceiptView(BaseModel):
    receipt_id: str
    received_on: date
    recorded_at: datetime
    lines: list[ReceiptLineView]


class PurchaseOrderDetail(PurchaseOrderView):
    lines: list[LineView]
    receipts: list[ReceiptView]


class PurchaseOrderPage(BaseModel):
    items: list[PurchaseOrderView]
    next_cursor: str | None
    log_position: int = Field(description="the read model's position when it was read")


class Commitment(BaseModel):
    currency: str
    open_orders: int
    ordered_amount: Decimal = Field(description="total of the orders, tax included")
    open_amount: Decimal = Field(description="the part not yet received, tax included")


class Commitments(BaseModel):
    vendor_id: str
    commitments: list[Commitment]
    log_position: int


_ORDER_COLUMNS = ", ".join(c for c in PurchaseOrderView.model_fields if c != "pending_roles")
_LINE_COLUMNS = ", ".join(c for c in LineView.model_fields if c != "open_quantity")


def _order(row: dict[str, Any]) -> dict[str, Any]:
    approved = {a["role"] for a in row["approvals"]}
    view = {k: row[k] for k in PurchaseOrderView.model_fields if k != "pending_roles"}
    return {**view, "pending_roles": [r for r in row["required_roles"] if r not in approved]}


def _purchase_order_id(request: Request) -> UUID:
    purchase_order_id: UUID = request.path_params["purchase_order_id"]
    return purchase_order_id


@operation(scope="procurement:write",
           summary="Create a purchase order (draft), numbered PO-<year>-<n> per tenant "
                   "(publishes erp.purchase_order.created)",
           body=CreatePurchaseOrder, response=CommandAccepted, status=201,
           errors=(400, 409, 422, 503), headers=(IDEMPOTENCY,))
async def create_purchase_order(request: Request) -> Response:
    cmd = await rq.body(request, CreatePurchaseOrder)
    saved = await commands.create_purchase_order(
        reads.service(request).runner, await rq.command_context(request),
        vendor_id=cmd.vendor_id, currency=cmd.currency, requested_by=principal(request).subject,
        required_by=cmd.required_by.isoformat() if cmd.required_by else None,
        lines=[line.entered() for line in cmd.lines],
    )
    return accepted(saved, created_at=BASE)


@operation(scope="procurement:write",
           summary="Add a line to a draft purchase order", body=Line, response=CommandAccepted,
           errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def add_line(request: Request) -> Response:
    cmd = await rq.body(request, Line)
    saved = await commands.add_line(reads.service(request).runner, await rq.command_context(request),
                                    _purchase_order_id(request), cmd.entered())
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Change a line of a draft purchase order", body=UpdateLine,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def update_line(request: Request) -> Response:
    cmd = await rq.body(request, UpdateLine)
    saved = await commands.update_line(reads.service(request).runner, await rq.command_context(request),
                                       _purchase_order_id(request), cmd.line_no, cmd.entered())
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Remove a line from a draft purchase order", body=RemoveLine,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def remove_line(request: Request) -> Response:
    cmd = await rq.body(request, RemoveLine)
    saved = await commands.remove_line(reads.service(request).runner, await rq.command_context(request),
                                       _purchase_order_id(request), cmd.line_no)
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Submit a draft for approval: the tenant's approval chain sets the roles "
                   "needed from the amount in KES",
           body=Submit, response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def submit(request: Request) -> Response:
    cmd = await rq.body(request, Submit)
    saved = await commands.submit(reads.service(request).runner, await rq.command_context(request),
                                  _purchase_order_id(request), cmd.exchange_rate_to_kes)
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Approve a submitted purchase order for one role (never by its requester)",
           body=Approve, response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def approve(request: Request) -> Response:
    cmd = await rq.body(request, Approve)
    approver = principal(request)
    if cmd.role not in approver.roles:
        raise Forbidden(f"approving for {cmd.role!r} needs that role")
    saved = await commands.approve(reads.service(request).runner, await rq.command_context(request),
                                   _purchase_order_id(request), approver.subject, cmd.role)
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Reject a submitted purchase order back to draft (by a holder of a pending role)",
           body=Reject,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def reject(request: Request) -> Response:
    cmd = await rq.body(request, Reject)
    rejecter = principal(request)
    saved = await commands.reject(reads.service(request).runner, await rq.command_context(request),
                                  _purchase_order_id(request), rejecter.subject, rejecter.roles, cmd.reason)
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Record a goods receipt against an approved order, within the tenant's "
                   "over-receipt tolerance (publishes erp.purchase_order.goods_received, and "
                   "erp.purchase_order.received once every line is in)",
           body=Receive, response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def receive(request: Request) -> Response:
    cmd = await rq.body(request, Receive)
    saved = await commands.receive(
        reads.service(request).runner, await rq.command_context(request), _purchase_order_id(request),
        receipt_id=cmd.receipt_id,
        received_on=cmd.received_on.isoformat() if cmd.received_on else None,
        lines=[line.received() for line in cmd.lines],
    )
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Cancel a purchase order before any goods arrive", body=Cancel,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def cancel(request: Request) -> Response:
    cmd = await rq.body(request, Cancel)
    saved = await commands.cancel(reads.service(request).runner, await rq.command_context(request),
                                  _purchase_order_id(request), cmd.reason)
    return accepted(saved)


@operation(scope="procurement:write",
           summary="Close a received order, or short-close a partly received one with a reason",
           body=Close, response=CommandAccepted, errors=COMMAND_ERRORS, headers=COMMAND_HEADERS)
async def close(request: Request) -> Response:
    cmd = await rq.body(request, Close)
    saved = await commands.close(reads.service(request).runner, await rq.command_context(request),
                                 _purchase_order_id(request), cmd.reason)
    return accepted(saved)


@operation(scope="procurement:read",
           summary="List purchase orders, newest first", query=ListQuery,
           response=PurchaseOrderPage, errors=(400, 422, 503))
async def list_purchase_orders(request: Request) -> Response:
    params = rq.query(request, ListQuery)
    position = await reads.caught_up(request, PROJECTION, params)
    where, args = reads.filters(request, params, ("status", "vendor_id", "number"))
    rows, cursor = await reads.page(request, params, table="purchase_orders",
                                    columns=_ORDER_COLUMNS, where=where, args=args)
    return JSON({
        "items": [_order(r) for r in rows],
        "next_cursor": cursor,
        "log_position": position,
    })


@operation(scope="procurement:read",
           summary="One purchase order with its lines and goods receipts", query=ReadQuery,
           response=PurchaseOrderDetail, errors=(400, 404, 422, 503))
async def get_purchase_order(request: Request) -> Response:
    await reads.caught_up(request, PROJECTION, rq.query(request, ReadQuery))
    purchase_order_id, tenant = _purchase_order_id(request), rq.tenant(request)
    found, lines, received = await reads.rows_of_each(
        request,
        (f"SELECT {_ORDER_COLUMNS} FROM purchase_orders "
         "WHERE purchase_order_id = %s AND tenant_id = %s", (purchase_order_id, tenant)),
        (f"SELECT {_LINE_COLUMNS}, greatest(quantity - accepted_quantity, 0) AS open_quantity "
         "FROM purchase_order_lines WHERE purchase_order_id = %s AND tenant_id = %s "
         "ORDER BY line_no", (purchase_order_id, tenant)),
        ("SELECT receipt_id, received_on, recorded_at, line_no, item_id, unit, accepted_quantity, "
         "rejected_quantity FROM purchase_order_receipts "
         "WHERE purchase_order_id = %s AND tenant_id = %s ORDER BY version, line_no",
         (purchase_order_id, tenant)),
    )
    if not found:
        raise NotFound("purchase order", purchase_order_id)
    receipts: dict[str, dict[str, Any]] = {}
    for r in received:
        receipt = receipts.setdefault(r["receipt_id"], {
            "receipt_id": r["receipt_id"], "received_on": r["received_on"],
            "recorded_at": r["recorded_at"], "lines": [],
        })
        receipt["lines"].append({k: r[k] for k in ReceiptLineView.model_fields})
    return JSON({**_order(found[0]), "lines": lines, "receipts": list(receipts.values())},
                headers={"ETag": f'"{found[0]["version"]}"'})


@operation(scope="procurement:read",
           summary="A vendor's open commitments per currency: the value not yet received of "
                   "its approved and partly received orders",
           query=ReadQuery, response=Commitments, errors=(400, 422, 503))
async def vendor_commitments(request: Request) -> Response:
    position = await reads.caught_up(request, PROJECTION, rq.query(request, ReadQuery))
    vendor_id: str = request.path_params["vendor_id"]
    rows = await reads.rows(
        request,
        "SELECT o.currency, count(DISTINCT o.purchase_order_id) AS open_orders, "
        "sum(l.total_amount) AS ordered_amount, "
        "round(sum(l.total_amount * greatest(l.quantity - l.accepted_quantity, 0) / l.quantity), 2) "
        "AS open_amount "
        "FROM purchase_orders o JOIN purchase_order_lines l "
        "ON l.purchase_order_id = o.purchase_order_id AND l.tenant_id = o.tenant_id "
        "WHERE o.tenant_id = %s AND o.vendor_id = %s "
        "AND o.status IN ('approved', 'partially_received') "
        "GROUP BY o.currency ORDER BY o.currency",
        (rq.tenant(request), vendor_id),
    )
    return JSON({"vendor_id": vendor_id, "commitments": rows, "log_position": position})


_ONE = BASE + "/{purchase_order_id:uuid}"
ROUTES = [
    Route(BASE, create_purchase_order, methods=["POST"]),
    Route(BASE, list_purchase_orders, methods=["GET"]),
    Route(_ONE, get_purchase_order, methods=["GET"]),
    Route(_ONE + "/add-line", add_line, methods=["POST"]),
    Route(_ONE + "/update-line", update_line, methods=["POST"]),
    Route(_ONE + "/remove-line", remove_line, methods=["POST"]),
    Route(_ONE + "/submit", submit, methods=["POST"]),
    Route(_ONE + "/approve", approve, methods=["POST"]),
    Route(_ONE + "/reject", reject, methods=["POST"]),
    Route(_ONE + "/receive", receive, methods=["POST"]),
    Route(_ONE + "/cancel", cancel, methods=["POST"]),
    Route(_ONE + "/close", close, methods=["POST"]),
    Route("/api/v1/procurement/vendors/{vendor_id}/commitments", vendor_commitments,
          methods=["GET"]),
]
