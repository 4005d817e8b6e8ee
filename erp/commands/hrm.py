"""HRM commands: employees and payroll runs.

Calculating a run needs the employees on the payroll for its period. Which employees
exist is a question only a read model answers, and read models lag; so the roster's
ids are taken from the `employees` read model once it has caught up with the event
store's head (see `projections.payroll.EmployeeRoster`), and each employee is then
loaded from the event store, whose `pay_for(period)` gives the amounts that are paid.
The read model only says whom to look at; what anyone is paid never comes from it.

A run and the payslip preview use the same rules: the statutory ones in force for the
period, with the tenant's own rate overrides (tenant settings) where it has any.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol
from uuid import UUID

from aggregates.employee import Employee, EmployeePay
from aggregates.payroll_run import PayrollPeriod, PayrollRun
from aggregates.statutory import Payslip, StatutoryRules, payslip, rules_for
from erp.commands import CommandContext, CommandRunner, Loader
from erp.eventstore import Saved

Allowances = Sequence[tuple[str, Decimal]]


class Roster(Protocol):
    async def employee_ids(self, tenant_id: str, period: str) -> list[UUID]:
        """Every employee of the tenant who may be employed in `period`, as far as all
        events stored before the call tell."""


async def hire_employee(
    runner: CommandRunner, ctx: CommandContext, *, employee_number: str, name: str, kra_pin: str,
    nssf_number: str, sha_number: str, basic_pay: Decimal, allowances: Allowances,
    employment: str, hired_on: str,
) -> Saved:
    def decide(load: Loader) -> Employee:
        return Employee.hire(
            tenant_id=ctx.tenant_id, employee_number=employee_number, name=name, kra_pin=kra_pin,
            nssf_number=nssf_number, sha_number=sha_number, basic_pay=basic_pay,
            allowances=allowances, employment=employment, hired_on=hired_on,
        )

    return await runner.execute(ctx, decide)


async def change_pay(
    runner: CommandRunner, ctx: CommandContext, employee_id: UUID, *, basic_pay: Decimal,
    allowances: Allowances, effective: str,
) -> Saved:
    def decide(load: Loader) -> Employee:
        employee = load.target(Employee, employee_id)
        employee.change_pay(basic_pay, allowances, effective)
        return employee

    return await runner.execute(ctx, decide)


async def terminate_employee(
    runner: CommandRunner, ctx: CommandContext, employee_id: UUID, *, on: str, reason: str
) -> Saved:
    def decide(load: Loader) -> Employee:
        employee = load.target(Employee, employee_id)
        employee.terminate(on, reason)
        return employee

    return await runner.execute(ctx, decide)


async def create_payroll_run(runner: CommandRunner, ctx: CommandContext, *, period: str) -> Saved:
    def decide(load: Loader) -> PayrollRun:
        return PayrollRun.create(tenant_id=ctx.tenant_id, period=period)

    return await runner.execute(ctx, decide)


async def calculate_payroll(
    runner: CommandRunner, ctx: CommandContext, run_id: UUID, roster: Roster
) -> Saved:
    """Payslips for everyone employed in the run's period, at the pay the event store holds."""
    # A run's period never changes, so it can be read before the decision.
    period = (await asyncio.to_thread(Loader(runner.store, ctx.tenant_id).get, PayrollRun, run_id)).period
    candidates = await roster.employee_ids(ctx.tenant_id, period)

    def decide(load: Loader) -> PayrollRun:
        run = load.target(PayrollRun, run_id)
        paid: list[EmployeePay] = []
        for employee_id in candidates:
            pay = load.get(Employee, employee_id).pay_for(run.period)
            if pay is not None:  # the read model's dates are only a first filter
                paid.append(pay)
        run.calculate(paid, rules_for(run.period, load.read_settings().statutory_overrides))
        return run

    return await runner.execute(ctx, decide)


async def approve_payroll(
    runner: CommandRunner, ctx: CommandContext, run_id: UUID, approver: str
) -> Saved:
    def decide(load: Loader) -> PayrollRun:
        run = load.target(PayrollRun, run_id)
        run.approve(approver)
        return run

    return await runner.execute(ctx, decide)


async def process_payroll(runner: CommandRunner, ctx: CommandContext, run_id: UUID) -> Saved:
    """Processes the run and closes its period in one transaction: a second run for the
    same period is refused, also when two are processed at once (they clash on the period)."""

    def decide(load: Loader) -> tuple[PayrollRun, PayrollPeriod]:
        run = load.target(PayrollRun, run_id)
        run.process()
        period = load.find(PayrollPeriod, PayrollPeriod.id_for(ctx.tenant_id, run.period))
        if period is None:
            period = PayrollPeriod.open(tenant_id=ctx.tenant_id, period=run.period)
        period.close_with(run.id)
        return run, period

    return await runner.execute(ctx, decide)


async def cancel_payroll(
    runner: CommandRunner, ctx: CommandContext, run_id: UUID, reason: str
) -> Saved:
    def decide(load: Loader) -> PayrollRun:
        run = load.target(PayrollRun, run_id)
        run.cancel(reason)
        return run

    return await runner.execute(ctx, decide)


async def preview_payslip(
    runner: CommandRunner, tenant_id: str, *, period: str, basic_pay: Decimal,
    allowances: Allowances, employment: str,
) -> tuple[Payslip, StatutoryRules]:
    """The payslip a run for `period` would give this pay, and the rules it used; changes nothing."""

    def compute() -> tuple[Payslip, StatutoryRules]:
        overrides = Loader(runner.store, tenant_id).settings().statutory_overrides
        rules = rules_for(period, overrides)
        return payslip(basic_pay, allowances, employment, rules), rules

    return await asyncio.to_thread(compute)


async def mark_paid(runner: CommandRunner, ctx: CommandContext, payroll_id: UUID, payment_id: str) -> Saved:
    def decide(load: Loader) -> PayrollRun:
        run = load.get(PayrollRun, payroll_id)
        run.mark_paid(payment_id)
        return run

    return await runner.execute(ctx, decide)
