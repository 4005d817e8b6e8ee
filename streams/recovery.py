"""Recovering the ERP stream from the event store when it was lost or truncated.

The relay resumes from the stream's last event, so a stream that only lost its tail (a
NATS volume restored from an older backup) refills by itself. A stream that is gone, was
purged, or lost its beginning cannot: every consumer (and the projectors' checkpoints)
relies on the stream holding every stored event once, in log order, from sequence 1 (so
the sequence of an event is how many stored events there are up to its log position; the
positions themselves have gaps where saves rolled back). Recovery creates the stream afresh and
republishes every stored event through the relay's own code, with their event ids
unchanged. A service's relay may write at the same time: each publish names the event
that must precede it (Nats-Expected-Last-Msg-Id), so of two writers the one behind is
refused and resumes from the stream; no event lands twice or out of order. Consumers on the old stream
go with it: their owners recreate them and deduplicate by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from erp.eventstore import EVENTS_TABLE, ErpEventStore
from streams.jetstream import ensure_stream
from streams.leadership import stop_tasks
from streams.relay import Relay, StreamMismatch, check_head, stream_head


async def diagnose(nc: NATS, database_url: str, stream: str) -> str | None:
    """Why the stream must be recovered, or None when the relay can carry on by itself."""
    js = nc.jetstream()
    try:
        state = (await js.stream_info(stream)).state
    except NotFoundError:
        return f"stream {stream} does not exist"
    if state.messages and state.first_seq > 1:
        return f"stream {stream} no longer holds sequences 1..{state.first_seq - 1}"
    try:
        head = await stream_head(js, stream)
        async with await psycopg.AsyncConnection.connect(database_url,
                                                         row_factory=psycopg.rows.dict_row) as conn:
            await check_head(conn, head)
            stored = await _stored_up_to(conn, head.position)
    except StreamMismatch as mismatch:
        return str(mismatch)
    if stored != head.last_seq:
        return (f"stream {stream}: sequence {head.last_seq} holds log position {head.position}, "
                f"the {stored}th stored event")
    return None


async def recover(nc: NATS, database_url: str, store: ErpEventStore, stream: str, replicas: int,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Recreates the stream and republishes every stored event; answers how many."""
    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(stream)
    await ensure_stream(js, stream, replicas)
    end = await asyncio.to_thread(store.recorder.max_notification_id) or 0
    relay = Relay(store, database_url, nc, stream, batch_size=1000, idle_catch_up_seconds=1.0,
                  ack_timeout_seconds=10.0)
    task: asyncio.Task[Any] = asyncio.ensure_future(relay.run())
    try:
        while relay.published_position < end:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("the relay stopped before the stream was whole")
            await asyncio.sleep(0.2)
            if progress is not None:
                progress(relay.published_position, end)
    finally:
        await stop_tasks([task])
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await _stored_up_to(conn, end)


async def _stored_up_to(conn: psycopg.AsyncConnection[Any], position: int) -> int:
    """How many stored events there are up to `position`: the stream sequence of its event."""
    cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
    await cur.execute(f"SELECT count(*) FROM {EVENTS_TABLE} WHERE notification_id <= %s", (position,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0
