"""What we consume from the platform's other services: the `data` of each event.

The integration guide gives two payloads (treasury.invoice.created, inventory.stock.updated);
for the others it names the event only, and these are the fields the ERP needs, our
proposal to those teams. Unknown fields are ignored, so a peer may send more.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec


class InvoiceCreated(msgspec.Struct, frozen=True, kw_only=True):
    """treasury.invoice.created (the guide's fields)"""

    invoice_id: str
    opportunity_id: UUID | None = None
    status: str = "draft"


class PaymentProcessed(msgspec.Struct, frozen=True, kw_only=True):
    """treasury.payment.processed"""

    payment_id: str
    payroll_id: UUID | None = None
    amount: Decimal | None = None
    status: str = "processed"


class BillCreated(msgspec.Struct, frozen=True, kw_only=True):
    """treasury.bill.created"""

    bill_id: str
    purchase_order_id: UUID | None = None
    status: str = "open"


class StockUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """inventory.stock.updated (the guide's fields)"""

    item_id: str
    stock_level: Decimal
    warehouse_id: str


class MovementRecorded(msgspec.Struct, frozen=True, kw_only=True):
    """inventory.movement.recorded"""

    movement_id: str
    item_id: str
    quantity: Decimal
    warehouse_id: str | None = None
    reference: str | None = None  # e.g. the purchase order or work order it came from


class ReservationCreated(msgspec.Struct, frozen=True, kw_only=True):
    """inventory.reservation.created"""

    reservation_id: str
    item_id: str
    quantity: Decimal
    order_id: str | None = None


class ShipmentChanged(msgspec.Struct, frozen=True, kw_only=True):
    """logistics.shipment.created / logistics.shipment.delivered"""

    shipment_id: str
    order_id: str | None = None
    tracking_number: str | None = None


class PosOrderCreated(msgspec.Struct, frozen=True, kw_only=True):
    """pos.order.created"""

    order_id: str
    total_amount: Decimal
    currency: str = "KES"
    outlet_id: str | None = None


class TelemetryReceived(msgspec.Struct, frozen=True, kw_only=True):
    """iot.telemetry.received"""

    device_id: str
    metrics: dict[str, float] = {}
    recorded_at: datetime | None = None


class AlertTriggered(msgspec.Struct, frozen=True, kw_only=True):
    """iot.alert.triggered"""

    alert_id: str
    device_id: str
    severity: str = "warning"
    message: str = ""
    work_order_id: UUID | None = None  # the order running on that production line, if known


class BudgetUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """projects.budget.updated"""

    project_id: str
    budget: Decimal
    spent: Decimal | None = None
    currency: str = "KES"
