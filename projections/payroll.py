"""HRM read models: employees with their pay history, payroll runs with their payslips.

One projection keeps all four tables, so a query joining them (an employee's payslips,
a period's statutory summary with KRA PINs) sees one consistent position. Allowances are
jsonb lists of {name, amount}; read them as text and decode with `allowances()` so the
amounts stay Decimal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import msgspec
from psycopg_pool import AsyncConnectionPool

from aggregates.statutory import first_day, last_day
from projections.base import Delivered, Statements, to_json, unbounded_numeric
from projections.positions import ReadModelPositions
from projections.tenancy import tenant_rows
from streams.events import hrm as h

NAME = "payroll"

# Every money field of a payslip, in the wire payload's order.
PAYSLIP_AMOUNTS = tuple(
    name for name in h.PayslipLine.__struct_fields__
    if name not in ("employee_id", "name", "employment", "allowances", "payment_days")
)
TOTALS = tuple(name for name in h.PayrollTotals.__struct_fields__ if name != "employee_count")

DDL = f"""
CREATE TABLE IF NOT EXISTS employees (
    employee_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    employee_number text NOT NULL,
    name text NOT NULL,
    kra_pin text NOT NULL,
    nssf_number text NOT NULL,
    sha_number text NOT NULL,
    employment text NOT NULL,
    status text NOT NULL,
    hired_on date NOT NULL,
    terminated_on date,
    termination_reason text,
    basic_pay numeric NOT NULL,
    allowances jsonb NOT NULL,
    pay_effective text NOT NULL,
    version integer NOT NULL,
    hired_position bigint NOT NULL,
    log_position bigint NOT NULL,
    hired_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS employees_tenant_hired ON employees (tenant_id, hired_position DESC);
CREATE INDEX IF NOT EXISTS employees_tenant_number ON employees (tenant_id, employee_number);
CREATE TABLE IF NOT EXISTS employee_pay (
    employee_id uuid NOT NULL,
    effective text NOT NULL,
    tenant_id text NOT NULL,
    basic_pay numeric NOT NULL,
    allowances jsonb NOT NULL,
    version integer NOT NULL,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (employee_id, effective)
);
CREATE TABLE IF NOT EXISTS payroll_runs (
    payroll_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    period text NOT NULL,
    status text NOT NULL,
    rules_effective_from text,
    employee_count integer NOT NULL DEFAULT 0,
    {", ".join(f"{name} numeric" for name in TOTALS)},
    approver text,
    cancel_reason text,
    processed_at timestamptz,
    version integer NOT NULL,
    created_position bigint NOT NULL,
    log_position bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
ALTER TABLE payroll_runs ADD COLUMN IF NOT EXISTS payment_id text;
CREATE INDEX IF NOT EXISTS payroll_runs_tenant_created
    ON payroll_runs (tenant_id, created_position DESC);
CREATE INDEX IF NOT EXISTS payroll_runs_tenant_period ON payroll_runs (tenant_id, period, status);
CREATE TABLE IF NOT EXISTS payslips (
    payroll_id uuid NOT NULL,
    employee_id uuid NOT NULL,
    tenant_id text NOT NULL,
    period text NOT NULL,
    calculated_version integer NOT NULL,
    name text NOT NULL,
    employment text NOT NULL,
    allowances jsonb NOT NULL,
    {", ".join(f"{name} numeric NOT NULL" for name in PAYSLIP_AMOUNTS)},
    PRIMARY KEY (payroll_id, employee_id)
);
CREATE INDEX IF NOT EXISTS payslips_tenant_employee ON payslips (tenant_id, employee_id, period);
ALTER TABLE payslips ADD COLUMN IF NOT EXISTS payment_days integer;
""" + unbounded_numeric("employees", "employee_pay", "payroll_runs", "payslips")

_allowances_decoder = msgspec.json.Decoder(list[h.Allowance])


def allowances(stored: str) -> list[dict[str, Any]]:
    """A jsonb allowances column read as text, with Decimal amounts."""
    return [{"name": a.name, "amount": a.amount} for a in _allowances_decoder.decode(stored)]


# Each change applies only on top of the version before it, so a replayed event is a no-op.
_NEXT = "version = %(v)s, log_position = %(pos)s, updated_at = %(at)s"
_EMPLOYEE = "WHERE employee_id = %(id)s AND version = %(v)s - 1"
_RUN = "WHERE payroll_id = %(id)s AND version = %(v)s - 1"

_HIRED = """
INSERT INTO employees (employee_id, tenant_id, employee_number, name, kra_pin, nssf_number,
    sha_number, employment, status, hired_on, basic_pay, allowances, pay_effective, version,
    hired_position, log_position, hired_at, updated_at)
VALUES (%(id)s, %(tenant)s, %(employee_number)s, %(name)s, %(kra_pin)s, %(nssf_number)s,
    %(sha_number)s, %(employment)s, 'active', %(hired_on)s::date, %(basic_pay)s,
    %(allowances)s::jsonb, %(effective)s, %(v)s, %(pos)s, %(pos)s, %(at)s, %(at)s)
ON CONFLICT (employee_id) DO NOTHING
"""
# A later event for the same period replaces the pay; an older one (replayed) never does.
_PAY = """
INSERT INTO employee_pay (employee_id, effective, tenant_id, basic_pay, allowances, version,
    changed_at)
VALUES (%(id)s, %(effective)s, %(tenant)s, %(basic_pay)s, %(allowances)s::jsonb, %(v)s, %(at)s)
ON CONFLICT (employee_id, effective) DO UPDATE SET basic_pay = EXCLUDED.basic_pay,
    allowances = EXCLUDED.allowances, version = EXCLUDED.version, changed_at = EXCLUDED.changed_at
WHERE employee_pay.version < EXCLUDED.version
"""
_PAY_CHANGED = f"""
UPDATE employees e SET (basic_pay, allowances, pay_effective) = (
    SELECT p.basic_pay, p.allowances, p.effective FROM employee_pay p
    WHERE p.employee_id = e.employee_id ORDER BY p.effective DESC LIMIT 1
), {_NEXT} {_EMPLOYEE}
"""
_TERMINATED = f"""
UPDATE employees SET status = 'terminated', terminated_on = %(on)s::date,
    termination_reason = %(reason)s, {_NEXT} {_EMPLOYEE}
"""
_CREATED = """
INSERT INTO payroll_runs (payroll_id, tenant_id, period, status, version, created_position,
    log_position, created_at, updated_at)
VALUES (%(id)s, %(tenant)s, %(period)s, 'draft', %(v)s, %(pos)s, %(pos)s, %(at)s, %(at)s)
ON CONFLICT (payroll_id) DO NOTHING
"""
_CALCULATED = f"""
UPDATE payroll_runs SET status = 'calculated', rules_effective_from = %(rules)s,
    employee_count = %(employee_count)s, {", ".join(f"{n} = %({n})s" for n in TOTALS)},
    {_NEXT} {_RUN}
"""
# A recalculation replaces the run's payslips; both statements act only while the run is
# at this event's version, so replaying an older calculation changes nothing.
_AT_VERSION = "EXISTS (SELECT 1 FROM payroll_runs WHERE payroll_id = %(id)s AND version = %(v)s)"
_STALE_PAYSLIPS = f"""
DELETE FROM payslips WHERE payroll_id = %(id)s AND calculated_version < %(v)s AND {_AT_VERSION}
"""
# A run's payslips travel as one JSON array, all inserted by one statement.
_PAYSLIPS = f"""
INSERT INTO payslips (payroll_id, employee_id, tenant_id, period, calculated_version, name,
    employment, allowances, payment_days, {", ".join(PAYSLIP_AMOUNTS)})
SELECT %(id)s, s.employee_id, %(tenant)s, %(period)s, %(v)s, s.name, s.employment, s.allowances,
    s.payment_days, {", ".join(f"s.{n}" for n in PAYSLIP_AMOUNTS)}
FROM jsonb_to_recordset(%(payslips)s::jsonb) AS s(employee_id uuid, name text, employment text,
    allowances jsonb, payment_days integer, {", ".join(f"{n} numeric" for n in PAYSLIP_AMOUNTS)})
WHERE {_AT_VERSION}
ON CONFLICT (payroll_id, employee_id) DO NOTHING
"""
_APPROVED = f"UPDATE payroll_runs SET status = 'approved', approver = %(approver)s, {_NEXT} {_RUN}"
_PROCESSED = f"UPDATE payroll_runs SET status = 'processed', processed_at = %(at)s, {_NEXT} {_RUN}"
_PAID = f"UPDATE payroll_runs SET status = 'paid', payment_id = %(payment_id)s, {_NEXT} {_RUN}"
_CANCELLED = f"""
UPDATE payroll_runs SET status = 'cancelled', cancel_reason = %(reason)s, {_NEXT} {_RUN}
"""


class PayrollProjection:
    name = NAME
    ddl = DDL
    _reads: dict[str, type[Any]] = {
        "erp.employee.hired": h.EmployeeHired,
        "erp.employee.pay_changed": h.EmployeePayChanged,
        "erp.employee.terminated": h.EmployeeTerminated,
        "erp.payroll.created": h.PayrollCreated,
        "erp.payroll.calculated": h.PayrollCalculated,
        "erp.payroll.approved": h.PayrollApproved,
        "erp.payroll.processed": h.PayrollProcessed,
        "erp.payroll.cancelled": h.PayrollCancelled,
        "erp.payroll.paid": h.PayrollPaid,
    }

    def reads(self, subject: str) -> type[Any] | None:
        return self._reads.get(subject)

    def apply(self, out: Statements, event: Delivered) -> None:
        assert event.envelope is not None
        data: Any = event.envelope.data
        tenant, at = event.envelope.tenant_id, event.envelope.timestamp
        v, pos = event.aggregate_version, event.log_position
        match data:
            case h.EmployeeHired():
                step = {"id": data.employee_id, "tenant": tenant, "v": v, "pos": pos, "at": at,
                        "basic_pay": data.basic_pay, "allowances": to_json(data.allowances),
                        "effective": data.hired_on[:7]}
                out.add(_HIRED, {
                    **step, "employee_number": data.employee_number, "name": data.name,
                    "kra_pin": data.kra_pin, "nssf_number": data.nssf_number,
                    "sha_number": data.sha_number, "employment": data.employment,
                    "hired_on": data.hired_on,
                })
                out.add(_PAY, step)
            case h.EmployeePayChanged():
                step = {"id": data.employee_id, "tenant": tenant, "v": v, "pos": pos, "at": at,
                        "basic_pay": data.basic_pay, "allowances": to_json(data.allowances),
                        "effective": data.effective}
                out.add(_PAY, step)
                out.add(_PAY_CHANGED, step)
            case h.EmployeeTerminated():
                out.add(_TERMINATED, {"id": data.employee_id, "v": v, "pos": pos,
                                      "at": at, "on": data.terminated_on,
                                      "reason": data.reason})
            case h.PayrollCreated():
                out.add(_CREATED, {"id": data.payroll_id, "tenant": tenant,
                                   "period": data.period, "v": v, "pos": pos, "at": at})
            case h.PayrollCalculated():
                self._calculated(out, data, tenant, {"id": data.payroll_id, "v": v,
                                                     "pos": pos, "at": at})
            case h.PayrollApproved():
                out.add(_APPROVED, {"id": data.payroll_id, "v": v, "pos": pos, "at": at,
                                    "approver": data.approver})
            case h.PayrollProcessed():
                out.add(_PROCESSED, {"id": data.payroll_id, "v": v, "pos": pos, "at": at})
            case h.PayrollPaid():
                out.add(_PAID, {"id": data.payroll_id, "v": v, "pos": pos, "at": at,
                                "payment_id": data.payment_id})
            case h.PayrollCancelled():
                out.add(_CANCELLED, {"id": data.payroll_id, "v": v, "pos": pos, "at": at,
                                     "reason": data.reason})

    def _calculated(
        self, out: Statements, data: h.PayrollCalculated, tenant: str, step: dict[str, Any]
    ) -> None:
        totals = data.totals
        out.add(_CALCULATED, {
            **step, "rules": data.rules_effective_from, "employee_count": totals.employee_count,
            **{name: getattr(totals, name) for name in TOTALS},
        })
        out.add(_STALE_PAYSLIPS, step)
        out.add(_PAYSLIPS, {**step, "tenant": tenant, "period": data.period,
                            "payslips": to_json(data.payslips)})


_ROSTER = """
SELECT employee_id FROM employees
WHERE tenant_id = %s AND hired_on <= %s AND (terminated_on IS NULL OR terminated_on >= %s)
ORDER BY employee_number, employee_id
"""


class EmployeeRoster:
    """Who is on a tenant's payroll for a period, from the `employees` read model.

    It first waits until the read model has applied every event stored before the call
    (the event store's head), so an employee hired or terminated just before is not
    missed; past `wait_seconds` it refuses (503) rather than answer from a stale roster.
    """

    def __init__(
        self, pool: AsyncConnectionPool[Any], positions: ReadModelPositions,
        log_head: Callable[[], Awaitable[int]], wait_seconds: float,
    ) -> None:
        self._pool = pool
        self._positions = positions
        self._log_head = log_head
        self._wait_seconds = wait_seconds

    async def employee_ids(self, tenant_id: str, period: str) -> list[UUID]:
        await self._positions.wait(NAME, await self._log_head(), self._wait_seconds)
        _, found = await tenant_rows(self._pool, tenant_id, _ROSTER,
                                     (tenant_id, last_day(period), first_day(period)))
        return [row[0] for row in found]
