"""POS: point-of-sale operations are the POS service's; we read its catalogue and send it
e-commerce orders.

The guide names the endpoints but not their fields: every `Struct` here is our proposal.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from integrations.transport import Peer


class Product(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    product_id: str
    name: str
    price: Decimal
    currency: str | None = None
    sku: str | None = None
    active: bool = True


class PosOrderLine(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    product_id: str
    quantity: Decimal
    unit_price: Decimal


class PosOrderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: an order taken by the ERP for a POS outlet to serve."""

    order_reference: str  # the ERP's order number: the POS shows it and can find us by it
    lines: list[PosOrderLine]
    total_amount: Decimal
    currency: str
    outlet_id: str | None = None
    customer_id: str | None = None


class PosOrder(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: the POS service's answer."""

    order_id: str
    status: str | None = None


class Pos:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def products(self, tenant_id: str, *, correlation_id: str | None = None) -> list[Product]:
        return await self.peer.get_all("products", "/api/v1/pos/products", Product, tenant_id=tenant_id,
                                       correlation_id=correlation_id)

    async def create_order(self, tenant_id: str, order: PosOrderRequest, *, idempotency_key: str,
                           correlation_id: str | None = None) -> PosOrder:
        return await self.peer.post("create_order", "/api/v1/pos/orders", order, PosOrder,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)
