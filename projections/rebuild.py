"""Rebuilding a read model while the API keeps serving the old one.

The projection's tables are built in a schema of their own (`rebuild_<name>`), in batches,
through the same code path as live processing: from the event store (the source of
truth; each event encoded as the relay publishes it, then decoded and applied by the
projection) or from the JetStream stream (decoded exactly as the live runner does). Each
batch commits with its progress, so an interrupted rebuild can be resumed or discarded.
Then the new tables get row-level security and the API role's grant, and in one
transaction replace the old while the checkpoint moves to where the rebuild ended. The
live runner finds its
checkpoint moved and resumes from there (events it applied to the old tables meanwhile
are applied again to the new ones; every projection is idempotent per aggregate version).

A rebuild from the event store numbers the events it reads as the stream does: the relay
publishes every stored event once, in log-position order, so the stream sequence of an event
is how many stored events there are up to its log position (positions have gaps, left by
saves rolled back). That is where the checkpoint sends live processing on from.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg
from eventsourcing.utils import get_topic
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from erp.eventstore import EVENTS_TABLE, ErpEventStore
from erp.helper_processes import HelperProcesses, helper_store
from projections.base import (
    FOR_ROW_SETS,
    POSITIONS_CHANNEL,
    Delivered,
    Projection,
    Statements,
    positions_payload,
)
from projections.tenancy import isolate_tenants
from streams import envelope as env
from streams.catalogue import PUBLICATIONS
from streams.jetstream import SUBJECTS, header
from streams.relay import encoded, rows_between

Progress = Callable[[int, int], None]  # (position reached, position to reach)
Interrupted = Literal["refuse", "resume", "discard"]
PROGRESS_TABLE = "rebuild_progress"  # in the rebuild's schema; never swapped in
COLLECT_EVERY = 500_000  # events between two runs of the cycle collector during a rebuild


class InterruptedRebuild(Exception):
    def __init__(self, name: str, source: str, position: int, *, resuming_from: str | None = None) -> None:
        found = f"an interrupted rebuild of {name} (from the {source}) reached position {position}"
        if resuming_from:
            found += (f": it resumes from the {source} only; discard it (--discard) to rebuild from the "
                      f"{resuming_from}")
        else:
            found += ": resume it (--resume) or discard it (--discard)"
        super().__init__(found)


class RebuildRunning(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a rebuild of {name} is running (another process): wait for it to end")


@dataclass(frozen=True)
class Rebuilt:
    projection: str
    events: int  # events read for it by this run
    position: int  # the log position live processing resumes after
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


@dataclass(frozen=True)
class Read:
    """One event as a source read it: its payload is only encoded for a projection that reads it."""

    stream_seq: int
    log_position: int
    subject: str
    aggregate_version: int
    payload: Callable[[], bytes]


class StreamTooShort(RuntimeError):
    """The stream no longer holds the events a rebuild from it needs."""


@dataclass(frozen=True)
class End:
    """Where a rebuild reads up to: the last event's stream sequence and log position."""

    seq: int
    position: int


class Source(Protocol):
    name: str  # "event store" or "stream"

    async def end(self) -> End:
        """The last event now: the rebuild reads up to it."""

    def batches(self, after: int, after_position: int, end: End, size: int,
                subjects: frozenset[str]) -> AsyncIterator[list[Read]]:
        """Every event after stream sequence `after` (log position `after_position`) up to
        `end`, in order, in batches; only those of `subjects` need a payload."""


# The subject of a stored event, from its topic alone: most events are not for a given read
# model, and deciding that must not cost decoding them.
_SUBJECTS = {get_topic(cls): publication.subject for cls, publication in PUBLICATIONS.items()}


# A rebuild of more events than this has HELPERS helper processes read and encode them (they
# take a second or so to start).
HELPED_FROM = 20_000
HELPERS = 2


def _encoded_range(after: int, up_to: int, limit: int, subjects: frozenset[str]) -> list[tuple[Any, ...]]:
    """In a helper process: the stored events after `after` up to `up_to`, those of
    `subjects` encoded, as (position, subject, aggregate version, payload)."""
    store = helper_store()
    found = []
    for row in rows_between(store, after, up_to, limit):
        subject, payload = _SUBJECTS.get(row["topic"]), b""
        if subject is None or subject in subjects:
            event = encoded(store, row)
            subject, payload = event.publication.subject, event.payload
        found.append((row["notification_id"], subject, row["originator_version"], payload))
    return found


