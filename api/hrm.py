"""HRM routes: employees, payroll runs, payslips, the payslip preview and the statutory summary."""

from __future__ import annotations

import asyncio
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import reads
from api import requests as rq
from api.auth import principal
from api.openapi import operation
from api.problems import BadRequest
from api.reads import PageQuery, ReadQuery
from api.requests import IDEMPOTENCY, IF_MATCH, CommandAccepted, accepted
from api.responses import JSON
from erp.bootstrap import Service
from erp.commands import NotFound
from erp.commands import hrm as commands
from projections.payroll import NAME as PROJECTION
from projections.payroll import PAYSLIP_AMOUNTS, EmployeeRoster, allowances

EMPLOYEES = "/api/v1/hrm/employees"
RUNS = "/api/v1/hrm/payroll-runs"
PAYROLL = "/api/v1/hrm/payroll"
COMMAND_ERRORS = (400, 404, 409, 412, 422, 503)

PERIOD_PATTERN = r"^(19|[2-9]\d)\d{2}-(0[1-9]|1[0-2])$"  # from 1900 (statutory.FIRST_YEAR)
Money = Field(gt=0, max_digits=18, decimal_places=2)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Allowance(Body):
    name: str = Field(min_length=1, max_length=100)
    amount: Decimal = Money


class HireEmployee(Body):
    employee_number: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    kra_pin: str = Field(min_length=1, max_length=20, description="A123456789Z")
    nssf_number: str = Field(min_length=1, max_length=64)
    sha_number: str = Field(min_length=1, max_length=64)
    basic_pay: Decimal = Field(gt=0, max_digits=18, decimal_places=2, description="KES a month")
    allowances: list[Allowance] = Field(default_factory=list, max_length=50,
                                        description="taxable cash allowances a month")
    employment: Literal["primary", "secondary"] = "primary"
    hired_on: date


class ChangePay(Body):
    basic_pay: Decimal = Field(gt=0, max_digits=18, decimal_places=2)
    allowances: list[Allowance] = Field(default_factory=list, max_length=50)
    effective: str = Field(pattern=PERIOD_PATTERN, description="first payroll month, YYYY-MM")


class TerminateEmployee(Body):
    on: date = Field(description="last day employed; that month's pay is pro-rated to it")
    reason: str = Field(min_length=1, max_length=500)


class CreatePayrollRun(Body):
    period: str = Field(pattern=PERIOD_PATTERN, description="payroll month, YYYY-MM")


class NoBody(Body):
    """An empty body (or `{}`)."""


class CancelPayrollRun(Body):
    reason: str = Field(min_length=1, max_length=500)


class PayslipPreviewRequest(Body):
    period: str = Field(pattern=PERIOD_PATTERN, description="payroll month, YYYY-MM")
    basic_pay: Decimal = Field(gt=0, max_digits=18, decimal_places=2)
    allowances: list[Allowance] = Field(default_factory=list, max_length=50)
    employment: Literal["primary", "secondary"] = "primary"


class EmployeeListQuery(PageQuery):
    status: Literal["active", "terminated"] | None = None
    employment: Literal["primary", "secondary"] | None = None
    employee_number: str | None = None


class RunListQuery(PageQuery):
    period: str | None = Field(default=None, pattern=PERIOD_PATTERN)
    status: Literal["draft", "calculated", "approved", "processed", "paid", "cancelled"] | None = None


class PayslipHistoryQuery(PageQuery):
    status: Literal["calculated", "approved", "processed", "paid", "cancelled", "any"] = Field(
        default="processed",
        description="the runs' status; default: issued payslips (`processed` takes in runs treasury "
                    "has since paid; `paid` only those)",
    )


# A processed run stays processed for filing and payslips once treasury has paid it.
_ISSUED = "('processed', 'paid')"


class SummaryQuery(ReadQuery):
    period: str = Field(pattern=PERIOD_PATTERN, description="payroll month, YYYY-MM")


class AllowanceView(BaseModel):
    name: str
    amount: Decimal


class EmployeeView(BaseModel):
    employee_id: UUID
    tenant_id: str
    employee_number: str
    name: str
    kra_pin: str
    nssf_number: str
    sha_number: str
    employment: str
    status: str
    hired_on: date
    terminated_on: date | None
    termination_reason: str | None
    basic_pay: Decimal = Field(description="pay of the latest month recorded (pay_effective)")
    allowances: list[AllowanceView]
    pay_effective: str
    version: int
    log_position: int
    hired_at: datetime
    updated_at: datetime


