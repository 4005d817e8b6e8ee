"""Work order: make a planned quantity of a product from a pinned bill-of-materials version.

Lifecycle: draft -> released -> in_progress -> completed -> closed; an order in progress
may be stopped and resumed. An order may be cancelled until material is consumed or goods
are produced for it (ERPNext: not while stock entries exist); after that an order that will
not make its planned quantity is closed short: completed with what was produced (the
completion event books it and its costs), then closed.

Rules chosen where the issue left a choice:
- Quantities (planned, required, consumed, produced, scrap) are rounded to 3 decimal
  places, ROUND_HALF_UP; required = quantity per unit x planned, then rounded.
- Consuming an item beyond its required quantity is refused, unless the tenant's
  over-consumption allowance (percent of required, default 0) covers it. Required is for the
  planned quantity, or for the produced one once over-production took it beyond.
- Producing beyond planned is refused beyond the tenant's over-production allowance
  (percent of planned, default 0). Scrap is recorded beside produced, never in it.
- Completion needs produced + expected process loss >= planned, where the expected
  loss = planned x the version's process loss percent / 100, rounded down to 3 places.
- Labour is recorded as hours x rate (cents). When none was recorded, the pinned
  version's standard labour cost per unit x produced stands in, so labour is never
  counted twice. Overhead is the version's percent of materials + labour.
- Unit cost = (materials + labour + overhead) / produced, each amount in cents.
- Quantities are below 10^15 (planned, and quantity per unit x planned); scrap is at most
  the over-production allowance of planned, like produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from aggregates.bom import BomVersion, CostNegative, PercentNegative, QuantityNotPositive
from aggregates.errors import InvalidValue, RuleViolation
from aggregates.money import amount_in_cents, to_cents

QUANTITY = Decimal("0.001")
MAX_QUANTITY = Decimal(10) ** 15  # exclusive: 3 decimal places stay within Decimal's 28 digits
RATIO = Decimal("0.0001")
ZERO = Decimal(0)
DEFAULT_CURRENCY = "KES"


class Status(StrEnum):
    DRAFT = "draft"
    RELEASED = "released"
    IN_PROGRESS = "in_progress"
    STOPPED = "stopped"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    CLOSED = "closed"


class WorkOrderStatusForbids(RuleViolation):
    """The work order's status does not allow the command."""


class NotDraft(WorkOrderStatusForbids):
    pass


class NotReleased(WorkOrderStatusForbids):
    pass


class NotInProgress(WorkOrderStatusForbids):
    pass


class NotStopped(WorkOrderStatusForbids):
    pass


class NotCompleted(WorkOrderStatusForbids):
    pass


class AlreadyCompleted(WorkOrderStatusForbids):
    pass


class AlreadyCancelled(WorkOrderStatusForbids):
    pass


class QuantityTooLarge(InvalidValue):
    pass


class StockMoved(RuleViolation):
    """Material was consumed or goods produced: cancelling would leave them unaccounted."""


class NothingProduced(RuleViolation):
    """A short close books what was produced: there must be something."""


class QuantityNegative(InvalidValue):
    pass


class BomMismatch(InvalidValue):
    pass


class ItemNotInBom(InvalidValue):
    pass


class ProductRequired(InvalidValue):
    pass


class OverConsumption(RuleViolation):
    def __init__(self, item_id: str, required: Decimal, consumed: Decimal, attempted: Decimal,
                 allowed: Decimal) -> None:
        super().__init__(
            f"item {item_id!r}: consuming {attempted} more would exceed what is allowed ({allowed}; "
            f"required {required}, already consumed {consumed})",
            field="quantity",
        )
        self.item_id = item_id
        self.required = required
        self.consumed = consumed
        self.attempted = attempted
        self.allowed = allowed


class OverProduction(RuleViolation):
    def __init__(self, planned: Decimal, produced: Decimal, attempted: Decimal, allowed: Decimal, *,
                 scrap: bool = False) -> None:
        doing, done = ("scrapping", "scrapped") if scrap else ("producing", "produced")
        super().__init__(
            f"{doing} {attempted} more would exceed what is allowed ({allowed}; "
            f"planned {planned}, already {done} {produced})",
            field="scrap_quantity" if scrap else "quantity",
        )
        self.planned = planned
        self.produced = produced
        self.attempted = attempted
        self.allowed = allowed