class EventStoreSource:
    name = "event store"

    def __init__(self, store: ErpEventStore, database_url: str, *,
                 helpers: HelperProcesses | None = None) -> None:
        """`helpers`: helper processes to use (else the source starts its own for a large rebuild)."""
        self._store = store
        self._database_url = database_url
        self._helpers = helpers
        self.helped = 0  # events the helper processes read

    async def end(self) -> End:
        """The last stored event: its stream sequence is how many there are (a save rolled back
        leaves a gap in the log positions, and nothing in the stream)."""
        return await asyncio.to_thread(self._end)

    def _end(self) -> End:
        with self._store.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            row = conn.execute(f"SELECT max(notification_id), count(*) FROM {EVENTS_TABLE}").fetchone()
        return End(seq=int(row["count"]), position=int(row["max"] or 0))

    async def batches(self, after: int, after_position: int, end: End, size: int,
                      subjects: frozenset[str]) -> AsyncIterator[list[Read]]:
        """Read here until the helper processes are up, then by them; numbered on from `after`."""
        helpers = self._helpers
        if helpers is None and end.seq - after > HELPED_FROM:
            helpers = HelperProcesses(self._database_url, HELPERS)
        seq, position, head = after, after_position, end.position
        try:
            while position < head:
                if helpers is not None and helpers.ready:
                    async for found in self._helped_batches(helpers, seq, position, head, size, subjects):
                        yield found
                    return
                rows = await asyncio.to_thread(rows_between, self._store, position, head, size)
                if not rows:
                    return
                yield [Read(seq, row["notification_id"], _SUBJECTS.get(row["topic"])
                            or encoded(self._store, row).publication.subject, row["originator_version"],
                            functools.partial(self._payload, row)) for seq, row in enumerate(rows, seq + 1)]
                seq, position = seq + len(rows), rows[-1]["notification_id"]
        finally:
            if helpers is not None and helpers is not self._helpers:
                helpers.close()

    async def _helped_batches(self, helpers: HelperProcesses, seq: int, after: int, head: int, size: int,
                              subjects: frozenset[str]) -> AsyncIterator[list[Read]]:
        ranges = helpers.in_ranges(_encoded_range, after, head, size, subjects)
        async with contextlib.aclosing(ranges):
            async for found in ranges:  # each range whole and in order: numbered on
                self.helped += len(found)
                if found:
                    yield [Read(seq, position, subject, version, functools.partial(bytes, payload))
                           for seq, (position, subject, version, payload) in enumerate(found, seq + 1)]
                    seq += len(found)

    def _payload(self, row: dict[str, Any]) -> bytes:
        return encoded(self._store, row).payload


class StreamSource:
    """The JetStream stream, read as the live runner reads it (ordered consumer)."""

    name = "stream"

    def __init__(self, js: JetStreamContext, stream: str) -> None:
        self._js = js
        self._stream = stream

    async def end(self) -> End:
        """The stream's last message (its log position is not needed: the stream is read by
        sequence)."""
        return End(seq=int((await self._js.stream_info(self._stream)).state.last_seq), position=0)

    async def batches(self, after: int, after_position: int, end: End, size: int,
                      subjects: frozenset[str]) -> AsyncIterator[list[Read]]:
        if after >= end.seq:
            return
        first = (await self._js.stream_info(self._stream)).state.first_seq
        if first > after + 1:
            raise StreamTooShort(f"stream {self._stream} no longer holds sequences {after + 1}..{first - 1}: "
                                 "rebuild from the event store")
        arrived: asyncio.Queue[Msg] = asyncio.Queue(maxsize=2 * size)

        async def on_message(msg: Msg) -> None:
            await arrived.put(msg)

        sub = await self._js.subscribe(SUBJECTS[0], stream=self._stream, cb=on_message, ordered_consumer=True,
                                       config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                             opt_start_seq=after + 1))
        try:
            while after < end.seq:
                batch: list[Read] = []
                while len(batch) < size and after < end.seq:
                    async with asyncio.timeout(30):
                        msg = await arrived.get()
                    seq = msg.metadata.sequence.stream
                    if seq <= after:
                        continue  # the ordered consumer restarted and delivered it again
                    batch.append(Read(seq, int(header(msg, env.LOG_POSITION) or 0), msg.subject,
                                      int(header(msg, env.AGGREGATE_VERSION) or 0),
                                      functools.partial(bytes, msg.data)))
                    after = seq
                yield batch
        finally:
            await sub.unsubscribe()


