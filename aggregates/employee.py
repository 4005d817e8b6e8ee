"""HRM employee: who is paid, how much from which month, and until when."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from aggregates.errors import InvalidValue, RuleViolation
from aggregates.money import amount_in_cents, to_cents
from aggregates.statutory import (
    Allowance,
    Employment,
    employment_of,
    first_day,
    last_day,
    parse_date,
    parse_period,
)

# KRA PIN of an individual: a letter, nine digits, a letter (A123456789Z).
_KRA_PIN = re.compile(r"[A-Z]\d{9}[A-Z]")


class Status(StrEnum):
    ACTIVE = "active"
    TERMINATED = "terminated"


class EmployeeTerminated(RuleViolation):
    pass


class InvalidKraPin(InvalidValue):
    pass


class ValueRequired(InvalidValue):
    pass


class PayNotPositive(InvalidValue):
    pass


class AllowanceNotPositive(InvalidValue):
    pass


class DuplicateAllowance(InvalidValue):
    pass


class EffectiveBeforeHire(InvalidValue):
    pass


class TerminationBeforeHire(InvalidValue):
    pass


@dataclass(frozen=True)
class EmployeePay:
    """What a payroll run needs of an employee for one period."""

    employee_id: UUID
    name: str
    basic_pay: Decimal
    allowances: tuple[Allowance, ...]
    employment: Employment
    payment_days: int | None = None  # employed for only these calendar days of the month


@dataclass(frozen=True)
class PayRecord:
    """Pay in force from a period ("YYYY-MM") until the next record's."""

    effective: str
    basic_pay: Decimal
    allowances: tuple[Allowance, ...]


