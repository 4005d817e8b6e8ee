"""Runs the projections from the stream into PostgreSQL, each exactly once and in order.

- One ordered push consumer feeds all the projections this process leads
  (`ProjectorGroup`): a message is received and its headers parsed once, not once per
  read model. It starts after the lowest checkpoint; each projection skips what it has
  already applied.
- Each projection checks that every message's stream sequence is exactly its next one:
  a gap (a client that lost messages) means resubscribing from the checkpoints, a
  sequence already applied (redelivery) is skipped.
- Each projection applies a batch in one transaction on its own connection, all at the
  same time; its checkpoint row is updated in the same transaction, guarded by its
  previous value, so a second runner that somehow runs at once can never apply an event
  twice. After each commit, NOTIFY tells waiting queries the new log position.
- A batch with no event a projection reads costs it no transaction: the positions of
  all such projections go out in one NOTIFY, and their checkpoint rows catch up with
  their next applied batch, or within `CHECKPOINT_LAG_SECONDS`. Most events are for
  other read models; a transaction for each of them was most of a projector's work.
- A projection that fails (not a gap) is left out for `retry_seconds` while the others
  go on, then the group resubscribes to bring it back from its checkpoint.
- A stalled consumer is found by comparing the checkpoints with the stream's end
  after an idle interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from erp import schema
from projections.base import (
    CHECKPOINT_MOVED,
    CHECKPOINTS_DDL,
    FOR_ROW_SETS,
    POSITIONS_CHANNEL,
    Delivered,
    Projection,
    Statements,
)
from streams import envelope as env
from streams.jetstream import SUBJECTS, header

log = structlog.get_logger("erp.projector")
# A batch rolled back by these (a deadlock with another instance's schema check at its start,
# say) is applied again at once: they are transient.
ROLLED_BACK = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
CHECKPOINT_LAG_SECONDS = 1.0  # how long a checkpoint row may trail events its projection does not read

# A NOTIFY of positions names only the projections whose checkpoint row is still where their
# runner last wrote it. A rebuild's swap moves the row to where the rebuild ended and announces
# that; a runner that has not yet noticed must not announce its old tables' position after
# it (queries waiting for a write the new tables lack would be let through). FOR SHARE waits
# for a swap under way, then sees the row it left.
_NOTIFY_WHERE_STILL = f"""
SELECT pg_notify('{POSITIONS_CHANNEL}', string_agg(name, ',') || ':' || %s::text) FROM (  -- positions_payload
    SELECT c.name FROM projection_checkpoints c
    JOIN unnest(%s::text[], %s::bigint[]) AS r(name, seq) ON c.name = r.name AND c.stream_seq = r.seq
    FOR SHARE OF c) AS still