@dataclass
class _Target:
    """One projection being rebuilt: its own connection (search path on its schema)."""

    projection: Projection
    conn: psycopg.AsyncConnection[Any]
    seq: int
    position: int
    read: int = 0  # events read for it (after where it resumed)

    @property
    def schema(self) -> str:
        return f"rebuild_{self.projection.name}"

    def delivered(self, events: list[Read]) -> list[Delivered]:
        """The events this projection reads, and the batch's last one (for the checkpoint)."""
        mine = []
        for event in events:
            if event.stream_seq <= self.seq:
                continue  # resumed: applied before the interruption
            self.read += 1
            payload_type = self.projection.reads(event.subject)
            if payload_type is not None or event is events[-1]:
                mine.append(Delivered(
                    subject=event.subject, stream_seq=event.stream_seq, log_position=event.log_position,
                    aggregate_version=event.aggregate_version,
                    envelope=None if payload_type is None else env.decode(event.payload(), payload_type)))
        return mine

    async def apply(self, events: list[Delivered]) -> None:
        """The batch's changes and the progress they make, in one transaction."""
        out = Statements(self.conn)
        for event in events:
            if event.envelope is not None:
                self.projection.apply(out, event)
        seq, position = events[-1].stream_seq, max(self.position, events[-1].log_position)
        out.add(f"UPDATE {PROGRESS_TABLE} SET stream_seq = %s, log_position = %s", (seq, position))
        await out.send()
        self.seq, self.position = seq, position


async def rebuild(database_url: str, source: Source, projection: Projection, *, batch: int = 5000,
                  progress: Progress | None = None, interrupted: Interrupted = "refuse") -> Rebuilt:
    return (await rebuild_many(database_url, source, [projection], batch=batch, progress=progress,
                               interrupted=interrupted))[0]


async def rebuild_many(database_url: str, source: Source, projections: Sequence[Projection], *,
                       batch: int = 5000, progress: Progress | None = None,
                       interrupted: Interrupted = "refuse") -> list[Rebuilt]:
    """Rebuilds the projections in one pass over the source: each event is read once and
    decoded only for a projection that reads it; each projection applies its batches on
    its own connection, at the same time as the others."""
    started = time.perf_counter()
    if len({p.name for p in projections}) < len(projections):
        raise ValueError(f"a projection named twice: {', '.join(p.name for p in projections)}")
    async with contextlib.AsyncExitStack() as stack:
        targets: list[_Target] = []
        try:
            for projection in projections:
                conn = await stack.enter_async_context(
                    await psycopg.AsyncConnection.connect(database_url, autocommit=True))
                schema = f"rebuild_{projection.name}"
                seq, position = await _prepare(conn, schema, projection, source, interrupted)
                await conn.execute(f"SET search_path TO {schema}, public")  # other tables read as live
                # A batch commits with its progress: after a crash the rebuild resumes from the last
                # batch that survived, so it need not wait for the disk.
                await conn.execute("SET synchronous_commit TO off")
                await conn.execute(FOR_ROW_SETS)
                targets.append(_Target(projection, conn, seq, position))
            end = await source.end()
        except BaseException:
            await _leave_no_empty_rebuilds(targets)
            raise
        applying: asyncio.Future[Any] | None = None  # the batch PostgreSQL is applying

        async def applied() -> None:
            if applying is not None:
                await applying
                if progress is not None:
                    progress(min(t.seq for t in targets), end.seq)

        # A rebuild makes and drops millions of objects, freed as their last reference goes;
        # CPython's cycle collector, run every 700 allocations, took ~40 % of the rebuild's CPU
        # (100,000 events: 11-13k events/s without it, 7-8k with) and found a few dozen objects
        # in cycles per 5,000-event batch. During a rebuild it runs once per COLLECT_EVERY events.
        collecting = gc.isenabled()
        gc.disable()
        since_collected = 0
        try:
            subjects = frozenset(subject for subject in _SUBJECTS.values()
                                 if any(t.projection.reads(subject) is not None for t in targets))
            behind = min(targets, key=lambda t: t.seq)
            async for events in source.batches(behind.seq, behind.position, end, batch, subjects):
                if (since_collected := since_collected + len(events)) >= COLLECT_EVERY:
                    gc.collect()
                    since_collected = 0
                work = [(t, mine) for t in targets if (mine := t.delivered(events))]  # meanwhile
                await applied()
                applying = asyncio.gather(*(t.apply(mine) for t, mine in work))
            await applied()
        except BaseException:
            await _leave_no_empty_rebuilds(targets)
            raise
        finally:
            if collecting:
                gc.enable()
            if applying is not None:
                applying.cancel()
                await asyncio.gather(applying, return_exceptions=True)
        await asyncio.gather(*(_build_deferred_indexes(t.conn, t.schema) for t in targets))
        seconds = time.perf_counter() - started
        for target in targets:
            # isolated in the rebuild's schema: each table is swapped in readable by the API role
            # under row-level security, never without (nor left so by a rebuild stopped meanwhile)
            await isolate_tenants(target.conn)
            await target.conn.execute("SET search_path TO DEFAULT")
            await _swap(target.conn, target.schema, target.projection.name, target.seq, target.position)
    return [Rebuilt(t.projection.name, t.read, t.position, seconds) for t in targets]


