"""Logistics: shipping and delivery are logistics'; we ask for a shipment and follow it.

The guide names the endpoints but not their fields: every `Struct` here is our proposal.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from integrations.transport import Peer, segment


class Address(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    recipient: str
    phone: str | None = None
    line1: str
    city: str
    county: str | None = None
    country: str = "KE"


class ShipmentItem(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    item_id: str
    quantity: Decimal
    description: str | None = None


class ShipmentRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: a fulfilled order to deliver (`erp.order.fulfilled`)."""

    order_id: UUID
    deliver_to: Address
    items: list[ShipmentItem]
    warehouse_id: str | None = None
    notes: str | None = None


class Shipment(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: logistics' answer."""

    shipment_id: str
    status: str | None = None
    tracking_number: str | None = None


class TrackingEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    status: str
    at: datetime
    location: str | None = None


class Tracking(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: where a shipment is, with its history."""

    status: str
    shipment_id: str | None = None
    events: list[TrackingEvent] = []
    estimated_delivery: datetime | None = None


class Logistics:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def create_shipment(self, tenant_id: str, shipment: ShipmentRequest, *, idempotency_key: str,
                              correlation_id: str | None = None) -> Shipment:
        return await self.peer.post("create_shipment", "/api/v1/logistics/shipments", shipment, Shipment,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)

    async def tracking(self, tenant_id: str, shipment_id: str, *,
                       correlation_id: str | None = None) -> Tracking:
        return await self.peer.get("tracking", f"/api/v1/logistics/shipments/{segment(shipment_id)}/tracking",
                                   Tracking, tenant_id=tenant_id, correlation_id=correlation_id)
