"""6. Duplicates and races: a thousand deliveries of one inbound event have one effect, and
fifty conflicting commands sent at once on one aggregate lose no update."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import psycopg
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from erp.bootstrap import Service
from streams.inbound import InboundConsumer
from tests.conftest import eventually, settings
from tests.reliability.conftest import Figures
from tests.test_inbound_events import event, streams
from tests.test_procurement_api import approved, line

OPPORTUNITIES = "/api/v1/crm/opportunities"
ORDERS = "/api/v1/procurement/purchase-orders"
DELIVERIES = 1_000
ORDERED = 40  # units on the order
RECEIPTS = 50  # concurrent receipts of one unit each: 40 fit, 10 must be refused


def treasury_consumer(service: Service) -> InboundConsumer:
    return next(c for c in service.inbound if c.durable == "erp-treasury")


def outcomes(command: str = "link_invoice") -> dict[str, int]:
    """How often this process ran `command`, by outcome (erp_commands_total)."""
    return {outcome: int(REGISTRY.get_sample_value("erp_commands_total",
                                                   {"command": command, "outcome": outcome}) or 0)
            for outcome in ("saved", "repeated", "unchanged", "conflict", "refused", "failed")}


async def stored_events(database_url: str, aggregate_id: str) -> list[tuple[int, str]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT originator_version, topic FROM erp_events WHERE originator_id = %s "
                                 "ORDER BY originator_version", (aggregate_id,))
        return [(int(v), str(t)) for v, t in await cur.fetchall()]


async def test_a_thousand_deliveries_of_one_invoice_event_link_it_once(
    client: httpx.AsyncClient, service: Service, js: Any, figures: Figures
) -> None:
    await streams(js, "treasury")
    opened = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                     "amount": 1000})).json()["id"]
    assert (await client.post(f"{OPPORTUNITIES}/{opened}/win", json={})).status_code == 200
    # A second instance of the service consumes the same durable consumer: copies of the
    # event are handled by both at once, so the duplicates also race each other.
    other = Service(settings(run_relay=False, run_projectors=False, run_reactions=False), service.endpoints)
    await other.start()
    try:
        consumers = [treasury_consumer(service), treasury_consumer(other)]

        async def both_fetching() -> bool:  # a pull request of each instance waits on the consumer
            try:
                info = await js.consumer_info("TREASURY", "erp-treasury")
            except NotFoundError:  # not created yet
                return False
            return bool(info.num_waiting >= 2)

        await eventually(both_fetching, timeout=15)
        before = outcomes()
        event_id = str(uuid.uuid4())
        invoice = event("treasury.invoice.created", {"invoice_id": "INV-1000", "opportunity_id": opened,
                                                     "status": "sent"}, event_id=event_id)
        started = time.monotonic()
        for start in range(0, DELIVERIES, 100):
            await asyncio.gather(*(js.publish("treasury.invoice.created", invoice)
                                   for _ in range(start, min(start + 100, DELIVERIES))))
        assert (await js.stream_info("TREASURY")).state.messages == DELIVERIES  # none deduplicated away

        async def all_handled() -> bool:
            return sum(c.handled + c.terminated for c in consumers) >= DELIVERIES

        await eventually(all_handled, timeout=60, interval=0.1)
        seconds = time.monotonic() - started
        info = await js.consumer_info("TREASURY", "erp-treasury")
    finally:
        await other.stop()

    assert [c.terminated for c in consumers] == [0, 0], "a duplicate was refused instead of acknowledged"
    assert sum(c.handled for c in consumers) == DELIVERIES
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    history = await stored_events(service.endpoints.database_url, opened)
    linked = [v for v, topic in history if topic.endswith("InvoiceLinked")]
    assert linked == [3], history  # opened, won, linked once
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT aggregate_id::text, version FROM idempotency_keys WHERE key = %s",
                                 (f"inbound:{event_id}",))
        assert await cur.fetchall() == [(opened, 3)]  # the effect's key, recorded once

    async def linked_in_read_model() -> Any:
        body = (await client.get(f"{OPPORTUNITIES}/{opened}")).json()
        return body if body.get("invoice_id") else None  # a 404 until the read model has it

    view = await eventually(linked_in_read_model, timeout=15)
    assert (view["invoice_id"], view["invoice_status"], view["version"]) == ("INV-1000", "sent", 3)
    # the first saves; a copy finds the first one's key (repeated) or, when it raced the first
    # past that check, the invoice already linked (unchanged); none failed, none was refused
    counted = {outcome: n - before[outcome] for outcome, n in outcomes().items() if n - before[outcome]}
    assert counted.get("saved") == 1, counted
    assert counted.get("repeated", 0) + counted.get("unchanged", 0) == DELIVERIES - 1, counted
    figures.record(
        "6a. 1,000 deliveries of one inbound event",
        deliveries=f"{DELIVERIES} copies of one treasury.invoice.created (same event_id) in the TREASURY "
                   "stream, consumed by two service instances sharing the durable consumer erp-treasury",
        handled_per_instance=" / ".join(str(c.handled) for c in consumers),
        effects="1 InvoiceLinked event (the opportunity at version 3), 1 idempotency key, 0 parked",
        command_outcomes=", ".join(f"{n} {outcome}" for outcome, n in counted.items()),
        seconds_to_consume_all=round(seconds, 2),
    )


def receipt(i: int) -> dict[str, Any]:
    return {"receipt_id": f"GRN-{i:02}", "lines": [{"line_no": 1, "accepted_quantity": 1}]}


async def test_fifty_concurrent_receipts_on_one_order_lose_no_update(
    client: httpx.AsyncClient, service: Service, figures: Figures
) -> None:
    oid = await approved(client, line("cement", ORDERED, 100))
    path = f"{ORDERS}/{oid}/receive"

    async def send(i: int) -> tuple[int, httpx.Response]:
        # each receipt keeps its Idempotency-Key, so resending one after a clash is safe
        return i, await client.post(path, json=receipt(i), headers={"Idempotency-Key": f"receipt-{oid}-{i}"})

    outcomes: dict[int, httpx.Response] = {}
    waiting = list(range(RECEIPTS))
    first_round: Counter[str] = Counter()
    rounds = 0
    started = time.monotonic()
    while waiting and rounds < 20:
        rounds += 1
        answers = await asyncio.gather(*(send(i) for i in waiting))  # all at once
        waiting = []
        for i, response in answers:
            kind = kind_of(response)
            if rounds == 1:
                first_round[kind] += 1
            if kind == "409 version-conflict":  # "retried and still clashed, try again"
                waiting.append(i)
            else:
                outcomes[i] = response
    seconds = time.monotonic() - started
    assert waiting == [], f"{len(waiting)} receipts still clashing after {rounds} rounds"

    kinds = Counter(kind_of(r) for r in outcomes.values())
    assert not [k for k in kinds if k.startswith("5")], kinds
    saved = {i: r.json() for i, r in outcomes.items() if r.status_code == 200}
    refused = {i: r for i, r in outcomes.items() if r.status_code != 200}
    assert len(saved) == ORDERED, kinds  # exactly what was ordered fits, whatever the order
    for response in refused.values():  # the rest are refused clearly, by the rule that forbids them
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["rule"] in ("OverReceipt", "NotApproved"), response.text
    versions = sorted(answer["version"] for answer in saved.values())
    assert len(set(versions)) == ORDERED, "two receipts answered the same version"

    history = await stored_events(service.endpoints.database_url, oid)
    assert [v for v, _ in history] == list(range(1, len(history) + 1))
    topics = Counter(topic.rpartition(".")[2] for _, topic in history)
    assert topics["GoodsReceived"] == ORDERED and topics["Received"] == 1, topics
    assert len(history) == 3 + ORDERED + 1  # created, submitted, approved; 40 receipts; received

    last = max(answer["log_position"] for answer in saved.values())
    view = (await client.get(f"{ORDERS}/{oid}", params={"min_position": last})).json(parse_float=Decimal)
    assert (view["status"], view["version"]) == ("received", len(history))
    assert view["lines"][0]["accepted_quantity"] == ORDERED
    receipt_ids = [r["receipt_id"] for r in view["receipts"]]
    assert sorted(receipt_ids) == sorted(f"GRN-{i:02}" for i in saved), "a receipt lost or doubled"
    figures.record(
        "6b. 50 concurrent conflicting commands on one aggregate",
        commands=f"{RECEIPTS} goods receipts of 1 unit each on one purchase order of {ORDERED} units, "
                 "sent at once (asyncio.gather); a 409 version conflict is resent with its Idempotency-Key",
        first_round=", ".join(f"{n} {k}" for k, n in sorted(first_round.items())),
        rounds_until_settled=rounds,
        saved=f"{len(saved)} (versions 4..{3 + ORDERED}, each receipt once, accepted quantity {ORDERED})",
        refused=", ".join(f"{n} {k}" for k, n in sorted(kinds.items()) if not k.startswith("200")),
        server_errors=0,
        seconds=round(seconds, 2),
    )


def kind_of(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    body = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    detail = body.get("rule") or str(body.get("type", "")).rpartition(":")[2] or response.text[:80]
    return f"{response.status_code} {detail}"
