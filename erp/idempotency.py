"""Idempotency keys, recorded in the transaction that stores the command's events, and the
event store's recorder that writes both.

A command sent again with the same `Idempotency-Key` and the same request answers the
first result and stores nothing; the same key with another request is refused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Composed, Identifier
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from erp import schema

log = structlog.get_logger("erp.idempotency")

DDL = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant_id text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    aggregate_id uuid NOT NULL,
    version bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
)
"""


INBOUND_KEY_PREFIX = "inbound:"  # + event_id: the keys of other services' events' effects
PURGE_EVERY_SECONDS = 3600.0


async def purge_expired(conn: psycopg.AsyncConnection[Any], hours: int) -> int:
    """Deletes the keys of requests older than `hours`; how many. Other services' events'
    keys are kept: a stream replayed months later must still find its effects done."""
    cur = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => %s) "
        "AND NOT starts_with(key, %s)", (hours, INBOUND_KEY_PREFIX))
    return cur.rowcount


async def purge_expired_forever(pool: AsyncConnectionPool[Any], hours: int) -> None:
    while True:
        try:
            async with pool.connection() as conn:
                purged = await purge_expired(conn, hours)
            if purged:
                log.info("expired idempotency keys deleted", keys=purged, older_than_hours=hours)
        except (psycopg.Error, PoolTimeout) as error:  # the database away: next time
            log.warning("idempotency keys not purged", error=repr(error))
        await asyncio.sleep(PURGE_EVERY_SECONDS)


class IdempotencyKeyReused(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was used for a different request; use a new key"
        )


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    fingerprint: str  # of the request: method, path and body

    @staticmethod
    def of(key: str, method: str, path: str, body: bytes) -> IdempotencyKey:
        digest = hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()
        return IdempotencyKey(key, digest)


@dataclass(frozen=True)
class IdempotencyRecord:
    tenant_id: str
    key: str
    fingerprint: str
    aggregate_id: UUID
    version: int


def retried_unless_unreachable(method: Any) -> Any:
    """`method` of the library without its retry (10 tries, 0.2 s apart), retried the same way
    except when the database is unreachable: each try would first wait out the pool's
    timeout for a connection, and a request learn only after ten of them that it failed."""
    return retried_so(method.__wrapped__)


def retried_so(unretried: Callable[..., Any]) -> Any:
    """`unretried`, tried up to 10 times 0.2 s apart unless the database is unreachable."""

    @functools.wraps(unretried)
    def retried(*args: Any, **kwargs: Any) -> Any:
        for attempt in itertools.count(1):
            try:
                return unretried(*args, **kwargs)
            except (InterfaceError, OperationalError) as error:  # a broken connection, say
                if isinstance(error.__cause__, PoolTimeout) or attempt == _TRIES:
                    raise
                time.sleep(_RETRY_WAIT_SECONDS)
        raise AssertionError("unreachable")  # pragma: no cover

    return retried


_TRIES = 10
_RETRY_WAIT_SECONDS = 0.2


# Stores a save's events and idempotency keys in one statement, so in one round trip and
# one implicit transaction: the library's pipelined insert took about 14 client/server
# exchanges and twice the time. As the library does, the table lock makes commit order
# equal notification-id order (a reader following the log never passes a gap that a
# slower transaction fills later), and NOTIFY wakes the relay.
INSERT_FUNCTION = """
CREATE OR REPLACE FUNCTION {function}(ids uuid[], versions integer[], topics text[], states bytea[],
    key_tenants text[], key_keys text[], key_fingerprints text[], key_aggregates uuid[],
    key_versions bigint[])
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE {table} IN EXCLUSIVE MODE;
    NOTIFY {channel};
    INSERT INTO idempotency_keys (tenant_id, key, fingerprint, aggregate_id, version)
        SELECT * FROM unnest(key_tenants, key_keys, key_fingerprints, key_aggregates, key_versions);
    RETURN QUERY INSERT INTO {table} (originator_id, originator_version, topic, state)
        SELECT e.id, e.version, e.topic, e.state
        FROM unnest(ids, versions, topics, states) WITH ORDINALITY AS e(id, version, topic, state, n)
        ORDER BY e.n
        RETURNING notification_id;
END $$
"""


