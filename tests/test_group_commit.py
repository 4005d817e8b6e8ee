"""The group committer: many commands per transaction, each answered on its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from aggregates.opportunity import Opportunity
from erp.aggregate_cache import CacheFollower, CacheLoader
from erp.commands import CommandContext, CommandRunner, Loader, NotFound, tenancy
from erp.embedded import free_port
from erp.eventstore import (
    CommitterStopped,
    ErpEventStore,
    EventMetadata,
    GroupCommitter,
    Saved,
    VersionConflict,
    stamp,
    store_for,
)
from tests.conftest import eventually


def opportunity(i: int = 0) -> Opportunity:
    return Opportunity.open(tenant_id="t", customer_id=f"c{i}", title="deal", owner="o")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ErpEventStore]:
    events = await asyncio.to_thread(store_for, database_url, 4)
    yield events
    events.close()


@pytest.fixture
async def committer(store: ErpEventStore, database_url: str) -> AsyncIterator[GroupCommitter]:
    running = GroupCommitter(store, database_url, max_batch=64)
    task = asyncio.create_task(running.run())
    yield running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_commands_waiting_together_share_a_transaction(
    committer: GroupCommitter, store: ErpEventStore
) -> None:
    saved = await asyncio.gather(*(committer.save(opportunity(i)) for i in range(200)))
    positions = sorted(s[0].position for s in saved)
    assert positions == list(range(1, 201))  # each answered with its own log position
    assert store.recorder.max_notification_id() == 200


async def test_a_clash_is_answered_to_the_loser_only(
    committer: GroupCommitter, store: ErpEventStore
) -> None:
    first = opportunity()
    await committer.save(first)
    stale_a: Opportunity = store.repository.get(first.id)
    stale_b: Opportunity = store.repository.get(first.id)
    stale_a.change_stage("proposal")
    stale_b.change_stage("negotiation")
    others = [opportunity(i) for i in range(1, 10)]
    results = await asyncio.gather(
        committer.save(stale_a), committer.save(stale_b),
        *(committer.save(o) for o in others), return_exceptions=True,
    )
    assert isinstance(results[1], VersionConflict)
    assert not any(isinstance(r, BaseException) for r in results[:1] + results[2:])
    assert store.repository.get(first.id).stage == "proposal"


async def test_a_commit_whose_answer_was_lost_is_recognised_as_ours(
    committer: GroupCommitter, store: ErpEventStore
) -> None:
    """A save whose connection broke is tried again; if the first try had committed,
    the retry clashes with our own events, which is a success, not a conflict."""
    o = opportunity()
    o.win(Decimal("10"))
    pending = list(o.pending_events)
    store.save(o)  # committed, but pretend the answer never came
    o.pending_events[:] = pending
    outcome = await committer._save_one((o,), [pending])
    assert not isinstance(outcome, BaseException)
    assert outcome[0].version == 2 and outcome[0].position == 2

    rival: Opportunity = store.repository.get(o.id, version=1)  # decided on the older version
    rival.change_stage("proposal")  # its version 2 is not the stored one
    theirs = list(rival.pending_events)
    assert isinstance(await committer._save_one((rival,), [theirs]), VersionConflict)


async def test_a_clash_that_cannot_be_checked_fails_that_command_and_the_committer_goes_on(
    committer: GroupCommitter, store: ErpEventStore, database_url: str
) -> None:
    """A clash is checked against the stored events on the store's own connections; when
    those are dead (the database restarted under them), that command fails, not the committer."""
    first = opportunity()
    await committer.save(first)
    stale: Opportunity = store.repository.get(first.id)  # a pooled connection of the store's
    other = await asyncio.to_thread(store_for, database_url, 1)
    try:
        theirs: Opportunity = other.repository.get(first.id)
        theirs.change_stage("proposal")
        other.save(theirs)  # another instance's change: this committer has not seen it
    finally:
        other.close()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                           "AND application_name <> 'erp-commit'")
    stale.change_stage("negotiation")
    with pytest.raises(Exception) as failed:
        await committer.save(stale)
    assert not isinstance(failed.value, CommitterStopped), failed.value
    saved = await committer.save(opportunity(1))  # the committer carries on
    assert saved[0].version == 1


async def test_several_aggregates_of_one_command_are_saved_together_or_not_at_all(
    committer: GroupCommitter, store: ErpEventStore
) -> None:
    existing = opportunity()
    await committer.save(existing)
    stale: Opportunity = store.repository.get(existing.id)
    store_copy: Opportunity = store.repository.get(existing.id)
    store_copy.change_stage("proposal")
    await committer.save(store_copy)
    stale.change_stage("negotiation")  # will clash
    fresh = opportunity(2)
    with pytest.raises(VersionConflict):
        await committer.save(fresh, stale)
    assert store.recorder.select_events(fresh.id) == []  # not saved without its partner


async def test_a_stopped_committer_refuses_instead_of_hanging(store: ErpEventStore,
                                                              database_url: str) -> None:
    committer = GroupCommitter(store, database_url, max_batch=8)
    task = asyncio.create_task(committer.run())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(CommitterStopped):
        await asyncio.wait_for(committer.save(opportunity()), 1)


async def test_cached_aggregates_see_other_instances_changes_and_refused_decisions_leave_no_trace(
    database_url: str,
) -> None:
    """Two instances with aggregate caches on one database: each load brings the cached
    aggregate up to date, and a decision that changed a loaded aggregate without saving
    it leaves the cached one untouched."""
    first = await asyncio.to_thread(store_for, database_url, 2, cache_size=100)
    second = await asyncio.to_thread(store_for, database_url, 2, cache_size=100)
    try:
        opportunity = Opportunity.open(tenant_id="t", customer_id="c", title="Fleet", owner="o")
        stamp(opportunity, EventMetadata("t", "x", "x"))
        await asyncio.to_thread(first.save, opportunity)
        cached: Any = await asyncio.to_thread(first.repository.get, opportunity.id)
        assert cached.stage == "qualification"

        theirs: Any = await asyncio.to_thread(second.repository.get, opportunity.id)
        theirs.change_stage("proposal")
        stamp(theirs, EventMetadata("t", "y", "y"))
        await asyncio.to_thread(second.save, theirs)
        seen: Any = await asyncio.to_thread(first.repository.get, opportunity.id)
        assert (seen.stage, seen.version) == ("proposal", 2)

        seen.change_stage("negotiation")  # decided, never saved (refused, say)
        again: Any = await asyncio.to_thread(first.repository.get, opportunity.id)
        assert (again.stage, again.version, again.pending_events) == ("proposal", 2, [])
    finally:
        first.close()
        second.close()


async def test_an_aggregate_saved_here_is_cached_as_saved_and_still_brought_up_to_date(
    database_url: str,
) -> None:
    """The next command on an aggregate this process saved loads only newer events (the
    library leaves saved aggregates out of a fast-forwarding cache)."""
    store = await asyncio.to_thread(store_for, database_url, 2, cache_size=100)
    other = await asyncio.to_thread(store_for, database_url, 2, cache_size=100)
    committer = GroupCommitter(store, database_url, max_batch=64)
    task = asyncio.create_task(committer.run())
    try:
        assert store.repository.cache is not None
        mine = opportunity()
        stamp(mine, EventMetadata("t", "x", "x"))
        await committer.save(mine)
        cached: Any = store.repository.cache.get(mine.id)  # KeyError if left out
        assert (cached.id, cached.version) == (mine.id, 1)

        theirs: Any = await asyncio.to_thread(other.repository.get, mine.id)
        theirs.change_stage("proposal")
        stamp(theirs, EventMetadata("t", "y", "y"))
        await asyncio.to_thread(other.save, theirs)
        seen: Any = await asyncio.to_thread(store.repository.get, mine.id)
        assert (seen.stage, seen.version) == ("proposal", 2) and seen is not cached
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
        other.close()


async def test_a_decision_needing_nothing_from_the_database_is_decided_on_the_event_loop(
    store: ErpEventStore, committer: GroupCommitter
) -> None:
    runner = CommandRunner(store, committer, retries=0)
    ctx = CommandContext("t", EventMetadata("t", "x", "x"))
    await tenancy.register(runner, ctx, name="T Ltd")
    threads: list[str] = []

    def open_one(load: Loader) -> Opportunity:
        threads.append(threading.current_thread().name)
        return Opportunity.open(tenant_id="t", customer_id="c", title="t", owner="o",
                                stages=load.read_settings().stages)

    def stage_it(load: Loader) -> Opportunity:
        threads.append(threading.current_thread().name)
        found = load.target(Opportunity, saved.aggregate_id)
        found.change_stage("proposal")
        return found

    runner.settings_cache.forget("t")
    await runner.execute(CTX, open_one)  # settings not cached yet: loaded in a thread
    saved = await runner.execute(CTX, open_one)  # cached now: on the event loop, once
    await runner.execute(CTX, stage_it)  # loads an aggregate: stopped on the loop, decided in a thread
    loop_thread = threading.current_thread().name
    assert threads[0] == loop_thread and threads[1] != loop_thread  # first: tried inline, then a thread
    assert threads[2] == loop_thread  # second: inline only
    assert threads[3] == loop_thread and threads[4] != loop_thread and len(threads) == 5


@pytest.fixture
async def cached_runner(database_url: str) -> AsyncIterator[tuple[CommandRunner, ErpEventStore]]:
    """A runner whose store caches aggregates (retries=0: a clash it counts fails the command),
    and another instance's store on the same database."""
    store = await asyncio.to_thread(store_for, database_url, 2, cache_size=100)
    other = await asyncio.to_thread(store_for, database_url, 2)
    committer = GroupCommitter(store, database_url, max_batch=64)
    task = asyncio.create_task(committer.run())
    runner = CommandRunner(store, committer, retries=0)
    await tenancy.register(runner, CommandContext("t", EventMetadata("t", "x", "x")), name="T Ltd")
    yield runner, other
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    store.close()
    other.close()


