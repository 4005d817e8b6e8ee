"""Inventory: stock levels are inventory's; we read them and report what moved.

The guide names the endpoints but not their fields: every `Struct` here is our proposal.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from integrations.transport import Peer, segment

# Why stock moves because of the ERP: receipts of purchase orders, work orders' output and
# consumption, e-commerce orders.
MovementReason = Literal["purchase_receipt", "production_output", "material_consumption", "sales_order"]


class WarehouseStock(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    warehouse_id: str
    stock_level: Decimal


class ItemStock(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal, after `inventory.stock.updated`: the level in total and per warehouse."""

    item_id: str
    stock_level: Decimal
    warehouses: list[WarehouseStock] = []


class StockMovementRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: goods in or out of a warehouse, and what caused it."""

    item_id: str
    warehouse_id: str
    quantity: Decimal  # positive; `direction` says which way
    direction: Literal["in", "out"]
    reason: MovementReason
    reference: str  # e.g. the purchase order's number or the work order's id
    unit_cost: Decimal | None = None


class StockMovement(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: inventory's answer."""

    movement_id: str
    status: str | None = None


class StockAdjustmentRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: a correction of the level (scrap, yield variance), signed."""

    item_id: str
    warehouse_id: str
    quantity_change: Decimal
    reason: str
    reference: str | None = None


class StockAdjustment(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: inventory's answer."""

    adjustment_id: str
    status: str | None = None


class Warehouse(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    warehouse_id: str
    name: str
    code: str | None = None


class Inventory:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def stock(self, tenant_id: str, item_id: str, *, warehouse_id: str | None = None,
                    correlation_id: str | None = None) -> ItemStock:
        return await self.peer.get("stock", f"/api/v1/inventory/items/{segment(item_id)}/stock", ItemStock,
                                   tenant_id=tenant_id, correlation_id=correlation_id,
                                   params={"warehouse_id": warehouse_id} if warehouse_id else None)

    async def record_movement(self, tenant_id: str, movement: StockMovementRequest, *, idempotency_key: str,
                              correlation_id: str | None = None) -> StockMovement:
        return await self.peer.post("record_movement", "/api/v1/inventory/movements", movement, StockMovement,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)

    async def record_adjustment(self, tenant_id: str, adjustment: StockAdjustmentRequest, *,
                                idempotency_key: str, correlation_id: str | None = None) -> StockAdjustment:
        return await self.peer.post("record_adjustment", "/api/v1/inventory/adjustments", adjustment,
                                    StockAdjustment, tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)

    async def warehouses(self, tenant_id: str, *, correlation_id: str | None = None) -> list[Warehouse]:
        return await self.peer.get_all("warehouses", "/api/v1/inventory/warehouses", Warehouse,
                                       tenant_id=tenant_id, correlation_id=correlation_id)
