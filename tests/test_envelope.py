"""What other services receive: the integration guide's envelope, field for field."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from erp.bootstrap import Service
from streams import envelope as env
from tests.conftest import eventually

BASE = "/api/v1/crm/opportunities"


async def stream_messages(js: Any, count: int) -> list[Any]:
    async def all_there() -> bool:
        return bool((await js.stream_info("ERP")).state.messages >= count)

    await eventually(all_there)
    return [await js.get_msg("ERP", seq=seq) for seq in range(1, count + 1)]


async def test_opportunity_won_matches_the_integration_guide(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    opened = await client.post(BASE, json={"customer_id": "cust-77", "title": "ERP rollout",
                                           "owner": "alice"},
                               headers={"X-Correlation-ID": "deal-9"})
    oid = opened.json()["id"]
    won = await client.post(f"{BASE}/{oid}/win", json={"amount": 10000.00},
                            headers={"X-Correlation-ID": "deal-9"})
    assert won.status_code == 200

    messages = await stream_messages(js, won.json()["log_position"])  # the tenant's events come first
    message = messages[-1]
    assert message.subject == "erp.opportunity.won"
    body = json.loads(message.data)
    assert list(body) == ["event_id", "event_type", "tenant_id", "timestamp", "data"]
    assert body["event_type"] == "erp.opportunity.won"
    assert body["tenant_id"] == "tenant-a"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["timestamp"])
    assert body["data"] == {"opportunity_id": oid, "customer_id": "cust-77",
                            "amount": 10000.00, "currency": "KES"}
    assert b'"amount":10000.00' in message.data  # a JSON number, cents kept, never a string

    # event_id: a UUID derived from (aggregate id, version), so a republish keeps it.
    assert body["event_id"] == str(env.event_id(uuid.UUID(oid), 2))
    headers = message.headers
    assert headers["Nats-Msg-Id"] == body["event_id"]
    assert headers["Erp-Aggregate-Id"] == oid
    assert headers["Erp-Aggregate-Type"] == "opportunity"
    assert headers["Erp-Aggregate-Version"] == "2"
    assert headers["Erp-Log-Position"] == str(won.json()["log_position"])
    assert headers["Erp-Correlation-Id"] == "deal-9"
    assert headers["Erp-Causation-Id"] == won.headers["x-request-id"]
    assert headers["Erp-Schema-Version"] == "1"


async def test_every_event_goes_to_its_own_subject(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    first = (await client.post(BASE, json={"customer_id": "c", "title": "t", "owner": "o"})).json()
    second = (await client.post(BASE, json={"customer_id": "c", "title": "t", "owner": "o"})).json()
    await client.post(f"{BASE}/{first['id']}/stage", json={"stage": "proposal"})
    last = await client.post(f"{BASE}/{second['id']}/lose",
                             json={"reason": "price", "competitor": "Acme"})
    messages = (await stream_messages(js, last.json()["log_position"]))[-4:]
    assert [m.subject for m in messages] == [
        "erp.opportunity.opened", "erp.opportunity.opened",
        "erp.opportunity.stage_changed", "erp.opportunity.lost",
    ]
    lost = json.loads(messages[3].data)["data"]
    assert lost == {"opportunity_id": second["id"], "reason": "price",
                    "competitor": "Acme"}


@settings(max_examples=500)
@given(st.uuids(), st.integers(min_value=1, max_value=2**53))
def test_an_event_id_is_the_uuid5_of_its_aggregate_and_version(aggregate_id: uuid.UUID, version: int) -> None:
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "urn:erp-service:event")
    expected = uuid.uuid5(namespace, f"{aggregate_id}:{version}")
    assert env.event_id(aggregate_id, version) == expected
    assert env.event_id(str(aggregate_id), version) == expected