class PayRecordView(BaseModel):
    effective: str
    basic_pay: Decimal
    allowances: list[AllowanceView]


class EmployeeDetail(EmployeeView):
    pay_history: list[PayRecordView]


class EmployeePage(BaseModel):
    items: list[EmployeeView]
    next_cursor: str | None
    log_position: int


class PayslipView(BaseModel):
    employee_id: UUID
    name: str
    employment: str
    payment_days: int | None = Field(
        default=None, description="employed for part of the month: the calendar days paid, basic pay and "
        "allowances pro-rated to them; null: the whole month")
    allowances: list[AllowanceView]
    basic_pay: Decimal
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


class EmployeePayslip(PayslipView):
    payroll_id: UUID
    period: str
    status: str = Field(description="the payroll run's status")


class EmployeePayslipPage(BaseModel):
    items: list[EmployeePayslip]
    next_cursor: str | None
    log_position: int


class PayrollRunView(BaseModel):
    payroll_id: UUID
    tenant_id: str
    period: str
    status: str
    rules_effective_from: str | None
    employee_count: int
    gross_pay: Decimal | None
    nssf_employee: Decimal | None
    nssf_employer: Decimal | None
    shif: Decimal | None
    nhif: Decimal | None
    housing_levy: Decimal | None
    housing_levy_employer: Decimal | None
    paye: Decimal | None
    net_pay: Decimal | None = Field(description="the total paid to the employees")
    approver: str | None
    cancel_reason: str | None
    processed_at: datetime | None
    payment_id: str | None = Field(default=None, description="treasury's payment, once paid")
    version: int
    log_position: int
    created_at: datetime
    updated_at: datetime


class PayrollRunDetail(PayrollRunView):
    payslips: list[PayslipView]


class PayrollRunPage(BaseModel):
    items: list[PayrollRunView]
    next_cursor: str | None
    log_position: int


class PayslipPreview(BaseModel):
    period: str
    rules_effective_from: str
    rules_source: str
    employment: str
    basic_pay: Decimal
    allowances: list[AllowanceView]
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
    total_deductions: Decimal
    net_pay: Decimal


class FilingLine(BaseModel):
    employee_id: UUID
    employee_number: str | None
    name: str
    kra_pin: str | None
    nssf_number: str | None
    sha_number: str | None
    gross_pay: Decimal
    taxable_pay: Decimal
    paye: Decimal
    nssf_employee: Decimal
    nssf_employer: Decimal
    shif: Decimal
    nhif: Decimal
    housing_levy: Decimal
    housing_levy_employer: Decimal


class StatutorySummary(BaseModel):
    period: str
    payroll_ids: list[UUID] = Field(description="the processed run(s) of the period")
    employee_count: int
    gross_pay: Decimal
    paye: Decimal = Field(description="to KRA")
    nssf_employee: Decimal
    nssf_employer: Decimal
    nssf_total: Decimal = Field(description="to NSSF")
    shif: Decimal = Field(description="to SHA")
    nhif: Decimal = Field(description="to NHIF (periods before October 2024)")
    housing_levy: Decimal
    housing_levy_employer: Decimal
    housing_levy_total: Decimal = Field(description="to KRA (Affordable Housing Levy)")
    employees: list[FilingLine]
    log_position: int


async def _caught_up(request: Request, params: ReadQuery) -> int:
    return await reads.caught_up(request, PROJECTION, params)


async def _rows(request: Request, sql: str, args: Any) -> list[dict[str, Any]]:
    """Rows of the read model, allowances decoded with Decimal amounts."""
    found = await reads.rows(request, sql, args)
    for row in found:
        decode_allowances(row)
    return found


def decode_allowances(row: dict[str, Any]) -> None:
    if "allowances" in row:
        row["allowances"] = allowances(row["allowances"])


def _roster(service: Service) -> EmployeeRoster:
    async def log_head() -> int:
        return await asyncio.to_thread(service.store.recorder.max_notification_id) or 0

    return EmployeeRoster(service.read_pool, service.positions, log_head,
                          service.settings.read_wait_max_seconds)


def _columns(model: type[BaseModel], prefix: str = "") -> str:
    """A view's columns; jsonb allowances as text, so amounts decode as Decimal."""
    return ", ".join(f"{prefix}allowances::text AS allowances" if name == "allowances"
                     else f"{prefix}{name}" for name in model.model_fields)


async def _no_body(request: Request) -> None:
    if await request.body():
        await rq.body(request, NoBody)


def _employee_id(request: Request) -> UUID:
    employee_id: UUID = request.path_params["employee_id"]
    return employee_id


