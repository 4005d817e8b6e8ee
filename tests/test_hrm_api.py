"""HRM over HTTP end to end: employees and payroll runs through the event store, the relay,
JetStream and the payroll read models; the payslip preview; the statutory summary."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import psycopg

from aggregates.statutory import payslip, rules_for
from erp.bootstrap import Service
from projections.base import Statements
from projections.payroll import PayrollProjection
from projections.runner import Arrived, to_delivered
from tests.conftest import as_user, read_stream

EMPLOYEES = "/api/v1/hrm/employees"
RUNS = "/api/v1/hrm/payroll-runs"
PAYROLL = "/api/v1/hrm/payroll"
D = Decimal


def employee(number: str, **fields: Any) -> dict[str, Any]:
    return {
        "employee_number": number, "name": f"Employee {number}", "kra_pin": "A123456789Z",
        "nssf_number": f"NSSF-{number}", "sha_number": f"SHA-{number}", "basic_pay": 100000,
        "hired_on": "2025-06-01", **fields,
    }


async def ok(client: httpx.AsyncClient, url: str, body: Any = None, status: int = 200,
             **kwargs: Any) -> dict[str, Any]:
    response = await client.post(url, json=body, **kwargs)
    assert response.status_code == status, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def hire(client: httpx.AsyncClient, number: str, **fields: Any) -> dict[str, Any]:
    return await ok(client, EMPLOYEES, employee(number, **fields), status=201)


async def refused(client: httpx.AsyncClient, url: str, body: Any, status: int, rule: str) -> dict[str, Any]:
    response = await client.post(url, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["rule"] == rule
    return problem


async def read(client: httpx.AsyncClient, url: str, position: int, **params: Any) -> Any:
    response = await client.get(url, params={"min_position": position, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def published(js: Any, upto: int, subject: str) -> list[dict[str, Any]]:
    """The `data` of every message on `subject` among the first `upto` of the stream."""
    messages = await read_stream(js, upto)
    return [json.loads(m.data, parse_float=Decimal)["data"] for m in messages if m.subject == subject]


def n(value: Any) -> Decimal:
    """A JSON number as the Decimal it was written as."""
    return Decimal(str(value))


async def test_a_payroll_is_calculated_approved_and_processed_once_per_period(
    client: httpx.AsyncClient, js: Any,
) -> None:
    amina = (await hire(client, "E-001", name="Amina Otieno"))["id"]
    brian = (await hire(client, "E-002", name="Brian Kamau", basic_pay=60000,
                        allowances=[{"name": "house", "amount": 15000}], hired_on="2026-01-10"))["id"]
    gone = (await hire(client, "E-003", name="Gone Before"))["id"]
    await ok(client, f"{EMPLOYEES}/{gone}/terminate", {"on": "2026-01-31", "reason": "resigned"})
    # A raise from March must not reach February's payslip.
    await ok(client, f"{EMPLOYEES}/{brian}/change-pay", {"basic_pay": 90000, "effective": "2026-03"})

    created = await client.post(RUNS, json={"period": "2026-02"})
    assert created.status_code == 201, created.text
    run = created.json()["id"]
    assert created.headers["location"] == f"{RUNS}/{run}"
    first = await ok(client, f"{RUNS}/{run}/calculate")
    assert first["version"] == 2
    # Hired just now and recalculated at once: the roster waits for the read model to catch up.
    cate = (await hire(client, "E-004", name="Cate Wanjiru", basic_pay=30000, employment="secondary",
                       hired_on="2026-02-20"))["id"]
    await ok(client, f"{RUNS}/{run}/calculate")
    await ok(client, f"{RUNS}/{run}/approve", None)
    processed = await ok(client, f"{RUNS}/{run}/process")
    assert processed["version"] == 5

    detail = await read(client, f"{RUNS}/{run}", processed["log_position"])
    assert (detail["status"], detail["period"], detail["employee_count"]) == ("processed", "2026-02", 3)
    assert detail["approver"] == "user-1" and detail["processed_at"]
    assert detail["rules_effective_from"] == "2026-02"
    slips = {s["employee_id"]: s for s in detail["payslips"]}
    assert set(slips) == {amina, brian, cate}
    assert (n(slips[amina]["paye"]), n(slips[amina]["net_pay"])) == (D("19308.35"), D("70441.65"))
    assert (n(slips[brian]["basic_pay"]), n(slips[brian]["gross_pay"])) == (D("60000"), D("75000"))
    assert slips[brian]["allowances"] == [{"name": "house", "amount": 15000}]
    # hired on 20 February: 9 of its 28 days, the pay pro-rated to them
    expected_cate = payslip(D("9642.86"), (), "secondary", rules_for("2026-02"))
    assert (n(slips[cate]["basic_pay"]), slips[cate]["payment_days"]) == (D("9642.86"), 9)
    assert n(slips[cate]["paye"]) == expected_cate.paye and slips[cate]["personal_relief"] == 0
    assert slips[amina]["payment_days"] is None and slips[brian]["payment_days"] is None
    total_net = sum((n(s["net_pay"]) for s in slips.values()), D(0))
    assert n(detail["net_pay"]) == total_net
    assert n(detail["paye"]) == sum((n(s["paye"]) for s in slips.values()), D(0))

    events = await published(js, processed["log_position"], "erp.payroll.processed")
    assert events == [{"payroll_id": run, "period": "2026-02", "total_amount": total_net,
                       "employee_count": 3}]

    history = await read(client, f"{EMPLOYEES}/{amina}/payslips", processed["log_position"])
    assert [(h["payroll_id"], h["period"], h["status"]) for h in history["items"]] == [
        (run, "2026-02", "processed")]
    assert n(history["items"][0]["net_pay"]) == D("70441.65")

    summary = await read(client, f"{PAYROLL}/statutory-summary", processed["log_position"],
                         period="2026-02")
    assert summary["payroll_ids"] == [run] and summary["employee_count"] == 3
    for field in ("paye", "nssf_employee", "nssf_employer", "shif", "housing_levy",
                  "housing_levy_employer"):
        assert n(summary[field]) == sum((n(s[field]) for s in slips.values()), D(0)), field
    assert n(summary["nssf_total"]) == n(summary["nssf_employee"]) + n(summary["nssf_employer"])
    assert n(summary["housing_levy_total"]) == D(2) * n(summary["housing_levy"])
    assert [(line["employee_number"], line["kra_pin"]) for line in summary["employees"]] == [
        ("E-001", "A123456789Z"), ("E-002", "A123456789Z"), ("E-004", "A123456789Z")]

    # A second run for the month can be prepared but never paid.
    again = (await ok(client, RUNS, {"period": "2026-02"}, status=201))["id"]
    await ok(client, f"{RUNS}/{again}/calculate")
    await ok(client, f"{RUNS}/{again}/approve", None)
    problem = await refused(client, f"{RUNS}/{again}/process", None, 409, "PeriodAlreadyProcessed")
    assert run in problem["detail"]
    cancelled = await ok(client, f"{RUNS}/{again}/cancel", {"reason": "duplicate"})
    runs = await read(client, RUNS, cancelled["log_position"], period="2026-02")
    assert [(r["payroll_id"], r["status"]) for r in runs["items"]] == [(again, "cancelled"),
                                                                      (run, "processed")]
    assert (await read(client, f"{PAYROLL}/statutory-summary", 0, period="2026-02"))["payroll_ids"] == [run]
    march = await read(client, f"{PAYROLL}/statutory-summary", 0, period="2026-03")
    assert (march["payroll_ids"], march["paye"], march["employees"]) == ([], 0, [])


async def test_the_payslip_preview_is_the_worked_example(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{PAYROLL}/payslip-preview", json={
        "period": "2026-02", "basic_pay": 100000, "allowances": [], "employment": "primary"})
    assert response.status_code == 200, response.text
    slip = {k: v if isinstance(v, str | list) else n(v) for k, v in response.json().items()}
    assert {k: slip[k] for k in ("gross_pay", "nssf_employee", "nssf_employer", "shif", "housing_levy",
                                 "housing_levy_employer", "taxable_pay", "personal_relief", "paye",
                                 "net_pay")} == {
        "gross_pay": D("100000"), "nssf_employee": D("6000"), "nssf_employer": D("6000"),
        "shif": D("2750"), "housing_levy": D("1500"), "housing_levy_employer": D("1500"),
        "taxable_pay": D("89750"), "personal_relief": D("2400"), "paye": D("19308.35"),
        "net_pay": D("70441.65"),
    }
    assert slip["paye_before_relief"] == D("21708.35")
    assert slip["rules_effective_from"] == "2026-02"
    # Same pay split into an allowance, a month under the older NSSF limits.
    older = (await client.post(f"{PAYROLL}/payslip-preview", json={
        "period": "2025-06", "basic_pay": 80000, "allowances": [{"name": "house", "amount": 20000}],
        "employment": "primary"})).json()
    assert (older["gross_pay"], older["nssf_employee"], older["rules_effective_from"]) == (
        100000, 4320, "2025-02")

    for period in ("2026-13", "Feb 2026"):
        bad = await client.post(f"{PAYROLL}/payslip-preview", json={
            "period": period, "basic_pay": 100000, "allowances": [], "employment": "primary"})
        assert bad.status_code == 422
        assert [e["field"] for e in bad.json()["errors"]] == ["body.period"]
    before_rules = await client.post(f"{PAYROLL}/payslip-preview", json={
        "period": "2020-01", "basic_pay": 100000, "allowances": [], "employment": "primary"})
    assert before_rules.status_code == 422
    assert before_rules.json()["rule"] == "NoRulesInForce"
    assert before_rules.json()["errors"][0]["field"] == "body.period"


async def test_an_employee_is_hired_paid_more_and_terminated(
    client: httpx.AsyncClient, js: Any,
) -> None:
    hired = await hire(client, "E-010", name="Amina Otieno",
                       allowances=[{"name": "house", "amount": 10000}])
    eid = hired["id"]
    await ok(client, f"{EMPLOYEES}/{eid}/change-pay",
             {"basic_pay": 120000, "allowances": [{"name": "house", "amount": 15000.5}],
              "effective": "2026-03"}, headers={"If-Match": '"1"'})
    ended = await ok(client, f"{EMPLOYEES}/{eid}/terminate", {"on": "2026-04-30", "reason": "resigned"})

    view = await read(client, f"{EMPLOYEES}/{eid}", ended["log_position"])
    assert (view["status"], view["terminated_on"], view["termination_reason"]) == (
        "terminated", "2026-04-30", "resigned")
    assert (view["basic_pay"], view["pay_effective"]) == (120000, "2026-03")
    assert view["allowances"] == [{"name": "house", "amount": 15000.5}]
    assert [(p["effective"], p["basic_pay"]) for p in view["pay_history"]] == [
        ("2025-06", 100000), ("2026-03", 120000)]
    terminated = await read(client, EMPLOYEES, 0, status="terminated")
    assert [e["employee_id"] for e in terminated["items"]] == [eid]
    assert (await read(client, EMPLOYEES, 0, status="active"))["items"] == []

    changed = await published(js, ended["log_position"], "erp.employee.pay_changed")
    assert changed == [{"employee_id": eid, "employee_number": "E-010", "basic_pay": D("120000.00"),
                        "allowances": [{"name": "house", "amount": D("15000.50")}],
                        "effective": "2026-03"}]
    assert (await published(js, ended["log_position"], "erp.employee.terminated"))[0][
        "terminated_on"] == "2026-04-30"

    await refused(client, f"{EMPLOYEES}/{eid}/change-pay",
                  {"basic_pay": 1, "effective": "2026-05"}, 409, "EmployeeTerminated")
    bad_pin = await refused(client, EMPLOYEES, employee("E-011", kra_pin="12345"), 422, "InvalidKraPin")
    assert bad_pin["errors"][0]["field"] == "body.kra_pin"
    other = (await hire(client, "E-012"))["id"]
    early = await refused(client, f"{EMPLOYEES}/{other}/change-pay",
                          {"basic_pay": 1, "effective": "2025-01"}, 422, "EffectiveBeforeHire")
    assert early["errors"][0]["field"] == "body.effective"


async def test_payroll_rules_are_named(client: httpx.AsyncClient) -> None:
    run = (await ok(client, RUNS, {"period": "2026-02"}, status=201))["id"]
    await refused(client, f"{RUNS}/{run}/calculate", None, 422, "NoEmployees")
    await refused(client, f"{RUNS}/{run}/approve", None, 409, "NotCalculated")
    await refused(client, f"{RUNS}/{run}/process", None, 409, "NotApproved")
    await ok(client, f"{RUNS}/{run}/cancel", {"reason": "opened by mistake"})
    await refused(client, f"{RUNS}/{run}/cancel", {"reason": "again"}, 409, "RunLocked")
    bad = await client.post(RUNS, json={"period": "2026-2"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.period"
    extra = await client.post(f"{RUNS}/{run}/process", json={"force": True})
    assert extra.status_code == 422 and extra.json()["errors"][0]["field"] == "body.force"


async def test_a_repeated_idempotency_key_answers_the_first_hire(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "hire-e-020"}
    first = await ok(client, EMPLOYEES, employee("E-020"), status=201, headers=key)
    again = await ok(client, EMPLOYEES, employee("E-020"), status=201, headers=key)
    assert again == first
    next_event = await hire(client, "E-021")
    assert next_event["log_position"] == first["log_position"] + 1  # no event in between
    listed = await read(client, EMPLOYEES, next_event["log_position"])
    assert sorted(e["employee_number"] for e in listed["items"]) == ["E-020", "E-021"]
    reused = await client.post(EMPLOYEES, json=employee("E-022"), headers=key)
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["field"] == "header.Idempotency-Key"


async def test_another_tenants_employees_and_runs_are_not_found(client: httpx.AsyncClient) -> None:
    eid = (await hire(client, "E-030"))["id"]
    run = await ok(client, RUNS, {"period": "2026-02"}, status=201)
    rid = run["id"]
    await ok(client, f"{RUNS}/{rid}/calculate")
    other = as_user("tenant-b")
    params = {"min_position": run["log_position"]}
    for url in (f"{EMPLOYEES}/{eid}", f"{EMPLOYEES}/{eid}/payslips", f"{RUNS}/{rid}"):
        assert (await client.get(url, params=params, headers=other)).status_code == 404, url
    for url, body in ((f"{EMPLOYEES}/{eid}/terminate", {"on": "2026-03-01", "reason": "x"}),
                      (f"{RUNS}/{rid}/calculate", None), (f"{RUNS}/{rid}/approve", None)):
        response = await client.post(url, json=body, headers=other)
        assert response.status_code == 404, url
    assert (await client.get(EMPLOYEES, params=params, headers=other)).json()["items"] == []
    assert (await client.get(RUNS, params=params, headers=other)).json()["items"] == []
    # tenant-b has nobody to pay: its own run finds no employees of tenant-a.
    own = (await ok(client, RUNS, {"period": "2026-02"}, status=201, headers=other))["id"]
    response = await client.post(f"{RUNS}/{own}/calculate", headers=other)
    assert response.status_code == 422 and response.json()["rule"] == "NoEmployees"
    assert (await client.get(f"{RUNS}/{uuid.uuid4()}")).status_code == 404


async def test_replaying_the_stream_changes_no_payroll_read_model_row(
    client: httpx.AsyncClient, js: Any, service: Service,
) -> None:
    amina = (await hire(client, "E-040"))["id"]
    brian = (await hire(client, "E-041", hired_on="2026-01-10"))["id"]
    for basic in (110000, 120000):  # the second replaces the first for the same month
        await ok(client, f"{EMPLOYEES}/{amina}/change-pay", {"basic_pay": basic, "effective": "2026-03"})
    run = (await ok(client, RUNS, {"period": "2026-02"}, status=201))["id"]
    await ok(client, f"{RUNS}/{run}/calculate")
    await ok(client, f"{EMPLOYEES}/{brian}/terminate", {"on": "2026-01-31", "reason": "left"})
    await ok(client, f"{RUNS}/{run}/calculate")  # now without Brian: his payslip goes
    await ok(client, f"{RUNS}/{run}/approve", None)
    processed = await ok(client, f"{RUNS}/{run}/process")
    detail = await read(client, f"{RUNS}/{run}", processed["log_position"])
    assert [s["employee_id"] for s in detail["payslips"]] == [amina]

    keys = {"employees": "employee_id", "employee_pay": "employee_id, effective",
            "payroll_runs": "payroll_id", "payslips": "payroll_id, employee_id"}

    async def snapshot(conn: psycopg.AsyncConnection[Any]) -> dict[str, list[Any]]:
        return {table: await (await conn.execute(f"SELECT * FROM {table} ORDER BY {key}")).fetchall()
                for table, key in keys.items()}

    projection = PayrollProjection()
    messages = await read_stream(js, processed["log_position"])
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        before = await snapshot(conn)
        out = Statements(conn)
        for msg in messages:
            delivered = to_delivered(projection, Arrived.of(msg))
            if delivered.envelope is not None:
                projection.apply(out, delivered)
        await out.send()
        assert await snapshot(conn) == before
    assert len(before["payslips"]) == 1
    assert [row[1:4] for row in before["employee_pay"] if row[0] == uuid.UUID(amina)] == [
        ("2025-06", "tenant-a", D("100000.00")), ("2026-03", "tenant-a", D("120000.00"))]


async def test_a_tenants_rate_override_is_used_by_the_preview_and_the_run(
    client: httpx.AsyncClient,
) -> None:
    override = {"effective_from": "2026-02", "source": "SHA circular (test)",
                "changes": {"shif_rate": 0.03}}
    await ok(client, "/api/v1/settings/statutory-overrides", override)
    ask = {"period": "2026-02", "basic_pay": 100000, "allowances": [], "employment": "primary"}
    preview = (await client.post(f"{PAYROLL}/payslip-preview", json=ask)).json()
    assert (preview["shif"], preview["rules_source"]) == (3000, "SHA circular (test)")
    other = (await client.post(f"{PAYROLL}/payslip-preview", json=ask,
                               headers=as_user("tenant-b"))).json()
    assert (other["shif"], other["net_pay"]) == (2750, 70441.65)

    await hire(client, "E-050")
    run = (await ok(client, RUNS, {"period": "2026-02"}, status=201))["id"]
    calculated = await ok(client, f"{RUNS}/{run}/calculate")
    slip = (await read(client, f"{RUNS}/{run}", calculated["log_position"]))["payslips"][0]
    assert {k: slip[k] for k in ("shif", "paye", "net_pay")} == {
        k: preview[k] for k in ("shif", "paye", "net_pay")}
