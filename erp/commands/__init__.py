"""Running commands: load what a decision needs, let the domain decide, save what changed.

One runner serves every module: a module's command is a small `decide` function that
loads aggregates through a `Loader` and calls their methods. The runner re-runs it on a
version clash (the domain re-checks its rules on the newer state), honours If-Match,
and answers a repeated Idempotency-Key with the first result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from prometheus_client import Counter
from psycopg_pool import PoolTimeout

from aggregates.errors import DomainError
from aggregates.tenant_settings import TenantSettings
from erp import idempotency
from erp.aggregate_cache import CacheLoader, cached_copy
from erp.eventstore import (
    ErpEventStore,
    EventMetadata,
    GroupCommitter,
    Overtaken,
    Saved,
    VersionConflict,
    stamp,
)
from erp.idempotency import IdempotencyKey, IdempotencyKeyReused, IdempotencyRecord
from erp.identity import Forbidden
from streams.catalogue import PUBLICATIONS

A = TypeVar("A", bound=Aggregate)
TENANT_CACHE_SECONDS = 30.0  # a suspension stops commands within this long in every process
SETTINGS_CACHE_SECONDS = 5.0  # a settings change reaches other processes' decisions within this long
# Decided again after being overtaken (see `Overtaken`) at most this often, on top of the
# retries: N commands arriving together on one aggregate need N - 1 of them.
OVERTAKEN_RETRIES = 100

COMMANDS = Counter("erp_commands", "commands run by this process, by command and outcome",
                   ["command", "outcome"])
EVENTS = Counter("erp_events_recorded", "events this process recorded, by event type", ["type"])


class NotFound(Exception):
    def __init__(self, kind: str, aggregate_id: UUID | str) -> None:
        super().__init__(f"{kind} {aggregate_id} not found")


class StaleVersion(VersionConflict):
    """The client's expected version (If-Match) is not the current one."""


class UnknownTenant(Forbidden):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} is not registered with the ERP service (the auth "
                         "service registers tenants with auth.tenant.created)")


class TenantSuspended(Forbidden):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} is suspended: it cannot change anything")


class NeedsLoading(Exception):
    """A decision tried on the event loop needs the database: the aggregate is loaded into
    the cache and the decision tried again, or (settings, none stored) it is decided in a
    thread instead."""

    def __init__(self, aggregate_id: UUID | None = None) -> None:
        super().__init__(f"{aggregate_id} is not cached" if aggregate_id else "settings not cached")
        self.aggregate_id = aggregate_id


class NothingChanged(Exception):
    """The command found everything already as asked (e.g. a repeated announcement)."""

    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__(f"{kind_name(type(aggregate))} {aggregate.id} already as asked")
        self.aggregate_id = aggregate.id
        self.version = aggregate.version


def kind_name(kind: type) -> str:
    return "".join(f" {c.lower()}" if c.isupper() else c for c in kind.__name__).strip()


@dataclass(frozen=True)
class CommandContext:
    tenant_id: str
    metadata: EventMetadata
    expected_version: int | None = None  # from If-Match: no transparent retry then
    idempotency: IdempotencyKey | None = None


class SettingsCache:
    """Each tenant's settings as last loaded, for decisions that only read them: loading
    them for every command was a fifth of a command's cost. This process forgets a tenant's
    entry when it saves a change to them; other processes see it within the TTL."""

    def __init__(self, store: ErpEventStore, seconds: float = SETTINGS_CACHE_SECONDS) -> None:
        self._store = store
        self._seconds = seconds
        self._loaded: dict[str, tuple[float, TenantSettings]] = {}

    def get(self, tenant_id: str) -> TenantSettings:
        hit = self._loaded.get(tenant_id)
        if hit is not None and time.monotonic() - hit[0] < self._seconds:
            return hit[1]
        loaded_at = time.monotonic()
        found = Loader(self._store, tenant_id).settings()
        self._loaded[tenant_id] = (loaded_at, found)
        return found

    def peek(self, tenant_id: str) -> TenantSettings | None:
        """The cached settings if still fresh, without loading them."""
        hit = self._loaded.get(tenant_id)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < self._seconds else None

    def forget(self, tenant_id: str) -> None:
        self._loaded.pop(tenant_id, None)


