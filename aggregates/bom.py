"""Bill of materials: what one unit of a product is made of, published in numbered versions.

There is one bill per (tenant, product); its id is derived from the pair, so the
application finds it without a lookup table. A published version never changes: a
work order pins the version it was released with (`version_snapshot`).

Quantities per unit are kept as given up to 6 decimal places, rounded ROUND_HALF_UP
beyond that (small inputs such as kilograms of an additive per unit survive); the
standard labour cost per unit is rounded to cents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from aggregates.errors import InvalidValue, RuleViolation

QUANTITY_PER_UNIT = Decimal("0.000001")
CENTS = Decimal("0.01")
_BOM_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:bill-of-materials")


class QuantityNotPositive(InvalidValue):
    pass


class NoItems(InvalidValue):
    pass


class DuplicateItem(InvalidValue):
    pass


class ItemIsTheProduct(InvalidValue):
    """A bill naming its own product among its items would need the product to make it."""


class UnitRequired(InvalidValue):
    pass


class ProcessLossOutOfRange(InvalidValue):
    pass


class PercentNegative(InvalidValue):
    pass


class CostNegative(InvalidValue):
    pass


class ProductRequired(InvalidValue):
    pass


class UnknownBomVersion(RuleViolation):
    pass


@dataclass(frozen=True)
class BomItem:
    item_id: str
    quantity_per_unit: Decimal
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "quantity_per_unit": self.quantity_per_unit, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BomItem:
        return cls(
            item_id=str(data["item_id"]),
            quantity_per_unit=Decimal(data["quantity_per_unit"]),
            unit=str(data["unit"]),
        )


@dataclass(frozen=True)
class BomVersion:
    """One published version, frozen: what a work order is released with."""

    bom_id: UUID
    tenant_id: str
    product_id: str
    version: int
    items: tuple[BomItem, ...]
    process_loss_percent: Decimal
    labour_cost_per_unit: Decimal | None
    overhead_percent: Decimal

    def to_dict(self) -> dict[str, Any]:
        """JSON-storable (eventsourcing's transcoder: UUID and Decimal, lists of dicts)."""
        return {
            "bom_id": self.bom_id,
            "tenant_id": self.tenant_id,
            "product_id": self.product_id,
            "version": self.version,
            "items": [item.to_dict() for item in self.items],
            "process_loss_percent": self.process_loss_percent,
            "labour_cost_per_unit": self.labour_cost_per_unit,
            "overhead_percent": self.overhead_percent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BomVersion:
        labour = data["labour_cost_per_unit"]
        return cls(
            bom_id=UUID(str(data["bom_id"])),
            tenant_id=str(data["tenant_id"]),
            product_id=str(data["product_id"]),
            version=int(data["version"]),
            items=tuple(BomItem.from_dict(item) for item in data["items"]),
            process_loss_percent=Decimal(data["process_loss_percent"]),
            labour_cost_per_unit=None if labour is None else Decimal(labour),
            overhead_percent=Decimal(data["overhead_percent"]),
        )


def _finite(value: Decimal) -> bool:
    return isinstance(value, Decimal) and value.is_finite()


def _validated_items(items: Iterable[tuple[str, Decimal, str]], product_id: str) -> list[BomItem]:
    validated: list[BomItem] = []
    seen: set[str] = set()
    for index, (item_id, quantity_per_unit, unit) in enumerate(items):
        field = f"items.{index}"  # as the body names it
        if not item_id.strip():
            raise InvalidValue(f"{field}: an item needs an item_id", field=f"{field}.item_id")
        if item_id.strip() == product_id.strip():
            raise ItemIsTheProduct(f"item {item_id!r} is the product this bill makes",
                                   field=f"{field}.item_id")
        if item_id in seen:
            raise DuplicateItem(f"item {item_id!r} is listed twice", field=f"{field}.item_id")
        if not unit.strip():
            raise UnitRequired(f"item {item_id!r} needs a unit", field=f"{field}.unit")
        quantity = quantity_per_unit
        if _finite(quantity) and quantity != quantity.quantize(QUANTITY_PER_UNIT, ROUND_HALF_UP):
            quantity = quantity.quantize(QUANTITY_PER_UNIT, ROUND_HALF_UP)
        if not _finite(quantity) or quantity <= 0:
            raise QuantityNotPositive(
                f"item {item_id!r}: quantity per unit must be greater than zero "
                f"(at 6 decimal places), got {quantity_per_unit}",
                field=f"{field}.quantity_per_unit",
            )
        seen.add(item_id)
        validated.append(BomItem(item_id=item_id, quantity_per_unit=quantity, unit=unit))
    if not validated:
        raise NoItems("a bill of materials needs at least one item", field="items")
    return validated


class BillOfMaterials(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, product_id: str) -> UUID:
        # Nested namespaces keep ("a:b", "c") and ("a", "b:c") apart.
        return uuid5(uuid5(_BOM_NAMESPACE, tenant_id), product_id)

    @event("Created")
    def __init__(self, tenant_id: str, product_id: str) -> None:
        self.tenant_id = tenant_id
        self.product_id = product_id
        self.versions: list[BomVersion] = []

    @classmethod
    def create(cls, *, tenant_id: str, product_id: str) -> BillOfMaterials:
        if not product_id.strip():
            raise ProductRequired("a bill of materials needs a product_id", field="product_id")
        return cls(tenant_id=tenant_id, product_id=product_id)

    @property
    def latest_version(self) -> int:
        """The number of the newest published version; 0 before the first."""
        return len(self.versions)

    def version_snapshot(self, version: int) -> BomVersion:
        if not 1 <= version <= len(self.versions):
            raise UnknownBomVersion(
                f"bill of materials for product {self.product_id!r} has no version {version} "
                f"(latest is {self.latest_version})",
                field="bom_version",
            )
        return self.versions[version - 1]

    def publish_version(
        self,
        items: Iterable[tuple[str, Decimal, str]],
        process_loss_percent: Decimal = Decimal(0),
        labour_cost_per_unit: Decimal | None = None,
        overhead_percent: Decimal = Decimal(0),
    ) -> BomVersion:
        """Publishes `items` = [(item_id, quantity_per_unit, unit), ...] as the next version."""
        validated = _validated_items(items, self.product_id)
        if not _finite(process_loss_percent) or not 0 <= process_loss_percent < 100:
            raise ProcessLossOutOfRange(
                f"process loss must be at least 0 and below 100 percent, got {process_loss_percent}",
                field="process_loss_percent",
            )
        if not _finite(overhead_percent) or overhead_percent < 0:
            raise PercentNegative(
                f"overhead percent cannot be negative, got {overhead_percent}", field="overhead_percent"
            )
        if labour_cost_per_unit is not None:
            if not _finite(labour_cost_per_unit) or labour_cost_per_unit < 0:
                raise CostNegative(
                    f"labour cost per unit cannot be negative, got {labour_cost_per_unit}",
                    field="labour_cost_per_unit",
                )
            labour_cost_per_unit = labour_cost_per_unit.quantize(CENTS, ROUND_HALF_UP)
        self._version_published(
            product_id=self.product_id,
            bom_version=self.latest_version + 1,
            items=[item.to_dict() for item in validated],
            process_loss_percent=process_loss_percent,
            labour_cost_per_unit=labour_cost_per_unit,
            overhead_percent=overhead_percent,
        )
        return self.versions[-1]

    @event("VersionPublished")
    def _version_published(
        self,
        product_id: str,
        bom_version: int,
        items: list[dict[str, Any]],
        process_loss_percent: Decimal,
        labour_cost_per_unit: Decimal | None,
        overhead_percent: Decimal,
    ) -> None:
        self.versions.append(
            BomVersion(
                bom_id=self.id,
                tenant_id=self.tenant_id,
                product_id=product_id,
                version=bom_version,
                items=tuple(BomItem.from_dict(item) for item in items),
                process_loss_percent=process_loss_percent,
                labour_cost_per_unit=labour_cost_per_unit,
                overhead_percent=overhead_percent,
            )
        )
