"""Real PostgreSQL and nats-server for the tests.

With ERP_DATABASE_URL / ERP_NATS_URL set, those servers are used; otherwise the
suite starts embedded ones on free ports under .erp-data/ and removes them after.
Each test gets a database of its own and an empty ERP stream.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nats.js.errors import NotFoundError

import nats
from api.app import create_app
from erp.bootstrap import Endpoints, Service
from erp.commands import CommandContext, tenancy
from erp.credentials import new_key
from erp.embedded import EmbeddedNats, EmbeddedPostgres
from erp.eventstore import EventMetadata
from erp.identity import mint
from erp.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
_databases = itertools.count()


@pytest.fixture(scope="session")
def servers() -> Iterator[Endpoints]:
    database_url = os.environ.get("ERP_DATABASE_URL")
    nats_url = os.environ.get("ERP_NATS_URL")
    data_dir = ROOT / ".erp-data" / f"tests-{os.getpid()}"
    started: list[EmbeddedPostgres | EmbeddedNats] = []
    try:
        if not database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres", database="postgres", durable=False)
            database_url = postgres.start()
            started.append(postgres)
        if not nats_url:
            nats_server = EmbeddedNats(data_dir / "nats")
            nats_url = nats_server.start()
            started.append(nats_server)
        yield Endpoints(database_url, nats_url)
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def database_url(servers: Endpoints) -> Iterator[str]:
    name = f"erp_test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(servers.database_url, name)
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def endpoints(servers: Endpoints, database_url: str) -> Endpoints:
    """A fresh database and no ERP stream yet (the service creates it)."""
    nc = await nats.connect(servers.nats_url)
    try:
        for stream in ("ERP", "ERP_DLQ", "ERP_REPLAY", *Settings().inbound_streams.values()):
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()
    return Endpoints(database_url, servers.nats_url)


# Test fixture keys only: the "auth service" of the suite, made fresh for each run.
ISSUER = "https://auth.test"
AUDIENCE = "erp-service"
AUTH_KEY = ec.generate_private_key(ec.SECP256R1())
# Unique per run (a pid alone is reused: a later run would trust an earlier run's key), and
# removed at exit.
_PUBLIC_KEY_FILE = ROOT / ".erp-data" / f"test-auth-key-{os.getpid()}-{uuid.uuid4().hex[:12]}.pem"
atexit.register(lambda: _PUBLIC_KEY_FILE.unlink(missing_ok=True))


def _public_key_file() -> Path:
    if not _PUBLIC_KEY_FILE.exists():
        _PUBLIC_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        _PUBLIC_KEY_FILE.write_bytes(AUTH_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return _PUBLIC_KEY_FILE


SECRET_KEYS = f"test1:{new_key()}"  # a test fixture master key, made fresh for each run
EVERYTHING = ("erp.superuser",)


def token(tenant: str = "tenant-a", roles: tuple[str, ...] = EVERYTHING, subject: str = "user-1",
          **claims: Any) -> str:
    return mint(AUTH_KEY, tenant_id=tenant, subject=subject, roles=roles, issuer=ISSUER,
                audience=AUDIENCE, **claims)


def as_user(tenant: str = "tenant-a", roles: tuple[str, ...] = EVERYTHING, subject: str = "user-1",
            **headers: str) -> dict[str, str]:
    """Request headers of a signed-in user of `tenant` holding `roles`."""
    return {"Authorization": f"Bearer {token(tenant, roles, subject)}", **headers}


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"relay_idle_catch_up_seconds": 1.0, "jwt_public_key": _public_key_file(),
                            "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "secret_keys": SECRET_KEYS,
                            "webhook_private_addresses": True}  # the receivers of the tests are local
    base.update(overrides)
    return Settings(**base)


async def register_tenants(service: Service, *tenants: str) -> None:
    for tenant in tenants:
        ctx = CommandContext(tenant, EventMetadata(tenant, f"register-{tenant}", f"register-{tenant}"))
        await tenancy.register(service.runner, ctx, name=f"{tenant} Ltd")


@pytest.fixture
async def service(endpoints: Endpoints) -> AsyncIterator[Service]:
    running = Service(settings(), endpoints)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """Signed in as user-1 of tenant-a with every role; tenant-a and tenant-b are registered."""
    await register_tenants(service, "tenant-a", "tenant-b")
    app = create_app(service)  # the fixture runs the service; the app's lifespan is not used
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://erp.test", headers=as_user(),
    ) as http:
        yield http


@pytest.fixture
async def js(servers: Endpoints) -> AsyncIterator[Any]:
    nc = await nats.connect(servers.nats_url)
    yield nc.jetstream()
    await nc.close()


def worker(command: str, endpoints: Endpoints, **env: str) -> subprocess.Popen[bytes]:
    """Starts `erp relay` or `erp project` as a separate process (to kill it for real)."""
    environment = {
        **os.environ,
        "ERP_DATABASE_URL": endpoints.database_url,
        "ERP_NATS_URL": endpoints.nats_url,
        "ERP_LOG_LEVEL": "warning",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "erp", command], env=environment, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


async def eventually(check: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Awaits `check()` until it returns a truthy value; fails with the last value after timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"not reached within {timeout} s; last value: {last!r}")


def new_id() -> str:
    return str(uuid.uuid4())


def record_history(database_url: str, opportunities: int, *, tenant: str = "tenant-a") -> int:
    """Stores `opportunities` opportunities of 1 to 3 events each, straight into the event
    store in batches; answers the number of events."""
    from decimal import Decimal

    from aggregates.opportunity import Opportunity
    from erp.eventstore import EventMetadata, stamp, store_for

    store = store_for(database_url, 2)
    events = 0
    try:
        for start in range(0, opportunities, 500):
            batch = []
            for i in range(start, min(start + 500, opportunities)):
                o = Opportunity.open(tenant_id=tenant, customer_id=f"c{i}", title=f"deal {i}",
                                     owner=f"owner{i % 7}")
                if i % 3:
                    o.change_stage("proposal")
                if i % 3 == 2:
                    o.win(Decimal(i + 1))
                stamp(o, EventMetadata(tenant, f"corr-{i}", f"cause-{i}"))
                events += len(o.pending_events)
                batch.append(o)
            store.save(*batch)
    finally:
        store.close()
    return events


async def stream_matches_event_store(js: Any, database_url: str, total: int) -> None:
    """The stream holds every stored event once, in log order, with no gap."""
    from streams import envelope as env

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT notification_id, originator_id, originator_version FROM erp_events "
            "ORDER BY notification_id"
        )
        stored = await cur.fetchall()
    assert len(stored) == total
    info = await js.stream_info("ERP")
    assert info.state.messages == total, "a duplicate or a missing event"
    assert (info.state.first_seq, info.state.last_seq) == (1, total)
    published = await read_stream(js, total)
    for seq, ((position, aggregate_id, version), msg) in enumerate(
        zip(stored, published, strict=True), start=1
    ):
        assert msg.metadata.sequence.stream == seq
        assert msg.headers["Nats-Msg-Id"] == str(env.event_id(aggregate_id, version)), seq
        assert msg.headers["Erp-Log-Position"] == str(position), seq


async def read_stream(js: Any, count: int) -> list[Any]:
    """The first `count` messages of the ERP stream, in order."""
    received: list[Any] = []
    done = asyncio.Event()

    async def keep(msg: Any) -> None:
        received.append(msg)
        if len(received) >= count:
            done.set()

    sub = await js.subscribe("erp.>", stream="ERP", cb=keep, ordered_consumer=True)
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await sub.unsubscribe()
    return received[:count]