class Loader:
    """Loads aggregates for one decision, in a worker thread, within the tenant; or, `inline`
    on the event loop, serves only copies of cached aggregates and cached settings, and
    refuses to load anything (`NeedsLoading`)."""

    def __init__(self, store: ErpEventStore, tenant_id: str, expected_version: int | None = None,
                 settings_cache: SettingsCache | None = None, *, inline: bool = False) -> None:
        self._store = store
        self.tenant_id = tenant_id
        self._expected_version = expected_version
        self._settings_cache = settings_cache
        self._inline = inline
        self.cached: set[UUID] = set()  # the aggregates served from the cache

    def find(self, kind: type[A], aggregate_id: UUID) -> A | None:
        if self._inline:
            cached = cached_copy(self._store, aggregate_id)
            if cached is None:
                raise NeedsLoading(aggregate_id)
            self.cached.add(aggregate_id)
            aggregate: Aggregate = cached
        else:
            try:
                aggregate = self._store.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return None
        # Another tenant's aggregate is "not found", never "forbidden": that would confirm it exists.
        if not isinstance(aggregate, kind) or getattr(aggregate, "tenant_id", None) != self.tenant_id:
            return None
        return aggregate

    def get(self, kind: type[A], aggregate_id: UUID) -> A:
        found = self.find(kind, aggregate_id)
        if found is None:
            raise NotFound(kind_name(kind), aggregate_id)
        return found

    def target(self, kind: type[A], aggregate_id: UUID) -> A:
        """The aggregate the command is about; If-Match applies to it."""
        return self._matching(self.get(kind, aggregate_id))

    def _matching(self, aggregate: A) -> A:
        expected = self._expected_version
        if expected is not None and aggregate.version != expected:
            raise StaleVersion(f"{kind_name(type(aggregate))} {aggregate.id} is at version "
                               f"{aggregate.version}, not {expected}")
        return aggregate

    def settings(self) -> TenantSettings:
        """The tenant and its settings, loaded now; refused for a tenant the auth service never
        announced."""
        found = self.find(TenantSettings, TenantSettings.id_for(self.tenant_id))
        if found is None:
            raise UnknownTenant(self.tenant_id)
        return found

    def target_settings(self) -> TenantSettings:
        """The tenant's settings as the command's target, to change them: If-Match applies."""
        return self._matching(self.settings())

    def read_settings(self) -> TenantSettings:
        """The tenant's settings to decide by: possibly a few seconds old, shared between
        commands, so never to be changed (use `settings()` for that)."""
        if self._settings_cache is None:
            return self.settings()
        if self._inline:
            cached = self._settings_cache.peek(self.tenant_id)
            if cached is None:
                raise NeedsLoading
            return cached
        return self._settings_cache.get(self.tenant_id)


Decision = Callable[[Loader], Aggregate | Sequence[Aggregate]]
TenantRule = Literal["active", "known", "any"]


