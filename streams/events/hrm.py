"""HRM (payroll) events on the wire.

`erp.payroll.processed` carries exactly the integration guide's fields; its
`total_amount` is the run's total net pay, what treasury pays out to the employees.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from aggregates.employee import Employee
from aggregates.payroll_run import PayrollPeriod, PayrollRun
from streams.events.base import Publication, domain_event


class Allowance(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    amount: Decimal


class EmployeeHired(msgspec.Struct, frozen=True, kw_only=True):
    employee_id: UUID
    employee_number: str
    name: str
    kra_pin: str
    nssf_number: str
    sha_number: str
    basic_pay: Decimal
    allowances: list[Allowance]
    employment: str
    hired_on: str


class EmployeePayChanged(msgspec.Struct, frozen=True, kw_only=True):
    employee_id: UUID
    employee_number: str
    basic_pay: Decimal
    allowances: list[Allowance]
    effective: str


class EmployeeTerminated(msgspec.Struct, frozen=True, kw_only=True):
    employee_id: UUID
    employee_number: str
    terminated_on: str
    reason: str


class PayrollCreated(msgspec.Struct, frozen=True, kw_only=True):
    payroll_id: UUID
    period: str


class PayslipLine(msgspec.Struct, frozen=True, kw_only=True):
    employee_id: UUID
    name: str
    employment: str
    basic_pay: Decimal
    allowances: list[Allowance]
    gross_pay: Decimal
    nssf_tier1_employee: Decimal
    nssf_tier2_employee: Decimal
    nssf_employee: Decimal
    nssf_tier1_employer: Decimal
    nssf_tier2_employer: Decimal
    nssf_employer: Decimal
    shif: Decimal
    nhif: Decimal
    housing_levy: Decimal
    housing_levy_employer: Decimal
    taxable_pay: Decimal
    paye_before_relief: Decimal
    personal_relief: Decimal
    insurance_relief: Decimal
    housing_relief: Decimal
    paye: Decimal
    net_pay: Decimal
    # Employed for part of the month (hired after its first day, or leaving before its last):
    # the calendar days paid, basic pay and allowances pro-rated to them. None: the whole month.
    payment_days: int | None = None


class PayrollTotals(msgspec.Struct, frozen=True, kw_only=True):
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


class PayrollCalculated(msgspec.Struct, frozen=True, kw_only=True):
    payroll_id: UUID
    period: str
    rules_effective_from: str
    payslips: list[PayslipLine]
    totals: PayrollTotals


class PayrollApproved(msgspec.Struct, frozen=True, kw_only=True):
    payroll_id: UUID
    period: str
    approver: str
    total_amount: Decimal
    employee_count: int


class PayrollProcessed(msgspec.Struct, frozen=True, kw_only=True):
    """Integration guide: `erp.payroll.processed` (treasury creates the payments)."""

    payroll_id: UUID
    period: str
    total_amount: Decimal
    employee_count: int


class PayrollPaid(msgspec.Struct, frozen=True, kw_only=True):
    """Treasury paid the processed run (from treasury.payment.processed)."""

    payroll_id: UUID
    period: str
    payment_id: str


class PayrollCancelled(msgspec.Struct, frozen=True, kw_only=True):
    payroll_id: UUID
    period: str
    reason: str


class PayrollPeriodOpened(msgspec.Struct, frozen=True, kw_only=True):
    payroll_period_id: UUID
    period: str


class PayrollPeriodClosed(msgspec.Struct, frozen=True, kw_only=True):
    payroll_period_id: UUID
    period: str
    payroll_id: UUID


def _allowances(stored: list[dict[str, Any]]) -> list[Allowance]:
    return [Allowance(name=a["name"], amount=a["amount"]) for a in stored]


PUBLICATIONS: dict[type, Publication] = {
    domain_event(Employee, "Hired"): Publication(
        "erp.employee.hired", EmployeeHired, "employee",
        lambda e: EmployeeHired(
            employee_id=e.originator_id, employee_number=e.employee_number, name=e.name,
            kra_pin=e.kra_pin, nssf_number=e.nssf_number, sha_number=e.sha_number,
            basic_pay=e.basic_pay, allowances=_allowances(e.allowances), employment=e.employment,
            hired_on=e.hired_on,
        ),
    ),
    domain_event(Employee, "PayChanged"): Publication(
        "erp.employee.pay_changed", EmployeePayChanged, "employee",
        lambda e: EmployeePayChanged(
            employee_id=e.originator_id, employee_number=e.employee_number, basic_pay=e.basic_pay,
            allowances=_allowances(e.allowances), effective=e.effective,
        ),
    ),
    domain_event(Employee, "Terminated"): Publication(
        "erp.employee.terminated", EmployeeTerminated, "employee",
        lambda e: EmployeeTerminated(
            employee_id=e.originator_id, employee_number=e.employee_number,
            terminated_on=e.terminated_on, reason=e.reason,
        ),
    ),
    domain_event(PayrollRun, "Created"): Publication(
        "erp.payroll.created", PayrollCreated, "payroll",
        lambda e: PayrollCreated(payroll_id=e.originator_id, period=e.period),
    ),
    domain_event(PayrollRun, "Calculated"): Publication(
        "erp.payroll.calculated", PayrollCalculated, "payroll",
        lambda e: PayrollCalculated(
            payroll_id=e.originator_id, period=e.period, rules_effective_from=e.rules_effective_from,
            payslips=msgspec.convert(e.payslips, list[PayslipLine]),
            totals=msgspec.convert(e.totals, PayrollTotals),
        ),
    ),
    domain_event(PayrollRun, "Approved"): Publication(
        "erp.payroll.approved", PayrollApproved, "payroll",
        lambda e: PayrollApproved(
            payroll_id=e.originator_id, period=e.period, approver=e.approver,
            total_amount=e.total_amount, employee_count=e.employee_count,
        ),
    ),
    domain_event(PayrollRun, "Paid"): Publication(
        "erp.payroll.paid", PayrollPaid, "payroll",
        lambda e: PayrollPaid(payroll_id=e.originator_id, period=e.period, payment_id=e.payment_id),
    ),
    domain_event(PayrollRun, "Processed"): Publication(
        "erp.payroll.processed", PayrollProcessed, "payroll",
        lambda e: PayrollProcessed(
            payroll_id=e.originator_id, period=e.period, total_amount=e.total_amount,
            employee_count=e.employee_count,
        ),
    ),
    domain_event(PayrollRun, "Cancelled"): Publication(
        "erp.payroll.cancelled", PayrollCancelled, "payroll",
        lambda e: PayrollCancelled(payroll_id=e.originator_id, period=e.period, reason=e.reason),
    ),
    domain_event(PayrollPeriod, "Opened"): Publication(
        "erp.payroll_period.opened", PayrollPeriodOpened, "payroll_period",
        lambda e: PayrollPeriodOpened(payroll_period_id=e.originator_id, period=e.period),
    ),
    domain_event(PayrollPeriod, "Closed"): Publication(
        "erp.payroll_period.closed", PayrollPeriodClosed, "payroll_period",
        lambda e: PayrollPeriodClosed(
            payroll_period_id=e.originator_id, period=e.period, payroll_id=e.run_id
        ),
    ),
}
