"""5. A three-node JetStream cluster: the `ERP` stream replicated three times loses nothing
when its leader is killed -9 while commands keep arriving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from nats.js.api import StreamConfig

import nats
from api.app import create_app
from erp.bootstrap import Endpoints, Service
from streams import envelope as env
from streams.jetstream import server_urls
from tests.conftest import (
    ROOT,
    as_user,
    eventually,
    read_stream,
    register_tenants,
    settings,
    stream_matches_event_store,
)
from tests.reliability.cluster import NatsCluster
from tests.reliability.conftest import Figures

OPPORTUNITIES = "/api/v1/crm/opportunities"
BEFORE_KILL = 300  # commands acknowledged before the leader dies
AFTER_KILL = 300  # and at least as many after, while the cluster fails over
WORKERS = 8


@dataclass
class Load:
    """Commands from a few concurrent clients: each opens an opportunity, and moves every
    other one it opened to another stage; every acknowledged event is kept."""

    http: httpx.AsyncClient
    acknowledged: list[tuple[str, int, int]] = field(default_factory=list)  # id, version, position
    refused: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(WORKERS)))

    async def _client(self, n: int) -> None:
        for i in range(1_000_000):
            await asyncio.sleep(0)  # an in-process request may never yield: let the test run
            if self.stop.is_set():
                return
            opened = await self._command(OPPORTUNITIES, {"customer_id": f"c{n}", "title": f"deal {n}-{i}",
                                                          "owner": f"owner{n}", "amount": 1000 + i})
            if opened is not None and i % 2:
                await self._command(f"{OPPORTUNITIES}/{opened}/stage", {"stage": "proposal"})

    async def _command(self, path: str, body: dict[str, Any]) -> str | None:
        response = await self.http.post(path, json=body)
        if response.status_code not in (200, 201):
            self.refused.append(f"{response.status_code} {response.text}")
            self.stop.set()
            return None
        answer = response.json()
        self.acknowledged.append((answer["id"], answer["version"], answer["log_position"]))
        return str(answer["id"])


async def stream_leader(js: Any) -> str:
    info = await js.stream_info("ERP")
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2, info.cluster
    return str(info.cluster.leader)


async def test_the_replicated_stream_loses_nothing_when_its_leader_is_killed_mid_load(
    database_url: str, figures: Figures
) -> None:
    cluster = NatsCluster(ROOT / ".erp-data" / f"cluster-{os.getpid()}")
    await asyncio.to_thread(cluster.start)
    try:
        nc = await nats.connect(server_urls(cluster.urls), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            await replicated_streams_can_be_made(nc.jetstream())
            service = Service(settings(stream_replicas=3), Endpoints(database_url, cluster.urls))
            await service.start()
            try:
                await register_tenants(service, "tenant-a")
                await _load_and_kill_the_leader(service, cluster, nc.jetstream(), figures)
            finally:
                await service.stop()
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
    finally:
        await asyncio.to_thread(cluster.stop)


async def replicated_streams_can_be_made(js: Any) -> None:
    """A new cluster elects its meta leader before it can place a replicated stream in good
    time (on a busy machine, later than nats-py's 5 s request timeout): until a trial one is made."""
    async def made() -> bool:
        try:
            await js.add_stream(StreamConfig(name="TRIAL", subjects=["trial.>"], num_replicas=3))
        except Exception:  # timeout: the cluster is still settling
            return False
        await js.delete_stream("TRIAL")
        return True

    await eventually(made, timeout=60, interval=0.5)


async def _load_and_kill_the_leader(service: Service, cluster: NatsCluster, js: Any,
                                    figures: Figures) -> None:
    database_url = service.endpoints.database_url
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://erp.test", headers=as_user(),
                                 timeout=30) as http:
        assert (await js.stream_info("ERP")).config.num_replicas == 3
        # treasury's stream on the same cluster: an invoice for this won deal comes after the kill
        await js.add_stream(StreamConfig(name="TREASURY", subjects=["treasury.>"], num_replicas=3))
        won = (await http.post(OPPORTUNITIES, json={"customer_id": "c", "title": "won", "owner": "o",
                                                     "amount": 500})).json()["id"]
        assert (await http.post(f"{OPPORTUNITIES}/{won}/win", json={})).status_code == 200
        load = Load(http)
        loading = asyncio.create_task(load.run())
        try:
            await eventually(lambda: _reached(load, BEFORE_KILL), timeout=60)
            assert service.relay is not None
            # the relay has published some of it already: the kill lands mid-publishing
            relay = service.relay

            async def publishing() -> bool:
                return relay.published_total > 0

            await eventually(publishing, timeout=30)
            leader = await stream_leader(js)
            head_at_kill = await _stored(database_url, positions=True)
            acknowledged_at_kill = len(load.acknowledged)
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill, leader)

            async def relay_resumed() -> bool:
                return relay.published_position > head_at_kill

            await eventually(lambda: _reached(load, acknowledged_at_kill + AFTER_KILL), timeout=60)
            await eventually(relay_resumed, timeout=60, interval=0.05)
            resumed_after = time.monotonic() - killed_at
        finally:
            load.stop.set()
            await loading
        assert load.refused == [], load.refused[:5]  # commands only need PostgreSQL
        new_leader = await eventually(lambda: _other_leader(js, leader), timeout=30)

        total = await _stored(database_url)
        acknowledged = len(load.acknowledged)
        assert total >= acknowledged + 1  # + the tenant's registration

        async def published_everything() -> bool:
            return bool((await js.stream_info("ERP")).state.last_seq >= total)

        await eventually(published_everything, timeout=60)
        for attempt in range(3):  # a consumer made right after the leader's death may time out
            try:
                await stream_matches_event_store(js, database_url, total)
                messages = await read_stream(js, total)
                break
            except nats.errors.TimeoutError:
                if attempt == 2:
                    raise
                await asyncio.sleep(2.0)
        ids = Counter(m.headers[env.MSG_ID] for m in messages)
        for aggregate_id, version, position in load.acknowledged:
            event_id = str(env.event_id(uuid.UUID(aggregate_id), version))
            assert ids[event_id] == 1, (aggregate_id, version, position)
            assert messages[position - 1].headers[env.LOG_POSITION] == str(position)

        latest: dict[str, int] = {won: 2}  # opened, won
        for aggregate_id, version, _ in load.acknowledged:
            latest[aggregate_id] = max(version, latest.get(aggregate_id, 0))
        differ: set[str] = set()

        async def projected() -> bool:
            rows = await _read_model(database_url)
            differ.clear()
            differ.update(k for k in latest.keys() | rows.keys() if latest.get(k) != rows.get(k))
            return not differ

        try:
            await eventually(projected, timeout=60)
        except AssertionError:
            raise AssertionError(f"the read model lost an update: {len(differ)} opportunities differ, "
                                 f"e.g. {sorted(differ)[:3]}") from None

        # every consumer of the service (inbound, reactions, webhooks) outlived the failover
        ended = [task.get_name() for task in service._tasks if task.done()]
        assert ended == [], f"background tasks ended during the failover: {ended}"
        invoice = {"event_id": str(uuid.uuid4()), "event_type": "treasury.invoice.created",
                   "tenant_id": "tenant-a", "timestamp": "2026-11-25T10:30:00Z",
                   "data": {"invoice_id": "INV-after-failover", "opportunity_id": won}}
        await js.publish("treasury.invoice.created", json.dumps(invoice).encode())

        async def invoiced() -> bool:
            view = (await http.get(f"{OPPORTUNITIES}/{won}")).json()
            return bool(view.get("invoice_id") == "INV-after-failover")

        await eventually(invoiced, timeout=30, interval=0.2)

        cluster.start_node(cluster.node(leader))  # the killed node comes back and catches up
        head = await _stored(database_url)  # with the invoice's link
        rejoined = await eventually(lambda: _replicas_current(js, head), timeout=60, interval=0.2)

    figures.record(
        "5. Three-node JetStream cluster",
        nodes=len(cluster.nodes),
        stream_replicas=3,
        commands_acknowledged=acknowledged,
        commands_before_the_kill=acknowledged_at_kill,
        commands_refused=len(load.refused),
        node_killed=f"{leader} (the ERP stream's leader), kill -9 mid-load",
        new_stream_leader=new_leader,
        relay_published_again_after_s=round(resumed_after, 2),
        events_checked=f"{total} in the stream once each, in log order, none missing "
                       f"({acknowledged} acknowledged commands' events among them)",
        read_model=f"{len(latest)} opportunities, each at its last acknowledged version",
        inbound_after_the_failover="a treasury invoice published after the kill linked to its deal",
        relay_resumes_after_refused_or_unacknowledged_publishes=relay.failures,
        projector_resubscribes=sum(p.resubscribes for p in service.projectors),
        killed_node_restarted=f"its replica current again ({rejoined})",
    )