HAVING count(*) > 0
"""


def notify_positions(at: Sequence[tuple[str, int]], log_position: int) -> tuple[str, tuple[Any, ...]]:
    """The statement announcing that the projections `at` (name, checkpoint stream_seq their
    runner last wrote) have reached `log_position`, those still at that checkpoint."""
    return _NOTIFY_WHERE_STILL, (log_position, [name for name, _ in at], [seq for _, seq in at])


class Resubscribe(Exception):
    """The delivered sequence is not the next one; start again from the checkpoint."""


class CheckpointMoved(Exception):
    """Another runner advanced the checkpoint; start again from it."""


async def ensure_schema(conn: psycopg.AsyncConnection[Any], projection: Projection) -> None:
    async with conn.transaction():
        await conn.execute(schema.LOCK)
        await schema.apply_once(conn, "projection_checkpoints", CHECKPOINTS_DDL)
        await schema.apply_once(conn, f"projection:{projection.name}", projection.ddl)
        await conn.execute(
            "INSERT INTO projection_checkpoints (name, stream_seq, log_position) "
            "VALUES (%s, 0, 0) ON CONFLICT (name) DO NOTHING",
            (projection.name,),
        )


@dataclass(frozen=True)
class Arrived:
    """A message from the stream, as every projection of the process reads it."""

    stream_seq: int
    subject: str
    log_position: int  # 0 for a message the relay did not write
    aggregate_version: int
    data: bytes

    @staticmethod
    def of(msg: Msg) -> Arrived:
        return Arrived(msg.metadata.sequence.stream, msg.subject, int(header(msg, env.LOG_POSITION) or 0),
                       int(header(msg, env.AGGREGATE_VERSION) or 0), msg.data)


def to_delivered(projection: Projection, arrived: Arrived) -> Delivered:
    payload_type = projection.reads(arrived.subject)
    envelope = env.decode(arrived.data, payload_type) if payload_type is not None else None
    return Delivered(subject=arrived.subject, stream_seq=arrived.stream_seq,
                     log_position=arrived.log_position, aggregate_version=arrived.aggregate_version,
                     envelope=envelope)


class ProjectorRunner:
    """One projection's progress through the stream, and how it applies a batch."""

    def __init__(self, projection: Projection) -> None:
        self.projection = projection
        self.stream_seq = 0  # applied (or not read by this projection) up to here
        self.log_position = 0
        self._saved_seq = 0  # the checkpoint row's stream_seq
        self._saved_at = 0.0
        self.applied_total = 0
        self.resubscribes = 0
        self.redelivered = 0  # delivered again after being applied: skipped

    @property
    def behind(self) -> bool:
        """Its checkpoint row trails events it did not read."""
        return self._saved_seq < self.stream_seq

    async def load_checkpoint(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            "SELECT stream_seq, log_position FROM projection_checkpoints WHERE name = %s",
            (self.projection.name,),
        )
        row = await cur.fetchone()
        assert row is not None
        self.stream_seq, self.log_position = int(row[0]), int(row[1])
        self._saved_seq, self._saved_at = self.stream_seq, time.monotonic()

    @property
    def checkpoint(self) -> tuple[str, int]:
        """Its name and the stream_seq it last wrote to its checkpoint row."""
        return self.projection.name, self._saved_seq

    def reads_any(self, batch: Sequence[Arrived]) -> bool:
        return any(self.projection.reads(arrived.subject) is not None for arrived in batch)

    async def apply(self, conn: psycopg.AsyncConnection[Any], batch: Sequence[Arrived],
                    announce: Sequence[tuple[str, int]] = ()) -> bool:
        """Applies what it has not applied yet; whether it committed (and so NOTIFYed) anything.
        A batch it reads nothing of only moves its position: the caller NOTIFYs that, or has it
        `announce`d in the NOTIFY of a projection that applies the batch."""
        events: list[Delivered] = []
        next_seq = self.stream_seq + 1
        for arrived in batch:
            seq = arrived.stream_seq
            if seq < next_seq:
                self.redelivered += 1  # delivered again: already applied
                continue
            if seq > next_seq:
                raise Resubscribe(f"expected sequence {next_seq}, got {seq}")
            try:
                events.append(to_delivered(self.projection, arrived))
            except msgspec.ValidationError as error:
                # Our own relay wrote it; a payload that fails its schema is a bug to fix, not skip.
                raise RuntimeError(f"stream sequence {seq} ({arrived.subject}): {error}") from error
            next_seq += 1
        if not events:
            return False
        started = time.perf_counter()
        last = events[-1]
        log_position = max(self.log_position, last.log_position)  # a foreign message has none
        if all(event.envelope is None for event in events):
            self.stream_seq, self.log_position = last.stream_seq, log_position
            self.applied_total += len(events)
            return False
        # One round trip: the checkpoint, the changes and the NOTIFY are sent together, and
        # the checkpoint's guard fails the whole transaction.
        out = Statements(conn)
        self._move_checkpoint(out, last.stream_seq, log_position)
        for event in events:
            if event.envelope is not None:
                self.projection.apply(out, event)
        out.add(*notify_positions([(self.projection.name, last.stream_seq), *announce], log_position))
        async with self._checkpoint_guard():
            await out.send()
        self.stream_seq, self.log_position = last.stream_seq, log_position
        self._saved_seq, self._saved_at = last.stream_seq, time.monotonic()
        self.applied_total += len(events)
        log.debug("batch applied", projection=self.projection.name, events=len(events),
                  stream_seq=self.stream_seq, ms=round((time.perf_counter() - started) * 1000, 1))
        return True

    async def save_checkpoint(self, conn: psycopg.AsyncConnection[Any], *,
                              unless_recent: bool = False) -> None:
        """Brings the checkpoint row up to events it did not read (if `unless_recent`: only
        when the row was last written `CHECKPOINT_LAG_SECONDS` ago or more)."""
        if not self.behind or (unless_recent and time.monotonic() - self._saved_at < CHECKPOINT_LAG_SECONDS):
            return
        out = Statements(conn)
        self._move_checkpoint(out, self.stream_seq, self.log_position)
        async with self._checkpoint_guard():
            await out.send()
        self._saved_seq, self._saved_at = self.stream_seq, time.monotonic()

    def _move_checkpoint(self, out: Statements, stream_seq: int, log_position: int) -> None:
        """Guarded by the value this runner last wrote: a second runner cannot apply a batch twice."""
        out.add("SELECT erp_move_checkpoint(%s, %s, %s, %s)",
                (self.projection.name, self._saved_seq, stream_seq, log_position))

    @contextlib.asynccontextmanager
    async def _checkpoint_guard(self) -> AsyncIterator[None]:
        try:
            yield
        except psycopg.Error as error:
            if error.sqlstate == CHECKPOINT_MOVED:
                raise CheckpointMoved(f"checkpoint is no longer {self._saved_seq}") from error
            raise


