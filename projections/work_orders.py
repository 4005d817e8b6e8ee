"""Manufacturing read models: bills of materials with their versions, and work orders with
required vs consumed materials, yield and costs.

Quantities and amounts are unconstrained `numeric`: the domain has already rounded them,
and a read model must never refuse an event the event store accepted.

While a work order is in progress its labour, overhead, total and unit cost are estimates
recomputed here by the work order's own rules (see aggregates/work_order.py); on
completion they are replaced by the figures the Completed event carries.
"""

from __future__ import annotations

from typing import Any

from projections.base import Delivered, Statements
from streams.events import manufacturing as m

BOMS_DDL = """
CREATE TABLE IF NOT EXISTS boms (
    bom_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    product_id text NOT NULL,
    latest_version integer NOT NULL DEFAULT 0,
    version integer NOT NULL,
    created_position bigint NOT NULL,
    log_position bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS boms_tenant_product ON boms (tenant_id, product_id);
CREATE INDEX IF NOT EXISTS boms_tenant_created ON boms (tenant_id, created_position DESC);
CREATE TABLE IF NOT EXISTS bom_versions (
    bom_id uuid NOT NULL,
    bom_version integer NOT NULL,
    tenant_id text NOT NULL,
    product_id text NOT NULL,
    process_loss_percent numeric NOT NULL,
    labour_cost_per_unit numeric,
    overhead_percent numeric NOT NULL,
    published_at timestamptz NOT NULL,
    PRIMARY KEY (bom_id, bom_version)
);
CREATE TABLE IF NOT EXISTS bom_version_items (
    bom_id uuid NOT NULL,
    bom_version integer NOT NULL,
    line integer NOT NULL,
    tenant_id text NOT NULL,
    item_id text NOT NULL,
    quantity_per_unit numeric NOT NULL,
    unit text NOT NULL,
    PRIMARY KEY (bom_id, bom_version, line)
);
CREATE INDEX IF NOT EXISTS bom_version_items_tenant_item ON bom_version_items (tenant_id, item_id);
"""

WORK_ORDERS_DDL = """
CREATE TABLE IF NOT EXISTS work_orders (
    work_order_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    product_id text NOT NULL,
    status text NOT NULL,
    planned_quantity numeric NOT NULL,
    produced_quantity numeric NOT NULL DEFAULT 0,
    scrap_quantity numeric NOT NULL DEFAULT 0,
    production_yield numeric NOT NULL DEFAULT 0,
    currency text NOT NULL,
    bom_id uuid,
    bom_version integer,
    process_loss_percent numeric,
    labour_cost_per_unit numeric,
    overhead_percent numeric,
    labour_hours numeric NOT NULL DEFAULT 0,
    recorded_labour_cost numeric NOT NULL DEFAULT 0,
    materials_cost numeric NOT NULL DEFAULT 0,
    labour_cost numeric NOT NULL DEFAULT 0,
    overhead_cost numeric NOT NULL DEFAULT 0,
    total_cost numeric NOT NULL DEFAULT 0,
    unit_cost numeric,
    stop_reason text,
    cancel_reason text,
    version integer NOT NULL,
    created_position bigint NOT NULL,
    log_position bigint NOT NULL,
    created_at timestamptz NOT NULL,
    released_at timestamptz,
    started_at timestamptz,
    completed_at timestamptz,
    cancelled_at timestamptz,
    closed_at timestamptz,
    updated_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS work_orders_tenant_created ON work_orders (tenant_id, created_position DESC);
CREATE INDEX IF NOT EXISTS work_orders_tenant_status ON work_orders (tenant_id, status);
CREATE INDEX IF NOT EXISTS work_orders_tenant_product ON work_orders (tenant_id, product_id);
CREATE TABLE IF NOT EXISTS work_order_materials (
    work_order_id uuid NOT NULL,
    item_id text NOT NULL,
    tenant_id text NOT NULL,
    line integer NOT NULL,
    unit text NOT NULL,
    quantity_per_unit numeric NOT NULL,
    required_quantity numeric NOT NULL,
    consumed_quantity numeric NOT NULL DEFAULT 0,
    consumed_cost numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (work_order_id, item_id)
);
"""

# Each change applies only on top of the version before it, so a replayed event is a no-op.
_BOM_CREATED = """
INSERT INTO boms (bom_id, tenant_id, product_id, version, created_position, log_position,
    created_at, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (bom_id) DO NOTHING
"""
_BOM_VERSION_PUBLISHED = """
UPDATE boms SET latest_version = %(bom_version)s, version = %(v)s, log_position = %(pos)s,
    updated_at = %(at)s
WHERE bom_id = %(id)s AND version = %(v)s - 1
"""
_BOM_VERSION = """
INSERT INTO bom_versions (bom_id, bom_version, tenant_id, product_id, process_loss_percent,
    labour_cost_per_unit, overhead_percent, published_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
_BOM_ITEM = """
INSERT INTO bom_version_items (bom_id, bom_version, line, tenant_id, item_id, quantity_per_unit, unit)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""

