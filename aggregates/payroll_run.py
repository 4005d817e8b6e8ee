"""HRM payroll run: one period's payslips, calculated, approved and processed (paid).

A run goes draft -> calculated (may be recalculated) -> approved -> processed; a run
not yet processed may be cancelled. `PayrollPeriod` guards the rule "only one processed
run per tenant and period": its id is derived from (tenant, period), so two runs closing
the same period clash on that aggregate's version when both are saved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from aggregates.employee import EmployeePay
from aggregates.errors import InvalidValue, RuleViolation
from aggregates.statutory import (
    ZERO,
    Payslip,
    StatutoryRules,
    last_day,
    parse_period,
    payslip,
    rules_for,
)

_PERIOD_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:payroll-period")


class Status(StrEnum):
    DRAFT = "draft"
    CALCULATED = "calculated"
    APPROVED = "approved"
    PROCESSED = "processed"
    PAID = "paid"
    CANCELLED = "cancelled"


class NotProcessed(RuleViolation):
    pass


class RunLocked(RuleViolation):
    pass


class NotCalculated(RuleViolation):
    pass


class NotApproved(RuleViolation):
    pass


class PeriodAlreadyProcessed(RuleViolation):
    pass


class NoEmployees(InvalidValue):
    pass


class DuplicateEmployee(InvalidValue):
    pass


class RulesNotInForce(InvalidValue):
    pass


class ApproverRequired(InvalidValue):
    pass


class ReasonRequired(InvalidValue):
    pass


@dataclass(frozen=True)
class EmployeePayslip:
    employee_id: UUID
    name: str
    payslip: Payslip
    payment_days: int | None = None  # of a month employed for part of it (pay pro-rated)

    def as_dict(self) -> dict[str, Any]:
        return {"employee_id": self.employee_id, "name": self.name, **self.payslip.as_dict(),
                "payment_days": self.payment_days}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> EmployeePayslip:
        values = dict(fields)
        employee_id, name = values.pop("employee_id"), values.pop("name")
        payment_days = values.pop("payment_days", None)  # not in runs calculated before pro-rating
        return cls(employee_id=employee_id, name=name, payslip=Payslip.from_dict(values),
                   payment_days=payment_days)


@dataclass(frozen=True)
class PayrollTotals:
    """Sums over a run's payslips; net_pay is what the employees are paid."""

    employee_count: int
    gross_pay: Decimal
    nssf_employee: Decimal
    nssf_employer: Decimal
    shif: Decimal
    nhif: Decimal
    housing_levy: Decimal
    housing_levy_employer: Decimal
    paye: Decimal
    net_pay: Decimal

    @classmethod
    def of(cls, payslips: Sequence[Payslip]) -> PayrollTotals:
        sums = {
            f.name: sum((getattr(p, f.name) for p in payslips), ZERO)
            for f in fields(cls)
            if f.name != "employee_count"
        }
        return cls(employee_count=len(payslips), **sums)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PayrollTotals:
        return cls(**values)


