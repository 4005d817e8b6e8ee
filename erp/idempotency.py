"""Idempotency keys, recorded in the transaction that stores the command's events.

A command sent again with the same `Idempotency-Key` and the same request answers the
first result and stores nothing; the same key with another request is refused.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed
from psycopg_pool import PoolTimeout

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
    unretried = method.__wrapped__

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


class ErpRecorder(PostgresApplicationRecorder):
    """The library's recorder, also writing idempotency keys in the events' transaction."""

    insert_events = retried_unless_unreachable(PostgresApplicationRecorder.insert_events)
    select_events = retried_unless_unreachable(PostgresApplicationRecorder.select_events)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(Composed([SQL(DDL)]))

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Any,
        *,
        idempotency: list[IdempotencyRecord] | None = None,
        **kwargs: Any,
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        if idempotency:
            curs.executemany(
                "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, aggregate_id, version) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(r.tenant_id, r.key, r.fingerprint, r.aggregate_id, r.version)
                 for r in idempotency],
            )


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

