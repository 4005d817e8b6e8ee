"""CRM through HTTP, JetStream and the read models: history, reopening, pipeline, forecast,
stages from the tenant's settings, and idempotent commands."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import psycopg

from erp.bootstrap import Service
from erp.idempotency import purge_expired
from tests.conftest import as_user

BASE = "/api/v1/crm/opportunities"


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str) -> Any:
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def opened(client: httpx.AsyncClient, **fields: Any) -> Any:
    return await post(client, BASE, {"customer_id": "c1", "title": "Deal", "owner": "alice",
                                     **fields})


async def test_history_records_every_stage_and_the_reopening(client: httpx.AsyncClient) -> None:
    oid = (await opened(client, amount=1000))["id"]
    await post(client, f"{BASE}/{oid}/stage", {"stage": "proposal"})
    await post(client, f"{BASE}/{oid}/lose", {"reason": "price", "competitor": "Acme"})
    last = await post(client, f"{BASE}/{oid}/reopen", {"reason": "budget approved"})
    detail = (await client.get(f"{BASE}/{oid}", params={"min_position": last["log_position"]})).json()
    assert (detail["status"], detail["stage"], detail["probability"]) == ("open", "proposal", 50)
    assert detail["lost_reason"] is None
    steps = [(h["stage"], h["status"], h["probability"], h["reason"]) for h in detail["stage_history"]]
    assert steps == [
        ("qualification", "open", 10, None),
        ("proposal", "open", 50, None),
        ("proposal", "lost", 0, "price"),
        ("proposal", "open", 50, "budget approved"),
    ]


async def test_edits_apply_only_while_open(client: httpx.AsyncClient) -> None:
    oid = (await opened(client))["id"]
    done = await post(client, f"{BASE}/{oid}/update",
                      {"title": "Bigger deal", "amount": 5000, "expected_close": "2027-01-31",
                       "probability": 30})
    view = (await client.get(f"{BASE}/{oid}", params={"min_position": done["log_position"]})).json()
    assert (view["title"], view["amount"], view["expected_close"], view["probability"]) == (
        "Bigger deal", 5000, "2027-01-31", 30)
    await post(client, f"{BASE}/{oid}/win", {})
    refused = await client.post(f"{BASE}/{oid}/update", json={"title": "x"})
    assert refused.status_code == 409 and refused.json()["rule"] == "OpportunityClosed"
    nothing = await client.post(f"{BASE}/{oid}/reopen", json={"reason": "r"})
    assert nothing.status_code == 200


async def test_pipeline_and_forecast_weigh_amounts_by_probability(client: httpx.AsyncClient) -> None:
    await opened(client, amount=1000, expected_close="2026-12-15")  # qualification 10 %
    await opened(client, amount=3000, expected_close="2026-12-20", stage="proposal")  # 50 %
    await opened(client, amount=2000, expected_close="2027-01-05", stage="proposal",
                 probability=80)
    won = await opened(client, amount=9999, expected_close="2026-12-01")
    last = await post(client, f"{BASE}/{won['id']}/win", {})
    params = {"min_position": last["log_position"]}

    pipeline = (await client.get("/api/v1/crm/pipeline", params=params)).json()["stages"]
    assert pipeline == [
        {"stage": "proposal", "currency": "KES", "count": 2, "total": 5000.00, "weighted": 3100.00},
        {"stage": "qualification", "currency": "KES", "count": 1, "total": 1000.00,
         "weighted": 100.00},
    ]
    forecast = (await client.get("/api/v1/crm/forecast", params=params)).json()["months"]
    assert [(m["month"], m["count"], m["total"], m["weighted"]) for m in forecast] == [
        ("2026-12", 2, 4000.00, 1600.00), ("2027-01", 1, 2000.00, 1600.00)]
    other = (await client.get("/api/v1/crm/pipeline", params=params,
                              headers=as_user("tenant-b"))).json()
    assert other["stages"] == []


async def test_a_tenant_configures_its_own_stages(client: httpx.AsyncClient) -> None:
    defaults = (await client.get("/api/v1/settings")).json()
    assert (defaults["name"], defaults["stages"][0]["name"]) == ("tenant-a Ltd", "qualification")
    await post(client, "/api/v1/settings/stages",
               {"stages": [{"name": "lead", "probability": 5}, {"name": "demo", "probability": 40}]})
    oid = (await opened(client))["id"]
    moved = await post(client, f"{BASE}/{oid}/stage", {"stage": "demo"})
    view = (await client.get(f"{BASE}/{oid}", params={"min_position": moved["log_position"]})).json()
    assert (view["stage"], view["probability"]) == ("demo", 40)
    unknown = await client.post(f"{BASE}/{oid}/stage", json={"stage": "proposal"})
    assert unknown.status_code == 422 and unknown.json()["rule"] == "UnknownStage"
    other_tenant = await client.post(BASE, json={"customer_id": "c", "title": "t", "owner": "o"},
                                     headers=as_user("tenant-b"))
    assert other_tenant.status_code == 201  # tenant-b keeps the defaults
    bad = await client.post("/api/v1/settings/stages", json={"stages": [{"name": "won",
                                                                          "probability": 1}]})
    assert bad.status_code == 422 and bad.json()["rule"] == "InvalidStages"
    chain = await client.post("/api/v1/settings/approvals",
                              json={"levels": [{"min_amount": 5000, "role": "boss"}]})
    assert chain.status_code == 422 and chain.json()["rule"] == "InvalidApprovalChain"


async def test_the_same_idempotency_key_answers_the_first_result(
    client: httpx.AsyncClient, service: Service
) -> None:
    body = {"customer_id": "c1", "title": "Once", "owner": "alice", "amount": 10}
    first = await client.post(BASE, json=body, headers={"Idempotency-Key": "k-1"})
    again = await client.post(BASE, json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other_tenant = await client.post(BASE, json=body, headers={"Idempotency-Key": "k-1",
                                                               **as_user("tenant-b")})
    assert other_tenant.json()["id"] != first.json()["id"]  # keys are per tenant
    changed = await client.post(BASE, json={**body, "amount": 11}, headers={"Idempotency-Key": "k-1"})
    assert changed.status_code == 422
    assert changed.json()["errors"][0]["field"] == "header.Idempotency-Key"

    oid = first.json()["id"]
    won = await client.post(f"{BASE}/{oid}/win", json={}, headers={"Idempotency-Key": "w"})
    won_again = await client.post(f"{BASE}/{oid}/win", json={}, headers={"Idempotency-Key": "w"})
    assert won.json() == won_again.json() and won_again.status_code == 200  # not a 409
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM erp_events WHERE originator_id = %s",
                                 (first.json()["id"],))
        assert (await cur.fetchone()) == (2,)  # opened, won: nothing twice


async def test_an_expired_idempotency_key_is_purged_and_a_repeat_is_a_new_request(
    client: httpx.AsyncClient, service: Service
) -> None:
    body = {"customer_id": "c1", "title": "Kept a while", "owner": "alice"}
    first = (await client.post(BASE, json=body, headers={"Idempotency-Key": "old"})).json()
    recent = (await client.post(BASE, json=body, headers={"Idempotency-Key": "recent"})).json()
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO idempotency_keys (tenant_id, key, fingerprint, aggregate_id, "
                           "version, created_at) VALUES ('tenant-a', 'inbound:an-old-event', 'f', %s, 1, "
                           "now() - interval '400 days')", (first["id"],))
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '169 hours' "
                           "WHERE key = 'old'")
        assert await purge_expired(conn, 168) == 1
        cur = await conn.execute("SELECT key FROM idempotency_keys WHERE key IN ('old', 'recent') "
                                 "OR key LIKE 'inbound:%' ORDER BY key")
        assert await cur.fetchall() == [("inbound:an-old-event",), ("recent",)]
    assert (await client.post(BASE, json=body, headers={"Idempotency-Key": "recent"})).json() == recent
    again = await client.post(BASE, json=body, headers={"Idempotency-Key": "old"})
    assert again.status_code == 201 and again.json()["id"] != first["id"]


async def test_concurrent_requests_with_one_key_create_one_opportunity(
    client: httpx.AsyncClient, service: Service
) -> None:
    import asyncio

    body = {"customer_id": "c9", "title": "Race", "owner": "bob", "amount": Decimal("1")}
    payload = {**body, "amount": 1}
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        before = await (await conn.execute("SELECT count(*) FROM erp_events")).fetchone()
    answers = await asyncio.gather(*(
        client.post(BASE, json=payload, headers={"Idempotency-Key": "race"}) for _ in range(6)
    ))
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM erp_events")
        assert before is not None and (await cur.fetchone()) == (before[0] + 1,)