class PayrollRun(Aggregate):
    @event("Created")
    def __init__(self, tenant_id: str, period: str) -> None:
        self.tenant_id = tenant_id
        self.period = period
        self.status = Status.DRAFT
        self.payslips: tuple[EmployeePayslip, ...] = ()
        self.totals: PayrollTotals | None = None
        self.rules_effective_from: str | None = None
        self.approver: str | None = None
        self.cancel_reason: str | None = None
        self.payment_id: str | None = None

    @classmethod
    def create(cls, *, tenant_id: str, period: str) -> PayrollRun:
        parse_period(period)
        return cls(tenant_id=tenant_id, period=period)

    @property
    def total_amount(self) -> Decimal:
        """What treasury pays out: the run's total net pay."""
        return self.totals.net_pay if self.totals is not None else ZERO

    @property
    def employee_count(self) -> int:
        return self.totals.employee_count if self.totals is not None else 0

    def calculate(self, employees: Sequence[EmployeePay], rules: StatutoryRules | None = None) -> None:
        """Payslips for every employee under `rules` (default: the statutory rules in force
        for the period; pass `rules_for(period, overrides)` for a tenant's own rates)."""
        if self.status not in (Status.DRAFT, Status.CALCULATED):
            raise RunLocked(f"the {self.period} payroll is {self.status.value}; it cannot be recalculated")
        if not employees:
            raise NoEmployees(f"the {self.period} payroll has no employees to pay", field="employees")
        seen: set[UUID] = set()
        for employee in employees:
            if employee.employee_id in seen:
                raise DuplicateEmployee(
                    f"employee {employee.employee_id} ({employee.name}) is listed twice", field="employees"
                )
            seen.add(employee.employee_id)
        if rules is None:
            rules = rules_for(self.period)
        if rules.in_force_from > last_day(self.period):
            raise RulesNotInForce(
                f"rules effective from {rules.effective_from} are not in force for {self.period}",
                field="rules",
            )
        slips = [EmployeePayslip(e.employee_id, e.name, _payslip_of(e, rules), e.payment_days)
                 for e in employees]
        totals = PayrollTotals.of([s.payslip for s in slips])
        self._calculated(
            period=self.period,
            payslips=[s.as_dict() for s in slips],
            totals=totals.as_dict(),
            rules_effective_from=rules.effective_from,
        )

    @event("Calculated")
    def _calculated(
        self,
        period: str,
        payslips: list[dict[str, Any]],
        totals: dict[str, Any],
        rules_effective_from: str,
    ) -> None:
        self.status = Status.CALCULATED
        self.payslips = tuple(EmployeePayslip.from_dict(p) for p in payslips)
        self.totals = PayrollTotals.from_dict(totals)
        self.rules_effective_from = rules_effective_from

    def approve(self, approver: str) -> None:
        if self.status is not Status.CALCULATED:
            raise NotCalculated(
                f"the {self.period} payroll is {self.status.value}; only a calculated payroll can be approved"
            )
        approver = approver.strip()
        if not approver:
            raise ApproverRequired("an approval needs the approver", field="approver")
        self._approved(
            period=self.period,
            approver=approver,
            total_amount=self.total_amount,
            employee_count=self.employee_count,
        )

    @event("Approved")
    def _approved(self, period: str, approver: str, total_amount: Decimal, employee_count: int) -> None:
        self.status = Status.APPROVED
        self.approver = approver

    def process(self) -> None:
        """Hands the run's net pay to treasury (`erp.payroll.processed`). Save the run with
        `PayrollPeriod.close_with(run.id)` in one transaction so a period is processed once."""
        if self.status is not Status.APPROVED:
            raise NotApproved(
                f"the {self.period} payroll is {self.status.value}; only an approved payroll can be processed"
            )
        self._processed(
            period=self.period, total_amount=self.total_amount, employee_count=self.employee_count
        )

    @event("Processed")
    def _processed(self, period: str, total_amount: Decimal, employee_count: int) -> None:
        self.status = Status.PROCESSED

    def mark_paid(self, payment_id: str) -> bool:
        """Treasury paid the run (treasury.payment.processed); answers whether it changed."""
        if self.status is Status.PAID and self.payment_id == payment_id:
            return False
        if self.status is not Status.PROCESSED:
            raise NotProcessed(f"the {self.period} payroll is {self.status.value}; only a processed "
                               "payroll is paid")
        if not payment_id.strip():
            raise ReasonRequired("a payment needs its id", field="payment_id")
        self._paid(period=self.period, payment_id=payment_id)
        return True

    @event("Paid")
    def _paid(self, period: str, payment_id: str) -> None:
        self.status = Status.PAID
        self.payment_id = payment_id

    def cancel(self, reason: str) -> None:
        if self.status in (Status.PROCESSED, Status.PAID, Status.CANCELLED):
            raise RunLocked(f"the {self.period} payroll is {self.status.value}; it cannot be cancelled")
        reason = reason.strip()
        if not reason:
            raise ReasonRequired("a cancellation needs a reason", field="reason")
        self._cancelled(period=self.period, reason=reason)

    @event("Cancelled")
    def _cancelled(self, period: str, reason: str) -> None:
        self.status = Status.CANCELLED
        self.cancel_reason = reason


def _payslip_of(employee: EmployeePay, rules: StatutoryRules) -> Payslip:
    try:
        return payslip(employee.basic_pay, employee.allowances, employee.employment, rules)
    except InvalidValue as refused:
        raise type(refused)(f"{employee.name} ({employee.employee_id}): {refused.message}",
                            field="employees") from refused


class PayrollPeriod(Aggregate):
    """One tenant's payroll month; closed by the one run that processed it."""

    @staticmethod
    def id_for(tenant_id: str, period: str) -> UUID:
        return uuid5(_PERIOD_NAMESPACE, f"{tenant_id}\n{period}")

    @classmethod
    def create_id(cls, tenant_id: str, period: str) -> UUID:
        return cls.id_for(tenant_id, period)

    @event("Opened")
    def __init__(self, tenant_id: str, period: str) -> None:
        self.tenant_id = tenant_id
        self.period = period
        self.processed_run_id: UUID | None = None

    @classmethod
    def open(cls, *, tenant_id: str, period: str) -> PayrollPeriod:
        parse_period(period)
        return cls(tenant_id=tenant_id, period=period)

    def close_with(self, run_id: UUID) -> None:
        if self.processed_run_id is not None:
            raise PeriodAlreadyProcessed(
                f"the {self.period} payroll was already processed by run {self.processed_run_id}; "
                f"run {run_id} cannot be processed too"
            )
        self._closed(period=self.period, run_id=run_id)

    @event("Closed")
    def _closed(self, period: str, run_id: UUID) -> None:
        self.processed_run_id = run_id
