"""One function per command: load, run the domain rule, save through the group committer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from aggregates.opportunity import Opportunity
from erp.eventstore import (
    ErpEventStore,
    EventMetadata,
    GroupCommitter,
    Saved,
    VersionConflict,
    stamp,
)

A = TypeVar("A", bound=Aggregate)


class NotFound(Exception):
    def __init__(self, kind: str, aggregate_id: UUID) -> None:
        super().__init__(f"{kind} {aggregate_id} not found")


class StaleVersion(VersionConflict):
    """The client's expected version (If-Match) is not the current one."""


@dataclass(frozen=True)
class CommandContext:
    tenant_id: str
    metadata: EventMetadata
    expected_version: int | None = None  # from If-Match: no transparent retry then


class Commands:
    def __init__(self, store: ErpEventStore, committer: GroupCommitter, retries: int) -> None:
        self._store = store
        self._committer = committer
        self._retries = retries

    async def _create(self, ctx: CommandContext, aggregate: Aggregate) -> Saved:
        stamp(aggregate, ctx.metadata)
        return (await self._committer.save(aggregate))[0]

    async def _update(
        self, ctx: CommandContext, kind: type[A], aggregate_id: UUID, act: Callable[[A], None]
    ) -> Saved:
        """Runs `act` on the current aggregate; on a version clash, on the newer one.

        Safe to retry: `act` is a domain method that checks its rules against the
        state it is given, so the retry either applies to the newer state or is refused.
        """
        for attempt in range(self._retries + 1):
            aggregate = await self._load(ctx, kind, aggregate_id)
            if ctx.expected_version is not None and aggregate.version != ctx.expected_version:
                raise StaleVersion(
                    f"{kind.__name__.lower()} {aggregate_id} is at version {aggregate.version}, "
                    f"not {ctx.expected_version}"
                )
            act(aggregate)
            stamp(aggregate, ctx.metadata)
            try:
                return (await self._committer.save(aggregate))[0]
            except VersionConflict:
                if ctx.expected_version is not None or attempt == self._retries:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _load(self, ctx: CommandContext, kind: type[A], aggregate_id: UUID) -> A:
        try:
            aggregate: Aggregate = await asyncio.to_thread(self._store.repository.get, aggregate_id)
        except AggregateNotFoundError:
            raise NotFound(kind.__name__.lower(), aggregate_id) from None
        # Another tenant's aggregate is "not found", never "forbidden": that would confirm it exists.
        if not isinstance(aggregate, kind) or getattr(aggregate, "tenant_id", None) != ctx.tenant_id:
            raise NotFound(kind.__name__.lower(), aggregate_id)
        return aggregate

    async def open_opportunity(
        self,
        ctx: CommandContext,
        *,
        customer_id: str,
        title: str,
        owner: str,
        stage: str | None,
        amount: Decimal | None,
        currency: str,
    ) -> Saved:
        opportunity = Opportunity.open(
            tenant_id=ctx.tenant_id, customer_id=customer_id, title=title, owner=owner,
            stage=stage, amount=amount, currency=currency,
        )
        return await self._create(ctx, opportunity)

    async def change_opportunity_stage(
        self, ctx: CommandContext, opportunity_id: UUID, stage: str
    ) -> Saved:
        return await self._update(ctx, Opportunity, opportunity_id, lambda o: o.change_stage(stage))

    async def win_opportunity(
        self, ctx: CommandContext, opportunity_id: UUID, amount: Decimal | None
    ) -> Saved:
        return await self._update(ctx, Opportunity, opportunity_id, lambda o: o.win(amount))

    async def lose_opportunity(
        self, ctx: CommandContext, opportunity_id: UUID, reason: str, competitor: str | None
    ) -> Saved:
        return await self._update(
            ctx, Opportunity, opportunity_id, lambda o: o.lose(reason, competitor)
        )
