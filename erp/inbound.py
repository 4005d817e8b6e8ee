"""What each platform service's events do here: one subscription per consumed event.

Effects on aggregates go through commands (so they become events like any other);
facts we only keep (stock, shipments, telemetry, budgets) go to read models in the
transaction that records the event's id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from aggregates.errors import InvalidValue
from erp.commands import CommandContext, CommandRunner, crm, hrm, procurement, tenancy
from projections import references as ref
from streams.envelope import Envelope
from streams.events import inbound as i
from streams.events.auth import TenantAnnounced, UserAnnounced
from streams.inbound import Subscription

Write = Callable[[Any, Envelope[Any]], Awaitable[None]]


class UnstorableValue(InvalidValue):
    """A value of the event no column can hold, such as a number too large."""


def auth(runner: CommandRunner) -> list[Subscription]:
    """A tenant is registered (with default settings) when the auth service creates it;
    users' references follow their accounts."""

    async def tenant(event: Envelope[TenantAnnounced], ctx: CommandContext) -> object:
        return await tenancy.register(runner, ctx, event.data.name, event.data.status)

    async def user(event: Envelope[UserAnnounced], ctx: CommandContext) -> object:
        data = event.data
        return await tenancy.sync_user(runner, ctx, data.user_id, data.email, data.name, data.active)

    return [Subscription("auth.tenant.created", TenantAnnounced, tenant),
            Subscription("auth.tenant.updated", TenantAnnounced, tenant),
            Subscription("auth.user.created", UserAnnounced, user),
            Subscription("auth.user.updated", UserAnnounced, user)]


def treasury(runner: CommandRunner) -> list[Subscription]:
    """Invoices link to won opportunities, bills to purchase orders; a payment marks the
    payroll run paid. Treasury documents about something else are not ours: acknowledged."""

    async def invoice(event: Envelope[i.InvoiceCreated], ctx: CommandContext) -> object:
        d = event.data
        return d.opportunity_id and await crm.link_invoice(runner, ctx, d.opportunity_id, d.invoice_id,
                                                           d.status)

    async def payment(event: Envelope[i.PaymentProcessed], ctx: CommandContext) -> object:
        d = event.data
        return d.payroll_id and await hrm.mark_paid(runner, ctx, d.payroll_id, d.payment_id)

    async def bill(event: Envelope[i.BillCreated], ctx: CommandContext) -> object:
        d = event.data
        return d.purchase_order_id and await procurement.link_bill(runner, ctx, d.purchase_order_id,
                                                                   d.bill_id, d.status)

    return [Subscription("treasury.invoice.created", i.InvoiceCreated, invoice),
            Subscription("treasury.payment.processed", i.PaymentProcessed, payment),
            Subscription("treasury.bill.created", i.BillCreated, bill)]


def recorded(pool: AsyncConnectionPool[Any], consumer: str, write: Write) -> Any:
    """A handler writing a read model once per event_id, in one transaction."""

    async def handle(event: Envelope[Any], ctx: CommandContext) -> object:
        try:
            async with pool.connection() as conn, conn.transaction():
                if await ref.first_time(conn, consumer, event):
                    await write(conn, event)
        except psycopg.DataError as error:  # retrying cannot help: refused (parked, or 422 as a webhook)
            raise UnstorableValue(f"{event.event_type}: {error}") from None
        return None

    return handle


def facts(pool: AsyncConnectionPool[Any]) -> dict[str, list[Subscription]]:
    """The facts we keep from inventory, logistics, POS, IoT and projects, by service."""

    def on(consumer: str, subject: str, payload: type[Any], write: Write) -> Subscription:
        return Subscription(subject, payload, recorded(pool, consumer, write))

    return {
        "inventory": [on("erp-inventory", "inventory.stock.updated", i.StockUpdated, ref.stock_updated),
                      on("erp-inventory", "inventory.movement.recorded", i.MovementRecorded,
                         ref.movement_recorded),
                      on("erp-inventory", "inventory.reservation.created", i.ReservationCreated,
                         ref.reservation_created)],
        "logistics": [on("erp-logistics", "logistics.shipment.created", i.ShipmentChanged,
                         ref.shipment_changed),
                      on("erp-logistics", "logistics.shipment.delivered", i.ShipmentChanged,
                         ref.shipment_changed)],
        "pos": [on("erp-pos", "pos.order.created", i.PosOrderCreated, ref.pos_order_created)],
        "iot": [on("erp-iot", "iot.telemetry.received", i.TelemetryReceived, ref.telemetry_received),
                on("erp-iot", "iot.alert.triggered", i.AlertTriggered, ref.alert_triggered)],
        "projects": [on("erp-projects", "projects.budget.updated", i.BudgetUpdated, ref.budget_updated)],
    }


def subscriptions(runner: CommandRunner, pool: AsyncConnectionPool[Any]) -> dict[str, list[Subscription]]:
    """Every consumed event of the integration guide, by the service that publishes it."""
    return {"auth": auth(runner), "treasury": treasury(runner), **facts(pool)}