_CREATED = """
INSERT INTO work_orders (work_order_id, tenant_id, product_id, status, planned_quantity, currency,
    version, created_position, log_position, created_at, updated_at)
VALUES (%s, %s, %s, 'draft', %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (work_order_id) DO NOTHING
"""
_NEXT = "version = %(v)s, log_position = %(pos)s, updated_at = %(at)s"
_WHERE = "WHERE work_order_id = %(id)s AND version = %(v)s - 1"
_RELEASED = f"""
UPDATE work_orders SET status = 'released', bom_id = %(bom_id)s, bom_version = %(bom_version)s,
    process_loss_percent = %(process_loss_percent)s,
    labour_cost_per_unit = %(labour_cost_per_unit)s, overhead_percent = %(overhead_percent)s,
    released_at = %(at)s, {_NEXT} {_WHERE}
"""
_MATERIAL = """
INSERT INTO work_order_materials (work_order_id, item_id, tenant_id, line, unit, quantity_per_unit,
    required_quantity)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
_STARTED = f"UPDATE work_orders SET status = 'in_progress', started_at = %(at)s, {_NEXT} {_WHERE}"
# The material's row moves only when the work order's version step applies.
_CONSUMED = f"""
WITH step AS (
    UPDATE work_orders SET materials_cost = materials_cost + %(cost)s, {_NEXT} {_WHERE}
    RETURNING work_order_id
)
UPDATE work_order_materials m
SET consumed_quantity = consumed_quantity + %(quantity)s, consumed_cost = consumed_cost + %(cost)s
FROM step WHERE m.work_order_id = step.work_order_id AND m.item_id = %(item_id)s
"""
_PRODUCED = f"""
UPDATE work_orders SET produced_quantity = %(produced)s, scrap_quantity = %(scrap)s,
    production_yield = round(%(produced)s / planned_quantity, 4), {_NEXT} {_WHERE}
"""
_LABOUR = f"""
UPDATE work_orders SET labour_hours = labour_hours + %(hours)s,
    recorded_labour_cost = recorded_labour_cost + %(cost)s, {_NEXT} {_WHERE}
"""
# The work order's costing rules: standard labour stands in until actual labour is recorded;
# overhead is a percent of materials + labour; every amount in cents, half up.
_RECOSTED = """
UPDATE work_orders SET labour_cost = c.labour, overhead_cost = c.overhead,
    total_cost = materials_cost + c.labour + c.overhead,
    unit_cost = round((materials_cost + c.labour + c.overhead) / nullif(produced_quantity, 0), 2)
FROM (
    SELECT l.labour, round((w.materials_cost + l.labour) * coalesce(w.overhead_percent, 0) / 100, 2)
        AS overhead
    FROM work_orders w, LATERAL (
        SELECT CASE WHEN w.labour_hours = 0 AND w.labour_cost_per_unit IS NOT NULL
            THEN round(w.labour_cost_per_unit * w.produced_quantity, 2)
            ELSE w.recorded_labour_cost END AS labour
    ) l
    WHERE w.work_order_id = %(id)s
) c
WHERE work_order_id = %(id)s AND version = %(v)s
"""
_STOPPED = f"UPDATE work_orders SET status = 'stopped', stop_reason = %(reason)s, {_NEXT} {_WHERE}"
_RESUMED = f"UPDATE work_orders SET status = 'in_progress', stop_reason = NULL, {_NEXT} {_WHERE}"
_COMPLETED = f"""
UPDATE work_orders SET status = 'completed', produced_quantity = %(produced)s,
    scrap_quantity = %(scrap)s, production_yield = %(yield)s, materials_cost = %(materials_cost)s,
    labour_cost = %(labour_cost)s, overhead_cost = %(overhead_cost)s, total_cost = %(total_cost)s,
    unit_cost = %(unit_cost)s, completed_at = %(at)s, {_NEXT} {_WHERE}
"""
_CANCELLED = f"""
UPDATE work_orders SET status = 'cancelled', cancel_reason = %(reason)s, cancelled_at = %(at)s,
    {_NEXT} {_WHERE}
