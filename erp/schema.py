"""Schema changes at start-up: serialized between instances, and each text run once.

`ALTER TABLE … ADD COLUMN IF NOT EXISTS` and `CREATE INDEX IF NOT EXISTS` lock their table
even when they change nothing (ACCESS EXCLUSIVE and SHARE: reads, or writes, wait). Run on
every start of every instance, they stalled the read models and once deadlocked with a
projector's transaction. So a DDL text runs only when it was never applied under its name;
an unchanged restart takes no table lock. To run a text again (a table dropped by hand),
delete its row from `erp_schema_applied`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg.sql import Composed

# Instances starting together would race on CREATE … IF NOT EXISTS / OR REPLACE.
LOCK = "SELECT pg_advisory_xact_lock(hashtext('erp:schema'))"

_APPLIED = """
CREATE TABLE IF NOT EXISTS erp_schema_applied (
    name text NOT NULL,
    digest text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, digest)
)
"""


_SEEN = "SELECT 1 FROM erp_schema_applied WHERE name = %s AND digest = %s"
_RECORD = "INSERT INTO erp_schema_applied (name, digest) VALUES (%s, %s)"


def _digest(ddl: str) -> str:
    return hashlib.sha256(ddl.encode()).hexdigest()


async def apply_once(conn: psycopg.AsyncConnection[Any], name: str, ddl: str) -> bool:
    """Runs `ddl` unless this exact text was applied under `name` before; whether it ran.
    Inside the caller's transaction, which must hold `LOCK`."""
    digest = _digest(ddl)
    await conn.execute(_APPLIED)
    cur = await conn.execute(_SEEN, (name, digest))
    if await cur.fetchone() is not None:
        return False
    await conn.execute(ddl)
    await conn.execute(_RECORD, (name, digest))
    return True


class CreatedOnce:
    """For the library's recorders: their tables, indexes and functions are created once per
    text. The library runs `CREATE UNIQUE INDEX IF NOT EXISTS` on the event store's table at
    every start, which waits for a SHARE lock: behind every save in flight, and every save
    after it waits too."""

    events_table_name: str
    sql_create_statements: list[Composed]

    def _create_table(self, curs: psycopg.Cursor[Any]) -> None:
        curs.execute(LOCK)
        name = f"recorder:{self.events_table_name}"
        digest = _digest(";\n".join(s.as_string(curs) for s in self.sql_create_statements))
        curs.execute(_APPLIED)
        if curs.execute(_SEEN, (name, digest)).fetchone() is not None:
            return
        super()._create_table(curs)  # type: ignore[misc]
        curs.execute(_RECORD, (name, digest))