class CommandRunner:
    def __init__(self, store: ErpEventStore, committer: GroupCommitter, retries: int,
                 loader: CacheLoader | None = None) -> None:
        self.store = store
        self._committer = committer
        self._loader = loader
        self._retries = retries
        self._active_tenants: dict[str, float] = {}  # tenant -> when last seen active
        self.settings_cache = SettingsCache(store)

    async def execute(self, ctx: CommandContext, decide: Decision, *, tenant: TenantRule = "active") -> Saved:
        """Runs `decide` and saves every aggregate it changed, in one transaction; answers
        the first aggregate's version and log position. The tenant must be registered and
        active, or only registered (`"known"`), or anything (`"any"`: registration itself)."""
        command = decide.__qualname__.split(".<locals>")[0]
        try:
            saved, repeated = await self._execute(ctx, decide, tenant)
        except NothingChanged:
            COMMANDS.labels(command, "unchanged").inc()
            raise
        except VersionConflict:
            COMMANDS.labels(command, "conflict").inc()
            raise
        except Exception as error:
            refused = isinstance(error, (DomainError, Forbidden, NotFound, IdempotencyKeyReused))
            COMMANDS.labels(command, "refused" if refused else "failed").inc()
            raise
        COMMANDS.labels(command, "repeated" if repeated else "saved").inc()
        return saved

    async def _execute(self, ctx: CommandContext, decide: Decision, tenant: TenantRule) -> tuple[Saved, bool]:
        """The saved position, and whether it is a repeated request's first answer."""
        replayed = await self._replay(ctx)
        if replayed is not None:
            return replayed, True
        if tenant != "any":
            await self.check_tenant(ctx.tenant_id, suspended_too=tenant == "known")
        clashes = overtaken = 0
        cached = True  # decide on cached aggregates until one proves stale
        while True:
            decided, cached = await self._decide(ctx, decide, cached=cached)
            aggregates = (decided,) if isinstance(decided, Aggregate) else tuple(decided)
            changed = tuple(a for a in aggregates if a.pending_events)
            if not changed:
                raise NothingChanged(aggregates[0])
            for aggregate in changed:
                stamp(aggregate, ctx.metadata)
            key = None
            if ctx.idempotency is not None:
                key = IdempotencyRecord(ctx.tenant_id, ctx.idempotency.key,
                                        ctx.idempotency.fingerprint, changed[0].id, changed[0].version)
            recorded = [PUBLICATIONS[type(e)].subject if type(e) in PUBLICATIONS else type(e).__qualname__
                        for a in changed for e in a.pending_events]
            try:
                saved = (await self._committer.save(*changed, idempotency=key))[0]
            except VersionConflict as clash:
                replayed = await self._replay(ctx)  # the same request may have won the race
                if replayed is not None:
                    return replayed, True
                if isinstance(clash, Overtaken) and overtaken < OVERTAKEN_RETRIES:
                    overtaken += 1  # the cache holds what overtook it
                elif cached:
                    cached = False  # decided on a stale cached aggregate: again on the stored one
                else:
                    clashes += 1
                if ctx.expected_version is not None or clashes > self._retries:
                    raise
                continue
            if any(isinstance(a, TenantSettings) for a in changed):
                self.settings_cache.forget(ctx.tenant_id)
            for event_type in recorded:
                EVENTS.labels(event_type).inc()
            return saved, False

    async def _decide(self, ctx: CommandContext, decide: Decision, *,
                      cached: bool) -> tuple[Aggregate | Sequence[Aggregate], bool]:
        """The decision, and whether it was taken on cached aggregates.

        On the event loop when it needs nothing from the database (a new aggregate, or, with
        `cached`, aggregates in the cache, loaded into it here if need be: a thread hop costs
        more than deciding), else in a worker thread on the stored state. A decision on
        cached aggregates stands only if it changes every one of them, so that the save's
        version check proves them current; a refusal, or one it only read, is decided again
        on the stored state. Decisions have no effect but their result, so one stopped
        half-way is simply redone."""
        loaded: set[UUID] = set()
        while cached:
            inline = Loader(self.store, ctx.tenant_id, ctx.expected_version, self.settings_cache, inline=True)
            try:
                decided = decide(inline)
            except NeedsLoading as needs:
                if not await self._load(needs.aggregate_id, loaded):
                    break
            except Exception:
                if not inline.cached:
                    raise  # refused on nothing cached (settings aside): as it would be in a thread
                break
            else:
                changed = {a.id for a in ((decided,) if isinstance(decided, Aggregate) else decided)
                           if a.pending_events}
                if inline.cached <= changed:
                    return decided, bool(inline.cached)
                break
        load = Loader(self.store, ctx.tenant_id, ctx.expected_version, self.settings_cache)
        return await asyncio.to_thread(decide, load), False

    async def _load(self, aggregate_id: UUID | None, loaded: set[UUID]) -> bool:
        """Whether `aggregate_id` is now in the cache, loaded once per decision at most (one
        not stored, or one a thread is fast-forwarding, is then decided in a thread)."""
        if aggregate_id is None or aggregate_id in loaded or self._loader is None:
            return False
        loaded.add(aggregate_id)
        try:
            return await self._loader.load(aggregate_id)
        except PoolTimeout:
            raise  # the database unreachable: the thread would wait for it again (503 now)
        except psycopg.Error:  # a broken connection, say: the thread's load retries
            return False

    async def check_tenant(self, tenant_id: str, *, suspended_too: bool = False) -> None:
        """Refuses a tenant the auth service never announced, or a suspended one."""
        seen = self._active_tenants.get(tenant_id)
        if seen is not None and time.monotonic() - seen < TENANT_CACHE_SECONDS:
            return
        tenant = await asyncio.to_thread(Loader(self.store, tenant_id).settings)
        if tenant.status == "active":
            self._active_tenants[tenant_id] = time.monotonic()
        elif not suspended_too:
            raise TenantSuspended(tenant_id)

    async def _replay(self, ctx: CommandContext) -> Saved | None:
        if ctx.idempotency is None:
            return None
        first = await asyncio.to_thread(
            idempotency.find, self.store.recorder, ctx.tenant_id, ctx.idempotency.key  # type: ignore[arg-type]
        )
        if first is None:
            return None
        if first["fingerprint"] != ctx.idempotency.fingerprint:
            raise IdempotencyKeyReused(ctx.idempotency.key)
        return Saved(first["aggregate_id"], first["version"], first["notification_id"])
