"""The auth service announces tenants and users on its stream; the ERP registers the
tenant (with default settings) and keeps user references, each effect exactly once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg
from nats.js.api import StreamConfig

from erp.bootstrap import Service
from streams.inbound import backoff
from tests.conftest import as_user, eventually

OPPORTUNITIES = "/api/v1/crm/opportunities"


def announcement(event_type: str, tenant: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    return json.dumps({"event_id": event_id or str(uuid.uuid4()), "event_type": event_type,
                       "tenant_id": tenant, "timestamp": "2026-11-25T10:30:00Z", "data": data}).encode()


async def auth_stream(js: Any) -> None:
    await js.add_stream(StreamConfig(name="AUTH", subjects=["auth.>"]))


async def events_of(service: Service, tenant_settings_or_user: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT topic FROM erp_events WHERE topic LIKE %s ORDER BY notification_id",
                                 (f"%{tenant_settings_or_user}%",))
        return [row[0].rsplit(".", 1)[-1] for row in await cur.fetchall()]


async def test_an_announced_tenant_can_work_and_a_redelivered_announcement_changes_nothing(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await auth_stream(js)
    newcomer = as_user("acme-kenya")
    body = {"customer_id": "c", "title": "t", "owner": "o"}
    assert (await client.post(OPPORTUNITIES, json=body, headers=newcomer)).status_code == 403

    created = announcement("auth.tenant.created", "acme-kenya", {"name": "Acme Kenya Ltd"})
    for _ in range(5):  # the same event delivered again and again
        await js.publish("auth.tenant.created", created)
    await js.publish("auth.tenant.updated", announcement("auth.tenant.updated", "acme-kenya",
                                                          {"name": "Acme Kenya Ltd"}))  # no change

    async def can_work() -> bool:
        response = await client.post(OPPORTUNITIES, json=body, headers=newcomer)
        return response.status_code == 201
    await eventually(can_work, timeout=15)
    await eventually(lambda: _consumed(service, 6))
    settings = (await client.get("/api/v1/settings", headers=newcomer)).json()
    assert (settings["name"], settings["status"], settings["stages"][0]["name"]) == (
        "Acme Kenya Ltd", "active", "qualification")
    history = (await client.get("/api/v1/settings/history", headers=newcomer)).json()["changes"]
    assert [(c["change"], c["changed_by"]) for c in history] == [
        ("Initialised", "service:auth"), ("Described", "service:auth")]  # once, not five times

    await js.publish("auth.tenant.updated", announcement("auth.tenant.updated", "acme-kenya",
                                                          {"name": "Acme Kenya Ltd", "status": "suspended"}))

    async def suspended() -> bool:
        shown = (await client.get("/api/v1/settings", headers=newcomer)).json()
        return bool(shown["status"] == "suspended")
    await eventually(suspended, timeout=15)


async def _consumed(service: Service, count: int) -> bool:
    consumer = service.inbound[0]
    return consumer.handled + consumer.terminated >= count


async def test_users_are_referenced_from_announcements_and_the_sync_endpoint(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await auth_stream(js)
    await js.publish("auth.user.created", announcement(
        "auth.user.created", "tenant-a", {"user_id": "u-1", "email": "wanjiru@example.co.ke",
                                          "name": "Wanjiru", "ignored_extra": 1}))
    await js.publish("auth.user.updated", announcement(
        "auth.user.updated", "tenant-a",
        {"user_id": "u-1", "email": "wanjiru@acme.co.ke", "name": "Wanjiru K"}))
    synced = await client.post("/api/v1/users/sync", json={"user_id": "u-2", "email": "otieno@acme.co.ke",
                                                           "name": "Otieno"})
    assert synced.status_code == 200, synced.text
    again = await client.post("/api/v1/users/sync", json={"user_id": "u-2", "email": "otieno@acme.co.ke",
                                                          "name": "Otieno"})
    assert (again.status_code, again.json()["version"]) == (200, 1)  # nothing changed, nothing stored

    expected = [("u-1", "wanjiru@acme.co.ke", 2), ("u-2", "otieno@acme.co.ke", 1)]

    async def both() -> bool:
        params = {"min_position": again.json()["log_position"]}
        items = (await client.get("/api/v1/users", params=params)).json()["items"]
        return sorted((u["user_id"], u["email"], u["version"]) for u in items) == expected
    await eventually(both, timeout=15)
    theirs = (await client.get("/api/v1/users", headers=as_user("tenant-b"))).json()["items"]
    assert theirs == []


async def test_a_malformed_announcement_is_refused_and_the_consumer_moves_on(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await auth_stream(js)
    await js.publish("auth.tenant.created", b"{not json")
    await js.publish("auth.tenant.created", announcement("auth.tenant.created", "t-x", {"nom": "no name"}))
    await js.publish("auth.user.created", announcement("auth.user.created", "tenant-a",
                                                       {"user_id": "u-9", "email": "not-an-email"}))
    await js.publish("auth.tenant.created",
                     announcement("auth.tenant.created", "after-garbage", {"name": "OK"}))
    await eventually(lambda: _consumed(service, 4), timeout=15)
    consumer = service.inbound[0]
    assert (consumer.terminated, consumer.handled) == (3, 1)
    settings = await client.get("/api/v1/settings", headers=as_user("after-garbage"))
    assert settings.json()["name"] == "OK"


async def test_announcements_are_applied_in_order_and_one_for_an_unknown_tenant_is_refused(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await auth_stream(js)
    await js.publish("auth.user.created", announcement("auth.user.created", "late-co",
                                                       {"user_id": "u-1", "email": "a@late.co"}))
    await js.publish("auth.tenant.created", announcement("auth.tenant.created", "late-co", {"name": "Late"}))
    for status, name in (("suspended", "Late"), ("active", "Late Ltd"), ("suspended", "Late Ltd")):
        await js.publish("auth.tenant.updated", announcement("auth.tenant.updated", "late-co",
                                                             {"name": name, "status": status}))
    await js.publish("auth.user.created", announcement("auth.user.created", "late-co",
                                                       {"user_id": "u-2", "email": "b@late.co"}))
    await eventually(lambda: _consumed(service, 6), timeout=15)
    assert (service.inbound[0].terminated, service.inbound[0].handled) == (1, 5)
    history = (await client.get("/api/v1/settings/history", headers=as_user("late-co"))).json()["changes"]
    assert [(c["details"].get("name"), c["details"].get("status")) for c in history[1:]] == [
        ("Late", "active"), ("Late", "suspended"), ("Late Ltd", "active"), ("Late Ltd", "suspended")]

    async def referenced() -> bool:  # a suspended tenant's users still follow the auth service
        items = (await client.get("/api/v1/users", headers=as_user("late-co"))).json()["items"]
        return [u["user_id"] for u in items] == ["u-2"]
    await eventually(referenced, timeout=15)
    assert [backoff(n) for n in (1, 2, 3, 5, 6, 9)] == [1.0, 2.0, 4.0, 16.0, 30.0, 30.0]