def _payroll_id(request: Request) -> UUID:
    payroll_id: UUID = request.path_params["payroll_id"]
    return payroll_id


def _pairs(items: list[Allowance]) -> list[tuple[str, Decimal]]:
    return [(a.name, a.amount) for a in items]


# Employees


@operation(scope="hrm:write",
           summary="Hire an employee (publishes erp.employee.hired)", body=HireEmployee,
           response=CommandAccepted, status=201, errors=(400, 409, 422, 503), headers=(IDEMPOTENCY,))
async def hire(request: Request) -> Response:
    cmd = await rq.body(request, HireEmployee)
    saved = await commands.hire_employee(
        reads.service(request).runner, await rq.command_context(request),
        employee_number=cmd.employee_number, name=cmd.name, kra_pin=cmd.kra_pin,
        nssf_number=cmd.nssf_number, sha_number=cmd.sha_number, basic_pay=cmd.basic_pay,
        allowances=_pairs(cmd.allowances), employment=cmd.employment,
        hired_on=cmd.hired_on.isoformat(),
    )
    return accepted(saved, created_at=EMPLOYEES)


@operation(scope="hrm:write",
           summary="Change an employee's pay from a payroll month", body=ChangePay,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def change_pay(request: Request) -> Response:
    cmd = await rq.body(request, ChangePay)
    saved = await commands.change_pay(
        reads.service(request).runner, await rq.command_context(request), _employee_id(request),
        basic_pay=cmd.basic_pay, allowances=_pairs(cmd.allowances), effective=cmd.effective,
    )
    return accepted(saved)


@operation(scope="hrm:write",
           summary="Terminate an employee", body=TerminateEmployee, response=CommandAccepted,
           errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def terminate(request: Request) -> Response:
    cmd = await rq.body(request, TerminateEmployee)
    saved = await commands.terminate_employee(
        reads.service(request).runner, await rq.command_context(request), _employee_id(request),
        on=cmd.on.isoformat(), reason=cmd.reason,
    )
    return accepted(saved)


@operation(scope="hrm:read",
           summary="List employees, newest hire first", query=EmployeeListQuery,
           response=EmployeePage, errors=(400, 422, 503))
async def list_employees(request: Request) -> Response:
    params = rq.query(request, EmployeeListQuery)
    position = await _caught_up(request, params)
    where, args = reads.filters(request, params, ("status", "employment", "employee_number"))
    rows, cursor = await reads.page(request, params, table="employees", columns=_columns(EmployeeView),
                                    where=where, args=args, order_by="hired_position")
    for row in rows:
        decode_allowances(row)
    return JSON({
        "items": [{k: r[k] for k in EmployeeView.model_fields} for r in rows],
        "next_cursor": cursor,
        "log_position": position,
    })


async def _employee(request: Request) -> dict[str, Any]:
    employee_id = _employee_id(request)
    found = await _rows(
        request,
        f"SELECT {_columns(EmployeeView)} FROM employees WHERE employee_id = %s AND tenant_id = %s",
        (employee_id, rq.tenant(request)),
    )
    if not found:
        raise NotFound("employee", employee_id)
    return found[0]


@operation(scope="hrm:read",
           summary="One employee with the pay history", query=ReadQuery, response=EmployeeDetail,
           errors=(400, 404, 422, 503))
async def get_employee(request: Request) -> Response:
    await _caught_up(request, rq.query(request, ReadQuery))
    employee = await _employee(request)
    history = await _rows(
        request,
        "SELECT effective, basic_pay, allowances::text AS allowances FROM employee_pay "
        "WHERE employee_id = %s AND tenant_id = %s ORDER BY effective",
        (employee["employee_id"], rq.tenant(request)),
    )
    return JSON({**employee, "pay_history": history},
                headers={"ETag": f'"{employee["version"]}"'})


_HISTORY_CURSOR = re.compile(r"^(\d{4}-\d{2}):(\d{1,19})$")


@operation(scope="hrm:read",
           summary="An employee's payslips, latest period first", query=PayslipHistoryQuery,
           response=EmployeePayslipPage, errors=(400, 404, 422, 503))
async def employee_payslips(request: Request) -> Response:
    params = rq.query(request, PayslipHistoryQuery)
    position = await _caught_up(request, params)
    employee = await _employee(request)
    where = ["s.employee_id = %s", "s.tenant_id = %s"]
    args: list[Any] = [employee["employee_id"], rq.tenant(request)]
    if params.status == "processed":
        where.append(f"r.status IN {_ISSUED}")
    elif params.status != "any":
        where.append("r.status = %s")
        args.append(params.status)
    if params.cursor is not None:
        found = _HISTORY_CURSOR.match(params.cursor)
        if found is None:
            raise BadRequest("cursor must be a next_cursor from a previous page",
                             field="query.cursor")
        where.append("(s.period, r.created_position) < (%s, %s)")
        args += [found[1], int(found[2])]
    slip_columns = _columns(PayslipView, "s.")
    rows = await _rows(
        request,
        f"SELECT s.payroll_id, s.period, r.status, {slip_columns}, r.created_position "
        f"FROM payslips s JOIN payroll_runs r USING (payroll_id) WHERE {' AND '.join(where)} "
        "ORDER BY s.period DESC, r.created_position DESC LIMIT %s",
        [*args, params.limit + 1],
    )
    more = len(rows) > params.limit
    rows = rows[: params.limit]
    return JSON({
        "items": [{k: r[k] for k in EmployeePayslip.model_fields} for r in rows],
        "next_cursor": f"{rows[-1]['period']}:{rows[-1]['created_position']}" if more else None,
        "log_position": position,
    })


# Payroll runs


@operation(scope="payroll:process",
           summary="Create a payroll run for a month", body=CreatePayrollRun, response=CommandAccepted,
           status=201, errors=(400, 409, 422, 503), headers=(IDEMPOTENCY,))
async def create_run(request: Request) -> Response:
    cmd = await rq.body(request, CreatePayrollRun)
    saved = await commands.create_payroll_run(
        reads.service(request).runner, await rq.command_context(request), period=cmd.period
    )
    return accepted(saved, created_at=RUNS)


@operation(scope="payroll:process",
           summary="Calculate (or recalculate) the payslips of everyone employed in the month",
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def calculate(request: Request) -> Response:
    await _no_body(request)
    service = reads.service(request)
    saved = await commands.calculate_payroll(
        service.runner, await rq.command_context(request), _payroll_id(request), _roster(service)
    )
    return accepted(saved)


@operation(scope="payroll:process",
           summary="Approve a calculated payroll run (the approver is the caller)",
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def approve(request: Request) -> Response:
    await _no_body(request)
    saved = await commands.approve_payroll(
        reads.service(request).runner, await rq.command_context(request), _payroll_id(request),
        principal(request).subject,
    )
    return accepted(saved)


@operation(scope="payroll:process",
           summary="Process an approved payroll run (publishes erp.payroll.processed); "
                   "one processed run per month", response=CommandAccepted,
           errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def process(request: Request) -> Response:
    await _no_body(request)
    saved = await commands.process_payroll(
        reads.service(request).runner, await rq.command_context(request), _payroll_id(request)
    )
    return accepted(saved)


@operation(scope="payroll:process",
           summary="Cancel a payroll run not yet processed", body=CancelPayrollRun,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def cancel(request: Request) -> Response:
    cmd = await rq.body(request, CancelPayrollRun)
    saved = await commands.cancel_payroll(
        reads.service(request).runner, await rq.command_context(request), _payroll_id(request),
        cmd.reason,
    )
    return accepted(saved)


@operation(scope="hrm:read",
           summary="List payroll runs, newest first", query=RunListQuery, response=PayrollRunPage,
           errors=(400, 422, 503))
async def list_runs(request: Request) -> Response:
    params = rq.query(request, RunListQuery)
    position = await _caught_up(request, params)
    where, args = reads.filters(request, params, ("period", "status"))
    rows, cursor = await reads.page(request, params, table="payroll_runs", columns=_columns(PayrollRunView),
                                    where=where, args=args)
    for row in rows:
        decode_allowances(row)
    return JSON({
        "items": [{k: r[k] for k in PayrollRunView.model_fields} for r in rows],
        "next_cursor": cursor,
        "log_position": position,
    })


@operation(scope="hrm:read",
           summary="One payroll run with its payslips", query=ReadQuery, response=PayrollRunDetail,
           errors=(400, 404, 422, 503))
async def get_run(request: Request) -> Response:
    await _caught_up(request, rq.query(request, ReadQuery))
    payroll_id, tenant = _payroll_id(request), rq.tenant(request)
    found = await _rows(
        request,
        f"SELECT {_columns(PayrollRunView)} FROM payroll_runs WHERE payroll_id = %s AND tenant_id = %s",
        (payroll_id, tenant),
    )
    if not found:
        raise NotFound("payroll run", payroll_id)
    slips = await _rows(
        request,
        f"SELECT {_columns(PayslipView)} FROM payslips WHERE payroll_id = %s AND tenant_id = %s "
        "ORDER BY name, employee_id",
        (payroll_id, tenant),
    )
    return JSON({**found[0], "payslips": slips}, headers={"ETag": f'"{found[0]["version"]}"'})


# Payroll: calculator and filing


@operation(scope="hrm:read",
           summary="Preview a payslip under the rules in force in a month, with the tenant's "
                   "rate overrides, as a payroll run would compute it (creates nothing)",
           body=PayslipPreviewRequest, response=PayslipPreview, errors=(400, 422))
async def payslip_preview(request: Request) -> Response:
    ask = await rq.body(request, PayslipPreviewRequest)
    slip, rules = await commands.preview_payslip(
        reads.service(request).runner, rq.tenant(request), period=ask.period,
        basic_pay=ask.basic_pay, allowances=_pairs(ask.allowances), employment=ask.employment,
    )
    return JSON({
        **slip.as_dict(), "period": ask.period, "rules_effective_from": rules.effective_from,
        "rules_source": rules.source, "total_deductions": slip.total_deductions,
    })


_SUMMARY_TOTALS = ("gross_pay", "paye", "nssf_employee", "nssf_employer", "shif", "nhif",
                   "housing_levy", "housing_levy_employer")
_FILING_AMOUNTS = [name for name in FilingLine.model_fields if name in PAYSLIP_AMOUNTS]


@operation(scope="hrm:read",
           summary="A month's statutory deductions from its processed payroll, ready for filing",
           query=SummaryQuery, response=StatutorySummary, errors=(400, 422, 503))
async def statutory_summary(request: Request) -> Response:
    params = rq.query(request, SummaryQuery)
    position = await _caught_up(request, params)
    tenant = rq.tenant(request)
    totals = (await _rows(
        request,
        "SELECT coalesce(array_agg(payroll_id ORDER BY created_position), '{}') AS payroll_ids, "
        "coalesce(sum(employee_count), 0)::int AS employee_count, "
        + ", ".join(f"round(coalesce(sum({n}), 0), 2) AS {n}" for n in _SUMMARY_TOTALS)
        + f" FROM payroll_runs WHERE tenant_id = %s AND period = %s AND status IN {_ISSUED}",
        (tenant, params.period),
    ))[0]
    lines = await _rows(
        request,
        "SELECT s.employee_id, e.employee_number, s.name, e.kra_pin, e.nssf_number, e.sha_number, "
        + ", ".join(f"s.{n}" for n in _FILING_AMOUNTS)
        + " FROM payslips s JOIN payroll_runs r USING (payroll_id) "
        "LEFT JOIN employees e ON e.employee_id = s.employee_id AND e.tenant_id = s.tenant_id "
        f"WHERE s.tenant_id = %s AND s.period = %s AND r.status IN {_ISSUED} "
        "ORDER BY e.employee_number, s.name, s.employee_id",
        (tenant, params.period),
    )
    return JSON({
        "period": params.period, **totals,
        "nssf_total": totals["nssf_employee"] + totals["nssf_employer"],
        "housing_levy_total": totals["housing_levy"] + totals["housing_levy_employer"],
        "employees": lines, "log_position": position,
    })


_EMPLOYEE = EMPLOYEES + "/{employee_id:uuid}"
_RUN = RUNS + "/{payroll_id:uuid}"
ROUTES = [
    Route(EMPLOYEES, hire, methods=["POST"]),
    Route(EMPLOYEES, list_employees, methods=["GET"]),
    Route(_EMPLOYEE, get_employee, methods=["GET"]),
    Route(_EMPLOYEE + "/change-pay", change_pay, methods=["POST"]),
    Route(_EMPLOYEE + "/terminate", terminate, methods=["POST"]),
    Route(_EMPLOYEE + "/payslips", employee_payslips, methods=["GET"]),
    Route(RUNS, create_run, methods=["POST"]),
    Route(RUNS, list_runs, methods=["GET"]),
    Route(_RUN, get_run, methods=["GET"]),
    Route(_RUN + "/calculate", calculate, methods=["POST"]),
    Route(_RUN + "/approve", approve, methods=["POST"]),
    Route(_RUN + "/process", process, methods=["POST"]),
    Route(_RUN + "/cancel", cancel, methods=["POST"]),
    Route(PAYROLL + "/payslip-preview", payslip_preview, methods=["POST"]),
    Route(PAYROLL + "/statutory-summary", statutory_summary, methods=["GET"]),
]
