"""Read models of other services' facts, written by the inbound consumers (not projected
from our stream): stock, movements, reservations, shipments, POS orders, device telemetry
and alerts, project budgets. Each write happens in the transaction that records the
inbound event's id, so a redelivery writes nothing twice; "latest" facts only move forward
in time, so a late redelivery of an older fact never overwrites a newer one."""

from __future__ import annotations

import json
from typing import Any

from psycopg import AsyncConnection

from streams.envelope import Envelope
from streams.events import inbound as i

DDL = """
CREATE TABLE IF NOT EXISTS inbound_events (
    consumer text NOT NULL,
    event_id uuid NOT NULL,
    subject text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    source text NOT NULL, delivery_id text NOT NULL, event_id uuid NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, delivery_id)
);
CREATE TABLE IF NOT EXISTS stock_levels (
    tenant_id text NOT NULL, item_id text NOT NULL, warehouse_id text NOT NULL,
    stock_level numeric(18, 3) NOT NULL, as_of timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, item_id, warehouse_id)
);
CREATE TABLE IF NOT EXISTS stock_movements (
    tenant_id text NOT NULL, movement_id text NOT NULL, item_id text NOT NULL, warehouse_id text,
    quantity numeric(18, 3) NOT NULL, reference text, recorded_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, movement_id)
);
CREATE TABLE IF NOT EXISTS stock_reservations (
    tenant_id text NOT NULL, reservation_id text NOT NULL, item_id text NOT NULL,
    quantity numeric(18, 3) NOT NULL, order_id text, created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, reservation_id)
);
CREATE TABLE IF NOT EXISTS shipments (
    tenant_id text NOT NULL, shipment_id text NOT NULL, order_id text, tracking_number text,
    status text NOT NULL, created_at timestamptz, delivered_at timestamptz, as_of timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, shipment_id)
);
CREATE TABLE IF NOT EXISTS pos_orders (
    tenant_id text NOT NULL, order_id text NOT NULL, total_amount numeric(18, 2) NOT NULL,
    currency text NOT NULL, outlet_id text, ordered_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, order_id)
);
CREATE TABLE IF NOT EXISTS device_telemetry (
    tenant_id text NOT NULL, device_id text NOT NULL, metrics jsonb NOT NULL,
    recorded_at timestamptz NOT NULL, PRIMARY KEY (tenant_id, device_id)
);
CREATE TABLE IF NOT EXISTS device_alerts (
    tenant_id text NOT NULL, alert_id text NOT NULL, device_id text NOT NULL, severity text NOT NULL,
    message text NOT NULL, work_order_id uuid, triggered_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, alert_id)
);
CREATE INDEX IF NOT EXISTS device_alerts_work_order ON device_alerts (tenant_id, work_order_id);
CREATE TABLE IF NOT EXISTS project_budgets (
    tenant_id text NOT NULL, project_id text NOT NULL, budget numeric(18, 2) NOT NULL,
    spent numeric(18, 2), currency text NOT NULL, as_of timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, project_id)
);
"""

Conn = AsyncConnection[Any]


async def first_time(conn: Conn, consumer: str, envelope: Envelope[Any]) -> bool:
    """Records the event's id for `consumer`; False if it was recorded before (a redelivery)."""
    cur = await conn.execute(
        "INSERT INTO inbound_events (consumer, event_id, subject) VALUES (%s, %s, %s) "
        "ON CONFLICT DO NOTHING", (consumer, envelope.event_id, envelope.event_type))
    return cur.rowcount == 1


async def stock_updated(conn: Conn, e: Envelope[i.StockUpdated]) -> None:
    await conn.execute(
        "INSERT INTO stock_levels AS s VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (tenant_id, item_id, warehouse_id) DO UPDATE SET stock_level = excluded.stock_level, "
        "as_of = excluded.as_of WHERE s.as_of < excluded.as_of",
        (e.tenant_id, e.data.item_id, e.data.warehouse_id, e.data.stock_level, e.timestamp))


async def movement_recorded(conn: Conn, e: Envelope[i.MovementRecorded]) -> None:
    d = e.data
    await conn.execute(
        "INSERT INTO stock_movements VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (e.tenant_id, d.movement_id, d.item_id, d.warehouse_id, d.quantity, d.reference, e.timestamp))


async def reservation_created(conn: Conn, e: Envelope[i.ReservationCreated]) -> None:
    d = e.data
    await conn.execute(
        "INSERT INTO stock_reservations VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (e.tenant_id, d.reservation_id, d.item_id, d.quantity, d.order_id, e.timestamp))


async def shipment_changed(conn: Conn, e: Envelope[i.ShipmentChanged]) -> None:
    d, delivered = e.data, e.event_type.endswith(".delivered")
    await conn.execute(
        "INSERT INTO shipments AS s (tenant_id, shipment_id, order_id, tracking_number, status, created_at, "
        "delivered_at, as_of) VALUES (%(t)s, %(id)s, %(order)s, %(tracking)s, %(status)s, %(created)s, "
        "%(delivered)s, %(at)s) ON CONFLICT (tenant_id, shipment_id) DO UPDATE SET "
        "order_id = coalesce(excluded.order_id, s.order_id), "
        "tracking_number = coalesce(excluded.tracking_number, s.tracking_number), "
        "created_at = coalesce(s.created_at, excluded.created_at), "
        "delivered_at = coalesce(s.delivered_at, excluded.delivered_at), "
        # delivered is final: a late "created" never takes it back
        "status = CASE WHEN s.status = 'delivered' THEN s.status ELSE excluded.status END, "
        "as_of = greatest(s.as_of, excluded.as_of)",
        {"t": e.tenant_id, "id": d.shipment_id, "order": d.order_id, "tracking": d.tracking_number,
         "status": "delivered" if delivered else "created", "created": None if delivered else e.timestamp,
         "delivered": e.timestamp if delivered else None, "at": e.timestamp})


async def pos_order_created(conn: Conn, e: Envelope[i.PosOrderCreated]) -> None:
    d = e.data
    await conn.execute(
        "INSERT INTO pos_orders VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (e.tenant_id, d.order_id, d.total_amount, d.currency, d.outlet_id, e.timestamp))


async def telemetry_received(conn: Conn, e: Envelope[i.TelemetryReceived]) -> None:
    d = e.data
    await conn.execute(
        "INSERT INTO device_telemetry AS t VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT (tenant_id, device_id) "
        "DO UPDATE SET metrics = excluded.metrics, recorded_at = excluded.recorded_at "
        "WHERE t.recorded_at < excluded.recorded_at",
        (e.tenant_id, d.device_id, json.dumps(d.metrics), d.recorded_at or e.timestamp))


async def alert_triggered(conn: Conn, e: Envelope[i.AlertTriggered]) -> None:
    d = e.data
    await conn.execute(
        "INSERT INTO device_alerts VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (e.tenant_id, d.alert_id, d.device_id, d.severity, d.message, d.work_order_id, e.timestamp))


async def budget_updated(conn: Conn, e: Envelope[i.BudgetUpdated]) -> None:
    d = e.data
    await conn.execute(
        "INSERT INTO project_budgets AS b VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (tenant_id, project_id) DO UPDATE SET budget = excluded.budget, "
        "spent = excluded.spent, currency = excluded.currency, "
        "as_of = excluded.as_of WHERE b.as_of < excluded.as_of",
        (e.tenant_id, d.project_id, d.budget, d.spent, d.currency, e.timestamp))
