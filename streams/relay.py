"""The relay: every stored event, in log order, into the JetStream stream exactly once.

- Woken by the event store's NOTIFY; reads to the end of the log after every
  (re)start and after an idle interval, since NOTIFY is not durable.
- Resumes from a position it can prove: the log position in the header of the last
  message in the stream. Nothing in PostgreSQL has to agree with the stream.
- Publishes are pipelined and chained: the first after a resume expects the stream's
  last sequence (`Nats-Expected-Last-Sequence`), every later one expects the previous
  event's id to be the last message id (`Nats-Expected-Last-Msg-Id`). Once one publish
  is refused or lost, every later one in flight is refused too, so the stream never
  gets a gap or a reordering; the relay then settles what is in flight and resumes
  from the stream again. This needs the relay to be the stream's only writer, and
  only one relay is active (see leadership).
- Turning a stored event into its message is most of the relay's CPU. Once a read comes
  back full (a backlog), the log up to its head is read in ranges of log positions by
  `HELPERS` helper processes (erp/helper_processes.py), which turn them into messages
  while the relay publishes the ranges before; a live read (a few events after a NOTIFY)
  stays in the relay, and the helpers are stopped after a minute without a backlog. Log
  positions are given in commit order (the event store locks its table to insert), so
  none below the head can appear later.
- Only every `ACK_EVERY`th publish, and the last of each read, asks for an
  acknowledgement. The chain makes one acknowledgement prove every publish before it:
  a stored message expected its predecessor to be the stream's last message, so that
  one was stored, and so on back to the last acknowledged one. A publish refused in
  between is therefore reported by the next acknowledged one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import StoredEvent
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from erp.eventstore import EVENTS_TABLE, ErpEventStore, event_metadata
from erp.helper_processes import HelperProcesses, helper_store
from erp.listening import wait_for_notifies
from streams import envelope as env
from streams.catalogue import PUBLICATIONS
from streams.events.base import Publication
from streams.jetstream import header
from streams.publisher import Ack, PipelinedPublisher, PublishRefused, header_block

log = structlog.get_logger("erp.relay")

_COLUMNS = f"SELECT notification_id, originator_id, originator_version, topic, state FROM {EVENTS_TABLE}"
_SELECT = f"{_COLUMNS} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
# Publishes per acknowledgement: each acknowledgement costs the server a reply and this
# process a parsed message and a future, which were a third of the relay's CPU.
ACK_EVERY = 100
MAX_IN_FLIGHT = 4000  # publishes sent and not yet proven stored
_SELECT_UP_TO = (  # (after, up to, limit)
    f"{_COLUMNS} WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s")


class StreamRefused(Exception):
    """The stream refused or did not acknowledge a publish; resume from the stream."""


@dataclass(frozen=True)
class OutgoingMessage:
    position: int
    subject: str
    payload: bytes
    headers: dict[str, str]


class _InFlight(NamedTuple):
    """An acknowledged publish on its way, and the publishes it will prove."""

    position: int
    proves: int  # publishes since the acknowledged one before it, this one included
    future: asyncio.Future[Ack]
    sent_at: float


class StreamMismatch(Exception):
    """The stream and the event store disagree; an operator must decide (`erp events recover-stream`)."""


@dataclass(frozen=True)
class StreamHead:
    """What the stream proves has been published."""

    position: int  # log position of the last event in the stream (0: none)
    last_seq: int  # the stream's last sequence number
    event_id: str | None = None  # Nats-Msg-Id of that last event


def to_message(store: ErpEventStore, row: dict[str, Any]) -> OutgoingMessage:
    event = encoded(store, row)
    event_id = str(event.event_id)
    position = int(row["notification_id"])
    return OutgoingMessage(
        position=position,
        subject=event.publication.subject,
        payload=event.payload,
        headers={
            env.MSG_ID: event_id,
            env.AGGREGATE_ID: event.aggregate_id,
            env.AGGREGATE_TYPE: event.publication.aggregate_type,
            env.AGGREGATE_VERSION: str(row["originator_version"]),
            env.LOG_POSITION: str(position),
            env.CORRELATION_ID: event.metadata.get("correlation_id", event_id),
            env.CAUSATION_ID: event.metadata.get("causation_id", event_id),
            env.SCHEMA_VERSION: str(event.publication.schema_version),
        },
    )


class Encoded(NamedTuple):
    publication: Publication
    metadata: dict[str, str]
    aggregate_id: str
    event_id: UUID
    payload: bytes  # the envelope as published


def encoded(store: ErpEventStore, row: dict[str, Any]) -> Encoded:
    """A stored event (a row of the events table) as it is published, without the headers."""
    stored = StoredEvent(
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )
    domain_event: Any = store.mapper.to_domain_event(stored)
    publication = PUBLICATIONS[type(domain_event)]
    metadata = event_metadata(domain_event)
    aggregate_id = str(row["originator_id"])
    event_id = env.event_id(aggregate_id, stored.originator_version)
    payload = env.encode(
        env.Envelope(
            event_id=event_id,
            event_type=publication.subject,
            tenant_id=metadata.get("tenant_id", ""),
            timestamp=domain_event.timestamp,
            data=publication.to_payload(domain_event),
        )
    )
    return Encoded(publication, metadata, aggregate_id, event_id, payload)


async def stream_head(js: JetStreamContext, stream: str) -> StreamHead:
    """The last message the relay wrote, found from the end of the stream."""
    state = (await js.stream_info(stream)).state
    seq = state.last_seq
    while state.messages and seq >= max(state.first_seq, 1):
        try:
            msg = await js.get_msg(stream, seq=seq)
        except NotFoundError:  # deleted
            seq -= 1
            continue
        position = header(msg, env.LOG_POSITION)
        if position is not None:
            return StreamHead(int(position), state.last_seq, header(msg, env.MSG_ID))
        seq -= 1  # not one of ours (the relay should be the only writer)
    if state.last_seq > 0:
        raise StreamMismatch(
            f"stream {stream} is at sequence {state.last_seq} but holds no event of the relay "
            "(purged or written by others): recreate it with `erp events recover-stream`"
        )
    return StreamHead(position=0, last_seq=0)


async def check_head(conn: psycopg.AsyncConnection[Any], head: StreamHead) -> None:
    """The stream's last event must be the stored event at its log position."""
    if head.position == 0:
        return
    cur = await conn.execute(
        f"SELECT originator_id, originator_version FROM {EVENTS_TABLE} WHERE notification_id = %s",
        (head.position,),
    )
    row = await cur.fetchone()
    stored = str(env.event_id(row["originator_id"], row["originator_version"])) if row else None
    if stored != head.event_id:
        raise StreamMismatch(
            f"the stream's last event {head.event_id} is not the stored event at log position "
            f"{head.position} ({stored or 'none'}): was the database restored behind the stream?"
        )


