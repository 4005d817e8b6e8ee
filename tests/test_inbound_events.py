"""Events of treasury, inventory, logistics, POS, IoT and projects: each has its effect here
exactly once, and one that cannot be handled is parked in the dead-letter stream (with its
reason, listable and replayable from the CLI) while later ones still flow."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import psycopg
from click.testing import CliRunner
from nats.js.api import StreamConfig

from erp.bootstrap import Endpoints, Service
from erp.cli import main
from streams.events.auth import TenantAnnounced
from streams.inbound import DLQ_ERROR, DLQ_SUBJECT, InboundConsumer, Subscription, ensure_dead_letter_stream
from streams.leadership import stop_tasks
from tests.conftest import eventually
from tests.test_hrm_api import EMPLOYEES, PAYROLL, hire, ok
from tests.test_procurement_api import approved

OPPORTUNITIES = "/api/v1/crm/opportunities"
RUNS = "/api/v1/hrm/payroll-runs"
ORDERS = "/api/v1/procurement/purchase-orders"


def event(event_type: str, data: dict[str, Any], *, tenant: str = "tenant-a", event_id: str | None = None,
          timestamp: str = "2026-11-25T10:30:00Z") -> bytes:
    return json.dumps({"event_id": event_id or str(uuid.uuid4()), "event_type": event_type,
                       "tenant_id": tenant, "timestamp": timestamp, "data": data}).encode()


async def streams(js: Any, *names: str) -> None:
    for name in names:
        await js.add_stream(StreamConfig(name=name.upper(), subjects=[f"{name}.>"]))


def consumer(service: Service, durable: str) -> Any:
    return next(c for c in service.inbound if c._durable == durable)


async def settled(service: Service, durable: str, count: int) -> None:
    async def done() -> bool:
        found = consumer(service, durable)
        return bool(found.handled + found.terminated >= count)
    await eventually(done, timeout=20)


async def read(client: httpx.AsyncClient, path: str, check: Any) -> Any:
    async def ready() -> Any:
        body = (await client.get(path)).json()
        return body if check(body) else None
    return await eventually(ready, timeout=15)


async def test_treasury_documents_link_to_their_opportunity_order_and_payroll_once(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await streams(js, "treasury")
    opportunity = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                          "amount": 1000})).json()["id"]
    await client.post(f"{OPPORTUNITIES}/{opportunity}/win", json={})
    order = await approved(client)
    await hire(client, "E-1")
    run = (await ok(client, RUNS, {"period": "2026-02"}, status=201))["id"]
    await ok(client, f"{RUNS}/{run}/calculate")
    await ok(client, f"{RUNS}/{run}/approve", None)
    await ok(client, f"{RUNS}/{run}/process")

    invoice = event("treasury.invoice.created", {"invoice_id": "INV-7", "opportunity_id": opportunity,
                                                 "status": "sent"})
    for _ in range(3):  # redelivered: one effect
        await js.publish("treasury.invoice.created", invoice)
    await js.publish("treasury.bill.created", event("treasury.bill.created", {
        "bill_id": "BILL-3", "purchase_order_id": order}))
    await js.publish("treasury.payment.processed", event("treasury.payment.processed", {
        "payment_id": "PAY-9", "payroll_id": run, "amount": 100000}))
    await js.publish("treasury.payment.processed", event("treasury.payment.processed", {
        "payment_id": "PAY-10"}))  # a payment for something else: not ours, acknowledged
    await settled(service, "erp-treasury", 6)

    seen = await read(client, f"{OPPORTUNITIES}/{opportunity}", lambda b: b["invoice_id"])
    assert (seen["invoice_id"], seen["invoice_status"], seen["version"]) == ("INV-7", "sent", 3)
    bill = await read(client, f"{ORDERS}/{order}", lambda b: b["bill_id"])
    assert (bill["bill_id"], bill["bill_status"]) == ("BILL-3", "open")
    paid = await read(client, f"{RUNS}/{run}", lambda b: b["status"] == "paid")
    assert paid["payment_id"] == "PAY-9"
    assert consumer(service, "erp-treasury").terminated == 0
    # paid, the run is still the month's filing and its payslips are still issued
    summary = (await client.get(f"{PAYROLL}/statutory-summary", params={"period": "2026-02"})).json()
    assert summary["payroll_ids"] == [run] and summary["employee_count"] == 1
    assert [line["employee_number"] for line in summary["employees"]] == ["E-1"]
    employee = paid["payslips"][0]["employee_id"]
    for status, runs in (("processed", [run]), ("paid", [run]), ("approved", [])):
        slips = (await client.get(f"{EMPLOYEES}/{employee}/payslips", params={"status": status})).json()
        assert [slip["payroll_id"] for slip in slips["items"]] == runs, status


async def test_a_poison_event_is_parked_later_ones_flow_and_a_replayed_one_is_handled_once(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await streams(js, "treasury")
    opportunity = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                          "amount": 5})).json()["id"]
    early = event("treasury.invoice.created", {"invoice_id": "INV-1", "opportunity_id": opportunity})
    await js.publish("treasury.invoice.created", early)  # not won yet: refused by the rule
    await js.publish("treasury.invoice.created", b"{garbage")
    await js.publish("treasury.bill.created", event("treasury.bill.created", {
        "bill_id": "B", "purchase_order_id": str(uuid.uuid4())}))  # no such order here
    await js.publish("treasury.invoice.created", event("treasury.invoice.created", {
        "invoice_id": "INV-2", "opportunity_id": opportunity}, tenant="../tenant-a"))  # no tenant id
    await settled(service, "erp-treasury", 4)
    assert consumer(service, "erp-treasury").terminated == 4

    info = await js.stream_info("ERP_DLQ")
    assert info.state.messages == 4
    first = await js.get_msg("ERP_DLQ", info.state.first_seq)
    assert first.headers[DLQ_SUBJECT] == "treasury.invoice.created"
    assert "NotWon" in first.headers[DLQ_ERROR] or "won" in first.headers[DLQ_ERROR]
    last = await js.get_msg("ERP_DLQ", info.state.last_seq)
    assert "'../tenant-a' is not a tenant id" in last.headers[DLQ_ERROR], last.headers

    env = {"ERP_NATS_URL": service.endpoints.nats_url}
    listed = await asyncio.to_thread(CliRunner().invoke, main, ["dead-letters", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("erp-treasury") == 4 and "(not JSON)" in listed.output

    await client.post(f"{OPPORTUNITIES}/{opportunity}/win", json={})  # now it can be invoiced
    replayed = await asyncio.to_thread(CliRunner().invoke, main,
                                       ["dead-letters", "replay", str(info.state.first_seq)], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert "first delivered from TREASURY seq 1" in replayed.output, replayed.output
    seen = await read(client, f"{OPPORTUNITIES}/{opportunity}", lambda b: b["invoice_id"])
    assert seen["invoice_id"] == "INV-1"
    await js.publish("treasury.invoice.created", early)  # and once more: still one link
    await settled(service, "erp-treasury", 5)
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM erp_events WHERE originator_id = %s "
                                 "AND topic LIKE '%%InvoiceLinked'", (opportunity,))
        assert await cur.fetchone() == (1,)
    assert (await js.stream_info("ERP_DLQ")).state.messages == 3  # the replayed one left


async def test_facts_from_inventory_logistics_pos_iot_and_projects_are_kept_once_and_never_go_back(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await streams(js, "inventory", "logistics", "pos", "iot", "projects")
    work_order = str(uuid.uuid4())
    published: list[tuple[str, dict[str, Any], str]] = [
        ("inventory.stock.updated", {"item_id": "flour", "stock_level": 120, "warehouse_id": "w1"},
         "2026-11-25T10:00:00Z"),
        ("inventory.stock.updated", {"item_id": "flour", "stock_level": 90, "warehouse_id": "w1"},
         "2026-11-25T09:00:00Z"),  # older, arriving late: ignored
        ("inventory.movement.recorded", {"movement_id": "M1", "item_id": "flour", "quantity": 30,
                                         "reference": "PO-2026-000001"}, "2026-11-25T10:00:00Z"),
        ("inventory.reservation.created", {"reservation_id": "R1", "item_id": "flour", "quantity": 5},
         "2026-11-25T10:00:00Z"),
        ("logistics.shipment.delivered", {"shipment_id": "S1", "order_id": "O1"}, "2026-11-25T12:00:00Z"),
        ("logistics.shipment.created", {"shipment_id": "S1", "order_id": "O1", "tracking_number": "TRK"},
         "2026-11-25T11:00:00Z"),  # late: delivered stays delivered
        ("pos.order.created", {"order_id": "POS-1", "total_amount": 450.5}, "2026-11-25T10:00:00Z"),
        ("iot.telemetry.received", {"device_id": "oven-1", "metrics": {"temp_c": 182.5}},
         "2026-11-25T10:00:00Z"),
        ("iot.alert.triggered", {"alert_id": "A1", "device_id": "oven-1", "severity": "critical",
                                 "message": "over temperature", "work_order_id": work_order},
         "2026-11-25T10:01:00Z"),
        ("projects.budget.updated", {"project_id": "P1", "budget": 500000, "spent": 120000},
         "2026-11-25T10:00:00Z"),
    ]
    for subject, data, at in published:
        message = event(subject, data, timestamp=at)
        await js.publish(subject, message)
        await js.publish(subject, message)  # every one redelivered
    for durable, count in (("erp-inventory", 8), ("erp-logistics", 4), ("erp-pos", 2), ("erp-iot", 4),
                           ("erp-projects", 2)):
        await settled(service, durable, count)

    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        async def rows(sql: str) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql)).fetchall()
        assert await rows("SELECT item_id, stock_level::int FROM stock_levels") == [("flour", 120)]
        assert await rows("SELECT movement_id, quantity::int, reference FROM stock_movements") == [
            ("M1", 30, "PO-2026-000001")]
        assert await rows("SELECT reservation_id FROM stock_reservations") == [("R1",)]
        assert await rows("SELECT status, tracking_number, created_at IS NOT NULL FROM shipments") == [
            ("delivered", "TRK", True)]
        assert await rows("SELECT order_id, total_amount::text FROM pos_orders") == [("POS-1", "450.50")]
        assert await rows("SELECT metrics->>'temp_c' FROM device_telemetry") == [("182.5",)]
        assert await rows("SELECT severity, work_order_id::text FROM device_alerts") == [
            ("critical", work_order)]
        assert await rows("SELECT budget::int, spent::int FROM project_budgets") == [(500000, 120000)]
        assert await rows("SELECT count(*) FROM inbound_events") == [(10,)]


async def test_a_failing_event_is_retried_with_backoff_then_parked_while_later_ones_flow(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await streams(js, "inventory")
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        await conn.execute("ALTER TABLE stock_levels RENAME TO stock_levels_away")  # writes now fail
    service.inbound[[c._durable for c in service.inbound].index("erp-inventory")]._max_deliver = 3
    await js.publish("inventory.stock.updated", event("inventory.stock.updated", {
        "item_id": "flour", "stock_level": 1, "warehouse_id": "w1"}))
    await js.publish("inventory.movement.recorded", event("inventory.movement.recorded", {
        "movement_id": "M9", "item_id": "flour", "quantity": 2}))
    started = time.monotonic()
    await settled(service, "erp-inventory", 2)  # the movement flowed past the failing one, then it was parked
    assert time.monotonic() - started >= 2.9  # attempts 1 s and 2 s apart
    inventory = consumer(service, "erp-inventory")
    assert (inventory.handled, inventory.terminated) == (1, 1)
    parked = await js.get_msg("ERP_DLQ", (await js.stream_info("ERP_DLQ")).state.last_seq)
    assert parked.headers[DLQ_SUBJECT] == "inventory.stock.updated"
    assert parked.headers[DLQ_ERROR].startswith("gave up after 3 attempts")


async def test_a_peer_stream_recreated_by_its_owner_is_consumed_again(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await streams(js, "pos")
    await js.publish("pos.order.created", event("pos.order.created", {"order_id": "POS-1",
                                                                     "total_amount": 1}))
    await settled(service, "erp-pos", 1)
    await js.delete_stream("POS")  # the POS team recreates its stream: our consumer goes with it
    await streams(js, "pos")
    await js.publish("pos.order.created", event("pos.order.created", {"order_id": "POS-2",
                                                                     "total_amount": 1}))
    await settled(service, "erp-pos", 2)
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        orders = await (await conn.execute("SELECT order_id FROM pos_orders ORDER BY 1")).fetchall()
    assert orders == [("POS-1",), ("POS-2",)]


async def test_an_event_whose_last_try_ended_unanswered_is_parked_not_lost(
    endpoints: Endpoints, js: Any
) -> None:
    """The process handling an event's last try dies: JetStream delivers it once more, to be
    parked (past the consumer's max_deliver it would never deliver it again)."""
    await streams(js, "acme")
    await ensure_dead_letter_stream(js, "ERP_DLQ", 1)
    tries = 0

    async def handle(envelope: Any, ctx: Any) -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise RuntimeError("the database is away")  # retried a second later
        await asyncio.Event().wait()  # the last try: the process dies while handling it

    def consumer_of(handler: Any) -> InboundConsumer:
        return InboundConsumer(js, "ACME", "erp-acme", [Subscription("acme.tenant.updated", TenantAnnounced,
                                                                     handler)],
                               dead_letters="ERP_DLQ", max_deliver=2, ack_wait_seconds=1.0)

    first = consumer_of(handle)
    running = asyncio.create_task(first.run())
    await js.publish("acme.tenant.updated", event("acme.tenant.updated", {"name": "Acme"}))

    async def on_last_try() -> bool:
        return tries == 2
    await eventually(on_last_try, timeout=15)
    await stop_tasks([running])  # as a SIGKILL: no answer, no ack

    handled: list[Any] = []

    async def would_succeed(envelope: Any, ctx: Any) -> None:
        handled.append(envelope)

    second = consumer_of(would_succeed)
    running = asyncio.create_task(second.run())
    try:
        async def parked() -> bool:
            return second.terminated == 1
        await eventually(parked, timeout=15)
    finally:
        await stop_tasks([running])
    assert handled == [] and tries == 2  # parked as it was: not tried a third time
    letter = await js.get_msg("ERP_DLQ", (await js.stream_info("ERP_DLQ")).state.last_seq)
    assert "no answer to the last of 2 tries" in letter.headers[DLQ_ERROR]
    assert letter.headers[DLQ_SUBJECT] == "acme.tenant.updated"