"""
_CLOSED = f"UPDATE work_orders SET status = 'closed', closed_at = %(at)s, {_NEXT} {_WHERE}"


class BomsProjection:
    name = "boms"
    ddl = BOMS_DDL
    _reads: dict[str, type[Any]] = {
        "erp.bom.created": m.BomCreated,
        "erp.bom.version_published": m.BomVersionPublished,
    }

    def reads(self, subject: str) -> type[Any] | None:
        return self._reads.get(subject)

    def apply(self, out: Statements, event: Delivered) -> None:
        assert event.envelope is not None
        data: Any = event.envelope.data
        tenant, at = event.envelope.tenant_id, event.envelope.timestamp
        v, pos = event.aggregate_version, event.log_position
        match data:
            case m.BomCreated():
                out.add(_BOM_CREATED, (data.bom_id, tenant, data.product_id, v, pos, pos,
                                       at, at))
            case m.BomVersionPublished():
                out.add(_BOM_VERSION_PUBLISHED, {
                    "id": data.bom_id, "bom_version": data.version, "v": v, "pos": pos, "at": at,
                })
                out.add(_BOM_VERSION, (
                    data.bom_id, data.version, tenant, data.product_id, data.process_loss_percent,
                    data.labour_cost_per_unit, data.overhead_percent, at,
                ))
                out.add_many(_BOM_ITEM, [
                    (data.bom_id, data.version, line, tenant, item.item_id, item.quantity_per_unit,
                     item.unit)
                    for line, item in enumerate(data.items, start=1)
                ])


class WorkOrdersProjection:
    name = "work_orders"
    ddl = WORK_ORDERS_DDL
    _reads: dict[str, type[Any]] = {
        "erp.work_order.created": m.WorkOrderCreated,
        "erp.work_order.released": m.WorkOrderReleased,
        "erp.work_order.started": m.WorkOrderStarted,
        "erp.work_order.material_consumed": m.WorkOrderMaterialConsumed,
        "erp.work_order.production_recorded": m.WorkOrderProductionRecorded,
        "erp.work_order.labour_recorded": m.WorkOrderLabourRecorded,
        "erp.work_order.stopped": m.WorkOrderStopped,
        "erp.work_order.resumed": m.WorkOrderResumed,
        "erp.work_order.completed": m.WorkOrderCompleted,
        "erp.work_order.cancelled": m.WorkOrderCancelled,
        "erp.work_order.closed": m.WorkOrderClosed,
    }

    def reads(self, subject: str) -> type[Any] | None:
        return self._reads.get(subject)

    def apply(self, out: Statements, event: Delivered) -> None:
        assert event.envelope is not None
        data: Any = event.envelope.data
        tenant, at = event.envelope.tenant_id, event.envelope.timestamp
        v, pos = event.aggregate_version, event.log_position
        step = {"id": data.work_order_id, "v": v, "pos": pos, "at": at}

        def recost() -> None:
            out.add(_RECOSTED, step)

        match data:
            case m.WorkOrderCreated():
                out.add(_CREATED, (data.work_order_id, tenant, data.product_id,
                                   data.planned_quantity, data.currency, v, pos, pos, at, at))
            case m.WorkOrderReleased():
                out.add(_RELEASED, {
                    **step, "bom_id": data.bom_id, "bom_version": data.bom_version,
                    "process_loss_percent": data.process_loss_percent,
                    "labour_cost_per_unit": data.labour_cost_per_unit,
                    "overhead_percent": data.overhead_percent,
                })
                out.add_many(_MATERIAL, [
                    (data.work_order_id, material.item_id, tenant, line, material.unit,
                     material.quantity_per_unit, material.required_quantity)
                    for line, material in enumerate(data.materials, start=1)
                ])
                recost()
            case m.WorkOrderStarted():
                out.add(_STARTED, step)
            case m.WorkOrderMaterialConsumed():
                out.add(_CONSUMED, {**step, "item_id": data.item_id,
                                    "quantity": data.quantity, "cost": data.cost})
                recost()
            case m.WorkOrderProductionRecorded():
                out.add(_PRODUCED, {**step, "produced": data.produced_quantity,
                                    "scrap": data.total_scrap_quantity})
                recost()
            case m.WorkOrderLabourRecorded():
                out.add(_LABOUR, {**step, "hours": data.hours, "cost": data.cost})
                recost()
            case m.WorkOrderStopped():
                out.add(_STOPPED, {**step, "reason": data.reason})
            case m.WorkOrderResumed():
                out.add(_RESUMED, step)
            case m.WorkOrderCompleted():
                out.add(_COMPLETED, {
                    **step, "produced": data.produced_quantity, "scrap": data.scrap_quantity,
                    "yield": data.production_yield, "materials_cost": data.materials_cost,
                    "labour_cost": data.labour_cost, "overhead_cost": data.overhead_cost,
                    "total_cost": data.total_cost, "unit_cost": data.unit_cost,
                })
            case m.WorkOrderCancelled():
                out.add(_CANCELLED, {**step, "reason": data.reason})
            case m.WorkOrderClosed():
                out.add(_CLOSED, step)
