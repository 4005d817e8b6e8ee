"""Manufacturing events on the wire: bills of materials and work orders.

The integration guide names the two that inventory acts on, without their payloads; ours
are self-contained, so a subscriber needs nothing else:
- `erp.work_order.started`: inventory consumes `materials` (item, required quantity,
  unit) for the work order.
- `erp.work_order.completed`: inventory receives `produced_quantity` of `product_id` as
  finished goods (and may book `scrap_quantity`); costs are amounts in the work order's
  currency rounded to cents (`unit_cost` 12.50 is 12 units and 50 cents).
`erp.work_order.material_consumed` records actual consumption for costing; it is not a
second request to move stock.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from aggregates.bom import BillOfMaterials
from aggregates.work_order import WorkOrder
from streams.events.base import Publication, domain_event


class BomCreated(msgspec.Struct, frozen=True, kw_only=True):
    bom_id: UUID
    product_id: str


class BomVersionItem(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    quantity_per_unit: Decimal
    unit: str


class BomVersionPublished(msgspec.Struct, frozen=True, kw_only=True):
    bom_id: UUID
    product_id: str
    version: int
    items: list[BomVersionItem]
    process_loss_percent: Decimal
    labour_cost_per_unit: Decimal | None
    overhead_percent: Decimal


class WorkOrderCreated(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    product_id: str
    planned_quantity: Decimal
    currency: str


class WorkOrderMaterial(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    quantity_per_unit: Decimal
    required_quantity: Decimal
    unit: str


class WorkOrderReleased(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    product_id: str
    planned_quantity: Decimal
    bom_id: UUID
    bom_version: int
    process_loss_percent: Decimal
    labour_cost_per_unit: Decimal | None
    overhead_percent: Decimal
    materials: list[WorkOrderMaterial]


class MaterialToConsume(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    required_quantity: Decimal
    unit: str


class WorkOrderStarted(msgspec.Struct, frozen=True, kw_only=True):
    """Inventory consumes these materials for the work order."""

    work_order_id: UUID
    product_id: str
    planned_quantity: Decimal
    bom_id: UUID
    bom_version: int
    materials: list[MaterialToConsume]


class WorkOrderMaterialConsumed(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    product_id: str
    item_id: str
    quantity: Decimal
    unit: str
    unit_cost: Decimal
    cost: Decimal
    currency: str


class WorkOrderProductionRecorded(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    product_id: str
    quantity: Decimal
    scrap_quantity: Decimal
    produced_quantity: Decimal  # totals so far
    total_scrap_quantity: Decimal


class WorkOrderLabourRecorded(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    hours: Decimal
    rate: Decimal
    cost: Decimal
    currency: str


class WorkOrderStopped(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    reason: str | None


class WorkOrderResumed(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID


class WorkOrderCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """Inventory receives `produced_quantity` of `product_id` as finished goods. An order
    closed short is completed first with what was produced: then `produced_quantity` is
    below `planned_quantity`, and `erp.work_order.closed` follows."""

    work_order_id: UUID
    product_id: str
    bom_id: UUID
    bom_version: int
    planned_quantity: Decimal
    produced_quantity: Decimal
    scrap_quantity: Decimal
    production_yield: Decimal  # produced / planned, 4 places
    materials_cost: Decimal
    labour_cost: Decimal
    overhead_cost: Decimal
    total_cost: Decimal
    unit_cost: Decimal
    currency: str


class WorkOrderCancelled(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    product_id: str
    from_status: str
    reason: str | None


class WorkOrderClosed(msgspec.Struct, frozen=True, kw_only=True):
    work_order_id: UUID
    product_id: str


def _bom_items(items: list[dict[str, Any]]) -> list[BomVersionItem]:
    return [BomVersionItem(item_id=i["item_id"], quantity_per_unit=i["quantity_per_unit"], unit=i["unit"])
            for i in items]


def _required(materials: list[dict[str, Any]]) -> list[WorkOrderMaterial]:
    return [
        WorkOrderMaterial(item_id=m["item_id"], quantity_per_unit=m["quantity_per_unit"],
                         required_quantity=m["required_quantity"], unit=m["unit"])
        for m in materials
    ]


def _to_consume(materials: list[dict[str, Any]]) -> list[MaterialToConsume]:
    return [MaterialToConsume(item_id=m["item_id"], required_quantity=m["required_quantity"], unit=m["unit"])
            for m in materials]


PUBLICATIONS: dict[type, Publication] = {
    domain_event(BillOfMaterials, "Created"): Publication(
        "erp.bom.created", BomCreated, "bom",
        lambda e: BomCreated(bom_id=e.originator_id, product_id=e.product_id),
    ),
    domain_event(BillOfMaterials, "VersionPublished"): Publication(
        "erp.bom.version_published", BomVersionPublished, "bom",
        lambda e: BomVersionPublished(
            bom_id=e.originator_id, product_id=e.product_id, version=e.bom_version,
            items=_bom_items(e.items), process_loss_percent=e.process_loss_percent,
            labour_cost_per_unit=e.labour_cost_per_unit, overhead_percent=e.overhead_percent,
        ),
    ),
    domain_event(WorkOrder, "Created"): Publication(
        "erp.work_order.created", WorkOrderCreated, "work_order",
        lambda e: WorkOrderCreated(
            work_order_id=e.originator_id, product_id=e.product_id,
            planned_quantity=e.planned_quantity, currency=e.currency,
        ),
    ),
    domain_event(WorkOrder, "Released"): Publication(
        "erp.work_order.released", WorkOrderReleased, "work_order",
        lambda e: WorkOrderReleased(
            work_order_id=e.originator_id, product_id=e.product_id,
            planned_quantity=e.planned_quantity, bom_id=e.bom_id, bom_version=e.bom_version,
            process_loss_percent=e.process_loss_percent, labour_cost_per_unit=e.labour_cost_per_unit,
            overhead_percent=e.overhead_percent, materials=_required(e.materials),
        ),
    ),
    domain_event(WorkOrder, "Started"): Publication(
        "erp.work_order.started", WorkOrderStarted, "work_order",
        lambda e: WorkOrderStarted(
            work_order_id=e.originator_id, product_id=e.product_id,
            planned_quantity=e.planned_quantity, bom_id=e.bom_id, bom_version=e.bom_version,
            materials=_to_consume(e.materials),
        ),
    ),
    domain_event(WorkOrder, "MaterialConsumed"): Publication(
        "erp.work_order.material_consumed", WorkOrderMaterialConsumed, "work_order",
        lambda e: WorkOrderMaterialConsumed(
            work_order_id=e.originator_id, product_id=e.product_id, item_id=e.item_id,
            quantity=e.quantity, unit=e.unit, unit_cost=e.unit_cost, cost=e.cost, currency=e.currency,
        ),
    ),
    domain_event(WorkOrder, "ProductionRecorded"): Publication(
        "erp.work_order.production_recorded", WorkOrderProductionRecorded, "work_order",
        lambda e: WorkOrderProductionRecorded(
            work_order_id=e.originator_id, product_id=e.product_id, quantity=e.quantity,
            scrap_quantity=e.scrap_quantity, produced_quantity=e.produced_quantity,
            total_scrap_quantity=e.total_scrap_quantity,
        ),
    ),
    domain_event(WorkOrder, "LabourRecorded"): Publication(
        "erp.work_order.labour_recorded", WorkOrderLabourRecorded, "work_order",
        lambda e: WorkOrderLabourRecorded(
            work_order_id=e.originator_id, hours=e.hours, rate=e.rate, cost=e.cost, currency=e.currency,
        ),
    ),
    domain_event(WorkOrder, "Stopped"): Publication(
        "erp.work_order.stopped", WorkOrderStopped, "work_order",
        lambda e: WorkOrderStopped(work_order_id=e.originator_id, reason=e.reason),
    ),
    domain_event(WorkOrder, "Resumed"): Publication(
        "erp.work_order.resumed", WorkOrderResumed, "work_order",
        lambda e: WorkOrderResumed(work_order_id=e.originator_id),
    ),
    domain_event(WorkOrder, "Completed"): Publication(
        "erp.work_order.completed", WorkOrderCompleted, "work_order",
        lambda e: WorkOrderCompleted(
            work_order_id=e.originator_id, product_id=e.product_id, bom_id=e.bom_id,
            bom_version=e.bom_version, planned_quantity=e.planned_quantity,
            produced_quantity=e.produced_quantity, scrap_quantity=e.scrap_quantity,
            production_yield=e.production_yield, materials_cost=e.materials_cost,
            labour_cost=e.labour_cost, overhead_cost=e.overhead_cost, total_cost=e.total_cost,
            unit_cost=e.unit_cost, currency=e.currency,
        ),
    ),
    domain_event(WorkOrder, "Cancelled"): Publication(
        "erp.work_order.cancelled", WorkOrderCancelled, "work_order",
        lambda e: WorkOrderCancelled(
            work_order_id=e.originator_id, product_id=e.product_id,
            from_status=e.from_status, reason=e.reason,
        ),
    ),
    domain_event(WorkOrder, "Closed"): Publication(
        "erp.work_order.closed", WorkOrderClosed, "work_order",
        lambda e: WorkOrderClosed(work_order_id=e.originator_id, product_id=e.product_id),
    ),
}
