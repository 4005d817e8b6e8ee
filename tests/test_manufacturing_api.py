"""Manufacturing through HTTP, JetStream and the read models: bills of materials in versions,
work orders from release to completion, the rules that refuse, and idempotent commands."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from erp.bootstrap import Service, all_projections
from tests.conftest import as_user, read_stream

BOMS = "/api/v1/manufacturing/boms"
WORK_ORDERS = "/api/v1/manufacturing/work-orders"

# One cake: flour and sugar by weight and a box; 5 % process loss, 10 % overhead, KES 2 labour.
CAKE: dict[str, Any] = {
    "items": [
        {"item_id": "flour", "quantity_per_unit": 0.25, "unit": "kg"},
        {"item_id": "sugar", "quantity_per_unit": 0.1, "unit": "kg"},
        {"item_id": "box", "quantity_per_unit": 1, "unit": "pcs"},
    ],
    "process_loss_percent": 5,
    "overhead_percent": 10,
    "labour_cost_per_unit": 2,
}


@pytest.fixture(autouse=True)
async def projected(service: Service) -> AsyncIterator[None]:
    """After each test, lets every projector apply the last event before the service stops.

    Stopping while a delivery lands can hang: on Python 3.11, `asyncio.wait_for` in the
    projector's loop (projections/runner.py) swallows the cancellation when the awaited
    message arrives at the same moment (CPython gh-86296).
    """
    yield
    head = await asyncio.to_thread(service.store.recorder.max_notification_id)
    for projection in all_projections():
        await service.positions.wait(projection.name, head or 0, 10.0)


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None,
               **headers: str) -> Any:
    response = await client.post(path, json=body if body is not None else {}, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def refused(client: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None) -> Any:
    """The rule that refused the command, with its status."""
    response = await client.post(path, json=body if body is not None else {})
    assert response.status_code in (409, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.status_code, response.json()["rule"]


async def work_order(client: httpx.AsyncClient, path: str, position: int) -> Any:
    response = await client.get(path, params={"min_position": position})
    assert response.status_code == 200, response.text
    return response.json()


async def started(client: httpx.AsyncClient, planned: float = 100, product: str = "cake") -> str:
    """A work order in progress, released with the product's latest bill."""
    wid: str = (await post(client, WORK_ORDERS, {"product_id": product, "planned_quantity": planned}))["id"]
    await post(client, f"{WORK_ORDERS}/{wid}/release")
    await post(client, f"{WORK_ORDERS}/{wid}/start")
    return wid


async def test_a_work_order_runs_from_bill_to_completion(
    client: httpx.AsyncClient, js: Any
) -> None:
    bom = await post(client, f"{BOMS}/cake/versions", CAKE)
    created = await post(client, WORK_ORDERS, {"product_id": "cake", "planned_quantity": 100})
    wid = created["id"]
    one = f"{WORK_ORDERS}/{wid}"
    await post(client, f"{one}/release")
    await post(client, f"{one}/start")
    for item, quantity, unit_cost in (("flour", 25, 80), ("sugar", 10, 150), ("box", 98, 12)):
        await post(client, f"{one}/consume", {"item_id": item, "quantity": quantity, "unit_cost": unit_cost})
    produced = await post(client, f"{one}/produce", {"quantity": 96, "scrap_quantity": 2})

    # In progress: consumed vs required, yield, and costs estimated by the order's own rules.
    view = await work_order(client, one, produced["log_position"])
    assert (view["status"], view["bom_id"], view["bom_version"]) == ("in_progress", bom["id"], 1)
    materials = [(m["item_id"], m["required_quantity"], m["consumed_quantity"], m["remaining_quantity"],
                  m["unit"]) for m in view["materials"]]
    assert materials == [("flour", 25, 25, 0, "kg"), ("sugar", 10, 10, 0, "kg"), ("box", 100, 98, 2, "pcs")]
    assert view["production_yield"] == 0.96 and view["scrap_quantity"] == 2
    estimate = {k: view[k] for k in ("materials_cost", "labour_cost", "overhead_cost", "total_cost",
                                     "unit_cost")}
    # 2000 + 1500 + 1176 materials; 96 x 2 standard labour; 10 % of 4868 overhead; / 96.
    assert estimate == {"materials_cost": 4676, "labour_cost": 192, "overhead_cost": 486.80,
                        "total_cost": 5354.80, "unit_cost": 55.78}

    done = await post(client, f"{one}/complete")
    view = await work_order(client, one, done["log_position"])
    assert view["status"] == "completed" and view["completed_at"] is not None
    assert {k: view[k] for k in estimate} == estimate  # the Completed event's figures agree
    assert view["version"] == done["version"] == 8

    listed = (await client.get(WORK_ORDERS, params={"status": "completed"})).json()["items"]
    assert [w["work_order_id"] for w in listed] == [wid]

    total = (await js.stream_info("ERP")).state.messages
    messages = {m.subject: m for m in await read_stream(js, total)}
    start = json.loads(messages["erp.work_order.started"].data)
    assert start["tenant_id"] == "tenant-a"
    assert start["data"]["work_order_id"] == wid and start["data"]["bom_version"] == 1
    assert start["data"]["materials"] == [
        {"item_id": "flour", "required_quantity": 25.0, "unit": "kg"},
        {"item_id": "sugar", "required_quantity": 10.0, "unit": "kg"},
        {"item_id": "box", "required_quantity": 100.0, "unit": "pcs"},
    ]
    completion = json.loads(messages["erp.work_order.completed"].data)["data"]
    assert (completion["product_id"], completion["planned_quantity"], completion["produced_quantity"],
            completion["scrap_quantity"], completion["unit_cost"]) == ("cake", 100, 96, 2, 55.78)
    assert messages["erp.work_order.completed"].headers["Erp-Aggregate-Id"] == wid