class ProductionIncomplete(RuleViolation):
    def __init__(self, planned: Decimal, produced: Decimal, expected_process_loss: Decimal) -> None:
        super().__init__(
            f"cannot complete: produced {produced} + expected process loss {expected_process_loss} "
            f"is less than planned {planned}"
        )
        self.planned = planned
        self.produced = produced
        self.expected_process_loss = expected_process_loss


@dataclass(frozen=True)
class ProductionAllowances:
    """A tenant's tolerances, in percent of the planned or required quantity."""

    over_production_percent: Decimal = ZERO
    over_consumption_percent: Decimal = ZERO

    def __post_init__(self) -> None:
        for field in ("over_production_percent", "over_consumption_percent"):
            value: Decimal = getattr(self, field)
            if not value.is_finite() or value < 0:
                raise PercentNegative(f"{field} cannot be negative, got {value}", field=field)


@dataclass(frozen=True)
class RequiredMaterial:
    item_id: str
    quantity_per_unit: Decimal
    required_quantity: Decimal
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "quantity_per_unit": self.quantity_per_unit,
            "required_quantity": self.required_quantity,
            "unit": self.unit,
        }


def _quantity(value: Decimal, field: str, *, allow_zero: bool = False) -> Decimal:
    if not value.is_finite():
        raise QuantityNotPositive(f"{field} must be a number, got {value}", field=field)
    rounded = value.quantize(QUANTITY, ROUND_HALF_UP)
    if rounded < 0 and allow_zero:
        raise QuantityNegative(f"{field} cannot be negative, got {value}", field=field)
    if rounded <= 0 and not allow_zero:
        raise QuantityNotPositive(
            f"{field} must be greater than zero (at 3 decimal places), got {value}", field=field
        )
    if rounded >= MAX_QUANTITY:
        raise QuantityTooLarge(f"{field} must be below {MAX_QUANTITY:,.0f}, got {value}", field=field)
    return rounded


def _cost(value: Decimal, field: str) -> Decimal:
    if not value.is_finite() or value < 0:
        raise CostNegative(f"{field} cannot be negative, got {value}", field=field)
    return value


def _allowance(base: Decimal, percent: Decimal) -> Decimal:
    # Rounded down: a tolerance is a ceiling (0.109 + 10 % allows 0.119, not 0.120).
    return (base * (100 + percent) / 100).quantize(QUANTITY, ROUND_DOWN)


