"""The aggregate cache of this process: a decision's copy of a cached aggregate, a loader
that brings stored aggregates into it from the event loop, and a follower that keeps it in
step with other processes' writes.

A command decides on a copy of the cached aggregate without reading the database
(erp/commands); the event store's version check refuses a save decided on a stale copy,
and the runner then decides again on the stored state. So a stale entry costs a retry,
never a wrong result. The follower keeps that rare: after each NOTIFY of the event store,
it evicts every cached aggregate that has newer events than the cached version.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import psycopg
import structlog
from eventsourcing.application import LRUCache, project_aggregate
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent
from psycopg_pool import AsyncConnectionPool

from erp.eventstore import EVENTS_TABLE, POOL_RECONNECT_SECONDS, POOL_WAIT_SECONDS, ErpEventStore
from erp.listening import wait_for_notifies

log = structlog.get_logger("erp.aggregate_cache")

# Events read per query; a follower this far behind (reconnecting after an outage, say)
# forgets the whole cache instead of reading its way through.
FOLLOW_BATCH = 5_000
# At most one read per interval, whatever the rate of NOTIFYs (one per saving transaction):
# at 200 commands/s a read per NOTIFY cost PostgreSQL ~0.1 ms per command. A stale entry
# costs a retry, not a wrong answer, so a few milliseconds more of staleness are cheap.
FOLLOW_INTERVAL_SECONDS = 0.05

_AFTER = (f"SELECT originator_id, originator_version, notification_id FROM {EVENTS_TABLE} "
          "WHERE notification_id > %s ORDER BY notification_id LIMIT %s")
_HEAD = f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"


def cached_copy(store: ErpEventStore, aggregate_id: UUID) -> Aggregate | None:
    """A copy of the cached aggregate, or None when it is not cached or a thread is
    bringing it up to date: the library's fast-forward changes the cached object in place,
    under the lock taken here, and a copy taken meanwhile could be half of each version."""
    repository: Any = store.repository
    cache: LRUCache[UUID, Aggregate] | None = repository.cache
    if cache is None or aggregate_id not in cache.cache:
        return None
    lock = repository._use_fastforward_lock(aggregate_id)  # the library's, version pinned
    try:
        if not lock.acquire(blocking=False):
            return None
        try:
            return decision_copy(cache.get(aggregate_id))
        except KeyError:
            return None
        finally:
            lock.release()
    finally:
        repository._disuse_fastforward_lock(aggregate_id)


# Values a decision cannot change in place: a copy may share them with the cached aggregate.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes, Decimal, UUID, datetime, date})


def decision_copy(aggregate: Aggregate) -> Aggregate:
    """A copy of the aggregate sharing nothing a decision could change with it: containers
    copied, immutable values shared (`copy.deepcopy` copied those too, ~60 µs for an
    opportunity). A value of any other type is deep-copied, unless it is a frozen dataclass
    holding only immutable values."""
    copied = object.__new__(type(aggregate))
    vars(copied).update({name: _copied(value) for name, value in vars(aggregate).items()})
    return copied


def _copied(value: Any) -> Any:
    kind = type(value)
    if kind in _IMMUTABLE or isinstance(value, Enum):
        return value
    if kind is list:
        return [_copied(item) for item in value]
    if kind is dict:
        return {key: _copied(item) for key, item in value.items()}
    if kind is set:
        return {_copied(item) for item in value}
    if kind is tuple or kind is frozenset:
        items = [_copied(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else kind(items)
    if dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        fields = [getattr(value, field.name) for field in dataclasses.fields(value)]
        if all(_copied(field) is field for field in fields):
            return value
    return copy.deepcopy(value)


class CacheLoader:
    """Loads stored aggregates into the cache on the event loop: the latest snapshot and the
    events after it in one query (the library reads them in two, from a worker thread),
    replayed as the library replays them. A command on an aggregate that is not cached
    then decides on the event loop like one on a cached aggregate."""

    def __init__(self, store: ErpEventStore, database_url: str) -> None:
        assert store.repository.cache is not None and store.snapshots is not None
        self._store = store
        self._cache: LRUCache[UUID, Aggregate] = store.repository.cache  # type: ignore[assignment]
        snapshots = store.snapshots.recorder.events_table_name  # type: ignore[attr-defined]
        # One statement, so one snapshot of the database: no snapshot written between two
        # queries can leave a gap between the snapshot read and the events read.
        self._stored = f"""