class ErpRecorder(schema.CreatedOnce, PostgresApplicationRecorder):
    """The library's recorder, storing events with idempotency keys in one round trip."""

    select_events = retried_unless_unreachable(PostgresApplicationRecorder.select_events)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_function = Identifier(f"{self.events_table_name}_insert_v1")
        self.sql_create_statements.append(Composed([SQL(DDL)]))
        self.sql_create_statements.append(SQL(INSERT_FUNCTION).format(
            function=self.insert_function, table=Identifier(self.events_table_name),
            channel=Identifier(self.channel_name)))
        # Parameters in binary: the stored states go as they are, where text would escape every
        # byte for PostgreSQL to parse back (a batch of 20 events: client 1.1-1.4 -> 0.7-0.8 ms,
        # PostgreSQL 0.68-0.85 -> 0.60-0.67 ms).
        self._insert = SQL("SELECT * FROM {}(%b::uuid[], %b::integer[], %b::text[], %b::bytea[], "
                           "%b::text[], %b::text[], %b::text[], %b::uuid[], %b::bigint[])"
                           ).format(self.insert_function)

    def _insert_params(self, stored_events: Sequence[StoredEvent],
                       keys: Sequence[IdempotencyRecord]) -> tuple[list[Any], ...]:
        return ([e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
                [e.topic for e in stored_events], [e.state for e in stored_events],
                [k.tenant_id for k in keys], [k.key for k in keys], [k.fingerprint for k in keys],
                [k.aggregate_id for k in keys], [k.version for k in keys])

    @retried_so
    def insert_events(self, stored_events: Sequence[StoredEvent], *,
                      idempotency: Sequence[IdempotencyRecord] = (), **_: Any) -> list[int]:
        """Stores the events (and the command's idempotency keys); their notification ids, in order."""
        with self.datastore.get_connection() as conn:
            rows = conn.execute(self._insert, self._insert_params(stored_events, idempotency),
                                prepare=True).fetchall()
        # Numbered as inserted, in the events' order: sorted, they pair with the events.
        return sorted(next(iter(row.values())) for row in rows)

    async def insert_events_async(self, pool: AsyncConnectionPool[Any], stored_events: Sequence[StoredEvent],
                                  idempotency: Sequence[IdempotencyRecord]) -> list[int]:
        """`insert_events` on a connection of `pool`, tried as that is, with errors in the
        library's terms (IntegrityError for a clash, OperationalError and InterfaceError for
        a database that is away)."""
        params = self._insert_params(stored_events, idempotency)
        for attempt in itertools.count(1):
            try:
                async with pool.connection() as conn:
                    rows = await (await conn.execute(self._insert, params, prepare=True)).fetchall()
                return sorted(row[0] for row in rows)
            except psycopg.IntegrityError as error:
                raise IntegrityError(str(error)) from error
            except PoolTimeout as error:  # unreachable: each try would wait out the pool again
                raise OperationalError(str(error)) from error
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:  # a broken connection
                if attempt == _TRIES:
                    kind = InterfaceError if isinstance(error, psycopg.InterfaceError) else OperationalError
                    raise kind(str(error)) from error
                await asyncio.sleep(_RETRY_WAIT_SECONDS)
        raise AssertionError("unreachable")  # pragma: no cover


def find(recorder: PostgresApplicationRecorder, tenant_id: str, key: str) -> dict[str, Any] | None:
    """The first answer to this key: fingerprint, aggregate id, version and log position."""
    with recorder.datastore.get_connection() as conn:
        row = conn.execute(
            "SELECT k.fingerprint, k.aggregate_id, k.version, e.notification_id "
            f"FROM idempotency_keys k JOIN {recorder.events_table_name} e "
            "ON e.originator_id = k.aggregate_id AND e.originator_version = k.version "
            "WHERE k.tenant_id = %s AND k.key = %s",
            (tenant_id, key),
        ).fetchone()
    return dict(row) if row else None