class WorkOrder(Aggregate):
    @event("Created")
    def __init__(self, tenant_id: str, product_id: str, planned_quantity: Decimal, currency: str) -> None:
        self.tenant_id = tenant_id
        self.product_id = product_id
        self.planned_quantity = planned_quantity
        self.currency = currency
        self.status = Status.DRAFT
        self.bom_id: UUID | None = None
        self.bom_version: int | None = None
        self.process_loss_percent = ZERO
        self.labour_cost_per_unit: Decimal | None = None
        self.overhead_percent = ZERO
        self.materials: dict[str, RequiredMaterial] = {}
        self.consumed: dict[str, Decimal] = {}
        self.produced_quantity = ZERO
        self.scrap_quantity = ZERO
        self.materials_cost = ZERO
        self.recorded_labour_cost = ZERO
        self.labour_hours = ZERO
        self.stop_reason: str | None = None
        self.cancel_reason: str | None = None

    @classmethod
    def create(
        cls,
        *,
        tenant_id: str,
        product_id: str,
        planned_quantity: Decimal,
        currency: str = DEFAULT_CURRENCY,
    ) -> WorkOrder:
        if not product_id.strip():
            raise ProductRequired("a work order needs a product_id", field="product_id")
        return cls(
            tenant_id=tenant_id,
            product_id=product_id,
            planned_quantity=_quantity(planned_quantity, "planned_quantity"),
            currency=currency,
        )

    # Costing and yield, derived from state so that they are the same after a replay.

    @property
    def labour_cost(self) -> Decimal:
        if self.labour_hours == 0 and self.labour_cost_per_unit is not None:
            return to_cents(self.labour_cost_per_unit * self.produced_quantity)
        return self.recorded_labour_cost

    @property
    def overhead_cost(self) -> Decimal:
        return to_cents((self.materials_cost + self.labour_cost) * self.overhead_percent / 100)

    @property
    def total_cost(self) -> Decimal:
        return self.materials_cost + self.labour_cost + self.overhead_cost

    @property
    def unit_cost(self) -> Decimal | None:
        """Total cost per produced unit, in cents; None until something is produced."""
        if self.produced_quantity == 0:
            return None
        return to_cents(self.total_cost / self.produced_quantity)

    @property
    def production_yield(self) -> Decimal:
        """Produced / planned, as a ratio to 4 decimal places (1.0000 = as planned)."""
        return (self.produced_quantity / self.planned_quantity).quantize(RATIO, ROUND_HALF_UP)

    @property
    def expected_process_loss(self) -> Decimal:
        # Rounded down: never credit more loss than the version expects.
        return (self.planned_quantity * self.process_loss_percent / 100).quantize(QUANTITY, ROUND_DOWN)

    # Lifecycle.

    def release(self, bom: BomVersion) -> None:
        """Pins `bom` (the application's `bill.version_snapshot(n)`) and explodes the materials."""
        if self.status is not Status.DRAFT:
            raise NotDraft(f"only a draft work order can be released; this one is {self.status.value}")
        if bom.tenant_id != self.tenant_id or bom.product_id != self.product_id:
            raise BomMismatch(
                f"bill of materials {bom.bom_id} version {bom.version} is for product "
                f"{bom.product_id!r}, not {self.product_id!r}",
                field="bom",
            )
        for item in bom.items:
            if item.quantity_per_unit * self.planned_quantity >= MAX_QUANTITY:
                raise QuantityTooLarge(
                    f"item {item.item_id!r} would need {item.quantity_per_unit} x {self.planned_quantity}: "
                    f"a required quantity must be below {MAX_QUANTITY:,.0f}", field="planned_quantity")
        materials = [
            RequiredMaterial(
                item_id=item.item_id,
                quantity_per_unit=item.quantity_per_unit,
                required_quantity=(item.quantity_per_unit * self.planned_quantity).quantize(
                    QUANTITY, ROUND_HALF_UP
                ),
                unit=item.unit,
            )
            for item in bom.items
        ]
        self._released(
            product_id=self.product_id,
            planned_quantity=self.planned_quantity,
            bom_id=bom.bom_id,
            bom_version=bom.version,
            process_loss_percent=bom.process_loss_percent,
            labour_cost_per_unit=bom.labour_cost_per_unit,
            overhead_percent=bom.overhead_percent,
            materials=[m.to_dict() for m in materials],
        )

    @event("Released")
    def _released(
        self,
        product_id: str,
        planned_quantity: Decimal,
        bom_id: UUID,
        bom_version: int,
        process_loss_percent: Decimal,
        labour_cost_per_unit: Decimal | None,
        overhead_percent: Decimal,
        materials: list[dict[str, Any]],
    ) -> None:
        self.status = Status.RELEASED
        self.bom_id = bom_id
        self.bom_version = bom_version
        self.process_loss_percent = process_loss_percent
        self.labour_cost_per_unit = labour_cost_per_unit
        self.overhead_percent = overhead_percent
        self.materials = {m["item_id"]: RequiredMaterial(**m) for m in materials}
        self.consumed = {item_id: ZERO for item_id in self.materials}

    def start(self) -> None:
        if self.status is not Status.RELEASED:
            raise NotReleased(f"only a released work order can be started; this one is {self.status.value}")
        bom_id, bom_version = self._pinned_bom()
        self._started(
            product_id=self.product_id,
            planned_quantity=self.planned_quantity,
            bom_id=bom_id,
            bom_version=bom_version,
            materials=[
                {"item_id": m.item_id, "required_quantity": m.required_quantity, "unit": m.unit}
                for m in self.materials.values()
            ],
        )

    @event("Started")
    def _started(
        self,
        product_id: str,
        planned_quantity: Decimal,
        bom_id: UUID,
        bom_version: int,
        materials: list[dict[str, Any]],
    ) -> None:
        self.status = Status.IN_PROGRESS

    def _pinned_bom(self) -> tuple[UUID, int]:
        if self.bom_id is None or self.bom_version is None:  # only a draft has none
            raise NotReleased("the work order has not been released with a bill of materials")
        return self.bom_id, self.bom_version

    def _require_in_progress(self, doing: str) -> None:
        if self.status is not Status.IN_PROGRESS:
            raise NotInProgress(f"cannot {doing}: the work order is {self.status.value}, not in progress")

    def required_now(self, material: RequiredMaterial) -> Decimal:
        """What the order needs of `material`: for the planned quantity, or for what was produced
        when the over-production allowance took it beyond."""
        for_produced = (material.quantity_per_unit * self.produced_quantity).quantize(QUANTITY, ROUND_HALF_UP)
        return max(material.required_quantity, for_produced)

    def record_consumption(
        self,
        item_id: str,
        quantity: Decimal,
        unit_cost: Decimal,
        *,
        allowances: ProductionAllowances = ProductionAllowances(),
    ) -> None:
        self._require_in_progress("record consumption")
        material = self.materials.get(item_id)
        if material is None:
            raise ItemNotInBom(
                f"item {item_id!r} is not in version {self.bom_version} of the bill of materials",
                field="item_id",
            )
        quantity = _quantity(quantity, "quantity")
        unit_cost = _cost(unit_cost, "unit_cost")
        consumed = self.consumed[item_id]
        required = self.required_now(material)
        allowed = _allowance(required, allowances.over_consumption_percent)
        if consumed + quantity > allowed:
            raise OverConsumption(item_id, required, consumed, quantity, allowed)
        self._material_consumed(
            product_id=self.product_id,
            item_id=item_id,
            quantity=quantity,
            unit=material.unit,
            unit_cost=unit_cost,
            cost=amount_in_cents(quantity * unit_cost, "unit_cost", "quantity * unit_cost"),
            currency=self.currency,
        )

    @event("MaterialConsumed")
    def _material_consumed(
        self,
        product_id: str,
        item_id: str,
        quantity: Decimal,
        unit: str,
        unit_cost: Decimal,
        cost: Decimal,
        currency: str,
    ) -> None:
        self.consumed[item_id] += quantity
        self.materials_cost += cost

    def record_production(
        self,
        quantity: Decimal,
        scrap_quantity: Decimal = ZERO,
        *,
        allowances: ProductionAllowances = ProductionAllowances(),
    ) -> None:
        self._require_in_progress("record production")
        quantity = _quantity(quantity, "quantity", allow_zero=True)
        scrap_quantity = _quantity(scrap_quantity, "scrap_quantity", allow_zero=True)
        if quantity == 0 and scrap_quantity == 0:
            raise QuantityNotPositive("record a produced or a scrap quantity above zero", field="quantity")
        allowed = _allowance(self.planned_quantity, allowances.over_production_percent)
        if self.produced_quantity + quantity > allowed:
            raise OverProduction(self.planned_quantity, self.produced_quantity, quantity, allowed)
        if self.scrap_quantity + scrap_quantity > allowed:
            raise OverProduction(self.planned_quantity, self.scrap_quantity, scrap_quantity, allowed,
                                 scrap=True)
        self._production_recorded(
            product_id=self.product_id,
            quantity=quantity,
            scrap_quantity=scrap_quantity,
            produced_quantity=self.produced_quantity + quantity,
            total_scrap_quantity=self.scrap_quantity + scrap_quantity,
        )

    @event("ProductionRecorded")
    def _production_recorded(
        self,
        product_id: str,
        quantity: Decimal,
        scrap_quantity: Decimal,
        produced_quantity: Decimal,
        total_scrap_quantity: Decimal,
    ) -> None:
        self.produced_quantity = produced_quantity
        self.scrap_quantity = total_scrap_quantity

    def record_labour(self, hours: Decimal, rate: Decimal) -> None:
        """Actual labour: `hours` at `rate` per hour, in the work order's currency."""
        self._require_in_progress("record labour")
        if not hours.is_finite() or hours <= 0:
            raise QuantityNotPositive(f"hours must be greater than zero, got {hours}", field="hours")
        rate = _cost(rate, "rate")
        cost = amount_in_cents(hours * rate, "rate", "hours * rate")
        self._labour_recorded(hours=hours, rate=rate, cost=cost, currency=self.currency)

    @event("LabourRecorded")
    def _labour_recorded(self, hours: Decimal, rate: Decimal, cost: Decimal, currency: str) -> None:
        self.labour_hours += hours
        self.recorded_labour_cost += cost

    def stop(self, reason: str | None = None) -> None:
        self._require_in_progress("stop")
        self._stopped(reason=reason.strip() if reason and reason.strip() else None)

    @event("Stopped")
    def _stopped(self, reason: str | None) -> None:
        self.status = Status.STOPPED
        self.stop_reason = reason

    def resume(self) -> None:
        if self.status is not Status.STOPPED:
            raise NotStopped(f"only a stopped work order can be resumed; this one is {self.status.value}")
        self._resumed()

    @event("Resumed")
    def _resumed(self) -> None:
        self.status = Status.IN_PROGRESS
        self.stop_reason = None

    def complete(self) -> None:
        self._require_in_progress("complete")
        loss = self.expected_process_loss
        if self.produced_quantity + loss < self.planned_quantity:
            raise ProductionIncomplete(self.planned_quantity, self.produced_quantity, loss)
        self._complete()

    def _complete(self) -> None:
        bom_id, bom_version = self._pinned_bom()
        self._completed(
            product_id=self.product_id,
            bom_id=bom_id,
            bom_version=bom_version,
            planned_quantity=self.planned_quantity,
            produced_quantity=self.produced_quantity,
            scrap_quantity=self.scrap_quantity,
            production_yield=self.production_yield,
            materials_cost=self.materials_cost,
            labour_cost=self.labour_cost,
            overhead_cost=self.overhead_cost,
            total_cost=self.total_cost,
            # produced > 0 here: the expected loss is below planned (loss < 100 %), and a
            # short close needs something produced.
            unit_cost=to_cents(self.total_cost / self.produced_quantity),
            currency=self.currency,
        )

    @event("Completed")
    def _completed(
        self,
        product_id: str,
        bom_id: UUID,
        bom_version: int,
        planned_quantity: Decimal,
        produced_quantity: Decimal,
        scrap_quantity: Decimal,
        production_yield: Decimal,
        materials_cost: Decimal,
        labour_cost: Decimal,
        overhead_cost: Decimal,
        total_cost: Decimal,
        unit_cost: Decimal,
        currency: str,
    ) -> None:
        self.status = Status.COMPLETED

    def cancel(self, reason: str | None = None) -> None:
        if self.status in (Status.COMPLETED, Status.CLOSED):
            raise AlreadyCompleted(f"a {self.status.value} work order cannot be cancelled")
        if self.status is Status.CANCELLED:
            raise AlreadyCancelled("the work order is already cancelled")
        if self.produced_quantity or self.scrap_quantity or any(self.consumed.values()):
            raise StockMoved("material was consumed or goods were produced for this work order: close it "
                             "instead, which books what was produced")
        self._cancelled(
            product_id=self.product_id,
            from_status=self.status.value,
            reason=reason.strip() if reason and reason.strip() else None,
        )

    @event("Cancelled")
    def _cancelled(self, product_id: str, from_status: str, reason: str | None) -> None:
        self.status = Status.CANCELLED
        self.cancel_reason = reason

    def close(self) -> None:
        """A completed order; or one in progress or stopped, closed short: completed first with
        what was produced (its completion event books it and the costs so far)."""
        if self.status in (Status.IN_PROGRESS, Status.STOPPED):
            if not self.produced_quantity:
                raise NothingProduced("nothing was produced: record production before closing the work "
                                      "order short, or cancel it if nothing was consumed")
            self._complete()
        if self.status is not Status.COMPLETED:
            raise NotCompleted("only a completed work order, or one in progress or stopped, can be closed; "
                               f"this one is {self.status.value}")
        self._closed(product_id=self.product_id)

    @event("Closed")
    def _closed(self, product_id: str) -> None:
        self.status = Status.CLOSED
