"""Procurement commands: purchase orders, from draft through approval to goods receipt.

A new order takes the next number of its tenant's "PO" series for the year; the order
and the series are saved in one transaction, so numbers are gap-free and never reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID, uuid4
from weakref import WeakKeyDictionary

from aggregates.dates import business_date
from aggregates.numbering import DocumentSeries
from aggregates.purchase_order import LineRef, OrderLine, PurchaseOrder
from erp.commands import CommandContext, CommandRunner, Loader
from erp.eventstore import Saved
from erp.identity import Forbidden

SERIES_PREFIX = "PO"

# Creations in one process take a series' numbers one at a time: left to race, each
# would clash on the series' version and retry, and a burst would run out of retries.
# Other processes still race, and the runner's retries settle that.
_numbering: WeakKeyDictionary[CommandRunner, dict[UUID, asyncio.Lock]] = WeakKeyDictionary()


def _series_lock(runner: CommandRunner, series_id: UUID) -> asyncio.Lock:
    return _numbering.setdefault(runner, {}).setdefault(series_id, asyncio.Lock())


async def create_purchase_order(
    runner: CommandRunner, ctx: CommandContext, *, vendor_id: str, currency: str | None,
    requested_by: str, required_by: str | None, lines: Sequence[OrderLine],
) -> Saved:
    today = business_date()
    series_id = DocumentSeries.id_for(ctx.tenant_id, SERIES_PREFIX, today.year)

    def decide(load: Loader) -> tuple[PurchaseOrder, DocumentSeries]:
        series = load.find(DocumentSeries, series_id) or DocumentSeries(
            tenant_id=ctx.tenant_id, prefix=SERIES_PREFIX, year=today.year
        )
        order = PurchaseOrder.create(
            tenant_id=ctx.tenant_id, number=series.issue(), vendor_id=vendor_id,
            currency=currency or load.read_settings().currency, lines=lines, requested_by=requested_by,
            required_by=required_by, today=today.isoformat(),
        )
        return order, series

    async with _series_lock(runner, series_id):
        return await runner.execute(ctx, decide)


async def add_line(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, line: OrderLine
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.add_line(line)
        return order

    return await runner.execute(ctx, decide)


async def update_line(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, line_no: int,
    line: OrderLine,
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.update_line(line_no, line)
        return order

    return await runner.execute(ctx, decide)


async def remove_line(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, line_no: int
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.remove_line(line_no)
        return order

    return await runner.execute(ctx, decide)


async def submit(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID,
    exchange_rate_to_kes: Decimal | None,
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.submit(chain=load.read_settings().approval_chain, exchange_rate_to_kes=exchange_rate_to_kes)
        return order

    return await runner.execute(ctx, decide)


async def approve(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, approver_id: str,
    role: str,
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.approve(approver_id, role)
        return order

    return await runner.execute(ctx, decide)


async def reject(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, approver_id: str,
    roles: frozenset[str], reason: str,
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.require_submitted("rejected")  # before the roles: a draft has none pending
        if not roles & set(order.pending_roles):
            raise Forbidden(f"rejecting needs one of the pending roles: {', '.join(order.pending_roles)}")
        order.reject(approver_id, reason)
        return order

    return await runner.execute(ctx, decide)


async def receive(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, *,
    receipt_id: str | None, received_on: str | None,
    lines: Sequence[tuple[LineRef, Decimal, Decimal]],
) -> Saved:
    """Records a goods receipt. Without a client's receipt id a new one is made here, once
    per request: a resent request is then a second receipt unless it repeats its
    Idempotency-Key."""
    receipt = receipt_id or str(uuid4())
    today = business_date().isoformat()

    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.receive(receipt, lines, received_on=received_on or today, today=today,
                      tolerance=load.read_settings().over_receipt_percent)
        return order

    return await runner.execute(ctx, decide)


async def cancel(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, reason: str
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.cancel(reason)
        return order

    return await runner.execute(ctx, decide)


async def close(
    runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, reason: str | None
) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.target(PurchaseOrder, purchase_order_id)
        order.close(reason)
        return order

    return await runner.execute(ctx, decide)


async def link_bill(runner: CommandRunner, ctx: CommandContext, purchase_order_id: UUID, bill_id: str,
                    status: str) -> Saved:
    def decide(load: Loader) -> PurchaseOrder:
        order = load.get(PurchaseOrder, purchase_order_id)
        order.link_bill(bill_id, status)
        return order

    return await runner.execute(ctx, decide)