def _required(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise ValueRequired(f"{field} must not be blank", field=field)
    return value


def _basic_pay(amount: Decimal) -> Decimal:
    if not amount.is_finite() or amount <= 0:
        raise PayNotPositive(f"basic_pay {amount} must be greater than zero", field="basic_pay")
    return amount_in_cents(amount, "basic_pay")


def _allowances(allowances: Iterable[tuple[str, Decimal]]) -> list[dict[str, Any]]:
    """As an event stores them: a list of {"name", "amount"}."""
    checked: list[dict[str, Any]] = []
    for name, amount in allowances:
        name = _required(name, "allowances")
        if not amount.is_finite() or amount <= 0:
            raise AllowanceNotPositive(
                f"allowance {name!r} of {amount} must be greater than zero", field="allowances"
            )
        if any(a["name"] == name for a in checked):
            raise DuplicateAllowance(f"allowance {name!r} is given twice", field="allowances")
        checked.append({"name": name, "amount": amount_in_cents(amount, "allowances", f"allowance {name!r}")})
    return checked


def _allowance_tuple(allowances: list[dict[str, Any]]) -> tuple[Allowance, ...]:
    return tuple(Allowance(a["name"], a["amount"]) for a in allowances)


class Employee(Aggregate):
    @event("Hired")
    def __init__(
        self,
        tenant_id: str,
        employee_number: str,
        name: str,
        kra_pin: str,
        nssf_number: str,
        sha_number: str,
        basic_pay: Decimal,
        allowances: list[dict[str, Any]],
        employment: str,
        hired_on: str,
    ) -> None:
        self.tenant_id = tenant_id
        self.employee_number = employee_number
        self.name = name
        self.kra_pin = kra_pin
        self.nssf_number = nssf_number
        self.sha_number = sha_number
        self.employment = Employment(employment)
        self.hired_on = hired_on
        hired_pay = PayRecord(hired_on[:7], basic_pay, _allowance_tuple(allowances))
        self.pay_history: tuple[PayRecord, ...] = (hired_pay,)
        self.status = Status.ACTIVE
        self.terminated_on: str | None = None
        self.termination_reason: str | None = None

    @classmethod
    def hire(
        cls,
        *,
        tenant_id: str,
        employee_number: str,
        name: str,
        kra_pin: str,
        nssf_number: str,
        sha_number: str,
        basic_pay: Decimal,
        allowances: Iterable[tuple[str, Decimal]] = (),
        employment: str = Employment.PRIMARY,
        hired_on: str,
    ) -> Employee:
        pin = kra_pin.strip().upper()
        if not _KRA_PIN.fullmatch(pin):
            raise InvalidKraPin(
                f"KRA PIN {kra_pin!r} is not a letter, nine digits and a letter (A123456789Z)",
                field="kra_pin",
            )
        parse_date(hired_on, "hired_on")
        return cls(
            tenant_id=tenant_id,
            employee_number=_required(employee_number, "employee_number"),
            name=_required(name, "name"),
            kra_pin=pin,
            nssf_number=_required(nssf_number, "nssf_number"),
            sha_number=_required(sha_number, "sha_number"),
            basic_pay=_basic_pay(basic_pay),
            allowances=_allowances(allowances),
            employment=employment_of(employment).value,
            hired_on=hired_on,
        )

    @property
    def current_pay(self) -> PayRecord:
        """The pay of the latest effective period recorded."""
        return self.pay_history[-1]

    def _require_active(self) -> None:
        if self.status is Status.TERMINATED:
            raise EmployeeTerminated(
                f"employee {self.employee_number} was terminated on {self.terminated_on}; "
                "the record cannot change"
            )

    def change_pay(
        self, basic_pay: Decimal, allowances: Iterable[tuple[str, Decimal]], effective: str
    ) -> None:
        """New pay from period `effective` ("YYYY-MM"); replaces a change recorded for that period."""
        self._require_active()
        parse_period(effective, "effective")
        if effective < self.hired_on[:7]:
            raise EffectiveBeforeHire(
                f"pay cannot change from {effective}, before the hire on {self.hired_on}",
                field="effective",
            )
        self._pay_changed(
            employee_number=self.employee_number,
            basic_pay=_basic_pay(basic_pay),
            allowances=_allowances(allowances),
            effective=effective,
        )

    @event("PayChanged")
    def _pay_changed(
        self, employee_number: str, basic_pay: Decimal, allowances: list[dict[str, Any]], effective: str
    ) -> None:
        changed = PayRecord(effective, basic_pay, _allowance_tuple(allowances))
        others = [record for record in self.pay_history if record.effective != effective]
        self.pay_history = tuple(sorted([*others, changed], key=lambda record: record.effective))

    def terminate(self, on: str, reason: str) -> None:
        self._require_active()
        if parse_date(on, "on") < parse_date(self.hired_on, "hired_on"):
            raise TerminationBeforeHire(
                f"termination on {on} is before the hire on {self.hired_on}", field="on"
            )
        self._terminated(
            employee_number=self.employee_number, terminated_on=on, reason=_required(reason, "reason")
        )

    @event("Terminated")
    def _terminated(self, employee_number: str, terminated_on: str, reason: str) -> None:
        self.status = Status.TERMINATED
        self.terminated_on = terminated_on
        self.termination_reason = reason

    def pay_for(self, period: str) -> EmployeePay | None:
        """The month's pay for a payroll run, or None if not employed in that month. Hired
        after its first day or leaving before its last (the termination date is the last day
        employed), the pay in force is pro-rated by calendar days employed, each amount
        rounded to cents; the statutory deductions then follow from the pay received."""
        first, last = first_day(period), last_day(period)
        hired = parse_date(self.hired_on, "hired_on")
        left = parse_date(self.terminated_on, "on") if self.terminated_on is not None else last
        if hired > last or left < first:
            return None
        record = [r for r in self.pay_history if r.effective <= period][-1]
        days, month = (min(left, last) - max(hired, first)).days + 1, last.day
        if days == month:
            return EmployeePay(employee_id=self.id, name=self.name, basic_pay=record.basic_pay,
                               allowances=record.allowances, employment=self.employment)

        def share(amount: Decimal) -> Decimal:
            return to_cents(amount * days / month)

        return EmployeePay(
            employee_id=self.id, name=self.name, basic_pay=share(record.basic_pay),
            allowances=tuple(Allowance(a.name, share(a.amount)) for a in record.allowances),
            employment=self.employment, payment_days=days,
        )
