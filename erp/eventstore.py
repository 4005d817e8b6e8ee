"""The event store (eventsourcing on PostgreSQL) and the group committer in front of it.

The library serialises writers with a table lock and commits once per save, so one
save per command caps throughput at a few hundred commands a second. The group
committer saves every command that is waiting in one transaction and still answers
each command on its own; a batch that clashes on a version is saved again one
command at a time so only the loser sees the clash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

import structlog
from eventsourcing.application import Application, project_aggregate
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, JSONTranscoder, StoredEvent, Transcoder
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresFactory
from psycopg_pool import AsyncConnectionPool

from erp import schema
from erp.idempotency import ErpRecorder, IdempotencyRecord, retried_unless_unreachable
from erp.snapshots import TypedSnapshot
from erp.transcoding import MsgspecJSONTranscoder

log = structlog.get_logger("erp.eventstore")

EVENTS_TABLE = "erp_events"  # the application name "ERP" gives this table and NOTIFY channel


class VersionConflict(Exception):
    """Another command changed the aggregate first."""


class Overtaken(VersionConflict):
    """A command of this process on the same aggregate was saved after this one was decided:
    deciding again is bound to make progress."""


@dataclass(frozen=True)
class Saved:
    aggregate_id: UUID
    version: int
    position: int  # notification id (global log position) of the last event saved


@dataclass(frozen=True)
class EventMetadata:
    tenant_id: str
    correlation_id: str
    causation_id: str
    actor: str = ""  # who asked: a user id, or service:<name> (empty for internal work)

    def as_dict(self) -> dict[str, str]:
        found = {
            "tenant_id": self.tenant_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        }
        if self.actor:
            found["actor"] = self.actor
        return found


def stamp(aggregate: Aggregate, metadata: EventMetadata) -> None:
    """Puts the command's metadata on each pending event, where the mapper stores it.

    It is not a field of the domain events (the domain knows nothing of requests):
    the library stores an event's whole `__dict__` and passes only the decorated
    method's parameters back when it applies the event.
    """
    for pending in aggregate.pending_events:
        object.__setattr__(pending, "metadata", metadata.as_dict())


def event_metadata(domain_event: object) -> dict[str, str]:
    found = vars(domain_event).get("metadata")
    return found if isinstance(found, dict) else {}


# With the database down, a request waiting this long for a pooled connection is answered
# 503 (every pool of the service; the pools' default is 30 s).
POOL_WAIT_SECONDS = 2
# A pool that cannot reconnect gives up after this long (its attempts back off from 1 s,
# doubling) and tries again at the next request: the default, 5 minutes of backoff, can
# keep the service down for about as long as the outage lasted once the database is back.
POOL_RECONNECT_SECONDS = 3.0


def eventsourcing_env(database_url: str, pool_size: int) -> dict[str, str]:
    url = urlsplit(database_url)
    return {
        "PERSISTENCE_MODULE": "erp.eventstore:ErpPostgresFactory",
        "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "postgres",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(pool_size),
        "POSTGRES_CONNECT_TIMEOUT": str(POOL_WAIT_SECONDS),  # the wait for a pooled connection
        "CREATE_TABLE": "y",
        "APPLICATION_RECORDER_TOPIC": "erp.idempotency:ErpRecorder",
    }


class AggregateRecorder(schema.CreatedOnce, PostgresAggregateRecorder):
    """The library's recorder of aggregate events (snapshots), answering at once when the
    database is unreachable, as the event store's own recorder does (erp/idempotency.py)."""

    insert_events = retried_unless_unreachable(PostgresAggregateRecorder.insert_events)
    select_events = retried_unless_unreachable(PostgresAggregateRecorder.select_events)


class ErpPostgresFactory(PostgresFactory):
    aggregate_recorder_class = AggregateRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.datastore.pool.reconnect_timeout = POOL_RECONNECT_SECONDS


