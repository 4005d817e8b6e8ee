"""The one place where the service is wired: used by the server, the CLI and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from erp import api_keys, credentials, idempotency, inbound, schema
from erp.aggregate_cache import CacheFollower, CacheLoader
from erp.commands import CommandRunner
from erp.embedded import EmbeddedNats, EmbeddedPostgres
from erp.eventstore import (
    POOL_RECONNECT_SECONDS,
    POOL_WAIT_SECONDS,
    ErpEventStore,
    GroupCommitter,
    close_store,
    store_for,
)
from erp.settings import Settings
from integrations import webhooks
from integrations.policy import Policy
from integrations.reactions import TreasuryReactions
from integrations.transport import PeerTransport
from integrations.webhooks import WebhookDeliveries
from projections import references
from projections.base import Projection
from projections.opportunities import OpportunitiesProjection
from projections.payroll import PayrollProjection
from projections.positions import ReadModelPositions
from projections.purchase_orders import PurchaseOrdersProjection
from projections.runner import ProjectorGroup, ProjectorRunner, ensure_schema
from projections.tenancy import as_api_role, isolate_tenants
from projections.users import UsersProjection
from projections.work_orders import BomsProjection, WorkOrdersProjection
from streams.inbound import InboundConsumer, Subscription, ensure_dead_letter_stream
from streams.jetstream import connect, ensure_stream, until_settled
from streams.leadership import lead, stop_tasks
from streams.relay import Relay

log = structlog.get_logger("erp")


def all_projections() -> list[Projection]:
    return [OpportunitiesProjection(), BomsProjection(), WorkOrdersProjection(), PayrollProjection(),
            PurchaseOrdersProjection(), UsersProjection()]


async def ensure_schemas(conn: psycopg.AsyncConnection[Any]) -> None:
    """Every table, function and policy the service needs (an unchanged restart locks no table)."""
    for projection in all_projections():
        await ensure_schema(conn, projection)
    await credentials.ensure_schema(conn)
    async with conn.transaction():
        await conn.execute(schema.LOCK)
        await schema.apply_once(conn, "references", references.DDL)
        await schema.apply_once(conn, "webhooks", webhooks.DDL)
    await isolate_tenants(conn)
    await api_keys.ensure_schema(conn)


# A role that keeps failing retries every few seconds (streams/leadership.py); one that has
# not failed for this long is no longer reported as failing.
FAILING_SECONDS = 30.0


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    nats_url: str


class ServersUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def servers(settings: Settings, *, durable: bool = True) -> Iterator[Endpoints]:
    """The configured servers, or embedded ones under `settings.data_dir` for as long as needed.
    One process owns a data folder's embedded servers (a lock on the folder): another `erp`
    process started there meanwhile (a second `serve`, a `relay`) uses them as they run,
    instead of stopping them as the leftovers of a killed run."""
    with contextlib.ExitStack() as stack:
        database_url = settings.database_url
        nats_url = settings.nats_url
        data_dir = Path(settings.data_dir)
        if (database_url is None or nats_url is None) and not _own(stack, data_dir):
            database_url = database_url or EmbeddedPostgres.running_url(data_dir / "postgres")
            nats_url = nats_url or EmbeddedNats.running_url(data_dir / "nats")
            if database_url is None or nats_url is None:
                raise ServersUnavailable(f"another erp process owns the embedded servers of {data_dir}, "
                                         "and they are not running (yet): try again in a moment")
            log.info("using the embedded servers of another erp process", data=str(data_dir))
            yield Endpoints(database_url, nats_url)
            return
        if database_url is None:
            postgres = stack.enter_context(EmbeddedPostgres(data_dir / "postgres", durable=durable))
            database_url = postgres.url
            log.info("embedded PostgreSQL started", url=database_url, data=str(postgres.data_dir))
        if nats_url is None:
            nats_server = stack.enter_context(EmbeddedNats(data_dir / "nats"))
            nats_url = nats_server.url
            log.info("embedded nats-server started", url=nats_url, data=str(nats_server.data_dir))
        yield Endpoints(database_url, nats_url)


def _own(stack: contextlib.ExitStack, data_dir: Path) -> bool:
    """Whether this process now owns `data_dir`'s embedded servers (until `stack` closes);
    the lock goes with the process, so a killed owner's leftovers are stopped by the next."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = stack.enter_context((data_dir / "embedded-servers.lock").open("a"))
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass
class Service:
    """Everything a process of the service runs, started and stopped together."""

    settings: Settings
    endpoints: Endpoints
    store: ErpEventStore = field(init=False)
    committer: GroupCommitter = field(init=False)
    loader: CacheLoader | None = field(init=False, default=None)  # with the aggregate cache
    runner: CommandRunner = field(init=False)
    nc: NATS = field(init=False)
    js: JetStreamContext = field(init=False)
    read_pool: AsyncConnectionPool[Any] = field(init=False)
    keyring: credentials.Keyring | None = field(init=False, default=None)  # tier-1 master keys
    peer_policy: Policy = field(init=False, default_factory=Policy)  # breakers of the peers we call
    peer_transport: PeerTransport = field(init=False)
    reactions: TreasuryReactions | None = field(init=False, default=None)
    webhooks: WebhookDeliveries | None = field(init=False, default=None)
    positions: ReadModelPositions = field(init=False)
    relay: Relay | None = field(init=False, default=None)
    inbound: list[InboundConsumer] = field(init=False, default_factory=list)
    # As the tables' owner, for work beyond the API role: inbound effects, reactions,
    # webhooks and the tier-1 administration routes.
    owner_pool: AsyncConnectionPool[Any] = field(init=False)
    inbound_subscriptions: dict[str, list[Subscription]] = field(init=False, default_factory=dict)
    projectors: list[ProjectorRunner] = field(init=False, default_factory=list)
    leading: set[str] = field(init=False, default_factory=set)
    # role -> (when it last failed, monotonic; why): a role failing again and again is the
    # service's to report (`failing`), though the API still serves
    role_failures: dict[str, tuple[float, str]] = field(init=False, default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)

    async def start(self) -> None:
        s, url = self.settings, self.endpoints.database_url
        if s.secret_keys is not None or s.secret_keys_file is not None:
            self.keyring = credentials.Keyring.from_settings(s)  # a bad keyring stops the start
        self.store = await asyncio.to_thread(store_for, url, s.db_pool_size, s.snapshot_interval,
                                             s.aggregate_cache_size)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await ensure_schemas(conn)
        self.committer = GroupCommitter(self.store, url, s.group_commit_max)
        if self.store.repository.cache is not None:
            self.loader = CacheLoader(self.store, url)
            await self.loader.pool.open()
        self.runner = CommandRunner(self.store, self.committer, s.command_retries, self.loader)
        self.nc = await connect(self.endpoints.nats_url, name="erp-service")
        self.js = self.nc.jetstream(publish_async_max_pending=4000)
        await ensure_stream(self.js, s.stream, s.stream_replicas)
        self.read_pool = AsyncConnectionPool(  # reads as erp_api: row-level security applies
            s.api_database_url or url, min_size=1, max_size=s.db_pool_size, open=False,
            configure=None if s.api_database_url else as_api_role,
            kwargs={"autocommit": True, "application_name": "erp-api"},
            timeout=POOL_WAIT_SECONDS, reconnect_timeout=POOL_RECONNECT_SECONDS,
        )
        await self.read_pool.open()
        self.positions = ReadModelPositions(url)
        self._spawn("group-commit", self.committer.run())
        self._spawn("positions", self.positions.run())
        if self.store.repository.cache is not None:
            self._spawn("aggregate-cache", CacheFollower(self.store, url).run())
        self.owner_pool = AsyncConnectionPool(
            url, min_size=1, max_size=4, open=False,
            kwargs={"autocommit": True, "application_name": "erp-owner"},
            timeout=POOL_WAIT_SECONDS, reconnect_timeout=POOL_RECONNECT_SECONDS,
        )
        await self.owner_pool.open()
        # what each consumed event does, from the stream or a webhook
        self.inbound_subscriptions = inbound.subscriptions(self.runner, self.owner_pool)
        if s.run_inbound:
            await ensure_dead_letter_stream(self.js, s.dead_letter_stream, s.stream_replicas)
            for service, subs in self.inbound_subscriptions.items():
                consumer = InboundConsumer(
                    self.js, s.inbound_streams.get(service, service.upper()), f"erp-{service}", subs,
                    dead_letters=s.dead_letter_stream, max_deliver=s.inbound_max_deliver,
                    in_order=service == "auth",  # announcements must not overtake each other
                )
                self.inbound.append(consumer)
                self._spawn(f"inbound:{service}", consumer.run())
        self.peer_transport = PeerTransport(self.peer_policy)
        if s.run_reactions:
            self.reactions = TreasuryReactions(
                self.js, s.stream, self.runner, self.owner_pool, self.keyring, self.peer_transport,
                self.positions, s.dead_letter_stream, max_deliver=s.inbound_max_deliver)
            await until_settled(self.reactions.start, "the reactions' consumer")
            self._spawn("reactions:treasury", self.reactions.run())
            self.webhooks = WebhookDeliveries(self.js, s.stream, url, self.owner_pool, self.keyring,
                                              private_addresses=s.webhook_private_addresses,
                                              max_attempts=s.inbound_max_deliver)
            await until_settled(self.webhooks.start, "the webhook deliveries' consumer")
            self._spawn("webhooks", self.webhooks.run())
            self._spawn("webhook-endpoints", self.webhooks.follow())
        if s.run_relay:
            self.relay = Relay(
                self.store, url, self.nc, s.stream, batch_size=s.relay_batch_size,
                idle_catch_up_seconds=s.relay_idle_catch_up_seconds,
                ack_timeout_seconds=s.publish_ack_timeout_seconds,
            )
            self._spawn("relay", lead(url, f"relay:{s.stream}", self.relay.run,
                                      on_change=self._leading("relay"), on_failure=self._failed("relay")))
            self._spawn("idempotency-purge", idempotency.purge_expired_forever(self.owner_pool,
                                                                               s.idempotency_key_hours))
        if s.run_projectors:
            # One leader runs every projection, from one subscription (projections/runner.py).
            self.projectors = [ProjectorRunner(projection) for projection in all_projections()]
            group = ProjectorGroup(self.projectors, url, self.js, s.stream, batch_size=s.projector_batch_size)
            roles = [f"projector:{runner.projection.name}" for runner in self.projectors]
            self._spawn("projectors", lead(url, f"projectors:{s.stream}", group.run,
                                           on_change=self._leading(*roles),
                                           on_failure=self._failed("projectors")))

    def failing(self, within_seconds: float = FAILING_SECONDS) -> dict[str, str]:
        """The roles that failed in the last `within_seconds`, and why (the last error)."""
        now = time.monotonic()
        return {role: why for role, (at, why) in sorted(self.role_failures.items())
                if now - at < within_seconds}

    def _failed(self, role: str) -> Any:
        def failed(why: str) -> None:
            self.role_failures[role] = (time.monotonic(), why)
        return failed

    def _leading(self, *roles: str) -> Any:
        def changed(leading: bool) -> None:
            for role in roles:
                (self.leading.add if leading else self.leading.discard)(role)
        return changed

    def _spawn(self, name: str, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        with contextlib.suppress(Exception):
            await self.nc.drain()
        await self.read_pool.close()
        await self.owner_pool.close()
        if self.loader is not None:
            await self.loader.pool.close()
        await self.peer_transport.aclose()
        await asyncio.to_thread(close_store, self.store)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task crashed", task=task.get_name(), error=repr(task.exception()))