async def _reached(load: Load, count: int) -> bool:
    if load.refused:
        raise AssertionError(f"a command was refused: {load.refused[0]}")
    return len(load.acknowledged) >= count


async def _stored(database_url: str, *, positions: bool = False) -> int:
    """How many events are stored: the stream sequence of the last (log positions have gaps
    where saves rolled back, as a clashing batch's do); with `positions`, the last log position."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT coalesce(max(notification_id), 0) FROM erp_events" if positions
                                 else "SELECT count(*) FROM erp_events")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def _other_leader(js: Any, killed: str) -> str | None:
    try:
        info = await js.stream_info("ERP")
    except Exception:  # no leader yet: the API has no one to answer
        return None
    leader = info.cluster.leader if info.cluster else None
    return str(leader) if leader and leader != killed else None


async def _read_model(database_url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT opportunity_id::text, version FROM opportunities")
        return {str(r[0]): int(r[1]) for r in await cur.fetchall()}


async def _replicas_current(js: Any, total: int) -> str | None:
    info = await js.stream_info("ERP")
    replicas = info.cluster.replicas or [] if info.cluster else []
    if info.state.last_seq == total and len(replicas) == 2 and all(r.current and not r.lag for r in replicas):
        return ", ".join(f"{r.name} lag {r.lag or 0}" for r in replicas)
    return None