CTX = CommandContext("t", EventMetadata("t", "x", "x"))


def change_elsewhere(store: ErpEventStore, opportunity_id: Any, stage: str) -> None:
    theirs: Opportunity = store.repository.get(opportunity_id)
    theirs.change_stage(stage)
    stamp(theirs, EventMetadata("t", "y", "y"))
    store.save(theirs)


async def cached_then_changed_elsewhere(runner: CommandRunner, other: ErpEventStore, stage: str) -> Saved:
    """An opportunity opened (and cached) here, then moved to `stage` by another instance."""
    opened = await runner.execute(CTX, lambda load: opportunity())
    await asyncio.to_thread(change_elsewhere, other, opened.aggregate_id, stage)
    return opened


async def test_a_decision_on_a_stale_cached_aggregate_is_decided_again_on_the_stored_one(
    cached_runner: tuple[CommandRunner, ErpEventStore],
) -> None:
    runner, other = cached_runner
    opened = await cached_then_changed_elsewhere(runner, other, "proposal")  # cache: v1
    decided_in: list[str] = []

    def rename(load: Loader) -> Opportunity:
        decided_in.append(threading.current_thread().name)
        found = load.target(Opportunity, opened.aggregate_id)
        found.update(title=f"renamed {len(decided_in)}")
        return found

    saved = await runner.execute(CTX, rename)  # retries=0, yet no 409: the stale copy is no clash
    assert saved.version == 3
    stored: Opportunity = other.repository.get(opened.aggregate_id)
    assert (stored.title, stored.stage) == ("renamed 2", "proposal")  # the other change kept
    loop = threading.current_thread().name
    assert decided_in[0] == loop and decided_in[1] != loop and len(decided_in) == 2
    again = await runner.execute(CTX, rename)  # the cache brought up to date: inline, once
    assert again.version == 4 and decided_in[2] == loop and len(decided_in) == 3


