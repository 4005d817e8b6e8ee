"""Employees, payroll runs and payroll periods, without servers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from aggregates.employee import (
    AllowanceNotPositive,
    DuplicateAllowance,
    EffectiveBeforeHire,
    Employee,
    EmployeePay,
    EmployeeTerminated,
    InvalidKraPin,
    PayNotPositive,
    TerminationBeforeHire,
    ValueRequired,
)
from aggregates.employee import Status as EmployeeStatus
from aggregates.errors import DomainError
from aggregates.payroll_run import (
    ApproverRequired,
    DuplicateEmployee,
    EmployeePayslip,
    NoEmployees,
    NotApproved,
    NotCalculated,
    NotProcessed,
    PayrollPeriod,
    PayrollRun,
    PayrollTotals,
    PeriodAlreadyProcessed,
    ReasonRequired,
    RulesNotInForce,
    RunLocked,
    Status,
)
from aggregates.statutory import (
    DeductionsExceedGross,
    Employment,
    InvalidDate,
    InvalidPeriod,
    UnknownEmployment,
    payslip,
    rules_for,
)
from streams import envelope as env
from streams.events import hrm

D = Decimal


def hired(**overrides: Any) -> Employee:
    fields: dict[str, Any] = {
        "tenant_id": "t1", "employee_number": "E-001", "name": "Amina Otieno",
        "kra_pin": "A123456789Z", "nssf_number": "2004567891", "sha_number": "SHA-778812",
        "basic_pay": D("90000"), "allowances": [("house", D("10000"))], "hired_on": "2025-01-15",
    }
    fields.update(overrides)
    return Employee.hire(**fields)


def snapshot(basic: str = "100000", employment: str = "primary", name: str = "Amina") -> EmployeePay:
    return EmployeePay(uuid4(), name, D(basic), (), Employment(employment))


def event_names(aggregate: Aggregate) -> list[str]:
    return [type(e).__name__ for e in aggregate.collect_events()]


def replayed(events: Iterable[Any]) -> Any:
    copy: Any = None
    for e in events:
        copy = e.mutate(copy)
    return copy


def in_memory_store() -> Application[UUID]:
    """The library's application with in-memory persistence: events go through the same
    JSON transcoder as in PostgreSQL."""
    return Application[UUID](env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def calculated_run(*employees: EmployeePay, period: str = "2026-02") -> PayrollRun:
    run = PayrollRun.create(tenant_id="t1", period=period)
    run.calculate(list(employees) or [snapshot()])
    return run


# Employee


def test_hire_records_the_employee_with_pay_from_the_hire_month() -> None:
    e = hired(kra_pin=" a123456789z ", name="  Amina Otieno ")
    assert (e.tenant_id, e.kra_pin, e.name, e.status) == ("t1", "A123456789Z", "Amina Otieno",
                                                         EmployeeStatus.ACTIVE)
    assert e.current_pay.effective == "2025-01"
    assert e.current_pay.basic_pay == D("90000.00")
    assert e.employment is Employment.PRIMARY
    assert event_names(e) == ["Hired"]


@pytest.mark.parametrize("pin", ["123456789AZ", "A12345678Z", "AA23456789Z", "A1234567890Z",
                                 "A123456789", "A12345678ZZ", ""])
def test_a_kra_pin_is_a_letter_nine_digits_and_a_letter(pin: str) -> None:
    with pytest.raises(InvalidKraPin) as refused:
        hired(kra_pin=pin)
    assert refused.value.field == "kra_pin"


@pytest.mark.parametrize("basic", [D("0"), D("-1"), D("NaN"), D("Infinity")])
def test_basic_pay_must_be_positive(basic: Decimal) -> None:
    with pytest.raises(PayNotPositive) as refused:
        hired(basic_pay=basic)
    assert refused.value.field == "basic_pay"


@pytest.mark.parametrize(("overrides", "error", "field"), [
    ({"employment": "casual"}, UnknownEmployment, "employment"),
    ({"hired_on": "2025-02-30"}, InvalidDate, "hired_on"),
    ({"hired_on": "2025-2-3"}, InvalidDate, "hired_on"),
    ({"name": "  "}, ValueRequired, "name"),
    ({"nssf_number": ""}, ValueRequired, "nssf_number"),
    ({"allowances": [("house", D("0"))]}, AllowanceNotPositive, "allowances"),
    ({"allowances": [("house", D("1")), ("house", D("2"))]}, DuplicateAllowance, "allowances"),
])
def test_hire_refuses_invalid_values(overrides: dict[str, Any], error: type[DomainError], field: str) -> None:
    with pytest.raises(error) as refused:
        hired(**overrides)
    assert refused.value.field == field


def test_a_pay_change_applies_from_its_period_and_earlier_months_keep_the_old_pay() -> None:
    e = hired()
    e.change_pay(D("120000"), [("house", D("15000"))], effective="2026-03")
    changed = e.collect_events()[-1]
    assert (changed.effective, changed.basic_pay) == ("2026-03", D("120000.00"))  # type: ignore[attr-defined]
    february, march = e.pay_for("2026-02"), e.pay_for("2026-03")
    assert february is not None and march is not None
    assert (february.basic_pay, february.allowances) == (D("90000.00"), (("house", D("10000.00")),))
    assert (march.basic_pay, march.allowances) == (D("120000.00"), (("house", D("15000.00")),))
    assert march.employee_id == e.id and march.name == "Amina Otieno"


def test_a_back_dated_change_is_kept_in_period_order_and_replaces_one_for_the_same_period() -> None:
    e = hired()
    e.change_pay(D("100000"), [], "2025-06")
    e.change_pay(D("95000"), [], "2025-03")
    e.change_pay(D("97000"), [], "2025-03")
    assert [(r.effective, r.basic_pay) for r in e.pay_history] == [
        ("2025-01", D("90000.00")), ("2025-03", D("97000.00")), ("2025-06", D("100000.00"))]


def test_pay_cannot_change_from_before_the_hire() -> None:
    with pytest.raises(EffectiveBeforeHire) as refused:
        hired().change_pay(D("1"), [], "2024-12")
    assert refused.value.field == "effective"


def test_a_terminated_employee_cannot_change() -> None:
    e = hired()
    e.terminate("2026-03-10", "resigned")
    assert (e.status, e.terminated_on, e.termination_reason) == (EmployeeStatus.TERMINATED,
                                                                 "2026-03-10", "resigned")
    with pytest.raises(EmployeeTerminated):
        e.change_pay(D("1000"), [], "2026-03")
    with pytest.raises(EmployeeTerminated):
        e.terminate("2026-03-11", "again")


def test_termination_needs_a_date_not_before_the_hire_and_a_reason() -> None:
    with pytest.raises(TerminationBeforeHire):
        hired().terminate("2025-01-14", "never started")
    with pytest.raises(InvalidDate):
        hired().terminate("soon", "resigned")
    with pytest.raises(ValueRequired):
        hired().terminate("2025-02-01", " ")


def test_an_employee_is_paid_for_the_months_employed() -> None:
    e = hired(hired_on="2025-01-31")
    e.terminate("2026-03-01", "contract ended")
    assert e.pay_for("2024-12") is None
    assert e.pay_for("2025-01") is not None
    assert e.pay_for("2026-03") is not None  # employed on 1 March: paid in full
    assert e.pay_for("2026-04") is None


def test_replaying_an_employee_rebuilds_the_same_state() -> None:
    e = hired()
    e.change_pay(D("99000"), [("car", D("5000"))], "2025-05")
    e.terminate("2026-01-31", "redundancy")
    assert replayed(e.collect_events()) == e


# Payroll run


def test_a_run_needs_a_month_as_its_period() -> None:
    with pytest.raises(InvalidPeriod):
        PayrollRun.create(tenant_id="t1", period="2026-2")


def test_calculate_gives_each_employee_a_payslip_and_the_run_totals() -> None:
    amina, brian = snapshot("100000", name="Amina"), snapshot("50000", "secondary", "Brian")
    run = calculated_run(amina, brian)
    assert run.status is Status.CALCULATED
    assert [s.employee_id for s in run.payslips] == [amina.employee_id, brian.employee_id]
    assert run.payslips[0].payslip.net_pay == D("70441.65")  # the worked example
    second = payslip(D("50000"), [], "secondary", rules_for("2026-02"))
    assert run.payslips[1].payslip == second
    assert run.totals == PayrollTotals.of([run.payslips[0].payslip, second])
    assert run.total_amount == D("70441.65") + second.net_pay
    assert run.employee_count == 2
    assert run.rules_effective_from == "2026-02"


def test_a_run_uses_the_rules_in_force_for_its_period() -> None:
    run = calculated_run(period="2024-09")
    assert (run.payslips[0].payslip.nhif, run.payslips[0].payslip.shif) == (D("1700.00"), D("0.00"))
    assert run.rules_effective_from == "2024-03-19"


def test_a_tenant_override_is_used_when_given_and_must_be_in_force() -> None:
    override = rules_for("2026-02").amended("2026-04", "tenant", nssf_employer_rate=D("0.08"))
    april = PayrollRun.create(tenant_id="t1", period="2026-04")
    april.calculate([snapshot()], rules_for("2026-04", [override]))
    assert april.payslips[0].payslip.nssf_employer == D("8000.00")
    march = PayrollRun.create(tenant_id="t1", period="2026-03")
    with pytest.raises(RulesNotInForce) as refused:
        march.calculate([snapshot()], override)
    assert refused.value.field == "rules"


def test_a_calculated_run_may_be_recalculated() -> None:
    run = calculated_run(snapshot("100000"))
    run.calculate([snapshot("60000"), snapshot("40000")])
    assert run.employee_count == 2
    assert run.totals is not None and run.totals.gross_pay == D("100000.00")
    assert event_names(run) == ["Created", "Calculated", "Calculated"]


def test_calculate_needs_employees_each_listed_once() -> None:
    run = PayrollRun.create(tenant_id="t1", period="2026-02")
    with pytest.raises(NoEmployees):
        run.calculate([])
    amina = snapshot()
    with pytest.raises(DuplicateEmployee) as refused:
        run.calculate([amina, amina])
    assert refused.value.field == "employees"


def test_an_employee_whose_pay_cannot_bear_the_deductions_is_named() -> None:
    run = PayrollRun.create(tenant_id="t1", period="2026-02")
    with pytest.raises(DeductionsExceedGross) as refused:
        run.calculate([snapshot(), snapshot("200", name="Brian")])
    assert "Brian" in refused.value.message and refused.value.field == "employees"
    assert run.status is Status.DRAFT


def test_only_a_calculated_run_can_be_approved_and_only_an_approved_one_processed() -> None:
    run = PayrollRun.create(tenant_id="t1", period="2026-02")
    with pytest.raises(NotCalculated):
        run.approve("hr-lead")
    with pytest.raises(NotApproved):
        run.process()
    run.calculate([snapshot()])
    with pytest.raises(NotApproved):
        run.process()
    with pytest.raises(ApproverRequired):
        run.approve("  ")
    run.approve("hr-lead")
    assert (run.status, run.approver) == (Status.APPROVED, "hr-lead")
    with pytest.raises(RunLocked):
        run.calculate([snapshot()])
    run.process()
    assert run.status is Status.PROCESSED


def test_processed_carries_the_period_total_net_pay_and_employee_count() -> None:
    run = calculated_run(snapshot("100000"), snapshot("100000"))
    run.approve("hr-lead")
    run.process()
    processed = run.collect_events()[-1]
    assert type(processed).__name__ == "Processed"
    assert (processed.period, processed.total_amount, processed.employee_count) == (  # type: ignore[attr-defined]
        "2026-02", D("140883.30"), 2)


def test_a_run_can_be_cancelled_until_processed() -> None:
    run = calculated_run()
    run.cancel("wrong allowances")
    assert (run.status, run.cancel_reason) == (Status.CANCELLED, "wrong allowances")
    with pytest.raises(RunLocked):
        run.calculate([snapshot()])
    with pytest.raises(RunLocked):
        run.cancel("again")
    with pytest.raises(ReasonRequired):
        calculated_run().cancel(" ")
    done = calculated_run()
    done.approve("hr-lead")
    done.process()
    with pytest.raises(RunLocked):
        done.cancel("too late")


# Payroll period


def test_a_payroll_period_id_is_derived_from_tenant_and_period() -> None:
    period = PayrollPeriod.open(tenant_id="t1", period="2026-02")
    assert period.id == PayrollPeriod.id_for("t1", "2026-02")
    assert period.id != PayrollPeriod.id_for("t2", "2026-02")
    assert period.id != PayrollPeriod.id_for("t1", "2026-03")
    with pytest.raises(InvalidPeriod):
        PayrollPeriod.open(tenant_id="t1", period="Feb 2026")


def test_a_period_is_closed_by_one_run_only() -> None:
    period = PayrollPeriod.open(tenant_id="t1", period="2026-02")
    first, second = uuid4(), uuid4()
    period.close_with(first)
    with pytest.raises(PeriodAlreadyProcessed) as refused:
        period.close_with(second)
    assert str(first) in refused.value.message
    assert period.processed_run_id == first
    assert event_names(period) == ["Opened", "Closed"]


def test_a_second_run_of_the_period_is_stored_with_neither_event() -> None:
    store = in_memory_store()
    runs = []
    for _ in range(2):
        run = calculated_run()
        run.approve("hr-lead")
        store.save(run)
        runs.append(run)
    first, second = runs
    first.process()
    period = PayrollPeriod.open(tenant_id="t1", period="2026-02")
    period.close_with(first.id)
    store.save(first, period)

    loaded: PayrollPeriod = store.repository.get(PayrollPeriod.id_for("t1", "2026-02"))
    with pytest.raises(PeriodAlreadyProcessed):
        loaded.close_with(second.id)
    # A racing command that opened the period afresh clashes on its version instead.
    second.process()
    racing = PayrollPeriod.open(tenant_id="t1", period="2026-02")
    racing.close_with(second.id)
    with pytest.raises(IntegrityError):
        store.save(second, racing)
    assert store.repository.get(second.id).status is Status.APPROVED


# Events on the wire


def typical_lifecycle() -> list[Aggregate]:
    employee = hired()
    employee.change_pay(D("95000"), [("house", D("12000"))], "2026-02")
    pay = employee.pay_for("2026-02")
    assert pay is not None
    run = PayrollRun.create(tenant_id="t1", period="2026-02")
    run.calculate([pay, snapshot("50000", "secondary", "Brian")])
    run.approve("hr-lead")
    run.process()
    run.mark_paid("PAY-1")
    period = PayrollPeriod.open(tenant_id="t1", period="2026-02")
    period.close_with(run.id)
    employee.terminate("2026-02-28", "resigned")
    cancelled = calculated_run()
    cancelled.cancel("duplicate")
    return [employee, run, period, cancelled]


def test_every_event_of_a_typical_lifecycle_is_published_and_encodes() -> None:
    store = in_memory_store()
    aggregates = typical_lifecycle()
    store.save(*aggregates)
    subjects = []
    for aggregate in aggregates:
        for stored in store.recorder.select_events(aggregate.id):
            domain_event: Any = store.mapper.to_domain_event(stored)  # as the relay reads it
            publication = hrm.PUBLICATIONS[type(domain_event)]
            payload = env.encode(env.Envelope(
                event_id=env.event_id(aggregate.id, stored.originator_version),
                event_type=publication.subject, tenant_id="t1",
                timestamp=datetime(2026, 2, 28, tzinfo=UTC), data=publication.to_payload(domain_event),
            ))
            decoded = env.decode(payload, publication.payload)
            assert decoded.data == publication.to_payload(domain_event)
            assert publication.subject.startswith(f"erp.{publication.aggregate_type}.")
            subjects.append(publication.subject)
    assert subjects == [
        "erp.employee.hired", "erp.employee.pay_changed", "erp.employee.terminated",
        "erp.payroll.created", "erp.payroll.calculated", "erp.payroll.approved", "erp.payroll.processed",
        "erp.payroll.paid", "erp.payroll_period.opened", "erp.payroll_period.closed",
        "erp.payroll.created", "erp.payroll.calculated", "erp.payroll.cancelled",
    ]
    assert set(subjects) == {p.subject for p in hrm.PUBLICATIONS.values()}


def test_payroll_processed_has_exactly_the_guides_fields() -> None:
    run = calculated_run(snapshot("100000"))
    run.approve("hr-lead")
    run.process()
    processed = run.collect_events()[-1]
    publication = hrm.PUBLICATIONS[type(processed)]
    assert publication.subject == "erp.payroll.processed"
    body = json.loads(env.encode(env.Envelope(
        event_id=uuid4(), event_type=publication.subject, tenant_id="t1",
        timestamp=processed.timestamp, data=publication.to_payload(processed),
    )))
    assert body["data"] == {"payroll_id": str(run.id), "period": "2026-02",
                            "total_amount": 70441.65, "employee_count": 1}


def test_calculated_payslips_on_the_wire_carry_every_payslip_field() -> None:
    run = calculated_run(snapshot())
    calculated = run.collect_events()[-1]
    data = hrm.PUBLICATIONS[type(calculated)].to_payload(calculated)
    assert isinstance(data, hrm.PayrollCalculated)
    assert set(hrm.PayslipLine.__struct_fields__) == set(run.payslips[0].as_dict())
    assert set(hrm.PayrollTotals.__struct_fields__) == set(PayrollTotals.__dataclass_fields__)
    assert msgspec.to_builtins(data.payslips[0])["net_pay"] == "70441.65"
    assert data.totals.net_pay == run.total_amount


def test_aggregates_survive_the_event_store_round_trip() -> None:
    store = in_memory_store()
    aggregates = typical_lifecycle()
    store.save(*aggregates)
    for aggregate in aggregates:
        assert store.repository.get(aggregate.id) == aggregate


def test_a_payslip_in_a_run_converts_to_a_dict_and_back() -> None:
    slip = calculated_run(snapshot()).payslips[0]
    assert EmployeePayslip.from_dict(slip.as_dict()) == slip


# Random command sequences


class PayrollRunMachine(RuleBasedStateMachine):
    """Random commands against a run; the run's state always agrees with a small model."""

    @initialize(period=st.sampled_from(["2024-06", "2024-10", "2025-01", "2026-02"]))
    def create(self, period: str) -> None:
        self.run = PayrollRun.create(tenant_id="t1", period=period)
        self.expected = Status.DRAFT
        self.events: list[Any] = []

    def _try(self, command: Any, allowed: set[Status], refusal: type[DomainError]) -> bool:
        if self.expected in allowed:
            command()
            return True
        with pytest.raises(refusal):
            command()
        return False

    @rule(pays=st.lists(st.integers(min_value=1_000, max_value=3_000_000), min_size=1, max_size=5),
          secondary=st.booleans())
    def calculate(self, pays: list[int], secondary: bool) -> None:
        employees = [snapshot(str(p), "secondary" if secondary and i == 0 else "primary", f"e{i}")
                     for i, p in enumerate(pays)]
        if self._try(lambda: self.run.calculate(employees), {Status.DRAFT, Status.CALCULATED}, RunLocked):
            self.expected = Status.CALCULATED
            assert self.run.employee_count == len(pays)

    @rule()
    def approve(self) -> None:
        if self._try(lambda: self.run.approve("hr"), {Status.CALCULATED}, NotCalculated):
            self.expected = Status.APPROVED

    @rule()
    def process(self) -> None:
        if self._try(self.run.process, {Status.APPROVED}, NotApproved):
            self.expected = Status.PROCESSED

    @rule()
    def cancel(self) -> None:
        if self._try(lambda: self.run.cancel("redo"),
                     {Status.DRAFT, Status.CALCULATED, Status.APPROVED}, RunLocked):
            self.expected = Status.CANCELLED

    @invariant()
    def agrees_with_the_model_and_adds_up(self) -> None:
        self.events += self.run.collect_events()
        assert self.run.status is self.expected
        if self.run.totals is not None:
            slips = [s.payslip for s in self.run.payslips]
            assert self.run.totals == PayrollTotals.of(slips)
            assert self.run.total_amount == sum((s.net_pay for s in slips), D(0))
            assert all(s.net_pay == s.gross_pay - s.total_deductions >= 0 for s in slips)
        assert replayed(self.events) == self.run


