"""The event store (eventsourcing on PostgreSQL) and the group committer in front of it.

The library serialises writers with a table lock and commits once per save, so one
save per command caps throughput at a few hundred commands a second. The group
committer saves every command that is waiting in one transaction and still answers
each command on its own; a batch that clashes on a version is saved again one
command at a time so only the loser sees the clash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording

EVENTS_TABLE = "erp_events"  # the application name "ERP" gives this table and NOTIFY channel


class VersionConflict(Exception):
    """Another command changed the aggregate first."""


@dataclass(frozen=True)
class Saved:
    aggregate_id: UUID
    version: int
    position: int  # notification id (global log position) of the last event saved


@dataclass(frozen=True)
class EventMetadata:
    tenant_id: str
    correlation_id: str
    causation_id: str

    def as_dict(self) -> dict[str, str]:
        return {
            "tenant_id": self.tenant_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        }


def stamp(aggregate: Aggregate, metadata: EventMetadata) -> None:
    """Puts the command's metadata on each pending event, where the mapper stores it.

    It is not a field of the domain events (the domain knows nothing of requests):
    the library stores an event's whole `__dict__` and passes only the decorated
    method's parameters back when it applies the event.
    """
    for pending in aggregate.pending_events:
        object.__setattr__(pending, "metadata", metadata.as_dict())


def event_metadata(domain_event: object) -> dict[str, str]:
    found = vars(domain_event).get("metadata")
    return found if isinstance(found, dict) else {}


def eventsourcing_env(database_url: str, pool_size: int) -> dict[str, str]:
    url = urlsplit(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "postgres",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(pool_size),
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "CREATE_TABLE": "y",
    }


class ErpEventStore(Application[UUID]):
    name = "ERP"


def _saved(aggregate: Aggregate, recordings: Sequence[Recording[UUID]]) -> Saved:
    positions = [r.notification.id for r in recordings if r.notification.originator_id == aggregate.id]
    return Saved(aggregate.id, aggregate.version, max(positions))


@dataclass
class _Waiting:
    aggregate: Aggregate
    answer: asyncio.Future[Saved]


class GroupCommitter:
    def __init__(self, store: ErpEventStore, max_batch: int) -> None:
        self._store = store
        self._max_batch = max_batch
        self._waiting: deque[_Waiting] = deque()
        self._wake = asyncio.Event()

    async def save(self, aggregate: Aggregate) -> Saved:
        waiting = _Waiting(aggregate, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._wake.set()
        return await waiting.answer

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch = self._take_batch()
                outcomes = await asyncio.to_thread(self._save_batch, [w.aggregate for w in batch])
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    if waiting.answer.done():  # the caller went away
                        continue
                    if isinstance(outcome, BaseException):
                        waiting.answer.set_exception(outcome)
                    else:
                        waiting.answer.set_result(outcome)

    def _take_batch(self) -> list[_Waiting]:
        """Takes up to max_batch commands, each aggregate at most once: a second
        command on the same aggregate goes in the next batch, where it clashes alone."""
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        ids: set[UUID] = set()
        while self._waiting and len(batch) < self._max_batch:
            waiting = self._waiting.popleft()
            if waiting.answer.done():
                continue
            if waiting.aggregate.id in ids:
                later.append(waiting)
            else:
                ids.add(waiting.aggregate.id)
                batch.append(waiting)
        self._waiting.extendleft(reversed(later))
        return batch

    def _save_batch(self, aggregates: list[Aggregate]) -> list[Saved | BaseException]:
        pending = [list(a.pending_events) for a in aggregates]
        try:
            recordings = self._store.save(*aggregates)
        except IntegrityError:
            for aggregate, events in zip(aggregates, pending, strict=True):
                aggregate.pending_events[:] = events
            return [self._save_one(a) for a in aggregates]
        except Exception as error:
            return [error for _ in aggregates]
        return [_saved(a, recordings) for a in aggregates]

    def _save_one(self, aggregate: Aggregate) -> Saved | BaseException:
        try:
            return _saved(aggregate, self._store.save(aggregate))
        except IntegrityError:
            return VersionConflict(f"aggregate {aggregate.id} was changed by another command")
        except Exception as error:
            return error


def close_store(store: ErpEventStore) -> None:
    with contextlib.suppress(Exception):
        store.close()


def store_for(database_url: str, pool_size: int) -> ErpEventStore:
    env: dict[str, Any] = eventsourcing_env(database_url, pool_size)
    return ErpEventStore(env=env)
