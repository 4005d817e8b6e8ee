"""Inbound webhooks: an HMAC-signed event envelope has the same effect as the event from
the stream, once per delivery id and once per event_id; stale or unsigned ones are refused."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from erp import credentials
from erp.bootstrap import Service
from integrations.webhooks import DURABLE, NO_ENDPOINT, not_public, public_only_transport
from integrations.webhooks import sign as signature
from tests.conftest import as_user, eventually
from tests.test_peers import Answer, StubPeer

OPPORTUNITIES = "/api/v1/crm/opportunities"
SECRET = "whsec-test-fixture-0123456789"  # a test fixture, not a secret


async def test_a_signed_delivery_is_processed_once_and_forgeries_are_refused(
    client: httpx.AsyncClient, service: Service
) -> None:
    assert service.keyring is not None
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        await credentials.put(conn, service.keyring, credentials.PLATFORM, "webhook.treasury", SECRET,
                              actor="test")
    opportunity = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                          "amount": 10})).json()["id"]
    await client.post(f"{OPPORTUNITIES}/{opportunity}/win", json={})
    body = json.dumps({"event_id": str(uuid.uuid4()), "event_type": "treasury.invoice.created",
                       "tenant_id": "tenant-a", "timestamp": "2026-11-25T10:30:00Z",
                       "data": {"invoice_id": "INV-W1", "opportunity_id": opportunity,
                                "status": "sent"}}).encode()

    def signed(delivery: str, at: int | None = None, secret: str = SECRET) -> dict[str, str]:
        stamp = str(at if at is not None else int(time.time()))
        return {"Authorization": "", "Webhook-Id": delivery, "Webhook-Timestamp": stamp,
                "Webhook-Signature": signature(secret, stamp, body), "Content-Type": "application/json"}

    url = "/api/v1/webhooks/treasury"
    first = await client.post(url, content=body, headers=signed("d-1"))
    assert (first.status_code, first.json()["status"]) == (202, "processed"), first.text
    again = await client.post(url, content=body, headers=signed("d-1"))
    assert (again.status_code, again.json()["status"]) == (202, "duplicate")
    other_delivery = await client.post(url, content=body, headers=signed("d-2"))  # same event: no 2nd effect
    assert other_delivery.status_code == 202
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM erp_events WHERE originator_id = %s "
                                 "AND topic LIKE '%%InvoiceLinked'", (opportunity,))
        assert await cur.fetchone() == (1,)

    for refused in (signed("d-3", at=int(time.time()) - 301),  # older than 5 minutes
                    signed("d-4", secret="guessed"),  # another secret
                    {**signed("d-5"), "Webhook-Signature": ""},
                    {**signed("d-5"), "Webhook-Timestamp": "9" * 400},  # no number to compare
                    {**signed("d-5"), "Webhook-Timestamp": "9" * 5000}):
        response = await client.post(url, content=body, headers=refused)
        assert response.status_code == 401, refused
    unknown_source = await client.post("/api/v1/webhooks/nobody", content=body, headers=signed("d-6"))
    assert unknown_source.status_code == 401
    tampered = await client.post(url, content=body.replace(b"INV-W1", b"INV-X9"), headers=signed("d-7"))
    assert tampered.status_code == 401
    # treasury's secret signs treasury's events only: not auth's suspension of a tenant
    body = json.dumps({"event_id": str(uuid.uuid4()), "event_type": "auth.tenant.updated",
                       "tenant_id": "tenant-b", "timestamp": "2026-11-25T10:31:00Z",
                       "data": {"name": "tenant-b Ltd", "status": "suspended"}}).encode()
    foreign = await client.post(url, content=body, headers=signed("d-8"))
    assert foreign.status_code == 400 and "from treasury" in foreign.json()["detail"], foreign.text
    still = await client.get(OPPORTUNITIES, headers={**as_user("tenant-b")})
    assert still.status_code == 200, still.text
    body = json.dumps({"event_id": str(uuid.uuid4()), "event_type": "treasury.invoice.created",
                       "tenant_id": "*", "timestamp": "2026-11-25T10:32:00Z",
                       "data": {"invoice_id": "INV-W2", "opportunity_id": opportunity,
                                "status": "sent"}}).encode()
    no_tenant = await client.post(url, content=body, headers=signed("d-9"))
    assert no_tenant.status_code == 400, no_tenant.text
    assert "'*' is not a tenant id" in no_tenant.json()["detail"]


async def test_a_registered_endpoint_gets_each_chosen_event_signed_retried_and_visible(
    client: httpx.AsyncClient, service: Service
) -> None:
    with StubPeer() as receiver:
        receiver.answer(Answer(status=503))  # the first delivery fails: retried
        receiver.default = Answer(status=204, body=b"")
        refused = await client.post("/api/v1/settings/webhooks", json={
            "url": receiver.url, "event_types": ["erp.opportunity.exploded"]})
        assert refused.status_code == 422
        registered = await client.post("/api/v1/settings/webhooks", json={
            "url": f"{receiver.url}/hooks/erp", "event_types": ["erp.opportunity.won"]})
        assert registered.status_code == 201, registered.text
        endpoint, secret = registered.json()["endpoint_id"], registered.json()["secret"]
        listed = (await client.get("/api/v1/settings/webhooks")).json()["items"]
        assert [e["endpoint_id"] for e in listed] == [endpoint] and "secret" not in listed[0]

        async def following() -> bool:  # the registration has reached the deliveries' consumer
            info = await service.js.consumer_info(service.settings.stream, DURABLE)
            return "erp.opportunity.won" in (info.config.filter_subjects or [])
        await eventually(following)
        opportunity = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                              "amount": 10})).json()["id"]
        await client.post(f"{OPPORTUNITIES}/{opportunity}/win", json={})

        async def delivered() -> list[dict[str, object]]:
            items: list[dict[str, object]] = (await client.get(
                f"/api/v1/settings/webhooks/{endpoint}/deliveries")).json()["items"]
            return items if items and items[0]["status"] == "delivered" else []
        sent = await eventually(delivered, timeout=20)
        assert (sent[0]["event_type"], sent[0]["attempts"]) == ("erp.opportunity.won", 2)
        assert len(receiver.seen) == 2 and {s.path for s in receiver.seen} == {"/hooks/erp"}
        last = receiver.seen[-1]
        stamp = last.headers["webhook-timestamp"]
        assert last.headers["webhook-signature"] == signature(secret, stamp, last.body)
        assert json.loads(last.body)["data"]["opportunity_id"] == opportunity  # the envelope we publish
        theirs = await client.get(f"/api/v1/settings/webhooks/{endpoint}/deliveries",
                                  headers=as_user("tenant-b"))
        assert theirs.status_code == 404


async def test_the_deliveries_consumer_fetches_only_the_event_types_of_active_endpoints(
    client: httpx.AsyncClient, service: Service
) -> None:
    stream = service.settings.stream

    async def filters() -> list[str]:
        info = await service.js.consumer_info(stream, DURABLE)
        return sorted(info.config.filter_subjects or [])

    async def filtering(expected: list[str]) -> bool:
        return await filters() == expected

    await eventually(lambda: filtering([NO_ENDPOINT]))
    before = (await service.js.consumer_info(stream, DURABLE)).delivered.stream_seq
    opened = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o"})
    assert opened.status_code == 201
    head = await asyncio.to_thread(service.store.recorder.max_notification_id)
    await service.positions.wait("opportunities", head or 0, 10.0)  # so it is in the stream
    info = await service.js.consumer_info(stream, DURABLE)
    assert (info.delivered.stream_seq, info.num_pending) == (before, 0)  # nothing fetched, nothing waiting

    won = await client.post("/api/v1/settings/webhooks", json={
        "url": "https://hooks.example/won", "event_types": ["erp.opportunity.won"]})
    lost = await client.post("/api/v1/settings/webhooks", json={
        "url": "https://hooks.example/lost", "event_types": ["erp.opportunity.lost", "erp.opportunity.won"]},
        headers=as_user("tenant-b"))
    assert (won.status_code, lost.status_code) == (201, 201)
    await eventually(lambda: filtering(["erp.opportunity.lost", "erp.opportunity.won"]))

    assert (await client.delete(f"/api/v1/settings/webhooks/{won.json()['endpoint_id']}")).status_code == 204
    await eventually(lambda: filtering(["erp.opportunity.lost", "erp.opportunity.won"]))
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        await conn.execute("UPDATE webhook_endpoints SET active = false")  # an operator's change, too
    await eventually(lambda: filtering([NO_ENDPOINT]))


async def test_concurrent_deliveries_do_not_wait_for_each_other_s_connections(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A delivery holds no connection of the pool while its event's effect takes one: more
    concurrent deliveries than the pool has connections are all processed."""
    assert service.keyring is not None
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        await credentials.put(conn, service.keyring, credentials.PLATFORM, "webhook.inventory", SECRET,
                              actor="test")

    async def deliver(i: int) -> int:
        body = json.dumps({"event_id": str(uuid.uuid4()), "event_type": "inventory.stock.updated",
                           "tenant_id": "tenant-a", "timestamp": "2026-11-25T10:30:00Z",
                           "data": {"item_id": f"item-{i}", "stock_level": 1, "warehouse_id": "w"}}).encode()
        stamp = str(int(time.time()))
        response = await client.post("/api/v1/webhooks/inventory", content=body, headers={
            "Authorization": "", "Webhook-Id": f"stock-{i}", "Webhook-Timestamp": stamp,
            "Webhook-Signature": signature(SECRET, stamp, body), "Content-Type": "application/json"})
        return response.status_code

    assert await asyncio.gather(*(deliver(i) for i in range(12))) == [202] * 12


