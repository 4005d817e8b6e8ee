"""Money in documents: rounded to cents once, half up, and bounded."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from aggregates.errors import InvalidValue

CENT = Decimal("0.01")
# The largest amount a document holds: more is a typo. Below it, sums of amounts stay exact
# in decimal arithmetic (28 digits) and rounding them to cents cannot fail, as it does for an
# amount past 10^26.
MAX_AMOUNT = Decimal(10) ** 15


class AmountTooLarge(InvalidValue):
    pass


def to_cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, ROUND_HALF_UP)


def amount_in_cents(amount: Decimal, field: str, what: str | None = None) -> Decimal:
    """An amount entered, or made of entered values (`what`, e.g. "quantity * unit_price"),
    rounded to cents; refused from MAX_AMOUNT on."""
    if not abs(amount) < MAX_AMOUNT:
        raise AmountTooLarge(f"{what or field} is {amount:f}: a document holds amounts below {MAX_AMOUNT:,}",
                             field=field)
    return to_cents(amount)