async def test_a_refusal_on_a_cached_aggregate_is_checked_against_the_stored_one(
    cached_runner: tuple[CommandRunner, ErpEventStore],
) -> None:
    runner, other = cached_runner
    opened = await cached_then_changed_elsewhere(runner, other, "proposal")

    def back_to_qualification(load: Loader) -> Opportunity:
        found = load.target(Opportunity, opened.aggregate_id)
        found.change_stage("qualification")  # the cached copy is there already: refused
        return found

    saved = await runner.execute(CTX, back_to_qualification)
    assert saved.version == 3
    stored: Opportunity = other.repository.get(opened.aggregate_id)
    assert stored.stage == "qualification"


async def test_an_aggregate_a_decision_only_reads_is_read_from_the_store(
    cached_runner: tuple[CommandRunner, ErpEventStore],
) -> None:
    """Only a changed aggregate's version is checked by the save: one only read must be current."""
    runner, other = cached_runner
    opened = await cached_then_changed_elsewhere(runner, other, "negotiation")

    def follow_up(load: Loader) -> Opportunity:
        lead = load.get(Opportunity, opened.aggregate_id)
        return Opportunity.open(tenant_id="t", customer_id="c", title=f"after {lead.stage}", owner="o")

    saved = await runner.execute(CTX, follow_up)
    assert other.repository.get(saved.aggregate_id).title == "after negotiation"