class ErpEventStore(Application[UUID]):
    name = "ERP"

    def construct_transcoder(self) -> Transcoder:
        transcoder: JSONTranscoder = MsgspecJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def take_snapshot(self, aggregate_id: UUID, version: int | None = None,
                      projector_func: Any = project_aggregate) -> None:
        """As the library does, with a snapshot that keeps the state's types."""
        assert self.snapshots is not None
        aggregate = self.repository.get(aggregate_id, version=version, projector_func=projector_func)
        self.snapshots.put([TypedSnapshot.take(aggregate)])


SNAPSHOT_INTERVAL = 100  # events between snapshots: an aggregate loads from its latest one


def aggregate_classes() -> list[type[Aggregate]]:
    from aggregates import (
        bom,
        employee,
        numbering,
        opportunity,
        payroll_run,
        purchase_order,
        tenant_settings,
        user_reference,
        work_order,
    )

    return [bom.BillOfMaterials, employee.Employee, numbering.DocumentSeries, opportunity.Opportunity,
            payroll_run.PayrollRun, payroll_run.PayrollPeriod, purchase_order.PurchaseOrder,
            tenant_settings.TenantSettings, user_reference.UserReference, work_order.WorkOrder]


class CommitterStopped(Exception):
    """The service is stopping; the command's outcome is unknown (retry it)."""


@dataclass
class _Waiting:
    """One command's aggregates, saved together or not at all."""

    aggregates: tuple[Aggregate, ...]
    answer: asyncio.Future[list[Saved]]
    idempotency: IdempotencyRecord | None = None

    @property
    def ids(self) -> set[UUID]:
        return {a.id for a in self.aggregates}


Outcome = list[Saved] | BaseException


RECENTLY_SAVED = 10_000  # aggregates whose last saved version the committer remembers