async def test_a_registration_repeated_with_its_idempotency_key_answers_the_first(
    client: httpx.AsyncClient,
) -> None:
    """A client that lost the answer registers again: the same endpoint and secret, not a
    second endpoint that would get every event twice."""
    body = {"url": "https://hooks.example.com/erp", "event_types": ["erp.opportunity.won"]}
    first = await client.post("/api/v1/settings/webhooks", json=body, headers={"Idempotency-Key": "wh-1"})
    again = await client.post("/api/v1/settings/webhooks", json=body, headers={"Idempotency-Key": "wh-1"})
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    listed = (await client.get("/api/v1/settings/webhooks")).json()["items"]
    assert [e["endpoint_id"] for e in listed] == [first.json()["endpoint_id"]]
    other = await client.post("/api/v1/settings/webhooks", json={**body, "url": "https://other.example.com/"},
                              headers={"Idempotency-Key": "wh-1"})
    assert other.status_code == 422 and "was used for a different request" in other.text


async def test_an_endpoint_must_be_a_public_https_address(
    client: httpx.AsyncClient, service: Service
) -> None:
    """Else a tenant could have the service call into the platform's own network."""
    service.settings = service.settings.model_copy(update={"webhook_private_addresses": False})
    for url, why in (("http://example.com/hook", "https://"),
                     ("https://127.0.0.1:8443/hook", "127.0.0.1, not a public address"),
                     ("https://169.254.169.254/latest/meta-data", "not a public address"),
                     ("https://10.1.2.3/hook", "not a public address"),
                     ("https://[::1]/hook", "::1, not a public address"),
                     ("https://localhost/hook", "not a public address")):
        refused = await client.post("/api/v1/settings/webhooks",
                                    json={"url": url, "event_types": ["erp.opportunity.won"]})
        assert refused.status_code == 422 and refused.json()["rule"] == "EndpointNotPublic", refused.text
        assert why in refused.json()["detail"] and refused.json()["errors"][0]["field"] == "body.url"
    assert await not_public("https://8.8.8.8/hook") is None  # a public address (an IP: no DNS here)


async def test_a_delivery_connects_only_to_public_addresses_checked_as_it_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name checked at registration may resolve elsewhere later (DNS rebinding): the check is
    made again on the addresses each connection is made to."""
    listening = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)  # something is there
    port = listening.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo
    answers = iter(["8.8.8.8", "127.0.0.1"])  # the name's owner changes its answer meanwhile

    async def rebinding(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host != "hooks.example.com":
            return await resolve(host, port, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    try:
        async with httpx.AsyncClient(transport=public_only_transport(), trust_env=False) as http:
            assert await not_public(f"https://hooks.example.com:{port}/hook") is None  # at registration
            with pytest.raises(httpx.ConnectError, match=r"example\.com is 127\.0\.0\.1, not a public"):
                await http.post(f"https://hooks.example.com:{port}/hook", content=b"{}")
            with pytest.raises(httpx.ConnectError, match=r"localhost is .*, not a public address"):
                await http.post(f"https://localhost:{port}/hook", content=b"{}")
    finally:
        listening.close()
