"""The service as real `erp serve` processes on servers of a test's own, a stream of
commands against them, and what the event store, the stream and the read model hold.

Each test starts its own PostgreSQL and nats-server here (so stopping them disturbs no
other test) and kills the service for real; logs go to files in the test's data folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

import nats
from erp.bootstrap import Endpoints
from erp.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.conftest import AUDIENCE, ISSUER, ROOT, SECRET_KEYS, _public_key_file, as_user, read_stream

TENANT = "tenant-a"
OPPORTUNITIES = "/api/v1/crm/opportunities"
_runs = itertools.count()


@dataclass
class OwnServers:
    data_dir: Path
    postgres: EmbeddedPostgres
    nats: EmbeddedNats

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.postgres.url, self.nats.url)


@contextlib.contextmanager
def own_servers(name: str) -> Iterator[OwnServers]:
    """A PostgreSQL and a nats-server for one test, stopped and deleted afterwards."""
    data_dir = ROOT / ".erp-data" / f"reliability-{name}-{os.getpid()}-{next(_runs)}"
    shutil.rmtree(data_dir, ignore_errors=True)
    postgres = EmbeddedPostgres(data_dir / "postgres", database="erp", durable=False)
    nats_server = EmbeddedNats(data_dir / "nats")
    try:
        postgres.start()
        nats_server.start()
        yield OwnServers(data_dir, postgres, nats_server)
    finally:
        nats_server.stop()
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def service_environment(endpoints: Endpoints, data_dir: Path, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "ERP_DATABASE_URL": endpoints.database_url,
        "ERP_NATS_URL": endpoints.nats_url,
        "ERP_DATA_DIR": str(data_dir),
        "ERP_LOG_LEVEL": "warning",
        "ERP_JWT_PUBLIC_KEY": str(_public_key_file()),
        "ERP_JWT_ISSUER": ISSUER,
        "ERP_JWT_AUDIENCE": AUDIENCE,
        "ERP_SECRET_KEYS": SECRET_KEYS,
        "ERP_RELAY_IDLE_CATCH_UP_SECONDS": "1",
        **env,
    }


def register_tenant(servers: OwnServers, tenant: str = TENANT) -> None:
    """`erp tenants register`, as an operator would before the first command."""
    subprocess.run(
        [sys.executable, "-m", "erp", "tenants", "register", tenant, "--name", f"{tenant} Ltd"],
        env=service_environment(servers.endpoints, servers.data_dir), cwd=ROOT, check=True,
        capture_output=True, timeout=60,
    )


class ServiceProcess:
    """`erp serve` on a port of its own, kept across restarts so clients keep their URL."""

    def __init__(self, servers: OwnServers, name: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.log_path = servers.data_dir / f"{name}.log"
        self._env = service_environment(servers.endpoints, servers.data_dir, **env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "erp", "serve", "--port", str(self.port)],
                env=self._env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )

    async def ready(self, timeout: float = 30.0) -> None:
        """Waits for /readyz 200 (started: PostgreSQL and NATS reached; PostgreSQL reachable)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, (
                    f"{self.name} exited while starting:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} not ready within {timeout} s:\n{self.log_tail()}")

    async def readiness(self) -> dict[str, Any]:
        """/readyz's body, its status code under "code" and its headers under "headers"."""
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            response = await http.get("/readyz")
            found: dict[str, Any] = response.json() | {"code": response.status_code,
                                                       "headers": dict(response.headers)}
            return found

    async def metrics(self) -> str:
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            return (await http.get("/metrics")).text

    def kill(self) -> None:
        """SIGKILL: no shutdown, as a crash or the OOM killer would."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Attempt:
    """One request of the load: when it was sent, how long it took, and what came back."""

    title: str
    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no answer
    body: Any = None
    error: str = ""

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class CommandLoad:
    """Clients opening opportunities as fast as the service answers, each with a unique title
    that is also its Idempotency-Key. A connection refused is not an attempt (nothing was
    sent); the clients pause briefly and go on."""

    url: str
    prefix: str
    clients: int = 4
    timeout: float = 10.0
    attempts: list[Attempt] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def __aenter__(self) -> CommandLoad:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _client(self, number: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, headers=as_user(), timeout=self.timeout) as http:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                title = f"{self.prefix}-{number}-{n}"
                attempt = await send(http, title)
                if attempt is None:
                    await asyncio.sleep(0.05)
                    continue
                self.attempts.append(attempt)
                if not attempt.acknowledged:
                    await asyncio.sleep(0.02)

    @property
    def acknowledged(self) -> dict[str, str]:
        """title -> opportunity id, of every command answered 2xx."""
        return {a.title: a.body["id"] for a in self.attempts if a.acknowledged}

    @property
    def unanswered(self) -> list[str]:
        return [a.title for a in self.attempts if a.status is None]

    def statuses(self) -> Counter[int | None]:
        return Counter(a.status for a in self.attempts)


async def send(http: httpx.AsyncClient, title: str) -> Attempt | None:
    """One open-opportunity command; None when the connection was refused (nothing sent)."""
    started = time.monotonic()
    try:
        response = await http.post(
            OPPORTUNITIES, json={"customer_id": "c", "title": title, "owner": "o"},
            headers={"Idempotency-Key": title},
        )
    except httpx.ConnectError:
        return None
    except httpx.TransportError as error:
        return Attempt(title, started, time.monotonic() - started, None, error=type(error).__name__)
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Attempt(title, started, time.monotonic() - started, response.status_code, body)


async def stored_titles(database_url: str) -> dict[str, list[str]]:
    """title -> ids of the opportunities the event store holds with that title."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT convert_from(state, 'UTF8')::jsonb ->> 'title', originator_id::text FROM erp_events "
            "WHERE topic LIKE %s ORDER BY notification_id", ("%Opportunity.Opened",))
        found: dict[str, list[str]] = {}
        for title, aggregate_id in await cur.fetchall():
            found.setdefault(title, []).append(aggregate_id)
        return found


async def read_model_titles(database_url: str) -> dict[str, list[str]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT title, opportunity_id::text FROM opportunities")
        found: dict[str, list[str]] = {}
        for title, aggregate_id in await cur.fetchall():
            found.setdefault(title, []).append(aggregate_id)
        return found


async def stored_events(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM erp_events")).fetchone()
        assert row is not None
        return int(row[0])


async def log_head(database_url: str) -> int:
    """The last log position of the event store."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT coalesce(max(notification_id), 0) FROM erp_events")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def read_model_position(database_url: str, projection: str = "opportunities") -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT log_position FROM projection_checkpoints WHERE name = %s",
                                 (projection,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def streamed_titles(nats_url: str, count: int) -> dict[str, list[str]]:
    """title -> opportunity ids of the erp.opportunity.opened messages among the stream's first `count`."""
    nc = await nats.connect(nats_url)
    try:
        messages = await read_stream(nc.jetstream(), count)
    finally:
        await nc.close()
    found: dict[str, list[str]] = {}
    for msg in messages:
        if msg.subject == "erp.opportunity.opened":
            data = json.loads(msg.data)["data"]
            found.setdefault(data["title"], []).append(data["opportunity_id"])
    return found


async def stream_last_sequence(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info("ERP")).state.last_seq)
    finally:
        await nc.close()
