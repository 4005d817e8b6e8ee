"""Stopping a role's work: nothing it started outlives it."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg

from streams.leadership import _race, lock_conninfo, stop_tasks


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


async def test_the_lock_connection_keeps_alive_on_both_ends(database_url: str) -> None:
    """The server's keepalives end the session, and so free the lock, of a leader whose host
    is gone; the client's stop a leader cut off from the database."""
    url = database_url + ("&" if "?" in database_url else "?") + "options=-c%20statement_timeout%3D7000"
    async with await psycopg.AsyncConnection.connect(lock_conninfo(url, "relay:ERP")) as conn:
        cur = await conn.execute("SELECT current_setting('tcp_keepalives_idle'), "
                                 "current_setting('tcp_user_timeout'), current_setting('statement_timeout'), "
                                 "current_setting('application_name'), inet_client_addr() IS NOT NULL")
        assert await cur.fetchone() == ("5", "10000", "7s", "erp-relay:ERP-lock", True)
        client = conn.info.get_parameters()
        assert (client["keepalives_idle"], client["tcp_user_timeout"]) == ("5", "10000")
