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
)
"""

POSITIONS_CHANNEL = "erp_read_models"  # NOTIFY '<projection>:<log position>' after each batch


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