async def test_bills_keep_their_versions_and_an_order_pins_the_one_asked_for(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post(f"{BOMS}/cake/versions", json=CAKE)
    assert first.status_code == 201 and first.headers["location"] == f"{BOMS}/cake"
    richer = {**CAKE, "items": [*CAKE["items"], {"item_id": "icing", "quantity_per_unit": 0.05,
                                                  "unit": "kg"}]}
    second = await post(client, f"{BOMS}/cake/versions", richer)
    assert second["id"] == first.json()["id"] and second["version"] == 3

    bill = (await client.get(f"{BOMS}/cake", params={"min_position": second["log_position"]})).json()
    assert (bill["product_id"], bill["latest_version"]) == ("cake", 2)
    assert [[i["item_id"] for i in v["items"]] for v in bill["versions"]] == [
        ["flour", "sugar", "box"], ["flour", "sugar", "box", "icing"]]
    assert bill["versions"][0]["labour_cost_per_unit"] == 2
    using_icing = (await client.get(BOMS, params={"item_id": "icing"})).json()["items"]
    assert [b["product_id"] for b in using_icing] == ["cake"]

    pinned = (await post(client, WORK_ORDERS, {"product_id": "cake", "planned_quantity": 8}))["id"]
    released = await post(client, f"{WORK_ORDERS}/{pinned}/release", {"bom_version": 1})
    latest = (await post(client, WORK_ORDERS, {"product_id": "cake", "planned_quantity": 8}))["id"]
    last = await post(client, f"{WORK_ORDERS}/{latest}/release")
    old = await work_order(client, f"{WORK_ORDERS}/{pinned}", released["log_position"])
    new = await work_order(client, f"{WORK_ORDERS}/{latest}", last["log_position"])
    assert (old["bom_version"], [m["item_id"] for m in old["materials"]]) == (1, ["flour", "sugar", "box"])
    assert (new["bom_version"], new["materials"][-1]) == (2, {
        "item_id": "icing", "unit": "kg", "quantity_per_unit": 0.05, "required_quantity": 0.4,
        "consumed_quantity": 0, "remaining_quantity": 0.4, "consumed_cost": 0})

    draft = (await post(client, WORK_ORDERS, {"product_id": "cake", "planned_quantity": 1}))["id"]
    assert await refused(client, f"{WORK_ORDERS}/{draft}/release", {"bom_version": 3}) == (
        409, "UnknownBomVersion")
    no_bill = (await post(client, WORK_ORDERS, {"product_id": "bread", "planned_quantity": 1}))["id"]
    assert await refused(client, f"{WORK_ORDERS}/{no_bill}/release") == (409, "UnknownBomVersion")
    twice = {"items": [CAKE["items"][0], CAKE["items"][0]]}
    assert await refused(client, f"{BOMS}/cake/versions", twice) == (422, "DuplicateItem")


async def test_production_and_consumption_stay_within_the_tenants_allowances(
    client: httpx.AsyncClient,
) -> None:
    await post(client, f"{BOMS}/cake/versions", CAKE)
    wid = await started(client, planned=10)
    one = f"{WORK_ORDERS}/{wid}"
    assert await refused(client, f"{one}/produce", {"quantity": 10.001}) == (409, "OverProduction")
    assert await refused(client, f"{one}/consume", {"item_id": "flour", "quantity": 2.6, "unit_cost": 1}) == (
        409, "OverConsumption")
    assert await refused(client, f"{one}/consume", {"item_id": "salt", "quantity": 1, "unit_cost": 1}) == (
        422, "ItemNotInBom")

    await post(client, "/api/v1/settings/tolerances", {
        "over_receipt_percent": 0, "over_production_percent": 10, "over_consumption_percent": 20})
    await post(client, f"{one}/produce", {"quantity": 11})
    # 11 made need 11 x 0.25 kg of flour: 2.75, and 20 % over that
    await post(client, f"{one}/consume", {"item_id": "flour", "quantity": 3.3, "unit_cost": 1})
    assert await refused(client, f"{one}/produce", {"quantity": 0.001}) == (409, "OverProduction")
    a_gram_more = {"item_id": "flour", "quantity": 0.001, "unit_cost": 1}
    assert await refused(client, f"{one}/consume", a_gram_more) == (409, "OverConsumption")


async def test_completion_needs_the_planned_quantity_and_then_forbids_cancelling(
    client: httpx.AsyncClient,
) -> None:
    await post(client, f"{BOMS}/cake/versions", CAKE)
    wid = await started(client, planned=100)
    one = f"{WORK_ORDERS}/{wid}"
    await post(client, f"{one}/produce", {"quantity": 94})  # 94 + 5 expected loss < 100
    assert await refused(client, f"{one}/complete") == (409, "ProductionIncomplete")
    await post(client, f"{one}/produce", {"quantity": 1})
    await post(client, f"{one}/complete")
    assert await refused(client, f"{one}/cancel", {"reason": "too late"}) == (409, "AlreadyCompleted")
    closed = await post(client, f"{one}/close")
    view = await work_order(client, one, closed["log_position"])
    assert (view["status"], view["produced_quantity"], view["production_yield"]) == ("closed", 95, 0.95)
    assert view["closed_at"] is not None and view["cancel_reason"] is None


async def test_stopping_labour_and_cancelling(client: httpx.AsyncClient) -> None:
    await post(client, f"{BOMS}/cake/versions", CAKE)
    wid = await started(client, planned=10)
    one = f"{WORK_ORDERS}/{wid}"
    stopped = await post(client, f"{one}/stop", {"reason": "oven broke"})
    view = await work_order(client, one, stopped["log_position"])
    assert (view["status"], view["stop_reason"]) == ("stopped", "oven broke")
    assert await refused(client, f"{one}/produce", {"quantity": 1}) == (409, "NotInProgress")

    await post(client, f"{one}/resume")
    await post(client, f"{one}/produce", {"quantity": 4})
    # Actual labour replaces the standard labour cost: 3 h at 500, not 4 x 2.
    await post(client, f"{one}/labour", {"hours": 3, "rate": 500})
    # Goods were produced: cancelling would leave them unaccounted; closing short books them.
    assert await refused(client, f"{one}/cancel", {"reason": "order withdrawn"}) == (409, "StockMoved")
    await post(client, f"{one}/stop", {"reason": "order withdrawn"})
    closed = await post(client, f"{one}/close")
    view = await work_order(client, one, closed["log_position"])
    assert (view["status"], view["produced_quantity"], view["production_yield"]) == ("closed", 4, 0.4)
    assert (view["labour_hours"], view["labour_cost"], view["overhead_cost"], view["total_cost"],
            view["unit_cost"]) == (3, 1500, 150, 1650, 412.5)
    assert await refused(client, f"{one}/cancel") == (409, "AlreadyCompleted")

    other = f"{WORK_ORDERS}/{await started(client, planned=10)}"  # nothing consumed or produced yet
    await post(client, f"{other}/stop", {"reason": "oven broke"})
    cancelled = await post(client, f"{other}/cancel", {"reason": "order withdrawn"})
    view = await work_order(client, other, cancelled["log_position"])
    assert (view["status"], view["cancel_reason"], view["stop_reason"]) == (
        "cancelled", "order withdrawn", "oven broke")  # why it stopped stays on record
    assert await refused(client, f"{other}/cancel") == (409, "AlreadyCancelled")


async def test_the_same_idempotency_key_answers_the_first_result(
    client: httpx.AsyncClient, service: Service
) -> None:
    await post(client, f"{BOMS}/cake/versions", CAKE)
    wid = await started(client, planned=10)
    consumption = {"item_id": "flour", "quantity": 1.5, "unit_cost": 80}
    first = await client.post(f"{WORK_ORDERS}/{wid}/consume", json=consumption,
                              headers={"Idempotency-Key": "scan-17"})
    again = await client.post(f"{WORK_ORDERS}/{wid}/consume", json=consumption,
                              headers={"Idempotency-Key": "scan-17"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    other = await client.post(f"{WORK_ORDERS}/{wid}/consume", json={**consumption, "quantity": 2},
                              headers={"Idempotency-Key": "scan-17"})
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "header.Idempotency-Key"

    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM erp_events WHERE originator_id = %s", (wid,))
        assert (await cur.fetchone()) == (4,)  # created, released, started, consumed once
    view = await work_order(client, f"{WORK_ORDERS}/{wid}", first.json()["log_position"])
    assert (view["materials"][0]["consumed_quantity"], view["materials_cost"]) == (1.5, 120)


async def test_another_tenants_work_order_and_bill_are_not_found(client: httpx.AsyncClient) -> None:
    bom = await post(client, f"{BOMS}/cake/versions", CAKE)
    created = await post(client, WORK_ORDERS, {"product_id": "cake", "planned_quantity": 5})
    wid, other = created["id"], as_user("tenant-b")
    params = {"min_position": created["log_position"]}
    assert (await client.post(f"{WORK_ORDERS}/{wid}/release", json={}, headers=other)).status_code == 404
    assert (await client.get(f"{WORK_ORDERS}/{wid}", params=params, headers=other)).status_code == 404
    assert (await client.get(WORK_ORDERS, params=params, headers=other)).json()["items"] == []
    assert (await client.get(f"{BOMS}/cake", params=params, headers=other)).status_code == 404
    assert (await client.get(f"{WORK_ORDERS}/{uuid.uuid4()}")).status_code == 404
    # The same product in another tenant is another bill.
    theirs = await post(client, f"{BOMS}/cake/versions", CAKE, **other)
    assert theirs["id"] != bom["id"] and theirs["version"] == 2


async def test_bad_fields_are_named(client: httpx.AsyncClient) -> None:
    response = await client.post(WORK_ORDERS, json={"product_id": "cake", "planned_quantity": 1.0001,
                                                    "colour": "red"})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"body.planned_quantity", "body.colour"}
    response = await client.post(f"{BOMS}/cake/versions", json={**CAKE, "process_loss_percent": 100})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.process_loss_percent"
    wid = (await post(client, WORK_ORDERS, {"product_id": "cake", "planned_quantity": 1}))["id"]
    response = await client.post(f"{WORK_ORDERS}/{wid}/start", json={"now": True})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body.now"
    assert await refused(client, f"{WORK_ORDERS}/{wid}/start") == (409, "NotReleased")
    empty = await client.post(f"{WORK_ORDERS}/{wid}/cancel")  # no body at all: no reason given
    assert empty.status_code == 200, empty.text


async def test_a_product_named_in_the_path_is_the_one_named_in_bodies(client: httpx.AsyncClient) -> None:
    """Spaces around a product id are dropped in the path as in the bodies: " cake " is cake."""
    published = await post(client, f"{BOMS}/%20cake%20/versions", CAKE)
    bill = await client.get(f"{BOMS}/cake", params={"min_position": published["log_position"]})
    assert bill.status_code == 200 and bill.json()["product_id"] == "cake", bill.text
    await started(client, planned=10)  # a work order for "cake" finds the bill
