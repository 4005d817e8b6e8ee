"""Rebuilding a read model from the event store while the API keeps serving the old one.

The projection's tables are built in a schema of their own (`rebuild_<name>`), from every
stored event, in batches, through the same code path as live processing (each event
encoded as the relay publishes it, decoded and applied by the projection). Then, in one
transaction, the new tables replace the old, the checkpoint moves to where the rebuild
ended, and row-level security is applied again. The live runner finds its checkpoint
moved and resumes from there (events it applied to the old tables meanwhile are applied
again to the new ones; every projection is idempotent per aggregate version).

Stream sequence and log position are equal for a stream the relay wrote from the start,
which is what the checkpoint relies on when the rebuild sets both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from erp.eventstore import ErpEventStore
from projections.base import POSITIONS_CHANNEL, Delivered, Projection
from projections.tenancy import isolate_tenants
from streams import envelope as env
from streams.relay import to_message

Progress = Callable[[int, int], None]  # (events read, events in the store)


@dataclass(frozen=True)
class Rebuilt:
    projection: str
    events: int
    position: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


async def rebuild(database_url: str, store: ErpEventStore, projection: Projection, *, batch: int = 5000,
                  progress: Progress | None = None) -> Rebuilt:
    started = time.perf_counter()
    schema = f"rebuild_{projection.name}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        head = int(store.recorder.max_notification_id() or 0)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # an interrupted rebuild
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path TO {schema}, public")  # new tables here; others read as live
        await conn.execute(projection.ddl)
        position = await _replay(conn, store, projection, batch, head, progress)
        await conn.execute("SET search_path TO DEFAULT")
        await _swap(conn, schema, projection.name, position)
        await isolate_tenants(conn)
    return Rebuilt(projection.name, position, position, time.perf_counter() - started)


async def _replay(conn: psycopg.AsyncConnection[Any], store: ErpEventStore, projection: Projection,
                  batch: int, head: int, progress: Progress | None) -> int:
    position = 0
    while True:
        notifications = store.recorder.select_notifications(position + 1, batch)
        if not notifications:
            return position
        async with conn.transaction(), conn.cursor() as cur, conn.pipeline():
            for notification in notifications:
                message = to_message(store, vars(notification) | {"notification_id": notification.id})
                payload_type = projection.reads(message.subject)
                if payload_type is not None:
                    await projection.apply(cur, Delivered(
                        subject=message.subject, stream_seq=message.position, log_position=message.position,
                        aggregate_version=notification.originator_version,
                        envelope=env.decode(message.payload, payload_type)))
        position = notifications[-1].id
        if progress is not None:
            progress(position, max(head, position))


async def _swap(conn: psycopg.AsyncConnection[Any], schema: str, name: str, position: int) -> None:
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM projection_checkpoints WHERE name = %s FOR UPDATE", (name,))
        cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        for (table,) in await cur.fetchall():
            await conn.execute(f"DROP TABLE IF EXISTS public.{table} CASCADE")
            await conn.execute(f"ALTER TABLE {schema}.{table} SET SCHEMA public")
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.execute("UPDATE projection_checkpoints SET stream_seq = %s, log_position = %s, "
                           "updated_at = now() WHERE name = %s", (position, position, name))
        await conn.execute("SELECT pg_notify(%s, %s)", (POSITIONS_CHANNEL, f"{name}:{position}"))
