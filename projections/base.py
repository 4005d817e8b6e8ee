"""What a projection is: a name, its tables, and how one delivered event changes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from psycopg import AsyncCursor

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


class Projection(Protocol):
    name: str
    ddl: str

    def reads(self, subject: str) -> type[Any] | None:
        """The payload type of `subject` if this projection reads it."""

    async def apply(self, cur: AsyncCursor[Any], event: Delivered) -> None:
        """Changes the read model for one event, inside the batch's transaction."""
