"""Stopping a role's work: nothing it started outlives it."""

from __future__ import annotations

import asyncio
import contextlib

from streams.leadership import _race, stop_tasks


async def _stubborn(seconds: float, ended: asyncio.Event) -> None:
    """Ignores cancellation for `seconds`, as a library's `wait_for` may (CPython gh-86296)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(left)
    ended.set()


async def test_stopping_a_role_waits_for_its_work_even_when_cancelled_again() -> None:
    ended = asyncio.Event()
    role = asyncio.create_task(_race(_stubborn(1.2, ended), asyncio.sleep(3600)))
    await asyncio.sleep(0.05)
    # stop_tasks cancels `role` again every 0.5 s while it runs; each cancellation lands in
    # `_race` stopping its own tasks
    await stop_tasks([role])
    assert ended.is_set(), "the role's work still ran after the role was stopped"
    assert role.cancelled()


async def test_stop_tasks_still_ends_its_tasks_when_its_caller_is_cancelled() -> None:
    ended = asyncio.Event()
    work = asyncio.create_task(_stubborn(0.6, ended))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(stop_tasks([work]))
    await asyncio.sleep(0.05)
    stopping.cancel()
    await asyncio.wait([stopping])
    assert ended.is_set() and work.done()
    assert stopping.cancelled()  # the cancellation is kept, not swallowed