HELPERS = 2  # helper processes turning a backlog into messages


def rows_between(store: ErpEventStore, after: int, up_to: int, limit: int) -> list[dict[str, Any]]:
    """The rows of the stored events after log position `after` up to `up_to`, `limit` at most.
    In binary: the stored state arrives as it is stored, where text would have PostgreSQL write
    it in hex and this process read the hex (a rebuild's helper: 38-40 -> 34-38 µs per event)."""
    with store.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        cursor = conn.execute(_SELECT_UP_TO, (after, up_to, limit), binary=True)
        rows: list[dict[str, Any]] = cursor.fetchall()
        return rows


def _messages_between(after: int, up_to: int, limit: int) -> list[OutgoingMessage]:
    """In a helper process: the messages of the stored events after `after` up to `up_to`."""
    store = helper_store()
    return [to_message(store, row) for row in rows_between(store, after, up_to, limit)]


@dataclass
class _Chain:
    """The publishes since a resume: each expects the one before it to be the stream's last."""

    expect: dict[str, str]
    in_flight: deque[_InFlight] = field(default_factory=deque)
    unacknowledged: int = 0  # publishes since the last acknowledged one


class Relay:
    def __init__(
        self,
        store: ErpEventStore,
        database_url: str,
        nc: NATS,
        stream: str,
        *,
        batch_size: int,
        idle_catch_up_seconds: float,
        ack_timeout_seconds: float,
        helpers_kept_seconds: float = 60.0,
    ) -> None:
        self._store = store
        self._database_url = database_url
        self._nc = nc
        self._js = nc.jetstream()
        self._stream = stream
        self._batch_size = batch_size
        self._idle = idle_catch_up_seconds
        self._ack_timeout = ack_timeout_seconds
        self.published_position = 0  # confirmed in the stream
        self.published_total = 0
        self.read_ahead_total = 0  # events turned into messages by the helper processes
        self._helpers: HelperProcesses | None = None  # started by a backlog
        self._helpers_kept = helpers_kept_seconds  # then stopped after this long without one
        self._last_backlog = 0.0
        self.failures = 0

    async def run(self) -> None:
        publisher = PipelinedPublisher(self._nc, max_pending=MAX_IN_FLIGHT // ACK_EVERY,
                                       room_timeout=self._ack_timeout)
        await publisher.start()
        try:
            await self._run(publisher)
        finally:
            self._stop_helpers()
            await publisher.close()

    def _stop_helpers(self) -> None:
        if self._helpers is not None:
            self._helpers.close()
            self._helpers = None

    async def _run(self, publisher: PipelinedPublisher) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._database_url, autocommit=True, application_name="erp-relay",
            row_factory=psycopg.rows.dict_row,
        ) as conn:
            await conn.execute(f"LISTEN {EVENTS_TABLE}")
            while True:
                head = await stream_head(self._js, self._stream)
                await check_head(conn, head)
                self.published_position = head.position
                log.info("relay resuming", position=head.position, stream_seq=head.last_seq)
                try:
                    await self._follow(conn, publisher, head)
                except StreamRefused as error:
                    self.failures += 1
                    log.warning("publish refused; resuming from the stream", error=str(error))
                    await asyncio.sleep(0.2)

    async def _follow(
        self, conn: psycopg.AsyncConnection[Any], publisher: PipelinedPublisher, head: StreamHead
    ) -> None:
        read_position = head.position
        chain = _Chain({env.EXPECTED_LAST_SEQUENCE: str(head.last_seq)})
        try:
            while True:
                cursor = await conn.execute(_SELECT, (read_position, self._batch_size), binary=True)
                messages = [to_message(self._store, row) for row in await cursor.fetchall()]
                await self._publish(publisher, chain, messages)
                if messages:
                    read_position = messages[-1].position
                if len(messages) < self._batch_size:
                    if time.monotonic() - self._last_backlog > self._helpers_kept:
                        self._stop_helpers()  # idle processes hold memory and a connection
                    await self._settle(chain.in_flight)
                    await wait_for_notifies(conn, self._idle)  # or the idle catch-up read
                    continue
                self._last_backlog = time.monotonic()
                if self._helpers is None:  # a backlog starts them
                    self._helpers = HelperProcesses(self._database_url, HELPERS)
                if not self._helpers.ready:
                    continue
                cursor = await conn.execute(f"SELECT max(notification_id) FROM {EVENTS_TABLE}")
                end = int((await cursor.fetchone() or {}).get("max") or read_position)
                ranges = self._helpers.in_ranges(_messages_between, read_position, end, self._batch_size)
                async with contextlib.aclosing(ranges):  # a refusal leaves nothing asked
                    async for messages in ranges:
                        await self._publish(publisher, chain, messages)
                        self.read_ahead_total += len(messages)
                read_position = end
        finally:
            for sent in chain.in_flight:
                sent.future.cancel()

    async def _publish(self, publisher: PipelinedPublisher, chain: _Chain,
                       messages: list[OutgoingMessage]) -> None:
        """Sends the messages in order; every `ACK_EVERY`th and the last ask for an acknowledgement."""
        last = len(messages) - 1
        for i, message in enumerate(messages):
            header = header_block({**message.headers, **chain.expect})
            chain.expect = {env.EXPECTED_LAST_MSG_ID: message.headers[env.MSG_ID]}
            chain.unacknowledged += 1
            if chain.unacknowledged < ACK_EVERY and i < last:
                await publisher.send(message.subject, message.payload, header)
                continue
            try:
                future = await publisher.publish(message.subject, message.payload, header)
            except PublishRefused as error:
                raise StreamRefused(f"position {message.position}: {error}") from error
            sent = _InFlight(message.position, chain.unacknowledged, future, time.monotonic())
            chain.in_flight.append(sent)
            chain.unacknowledged = 0
            self._reap(chain.in_flight)

    def _reap(self, in_flight: deque[_InFlight]) -> None:
        """Confirms acknowledged publishes in order; raises on the first refusal."""
        while in_flight and in_flight[0].future.done():
            position, proves, future, _ = in_flight.popleft()
            if future.cancelled():
                raise StreamRefused(f"publish of position {position} was cancelled")
            error = future.exception()
            if error is not None:
                raise StreamRefused(f"position {position}: {error!r}")
            ack = future.result()
            if ack.duplicate:
                raise StreamRefused(f"position {position} was already in the stream")
            self.published_position = position
            self.published_total += proves
        if in_flight and time.monotonic() - in_flight[0].sent_at > self._ack_timeout:
            raise StreamRefused(f"no acknowledgement within {self._ack_timeout} s")

    async def _settle(self, in_flight: deque[_InFlight]) -> None:
        if in_flight:
            futures = [sent.future for sent in in_flight]
            await asyncio.wait(futures, timeout=self._ack_timeout)
        self._reap(in_flight)