async def test_the_follower_evicts_what_other_processes_change_and_keeps_what_this_one_saved(
    cached_runner: tuple[CommandRunner, ErpEventStore], database_url: str,
) -> None:
    runner, other = cached_runner
    cache: Any = runner.store.repository.cache
    before = await runner.execute(CTX, lambda load: opportunity(1))  # cached before the follower
    follower = CacheFollower(runner.store, database_url)
    task = asyncio.create_task(follower.run())
    try:
        await eventually(lambda: asyncio.sleep(0, follower.position is not None))
        assert before.aggregate_id not in cache.cache  # of unknown age when the follower started
        mine = await runner.execute(CTX, lambda load: opportunity(2))
        theirs = await runner.execute(CTX, lambda load: opportunity(3))
        await asyncio.to_thread(change_elsewhere, other, theirs.aggregate_id, "proposal")
        await eventually(lambda: asyncio.sleep(0, theirs.aggregate_id not in cache.cache))
        assert mine.aggregate_id in cache.cache and follower.evicted == 1
        assert follower.position == theirs.position + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_aggregate_not_in_the_cache_is_loaded_into_it_and_decided_on_the_event_loop(
    database_url: str,
) -> None:
    """The loader reads the latest snapshot and the events after it in one query: the
    aggregate it caches is the one the library loads, and the command on it is decided on
    the event loop; an id with nothing stored is still refused as not found."""
    store = await asyncio.to_thread(store_for, database_url, 2, snapshot_interval=3, cache_size=100)
    events_only = await asyncio.to_thread(store_for, database_url, 2)
    committer = GroupCommitter(store, database_url, max_batch=64)
    loader = CacheLoader(store, database_url)
    await loader.pool.open()
    task = asyncio.create_task(committer.run())
    try:
        runner = CommandRunner(store, committer, retries=0, loader=loader)
        await tenancy.register(runner, CTX, name="T Ltd")
        threads: list[str] = []

        def open_one(load: Loader) -> Opportunity:
            return Opportunity.open(tenant_id="t", customer_id="c", title="t", owner="o",
                                    stages=load.read_settings().stages)

        def rename(title: str) -> Any:
            def decide(load: Loader) -> Opportunity:
                threads.append(threading.current_thread().name)
                found = load.target(Opportunity, saved.aggregate_id)
                found.update(title=title)
                return found
            return decide

        saved = await runner.execute(CTX, open_one)
        for n in range(6):
            await runner.execute(CTX, rename(f"title {n}"))  # snapshots at versions 3 and 6
        assert store.repository.cache is not None
        for cached_id in list(store.repository.cache.cache):
            store.repository.cache.get(cached_id, evict=True)
        threads.clear()
        done = await runner.execute(CTX, rename("after the cache was emptied"))
        assert done.version == 8 and loader.loaded == 1
        assert set(threads) == {threading.current_thread().name}  # never in a worker thread
        cached = store.repository.cache.get(saved.aggregate_id)
        stored: Any = await asyncio.to_thread(events_only.repository.get, saved.aggregate_id)
        assert vars(cached) == vars(stored) and stored.title == "after the cache was emptied"

        nobody = Opportunity.create_id()
        with pytest.raises(NotFound):
            await runner.execute(CTX, lambda load: load.target(Opportunity, nobody))
        assert loader.loaded == 1

        # a load that read the stored aggregate before a save cached a newer one keeps the newer
        newer: Any = await asyncio.to_thread(events_only.repository.get, saved.aggregate_id)
        newer.update(title="decided meanwhile")
        store.repository.cache.put(saved.aggregate_id, newer)
        assert await loader.load(saved.aggregate_id)
        assert store.repository.cache.get(saved.aggregate_id) is newer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loader.pool.close()
        store.close()
        events_only.close()


async def test_a_database_out_of_reach_fails_the_load_at_once_instead_of_waiting_again_in_a_thread(
    database_url: str,
) -> None:
    store = await asyncio.to_thread(store_for, database_url, 2, cache_size=100)
    committer = GroupCommitter(store, database_url, max_batch=64)
    nowhere = CacheLoader(store, f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    await nowhere.pool.open()
    task = asyncio.create_task(committer.run())
    try:
        runner = CommandRunner(store, committer, retries=0)
        await tenancy.register(runner, CTX, name="T Ltd")
        opened = await runner.execute(CTX, lambda load: Opportunity.open(
            tenant_id="t", customer_id="c", title="t", owner="o", stages=load.read_settings().stages))
        assert store.repository.cache is not None
        store.repository.cache.get(opened.aggregate_id, evict=True)

        def rename(load: Loader) -> Opportunity:
            found = load.target(Opportunity, opened.aggregate_id)
            found.update(title="renamed")
            return found

        runner = CommandRunner(store, committer, retries=0, loader=nowhere)
        with pytest.raises(PoolTimeout):
            await runner.execute(CTX, rename)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nowhere.pool.close()
        store.close()