class GroupCommitter:
    """Saves the commands waiting together in one transaction, on the event loop: each batch
    is one call of the event store's insert function on an asynchronous connection of its
    own, so a command needs no worker thread (and no hop back to the loop) to be saved."""

    def __init__(self, store: ErpEventStore, database_url: str, max_batch: int) -> None:
        self._store = store
        self._max_batch = max_batch
        self._waiting: deque[_Waiting] = deque()
        self._wake = asyncio.Event()
        self._stopped = False
        self._saved: OrderedDict[UUID, int] = OrderedDict()  # recently saved here: id -> version
        # One connection: batches are committed one after the other.
        self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url, min_size=1, max_size=1, open=False,
            kwargs={"autocommit": True, "application_name": "erp-commit"},
            timeout=POOL_WAIT_SECONDS, reconnect_timeout=POOL_RECONNECT_SECONDS)

    async def save(
        self, *aggregates: Aggregate, idempotency: IdempotencyRecord | None = None
    ) -> list[Saved]:
        """Saves the aggregates' pending events in one transaction (with other commands'),
        answering one `Saved` per aggregate; the idempotency key goes in the same one."""
        if self._stopped:
            raise CommitterStopped("the service is not accepting commands")
        if self._overtaken(aggregates):  # it would only clash in the database
            raise Overtaken("changed by another command meanwhile")
        waiting = _Waiting(aggregates, asyncio.get_running_loop().create_future(), idempotency)
        self._waiting.append(waiting)
        self._wake.set()
        return await waiting.answer

    async def run(self) -> None:
        try:
            await self._pool.open()
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting:
                    await self._commit(self._take_batch())
        finally:
            self._stopped = True
            stopped = CommitterStopped("the service stopped before the command was saved")
            while self._waiting:
                _answer(self._waiting.popleft(), stopped)
            await self._pool.close()

    async def _commit(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = await self._save_batch(batch)
        except Exception as error:  # a bug of ours: this batch fails, the committer goes on
            log.error("batch not saved", commands=len(batch), error=repr(error))
            outcomes = [error for _ in batch]
        except BaseException:
            unknown = CommitterStopped("the service stopped while saving; the outcome is unknown")
            for waiting in batch:
                _answer(waiting, unknown)
            raise
        for waiting, outcome in zip(batch, outcomes, strict=True):
            _answer(waiting, outcome)
            if not isinstance(outcome, BaseException):
                for saved in outcome:
                    self._saved[saved.aggregate_id] = saved.version
                    self._saved.move_to_end(saved.aggregate_id)
        while len(self._saved) > RECENTLY_SAVED:
            self._saved.popitem(last=False)
        self._fail_overtaken()

    def _overtaken(self, aggregates: Sequence[Aggregate]) -> bool:
        """Decided on a version older than one this process has saved since: it can only clash."""
        return any(a.pending_events and a.pending_events[0].originator_version <= self._saved.get(a.id, 0)
                   for a in aggregates)

    def _fail_overtaken(self) -> None:
        """Commands waiting on an aggregate that the batch has just changed are answered now
        (and decided again by the runner) instead of clashing in the database."""
        still: deque[_Waiting] = deque()
        for waiting in self._waiting:
            if self._overtaken(waiting.aggregates):
                _answer(waiting, Overtaken("changed by another command meanwhile"))
            else:
                still.append(waiting)
        self._waiting = still

    def _take_batch(self) -> list[_Waiting]:
        """Takes up to max_batch commands that share no aggregate; the others wait."""
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        ids: set[UUID] = set()
        while self._waiting and len(batch) < self._max_batch:
            waiting = self._waiting.popleft()
            if waiting.answer.done():
                continue
            if waiting.ids & ids:
                later.append(waiting)
            else:
                ids |= waiting.ids
                batch.append(waiting)
        self._waiting.extendleft(reversed(later))
        return batch

    async def _save_batch(self, batch: list[_Waiting]) -> list[Outcome]:
        pending = [[list(a.pending_events) for a in w.aggregates] for w in batch]
        everything = [a for w in batch for a in w.aggregates]
        keys = [w.idempotency for w in batch if w.idempotency is not None]
        try:
            positions = await self._record(everything, keys)
            return [[Saved(a.id, a.version, positions[a.id]) for a in w.aggregates] for w in batch]
        except IntegrityError:
            for waiting, events in zip(batch, pending, strict=True):
                for aggregate, mine in zip(waiting.aggregates, events, strict=True):
                    aggregate.pending_events[:] = mine
            return [await self._save_one(w.aggregates, events, w.idempotency)
                    for w, events in zip(batch, pending, strict=True)]
        except Exception as error:
            return [error for _ in batch]

    async def _record(self, aggregates: Sequence[Aggregate],
                      keys: Sequence[IdempotencyRecord]) -> dict[UUID | str, int]:
        """Stores the aggregates' pending events and the keys in one transaction; the log
        position of each aggregate's last event. What the library's `Application.save` does
        for the event store, with the snapshots and the cache of `_snapshot` and `_cache`."""
        stored = [self._store.mapper.to_stored_event(e) for a in aggregates for e in a.collect_events()]
        recorder: ErpRecorder = self._store.recorder  # type: ignore[assignment]
        positions = await recorder.insert_events_async(self._pool, stored, keys)
        await self._snapshot(stored, aggregates)
        self._cache(aggregates)
        return {e.originator_id: position for e, position in zip(stored, positions, strict=True)}

    async def _snapshot(self, stored: Sequence[StoredEvent], aggregates: Sequence[Aggregate]) -> None:
        """A snapshot of each aggregate whose events reached a multiple of its snapshot
        interval, taken from the aggregate as saved. A snapshot that fails is only logged:
        the events are stored, and the aggregate loads from an older snapshot meanwhile."""
        intervals = self._store.snapshotting_intervals or {}
        by_id: dict[UUID | str, Aggregate] = {a.id: a for a in aggregates}
        reached = {e.originator_id for e in stored
                   if (every := intervals.get(type(by_id[e.originator_id])))
                   and e.originator_version % every == 0}
        if not reached or self._store.snapshots is None:
            return
        snapshots = [TypedSnapshot.take(by_id[aggregate_id]) for aggregate_id in reached]
        try:
            await asyncio.to_thread(self._store.snapshots.put, snapshots)
        except Exception as error:
            log.warning("snapshot not taken", aggregates=[str(s.originator_id) for s in snapshots],
                        error=repr(error))

    def _cache(self, saved: Sequence[Aggregate]) -> None:
        """Saved aggregates go into the store's cache as saved (the library leaves them out
        when it fast-forwards cached ones): the next command on one loads only newer events
        instead of the whole aggregate. Nothing uses the saved objects after this; a cached
        one is only ever handed out as a copy, fast-forwarded first."""
        cache = self._store.repository.cache
        if cache is not None:
            for aggregate in saved:
                cache.put(aggregate.id, aggregate)

    async def _save_one(
        self,
        aggregates: tuple[Aggregate, ...],
        pending: list[list[Any]],
        idempotency: IdempotencyRecord | None = None,
    ) -> Outcome:
        try:
            positions = await self._record(aggregates, [idempotency] if idempotency else [])
            return [Saved(a.id, a.version, positions[a.id]) for a in aggregates]
        except IntegrityError:
            # A save whose connection broke is tried again: if the first try had committed,
            # the retry clashes with our own events. Those are a success.
            try:
                stored = await asyncio.to_thread(self._stored_as_ours, aggregates, pending)
            except Exception as error:  # not to be told now (the database is out of reach)
                return error
            if stored is not None:
                return stored
            ids = ", ".join(str(a.id) for a in aggregates)
            return VersionConflict(f"{ids} changed by another command meanwhile")
        except Exception as error:
            return error

    def _stored_as_ours(
        self, aggregates: tuple[Aggregate, ...], pending: list[list[Any]]
    ) -> list[Saved] | None:
        found: list[Saved] = []
        with self._store.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            for aggregate, events in zip(aggregates, pending, strict=True):
                ours = [self._store.mapper.to_stored_event(e) for e in events]
                rows = conn.execute(
                    f"SELECT topic, state, notification_id FROM {EVENTS_TABLE} "
                    "WHERE originator_id = %s AND originator_version BETWEEN %s AND %s "
                    "ORDER BY originator_version",
                    (aggregate.id, ours[0].originator_version, ours[-1].originator_version),
                ).fetchall()
                if [(r["topic"], bytes(r["state"])) for r in rows] != [(e.topic, e.state) for e in ours]:
                    return None
                found.append(Saved(aggregate.id, aggregate.version,
                                   max(r["notification_id"] for r in rows)))
        return found


def _answer(waiting: _Waiting, outcome: Outcome) -> None:
    if waiting.answer.done():  # the caller went away
        return
    if isinstance(outcome, BaseException):
        waiting.answer.set_exception(outcome)
    else:
        waiting.answer.set_result(outcome)


def close_store(store: ErpEventStore) -> None:
    with contextlib.suppress(Exception):
        store.close()


def store_for(database_url: str, pool_size: int, snapshot_interval: int = SNAPSHOT_INTERVAL,
              cache_size: int = 0) -> ErpEventStore:
    """The event store; every aggregate gets a snapshot each `snapshot_interval` events
    (taken in the saving transaction's wake, by the process that saved). With `cache_size`,
    the last aggregates loaded are kept in memory and brought up to date from their newer
    events (if any) at each load: one query instead of two, and no replay of the events since
    the snapshot; commands get a copy, so a refused decision leaves the cached one as it was."""
    env: dict[str, Any] = eventsourcing_env(database_url, pool_size) | {"IS_SNAPSHOTTING_ENABLED": "y"}
    if cache_size > 0:
        env |= {"AGGREGATE_CACHE_MAXSIZE": str(cache_size), "AGGREGATE_CACHE_FASTFORWARD": "y"}
    store = ErpEventStore(env=env)
    store.snapshotting_intervals = {cls: snapshot_interval for cls in aggregate_classes()}  # type: ignore[misc]
    return store
