"""For a tenant whose treasury is reached over REST, ERP events become treasury calls —
once each, however often retried — and treasury's answers become events here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from erp import credentials
from erp.bootstrap import Service
from tests.conftest import as_user, eventually
from tests.test_peers import Answer, StubPeer
from tests.test_procurement_api import approved

OPPORTUNITIES = "/api/v1/crm/opportunities"
ORDERS = "/api/v1/procurement/purchase-orders"
ANSWER = b'{"invoice_id": "INV-REST-1", "bill_id": "BILL-REST-1", "status": "draft"}'


async def configure_rest_treasury(service: Service, tenant: str, url: str) -> None:
    assert service.keyring is not None
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        await credentials.put(conn, service.keyring, tenant, "peer.treasury.url", url, actor="test")
        await credentials.put(conn, service.keyring, tenant, "peer.treasury.credential",
                              "Bearer treasury-test-token", actor="test")  # a test fixture


async def test_won_and_received_become_one_invoice_and_one_bill_each_recorded_here(
    client: httpx.AsyncClient, service: Service
) -> None:
    with StubPeer() as treasury:
        treasury.default = Answer(status=201, body=ANSWER)
        treasury.answer(Answer(status=503))  # the first call fails: retried with the same key
        await configure_rest_treasury(service, "tenant-a", treasury.url)
        body = {"customer_id": "c", "title": "t", "owner": "o", "amount": 1000}
        mine = (await client.post(OPPORTUNITIES, json=body)).json()["id"]
        await client.post(f"{OPPORTUNITIES}/{mine}/win", json={})
        theirs = (await client.post(OPPORTUNITIES, json=body, headers=as_user("tenant-b"))).json()["id"]
        await client.post(f"{OPPORTUNITIES}/{theirs}/win", json={}, headers=as_user("tenant-b"))
        order = await approved(client)
        await client.post(f"{ORDERS}/{order}/receive",
                          json={"lines": [{"line_no": 1, "accepted_quantity": 10}]})

        async def linked() -> bool:  # (a 404 while the read models catch up)
            opportunity = (await client.get(f"{OPPORTUNITIES}/{mine}")).json()
            purchase = (await client.get(f"{ORDERS}/{order}")).json()
            invoiced, billed = opportunity.get("invoice_id"), purchase.get("bill_id")
            return bool(invoiced == "INV-REST-1" and billed == "BILL-REST-1")
        await eventually(linked, timeout=20)

        invoices = [s for s in treasury.seen if s.path == "/api/v1/treasury/invoices"]
        bills = [s for s in treasury.seen if s.path == "/api/v1/treasury/bills"]
        assert len(bills) == 1 and len(invoices) + len(bills) == len(treasury.seen) == 3
        assert len({s.headers["idempotency-key"] for s in invoices}) == 1  # the retry: same key
        # tenant-b's treasury subscribes to our subjects itself: no call for it
        assert {s.headers["x-tenant-id"] for s in treasury.seen} == {"tenant-a"}
        assert invoices[0].headers["authorization"] == "Bearer treasury-test-token"
        sent = json.loads(invoices[-1].body)
        assert (sent["opportunity_id"], sent["amount"], sent["currency"]) == (mine, 1000, "KES")
        won_on = datetime.now(UTC).date()  # due after the tenant's payment terms (30 days by default)
        assert sent["due_date"] in {str(won_on + timedelta(days=30 - back)) for back in (0, 1)}, sent
        assert service.reactions is not None and service.reactions.skipped == 1


async def test_notifiable_events_are_sent_on_the_tenants_chosen_channels_once(
    client: httpx.AsyncClient, service: Service
) -> None:
    with StubPeer() as notifications:
        notifications.default = Answer(status=202, body=b'{"message_id": "MSG-1", "status": "queued"}')
        notifications.answer(Answer(status=500))  # a failure: retried with the same key
        assert service.keyring is not None
        async with await psycopg.AsyncConnection.connect(service.endpoints.database_url,
                                                         autocommit=True) as conn:
            await credentials.put(conn, service.keyring, "tenant-a", "peer.notifications.url",
                                  notifications.url, actor="test")
            await credentials.put(conn, service.keyring, "tenant-a", "peer.notifications.credential",
                                  "notifications-test-key", actor="test")  # a test fixture
        terms = {"currency": "KES", "payment_terms_days": 30,
                 "notifications": {"opportunity.won": ["email", "sms"]}}
        assert (await client.post("/api/v1/settings/business-terms", json=terms)).status_code == 200
        body = {"customer_id": "c", "title": "t", "owner": "o", "amount": 1000}
        opportunity = (await client.post(OPPORTUNITIES, json=body)).json()["id"]
        # a stage change is not notifiable; the win is, on email and SMS
        await client.post(f"{OPPORTUNITIES}/{opportunity}/stage", json={"stage": "proposal"})
        await client.post(f"{OPPORTUNITIES}/{opportunity}/win", json={})

        async def both_sent() -> bool:
            ok = [s for s in notifications.seen if s.path == "/api/v1/notifications/messages"]
            return len({json.loads(s.body)["channel"] for s in ok}) == 2 and len(ok) >= 3
        await eventually(both_sent, timeout=20)
        sent = [json.loads(s.body) for s in notifications.seen]
        assert {m["template"] for m in sent} == {"opportunity.won"}
        assert sent[-1]["data"]["opportunity_id"] == opportunity
        keys: dict[str, set[str]] = {}
        for seen, message in zip(notifications.seen, sent, strict=True):
            keys.setdefault(message["channel"], set()).add(seen.headers["idempotency-key"])
        assert all(len(k) == 1 for k in keys.values())  # a retry reuses the key


async def test_goods_received_go_into_the_receiving_warehouse_line_by_line(
    client: httpx.AsyncClient, service: Service
) -> None:
    with StubPeer() as inventory:
        inventory.default = Answer(status=201, body=b'{"movement_id": "MV-1"}')
        assert service.keyring is not None
        async with await psycopg.AsyncConnection.connect(service.endpoints.database_url,
                                                         autocommit=True) as conn:
            for name, value in (("url", inventory.url), ("credential", "inventory-test-key")):  # fixtures
                await credentials.put(conn, service.keyring, "tenant-a", f"peer.inventory.{name}", value,
                                      actor="test")
        order = await approved(client)
        first = await client.post(f"{ORDERS}/{order}/receive", json={
            "receipt_id": "GRN-1", "lines": [{"line_no": 1, "accepted_quantity": 4, "rejected_quantity": 1}]})
        assert first.status_code == 200, first.text

        async def parked() -> bool:  # no receiving warehouse yet: a person must set it
            return bool(service.reactions is not None and service.reactions.parked == 1)
        await eventually(parked, timeout=15)
        terms = {"currency": "KES", "payment_terms_days": 30, "receiving_warehouse_id": "w-main"}
        assert (await client.post("/api/v1/settings/business-terms", json=terms)).status_code == 200
        await client.post(f"{ORDERS}/{order}/receive", json={
            "receipt_id": "GRN-2", "lines": [{"line_no": 1, "accepted_quantity": 5}]})

        async def moved() -> bool:
            return len(inventory.seen) == 1
        await eventually(moved, timeout=15)
        sent = json.loads(inventory.seen[0].body)
        fields = ("item_id", "warehouse_id", "quantity", "direction", "reason")
        assert tuple(sent[f] for f in fields) == ("cement", "w-main", 5, "in", "purchase_receipt")
        assert sent["reference"] == f"{order}/GRN-2"
