"""nats/permissions.conf on a real nats-server: the service runs with only its own rights,
and a peer service (treasury) publishes its own events and reads the ERP's, but can neither
publish another service's events nor touch the ERP's streams."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from nats.js.api import StreamConfig

import nats
from api.app import create_app
from erp.bootstrap import Endpoints, Service
from erp.embedded import EmbeddedNats, free_port
from tests.conftest import ROOT, as_user, eventually, register_tenants, settings, stream_matches_event_store
from tests.test_inbound_events import event

# Test fixtures only: passwords of a server that lives for one test.
PASSWORDS = {"ERP_NATS_PASSWORD": "erp-test-fixture", "TREASURY_NATS_PASSWORD": "treasury-test-fixture",
             "PLATFORM_NATS_PASSWORD": "platform-test-fixture"}
OPPORTUNITIES = "/api/v1/crm/opportunities"


@pytest.fixture
def guarded_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server with JetStream that includes nats/permissions.conf; yields host:port."""
    port = free_port()
    shutil.copy(ROOT / "nats" / "permissions.conf", tmp_path / "permissions.conf")
    (tmp_path / "server.conf").write_text(f"listen: 127.0.0.1:{port}\n"
                                          f"jetstream {{ store_dir: {tmp_path / 'js'} }}\n"
                                          "include permissions.conf\n")
    log = (tmp_path / "nats-server.log").open("wb")
    server = subprocess.Popen([EmbeddedNats.binary(), "-c", str(tmp_path / "server.conf")],
                              env=PASSWORDS, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "nats-server.log").read_text()) from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def url(user: str, address: str) -> str:
    return f"nats://{user}:{PASSWORDS[f'{user.upper()}_NATS_PASSWORD']}@{address}"


@pytest.fixture
async def guarded_service(guarded_nats: str, database_url: str) -> AsyncIterator[Service]:
    admin = await nats.connect(url("platform", guarded_nats))
    for name in ("TREASURY", "AUTH"):  # the platform's operators create each service's stream
        await admin.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    await admin.close()
    running = Service(settings(), Endpoints(database_url, url("erp", guarded_nats)))
    await running.start()
    yield running
    await running.stop()


async def test_each_service_publishes_its_own_events_only(
    guarded_service: Service, guarded_nats: str
) -> None:
    await register_tenants(guarded_service, "tenant-a")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(guarded_service)),
                                 base_url="http://erp.test", headers=as_user()) as client:
        opened = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                        "amount": 10})
        opportunity = opened.json()["id"]
        assert (await client.post(f"{OPPORTUNITIES}/{opportunity}/win", json={})).status_code == 200

        refusals: list[str] = []

        async def refused(error: Exception) -> None:
            refusals.append(str(error))

        treasury = await nats.connect(url("treasury", guarded_nats), error_cb=refused)
        try:
            js = treasury.jetstream(timeout=2)
            # it reads the ERP's events through a consumer of its own
            won = await js.pull_subscribe("erp.opportunity.won", durable="treasury-won", stream="ERP")
            messages = await won.fetch(1, timeout=10)
            assert opportunity in messages[0].data.decode()
            await messages[0].ack()
            # it publishes its own events, and the ERP (with only its own rights) handles them
            await js.publish("treasury.invoice.created", event(
                "treasury.invoice.created", {"invoice_id": "INV-P1", "opportunity_id": opportunity}))

            async def linked() -> Any:
                return (await client.get(f"{OPPORTUNITIES}/{opportunity}")).json().get("invoice_id")
            assert await eventually(linked) == "INV-P1"

            # another service's event: refused by the server, nothing stored
            await treasury.publish("auth.tenant.updated", event(
                "auth.tenant.updated", {"name": "tenant-a Ltd", "status": "suspended"}))
            with pytest.raises((nats.errors.TimeoutError, nats.js.errors.APIError)):
                await js.delete_stream("ERP")
            await treasury.flush()

            async def told() -> bool:
                return any('violation for publish to "auth.tenant.updated"' in said for said in refusals)
            await eventually(told)
        finally:
            await treasury.close()

        admin = await nats.connect(url("platform", guarded_nats))
        try:
            assert (await admin.jetstream().stream_info("AUTH")).state.messages == 0
            database_url = guarded_service.endpoints.database_url
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                stored = (await (await conn.execute("SELECT count(*) FROM erp_events")).fetchone() or (0,))[0]
            await stream_matches_event_store(admin.jetstream(), database_url, stored)  # not deleted
        finally:
            await admin.close()
        assert (await client.get(OPPORTUNITIES)).status_code == 200  # tenant-a not suspended
