"""Runs one projection from the stream into PostgreSQL, exactly once and in order.

- Reads with an ordered push consumer starting at checkpoint + 1, and checks itself
  that every message's stream sequence is exactly the next one: a gap (a client
  that lost messages) means resubscribing from the checkpoint, a sequence already
  applied (redelivery) is skipped.
- Applies many events per transaction; the checkpoint row is updated in the same
  transaction, guarded by its previous value, so a second runner that somehow runs
  at once can never apply an event twice.
- After each commit, NOTIFY tells waiting queries the new log position.
- A stalled consumer is found by comparing the checkpoint with the stream's end
  after an idle interval.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import psycopg
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from projections.base import CHECKPOINTS_DDL, POSITIONS_CHANNEL, Delivered, Projection
from streams import envelope as env
from streams.jetstream import SUBJECTS, header

log = structlog.get_logger("erp.projector")


class Resubscribe(Exception):
    """The delivered sequence is not the next one; start again from the checkpoint."""


class CheckpointMoved(Exception):
    """Another runner advanced the checkpoint; start again from it."""


async def ensure_schema(conn: psycopg.AsyncConnection[Any], projection: Projection) -> None:
    async with conn.transaction():
        await conn.execute(CHECKPOINTS_DDL)
        await conn.execute(projection.ddl)
        await conn.execute(
            "INSERT INTO projection_checkpoints (name, stream_seq, log_position) "
            "VALUES (%s, 0, 0) ON CONFLICT (name) DO NOTHING",
            (projection.name,),
        )


def to_delivered(projection: Projection, msg: Msg) -> Delivered:
    payload_type = projection.reads(msg.subject)
    envelope = env.decode(msg.data, payload_type) if payload_type is not None else None
    return Delivered(
        subject=msg.subject,
        stream_seq=msg.metadata.sequence.stream,
        log_position=int(header(msg, env.LOG_POSITION) or 0),
        aggregate_version=int(header(msg, env.AGGREGATE_VERSION) or 0),
        envelope=envelope,
    )


class ProjectorRunner:
    def __init__(
        self,
        projection: Projection,
        database_url: str,
        js: JetStreamContext,
        stream: str,
        *,
        batch_size: int,
        idle_check_seconds: float = 5.0,
    ) -> None:
        self.projection = projection
        self._database_url = database_url
        self._js = js
        self._stream = stream
        self._batch_size = batch_size
        self._idle_check = idle_check_seconds
        self.stream_seq = 0
        self.log_position = 0
        self.applied_total = 0
        self.resubscribes = 0
        self.redelivered = 0  # delivered again after being applied: skipped

    async def run(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._database_url, autocommit=True,
            application_name=f"erp-projector-{self.projection.name}",
        ) as conn:
            await ensure_schema(conn, self.projection)
            while True:
                await self._load_checkpoint(conn)
                try:
                    await self._consume(conn)
                except (Resubscribe, CheckpointMoved) as reason:
                    self.resubscribes += 1
                    log.warning("resubscribing from checkpoint", projection=self.projection.name,
                                reason=str(reason), stream_seq=self.stream_seq)

    async def _load_checkpoint(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            "SELECT stream_seq, log_position FROM projection_checkpoints WHERE name = %s",
            (self.projection.name,),
        )
        row = await cur.fetchone()
        assert row is not None
        self.stream_seq, self.log_position = int(row[0]), int(row[1])

    async def _consume(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Bounded: while it is full the client holds back its flow-control replies, so the
        # server slows down instead of this process buffering a whole backlog.
        arrived: asyncio.Queue[Msg] = asyncio.Queue(maxsize=2 * self._batch_size)

        async def on_message(msg: Msg) -> None:
            await arrived.put(msg)

        state = (await self._js.stream_info(self._stream)).state
        if state.messages and self.stream_seq + 1 < state.first_seq:
            raise RuntimeError(
                f"stream {self._stream} no longer holds sequences {self.stream_seq + 1}.."
                f"{state.first_seq - 1}: rebuild projection {self.projection.name} "
                "from the event store"
            )
        sub = await self._js.subscribe(
            SUBJECTS[0], stream=self._stream, cb=on_message, ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.stream_seq + 1,
            ),
        )
        try:
            while True:
                try:
                    # Not wait_for: on 3.11 it can swallow a cancellation when a message
                    # arrives at the same moment (CPython gh-86296), and stopping would hang.
                    async with asyncio.timeout(self._idle_check):
                        first = await arrived.get()
                except TimeoutError:
                    await self._check_not_stalled()
                    continue
                batch = [first]
                while len(batch) < self._batch_size and not arrived.empty():
                    batch.append(arrived.get_nowait())
                await self._apply(conn, batch)
        finally:
            await sub.unsubscribe()

    async def _check_not_stalled(self) -> None:
        last_seq = (await self._js.stream_info(self._stream)).state.last_seq
        if last_seq > self.stream_seq:
            raise Resubscribe(f"idle at {self.stream_seq} while the stream is at {last_seq}")

    async def _apply(self, conn: psycopg.AsyncConnection[Any], batch: list[Msg]) -> None:
        events: list[Delivered] = []
        next_seq = self.stream_seq + 1
        for msg in batch:
            seq = msg.metadata.sequence.stream
            if seq < next_seq:
                self.redelivered += 1  # delivered again: already applied
                continue
            if seq > next_seq:
                raise Resubscribe(f"expected sequence {next_seq}, got {seq}")
            try:
                events.append(to_delivered(self.projection, msg))
            except msgspec.ValidationError as error:
                # Our own relay wrote it; a payload that fails its schema is a bug to fix, not skip.
                raise RuntimeError(f"stream sequence {seq} ({msg.subject}): {error}") from error
            next_seq += 1
        if not events:
            return
        started = time.perf_counter()
        last = events[-1]
        log_position = max(self.log_position, last.log_position)  # a foreign message has none
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "UPDATE projection_checkpoints SET stream_seq = %s, log_position = %s, "
                "updated_at = now() WHERE name = %s AND stream_seq = %s",
                (last.stream_seq, log_position, self.projection.name, self.stream_seq),
            )
            if cur.rowcount != 1:
                raise CheckpointMoved(f"checkpoint is no longer {self.stream_seq}")
            async with conn.pipeline():
                for event in events:
                    if event.envelope is not None:
                        await self.projection.apply(cur, event)
            await cur.execute(
                "SELECT pg_notify(%s, %s)",
                (POSITIONS_CHANNEL, f"{self.projection.name}:{log_position}"),
            )
        self.stream_seq, self.log_position = last.stream_seq, log_position
        self.applied_total += len(events)
        log.debug("batch applied", projection=self.projection.name, events=len(events),
                  stream_seq=self.stream_seq, ms=round((time.perf_counter() - started) * 1000, 1))
