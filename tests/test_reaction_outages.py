"""A tenant's treasury out of reach: its events are parked, not dropped, once JetStream's
deliveries run out, and the other tenants' treasuries are still called."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from erp.bootstrap import Endpoints, Service
from integrations.policy import CircuitState, Policy, Resilience
from tests.conftest import as_user, eventually, settings
from tests.test_peers import Answer, StubPeer
from tests.test_reactions import ANSWER, OPPORTUNITIES, configure_rest_treasury


@pytest.fixture
async def service(endpoints: Endpoints) -> AsyncIterator[Service]:
    running = Service(settings(inbound_max_deliver=2), endpoints)
    # One failed call opens a breaker, which asks to be tried again in a second; its clock
    # stands still, so it stays open for the whole test.
    running.peer_policy = Policy(Resilience(max_retries=0, failures_to_open=1, open_seconds=1.0),
                                 clock=lambda: 0.0)
    await running.start()
    yield running
    await running.stop()


async def test_an_open_breaker_parks_the_event_at_the_last_delivery_and_spares_other_treasuries(
    client: httpx.AsyncClient, service: Service
) -> None:
    assert service.reactions is not None
    with StubPeer() as down, StubPeer() as up:
        down.default = Answer(status=503)
        up.default = Answer(status=201, body=ANSWER)
        await configure_rest_treasury(service, "tenant-a", down.url)
        await configure_rest_treasury(service, "tenant-b", up.url)
        body = {"customer_id": "c", "title": "t", "owner": "o", "amount": 1000}

        mine = (await client.post(OPPORTUNITIES, json=body)).json()["id"]
        await client.post(f"{OPPORTUNITIES}/{mine}/win", json={})
        # delivery 1: treasury fails and its breaker opens; delivery 2, a second later and the
        # last: refused by the open breaker without a call, and parked
        async def parked() -> bool:
            return service.reactions is not None and service.reactions.parked == 1
        await eventually(parked, timeout=15)
        assert len(down.seen) == 1
        breakers = {h.peer: h.state for h in service.peer_policy.health()}
        assert breakers == {"treasury@" + down.url.removeprefix("http://"): CircuitState.OPEN}, breakers

        theirs = (await client.post(OPPORTUNITIES, json=body, headers=as_user("tenant-b"))).json()["id"]
        await client.post(f"{OPPORTUNITIES}/{theirs}/win", json={}, headers=as_user("tenant-b"))

        async def linked() -> bool:
            seen = (await client.get(f"{OPPORTUNITIES}/{theirs}", headers=as_user("tenant-b"))).json()
            return bool(seen.get("invoice_id") == "INV-REST-1")
        await eventually(linked, timeout=15)
        assert len(up.seen) == 1 and len(down.seen) == 1
        assert service.reactions.parked == 1