WITH s AS (SELECT originator_version, topic, state FROM {snapshots}
           WHERE originator_id = %(id)s ORDER BY originator_version DESC LIMIT 1)
SELECT 0 AS part, originator_version, topic, state FROM s
UNION ALL
SELECT 1, originator_version, topic, state FROM {EVENTS_TABLE}
WHERE originator_id = %(id)s AND originator_version > coalesce((SELECT originator_version FROM s), 0)
ORDER BY part, originator_version"""
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url, min_size=1, max_size=4, open=False,
            kwargs={"autocommit": True, "application_name": "erp-load"},
            timeout=POOL_WAIT_SECONDS, reconnect_timeout=POOL_RECONNECT_SECONDS)
        self.loaded = 0

    async def load(self, aggregate_id: UUID) -> bool:
        """Puts the stored aggregate into the cache; False if none is stored."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(self._stored, {"id": aggregate_id}, binary=True)
            rows = await cur.fetchall()
        if not rows:
            return False
        to_domain_event = self._store.mapper.to_domain_event
        aggregate = project_aggregate(None, (
            to_domain_event(StoredEvent(aggregate_id, version, topic, state))
            for _, version, topic, state in rows))
        assert aggregate is not None  # made of at least one stored event
        try:  # a save meanwhile may have cached a newer one: kept
            newer = self._cache.get(aggregate_id).version >= aggregate.version
        except KeyError:
            newer = False
        if not newer:
            self._cache.put(aggregate_id, aggregate)
        self.loaded += 1
        return True


class CacheFollower:
    """Evicts from this process's aggregate cache what other processes change."""

    def __init__(self, store: ErpEventStore, database_url: str) -> None:
        assert store.repository.cache is not None
        self._cache: LRUCache[UUID, Aggregate] = store.repository.cache  # type: ignore[assignment]
        self._database_url = database_url
        self.position: int | None = None  # the last event looked at
        self.evicted = 0

    async def run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True, application_name="erp-aggregate-cache"
                ) as conn:
                    await conn.execute(f"LISTEN {EVENTS_TABLE}")
                    while True:
                        await self.catch_up(conn)
                        await asyncio.sleep(FOLLOW_INTERVAL_SECONDS)
                        await wait_for_notifies(conn)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("aggregate cache follower reconnecting", error=repr(error))
                await asyncio.sleep(1.0)

    async def catch_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Evicts what changed since the last event looked at. The first time, what is cached
        is of unknown age, and after a long absence reading it all costs more than loading
        again: then everything is forgotten."""
        rows = [] if self.position is None else await (
            await conn.execute(_AFTER, (self.position, FOLLOW_BATCH))).fetchall()
        if self.position is None or len(rows) == FOLLOW_BATCH:
            head = await (await conn.execute(_HEAD)).fetchone()
            self._forget_all()
            self.position = int(head[0]) if head else 0
            return
        links = self._cache.cache
        for originator_id, version, _ in rows:
            link = links.get(originator_id)
            if link is not None and link[LRUCache.RESULT].version < version:
                with contextlib.suppress(KeyError):
                    self._cache.get(originator_id, evict=True)
                    self.evicted += 1
        if rows:
            self.position = int(rows[-1][2])

    def _forget_all(self) -> None:
        for aggregate_id in list(self._cache.cache):
            with contextlib.suppress(KeyError):
                self._cache.get(aggregate_id, evict=True)