class EmployeeMachine(RuleBasedStateMachine):
    """Random pay changes and a termination; pay for any month follows the latest change."""

    def __init__(self) -> None:
        super().__init__()
        self.employee = hired(hired_on="2025-01-15", basic_pay=D("50000"), allowances=[])
        self.pay_by_period = {"2025-01": D("50000.00")}
        self.events: list[Any] = []

    @rule(month=st.integers(min_value=0, max_value=24), basic=st.integers(min_value=1, max_value=10**7))
    def change_pay(self, month: int, basic: int) -> None:
        effective = f"{2024 + (month + 11) // 12}-{(month + 11) % 12 + 1:02d}"  # 2024-12 .. 2026-12

        def change() -> None:
            self.employee.change_pay(D(basic), [], effective)

        if self.employee.status is EmployeeStatus.TERMINATED:
            with pytest.raises(EmployeeTerminated):
                change()
        elif effective < "2025-01":
            with pytest.raises(EffectiveBeforeHire):
                change()
        else:
            change()
            self.pay_by_period[effective] = D(basic).quantize(D("0.01"))

    @rule(day=st.integers(min_value=1, max_value=28))
    def terminate(self, day: int) -> None:
        if self.employee.status is EmployeeStatus.TERMINATED:
            with pytest.raises(EmployeeTerminated):
                self.employee.terminate(f"2026-06-{day:02d}", "again")
        else:
            self.employee.terminate(f"2026-06-{day:02d}", "resigned")

    @invariant()
    def pays_each_month_by_the_latest_change(self) -> None:
        self.events += self.employee.collect_events()
        left = self.employee.terminated_on
        # hired on the 15th of January (17 of its 31 days); leaving in June on the day it says
        days = {"2025-01": (17, 31), "2025-07": None,
                "2026-06": (int(left[-2:]), 30) if left is not None and left[-2:] != "30" else None}
        for period in ("2025-01", "2025-07", "2026-06"):
            expected = self.pay_by_period[max(p for p in self.pay_by_period if p <= period)]
            if (part := days[period]) is not None:
                expected = (expected * part[0] / part[1]).quantize(D("0.01"), ROUND_HALF_UP)
            pay = self.employee.pay_for(period)
            assert pay is not None and pay.basic_pay == expected
            assert pay.payment_days == (part[0] if part else None)
        terminated = self.employee.status is EmployeeStatus.TERMINATED
        assert (self.employee.pay_for("2026-07") is None) is terminated
        assert replayed(self.events) == self.employee


_machine_settings = settings(max_examples=40, stateful_step_count=12, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
TestPayrollRunCommands = PayrollRunMachine.TestCase
TestPayrollRunCommands.settings = _machine_settings
TestEmployeeCommands = EmployeeMachine.TestCase
TestEmployeeCommands.settings = _machine_settings


def test_only_a_processed_run_is_paid_and_a_repeat_changes_nothing() -> None:
    run = calculated_run()
    with pytest.raises(NotProcessed):
        run.mark_paid("PAY-1")
    run.approve("cfo")
    run.process()
    assert run.mark_paid("PAY-1") and not run.mark_paid("PAY-1")
    assert (run.status, run.payment_id) == (Status.PAID, "PAY-1")
    with pytest.raises(RunLocked):
        run.cancel("too late")
