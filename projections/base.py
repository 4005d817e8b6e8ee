"""What a projection is: a name, its tables, and how one delivered event changes them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from streams.envelope import Envelope

CHECKPOINTS_DDL = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name text PRIMARY KEY,
    stream_seq bigint NOT NULL,
    log_position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Moves a checkpoint only from the value its runner last wrote; otherwise fails the
-- transaction (SQLSTATE ERPCK), so the batch sent with it in one round trip is not applied.
CREATE OR REPLACE FUNCTION erp_move_checkpoint(projection text, previous bigint, stream_seq bigint,
    log_position bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE projection_checkpoints AS c SET stream_seq = erp_move_checkpoint.stream_seq,
        log_position = erp_move_checkpoint.log_position, updated_at = now()
    WHERE c.name = projection AND c.stream_seq = previous;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the checkpoint of % is no longer %', projection, previous USING ERRCODE = 'ERPCK';
    END IF;
END $$;
"""
CHECKPOINT_MOVED = "ERPCK"

POSITIONS_CHANNEL = "erp_read_models"  # NOTIFY '<projection>[,<projection>…]:<log position>'


def positions_payload(projections: list[str], position: int) -> str:
    """What a NOTIFY on POSITIONS_CHANNEL says: these read models have reached `position`."""
    return f"{','.join(projections)}:{position}"


def read_positions(payload: str) -> dict[str, int]:
    names, _, position = payload.rpartition(":")
    return dict.fromkeys(names.split(","), int(position))


@dataclass(frozen=True)
class Delivered:
    """An event as a projector receives it from the stream."""

    subject: str
    stream_seq: int
    log_position: int
    aggregate_version: int
    envelope: Envelope[Any] | None  # None: a subject this projection does not read


class Statements:
    """The statements of one transaction, sent in one round trip.

    A few (a live batch) are bound on the client and sent as one query, run by the server as
    one implicit transaction: this halves the client's CPU per event against the async
    driver's pipeline (measured: 1.2 → 0.4 ms for a one-event batch). Many (a backlog, a
    rebuild) go through the pipeline as prepared statements: there the server's parsing of
    each statement sent as text costs more than it saves (rebuild 3,800 → 2,700 events/s)."""

    PIPELINED_FROM = 64

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._queued: list[tuple[str, Any]] = []

    def add(self, query: str, params: Any = None) -> None:
        self._queued.append((query, params))

    def add_many(self, query: str, params: Iterable[Any]) -> None:
        for one in params:
            self.add(query, one)

    def __len__(self) -> int:
        return len(self._queued)

    async def send(self) -> None:
        """Runs them in one transaction (the connection in autocommit mode, no transaction open)."""
        queued, self._queued = self._queued, []
        if len(queued) >= self.PIPELINED_FROM:
            async with self._conn.pipeline(), self._conn.transaction(), self._conn.cursor() as cur:
                for query, params in queued:
                    await cur.execute(query, params)
        elif queued:
            binder = psycopg.AsyncClientCursor(self._conn)
            await self._conn.execute(";\n".join(binder.mogrify(query, params) for query, params in queued))


class Projection(Protocol):
    name: str
    ddl: str

    def reads(self, subject: str) -> type[Any] | None:
        """The payload type of `subject` if this projection reads it."""

    def apply(self, out: Statements, event: Delivered) -> None:
        """Adds the statements that change the read model for one event to the batch's transaction."""