class ProjectorGroup:
    def __init__(
        self,
        runners: Sequence[ProjectorRunner],
        database_url: str,
        js: JetStreamContext,
        stream: str,
        *,
        batch_size: int,
        idle_check_seconds: float = 5.0,
        retry_seconds: float = 5.0,
    ) -> None:
        self.runners = list(runners)
        self._database_url = database_url
        self._js = js
        self._stream = stream
        self._batch_size = batch_size
        self._idle_check = idle_check_seconds
        self._retry = retry_seconds
        self._failed: dict[ProjectorRunner, float] = {}  # left out until then

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            conns = {}
            for runner in self.runners:
                conns[runner] = await stack.enter_async_context(await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True,
                    application_name=f"erp-projector-{runner.projection.name}"))
                await conns[runner].execute(FOR_ROW_SETS)
                await ensure_schema(conns[runner], runner.projection)
            while True:
                for runner in self.runners:
                    await runner.load_checkpoint(conns[runner])
                try:
                    await self._consume(conns)
                except (Resubscribe, CheckpointMoved, *ROLLED_BACK) as reason:
                    log.warning("resubscribing from the checkpoints", reason=str(reason),
                                stream_seq=min(r.stream_seq for r in self.runners))

    def _active(self) -> list[ProjectorRunner]:
        now = time.monotonic()
        return [r for r in self.runners if self._failed.get(r, 0.0) <= now]

    def _fail(self, runner: ProjectorRunner, error: BaseException) -> None:
        log.error("projection failed; the others go on", projection=runner.projection.name, error=repr(error),
                  retry_in_seconds=self._retry, stream_seq=runner.stream_seq)
        self._failed[runner] = time.monotonic() + self._retry

    def _retry_due(self) -> None:
        due = [r for r, until in self._failed.items() if until <= time.monotonic()]
        if due:
            for runner in due:
                del self._failed[runner]
            raise Resubscribe(f"retrying {', '.join(r.projection.name for r in due)}")

    async def _consume(self, conns: dict[ProjectorRunner, psycopg.AsyncConnection[Any]]) -> None:
        state = (await self._js.stream_info(self._stream)).state
        for runner in self._active():
            if state.messages and runner.stream_seq + 1 < state.first_seq:
                self._fail(runner, RuntimeError(
                    f"stream {self._stream} no longer holds sequences {runner.stream_seq + 1}.."
                    f"{state.first_seq - 1}: rebuild projection {runner.projection.name} "
                    "from the event store"))
        active = self._active()
        if not active:
            await asyncio.sleep(max(0.0, min(self._failed.values()) - time.monotonic()))
            self._retry_due()
            return
        # Bounded: while it is full the client holds back its flow-control replies, so the
        # server slows down instead of this process buffering a whole backlog.
        arrived: asyncio.Queue[Msg] = asyncio.Queue(maxsize=2 * self._batch_size)

        async def on_message(msg: Msg) -> None:
            await arrived.put(msg)

        sub = await self._js.subscribe(
            SUBJECTS[0], stream=self._stream, cb=on_message, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=min(r.stream_seq for r in active) + 1),
        )
        try:
            while True:
                behind = any(r.behind for r in active)
                try:
                    # Not wait_for: on 3.11 it can swallow a cancellation when a message
                    # arrives at the same moment (CPython gh-86296), and stopping would hang.
                    async with asyncio.timeout(CHECKPOINT_LAG_SECONDS if behind else self._idle_check):
                        first = await arrived.get()
                except TimeoutError:
                    await self._save_checkpoints(conns, recent_too=True)
                    if not behind:
                        await self._check_not_stalled(active)
                        await self._check_not_replaced(conns, active)
                    self._retry_due()
                    continue
                batch = [Arrived.of(first)]
                while len(batch) < self._batch_size and not arrived.empty():
                    batch.append(Arrived.of(arrived.get_nowait()))
                await self._apply(conns, active, batch)
                active = self._active()
                if not active:
                    return  # every projection failed: wait for the first retry, then start again
                self._retry_due()
        finally:
            await sub.unsubscribe()

    async def _apply(self, conns: dict[ProjectorRunner, psycopg.AsyncConnection[Any]],
                     active: list[ProjectorRunner], batch: list[Arrived]) -> None:
        # Those reading nothing of the batch first: they only move (no I/O), and the first
        # projection applying the batch announces them in its own NOTIFY.
        readers = [r for r in active if r.reads_any(batch)]
        others = [r for r in active if r not in readers]
        outcomes = await asyncio.gather(*(r.apply(conns[r], batch) for r in others), return_exceptions=True)
        announced: list[ProjectorRunner] = []
        if readers:
            reached = max(readers[0].log_position, batch[-1].log_position)
            announced = [r for r, outcome in zip(others, outcomes, strict=True) if outcome is False
                         and r.stream_seq == batch[-1].stream_seq and r.log_position == reached]
            outcomes += await asyncio.gather(
                readers[0].apply(conns[readers[0]], batch, [r.checkpoint for r in announced]),
                *(r.apply(conns[r], batch) for r in readers[1:]), return_exceptions=True)
            if outcomes[len(others)] is not True:
                announced = []  # not committed: announce them below
        quiet: dict[int, list[tuple[str, int]]] = defaultdict(list)  # position -> those only moved to it
        again: Exception | None = None
        for runner, outcome in zip(others + readers, outcomes, strict=True):
            if isinstance(outcome, (Resubscribe, CheckpointMoved, *ROLLED_BACK)):
                runner.resubscribes += 1
                again = again or outcome
            elif isinstance(outcome, Exception):
                self._fail(runner, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome is False and runner.stream_seq == batch[-1].stream_seq and runner not in announced:
                quiet[runner.log_position].append(runner.checkpoint)
        working = self._active()
        for position, at in quiet.items():
            if working:
                await conns[working[0]].execute(*notify_positions(at, position))
        await self._save_checkpoints(conns, recent_too=False)
        if again is not None:
            raise again

    async def _save_checkpoints(self, conns: dict[ProjectorRunner, psycopg.AsyncConnection[Any]], *,
                                recent_too: bool) -> None:
        for runner in self._active():
            try:
                await runner.save_checkpoint(conns[runner], unless_recent=not recent_too)
            except CheckpointMoved:
                runner.resubscribes += 1
                raise
            except Exception as error:
                self._fail(runner, error)

    async def _check_not_replaced(self, conns: dict[ProjectorRunner, psycopg.AsyncConnection[Any]],
                                  active: list[ProjectorRunner]) -> None:
        """A rebuild swaps in tables that end before what was applied live, and moves the
        checkpoint there: with no event coming to fail the next batch's guard, the runner finds
        it here, when idle, and applies the rest to the new tables."""
        cur = await conns[active[0]].execute("SELECT name, stream_seq FROM projection_checkpoints")
        stored = {name: int(seq) for name, seq in await cur.fetchall()}
        moved = [r.projection.name for r in active if stored.get(r.projection.name) != r.checkpoint[1]]
        if moved:
            raise Resubscribe(f"checkpoints moved by another writer (a rebuild's swap): {', '.join(moved)}")

    async def _check_not_stalled(self, active: list[ProjectorRunner]) -> None:
        last_seq = (await self._js.stream_info(self._stream)).state.last_seq
        lowest = min(r.stream_seq for r in active)
        if last_seq > lowest:
            for runner in active:
                runner.resubscribes += runner.stream_seq < last_seq
            raise Resubscribe(f"idle at {lowest} while the stream is at {last_seq}")