async def _leave_no_empty_rebuilds(targets: Sequence[_Target]) -> None:
    """A rebuild that failed before applying anything (the stream no longer holds its start, a
    projection's rebuild already running) leaves nothing to resume: no interrupted rebuild."""
    for target in targets:
        if target.seq == 0:
            with contextlib.suppress(psycopg.Error):
                await target.conn.execute(f"DROP SCHEMA IF EXISTS {target.schema} CASCADE")


async def in_progress(conn: psycopg.AsyncConnection[Any], name: str) -> tuple[str, int] | None:
    """An interrupted rebuild of the projection: its source and the position it reached."""
    cur = await conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s",
                             (f"rebuild_{name}", PROGRESS_TABLE))
    if await cur.fetchone() is None:
        return None
    cur = await conn.execute(f"SELECT source, log_position FROM rebuild_{name}.{PROGRESS_TABLE}")
    row = await cur.fetchone()
    return (str(row[0]), int(row[1])) if row else None


async def _prepare(conn: psycopg.AsyncConnection[Any], schema: str, projection: Projection, source: Source,
                   interrupted: Interrupted) -> tuple[int, int]:
    """A fresh rebuild schema, or the interrupted one to resume: where to start from. Holds
    the projection's rebuild lock for as long as `conn` is open (one rebuild at a time)."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext('erp-rebuild'), hashtext(%s))",
                             (projection.name,))
    if not (await cur.fetchone() or (False,))[0]:
        raise RebuildRunning(projection.name)
    found = await in_progress(conn, projection.name)
    if found is not None and interrupted == "refuse":
        raise InterruptedRebuild(projection.name, *found)
    if found is not None and interrupted == "resume":
        if found[0] != source.name:
            raise InterruptedRebuild(projection.name, *found, resuming_from=source.name)
        await conn.execute(f"ALTER TABLE {schema}.{PROGRESS_TABLE} "  # left by a version without it
                           "ADD COLUMN IF NOT EXISTS deferred_indexes text[] NOT NULL DEFAULT '{{}}'")
        cur = await conn.execute(f"SELECT stream_seq, log_position FROM {schema}.{PROGRESS_TABLE}")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # discarded, or left without progress
    async with conn.transaction():
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        await conn.execute(projection.ddl)
        await conn.execute(f"CREATE TABLE {PROGRESS_TABLE} (source text NOT NULL, "
                           "stream_seq bigint NOT NULL, log_position bigint NOT NULL, "
                           "deferred_indexes text[] NOT NULL)")
        # Indexes other than the unique ones (which the changes' ON CONFLICT and lookups use)
        # are built once the rows are in: far cheaper than keeping them up to date row by row.
        cur = await conn.execute(
            "SELECT coalesce(array_agg(pg_get_indexdef(i.indexrelid)), '{}'), "
            "coalesce(array_agg(format('%%I.%%I', n.nspname, c.relname)), '{}') "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT i.indisunique",
            (schema,))
        definitions, names = await cur.fetchone() or ([], [])
        for name in names:
            await conn.execute(f"DROP INDEX {name}")
        await conn.execute(f"INSERT INTO {PROGRESS_TABLE} VALUES (%s, 0, 0, %s)", (source.name, definitions))
    return 0, 0


async def _build_deferred_indexes(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    cur = await conn.execute(f"SELECT deferred_indexes FROM {schema}.{PROGRESS_TABLE}")
    row = await cur.fetchone()
    for definition in row[0] if row else []:
        await conn.execute(definition)


async def discard(conn: psycopg.AsyncConnection[Any], name: str) -> bool:
    found = await in_progress(conn, name)
    await conn.execute(f"DROP SCHEMA IF EXISTS rebuild_{name} CASCADE")
    return found is not None


async def _swap(conn: psycopg.AsyncConnection[Any], schema: str, name: str, seq: int, position: int) -> None:
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM projection_checkpoints WHERE name = %s FOR UPDATE", (name,))
        cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> %s",
                                 (schema, PROGRESS_TABLE))
        for (table,) in await cur.fetchall():
            await conn.execute(f"DROP TABLE IF EXISTS public.{table} CASCADE")
            await conn.execute(f"ALTER TABLE {schema}.{table} SET SCHEMA public")
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.execute("UPDATE projection_checkpoints SET stream_seq = %s, log_position = %s, "
                           "updated_at = now() WHERE name = %s", (seq, position, name))
        await conn.execute("SELECT pg_notify(%s, %s)",
                           (POSITIONS_CHANNEL, positions_payload([name], position, replaced=True)))
