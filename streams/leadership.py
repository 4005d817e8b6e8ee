"""One active instance per role (relay, each projector), chosen by a PostgreSQL advisory lock.

The lock belongs to a session: when the leader dies its connection closes and a
waiting instance gets the lock at once. The leader pings its lock connection and
stops its work the moment the connection (and so the lock) is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = structlog.get_logger("erp.leadership")

PING_SECONDS = 1.0
RETRY_SECONDS = 1.0
# Short: a role stopped by a database outage resumes this long after the database is back at most.
MAX_RETRY_SECONDS = 5.0
# A silent network partition, or the leader's host gone, must end the session (and so free
# the lock) within seconds: on the client (libpq's keepalives, so the leader stops) and on the
# server (its session keepalives, so PostgreSQL drops the lock of a host that is gone; with
# the server's defaults an idle session outlives its host by the kernel's two hours).
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
             "tcp_user_timeout": 10000}
SERVER_KEEPALIVE = ("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
                    "-c tcp_user_timeout=10000")


def lock_conninfo(database_url: str, role: str) -> str:
    """The lock connection's: its own name, and keepalives on both ends."""
    given = conninfo_to_dict(database_url)
    options = f"{given.get('options') or ''} {SERVER_KEEPALIVE}".strip()
    return make_conninfo(database_url, application_name=f"erp-{role}-lock", options=options, **KEEPALIVE)


def lock_key(role: str) -> int:
    digest = hashlib.blake2b(f"erp:{role}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _watch(conn: psycopg.AsyncConnection[object]) -> None:
    while True:
        await asyncio.sleep(PING_SECONDS)
        async with asyncio.timeout(PING_SECONDS * 3):
            await conn.execute("SELECT 1")


async def lead(
    database_url: str,
    role: str,
    work: Callable[[], Awaitable[None]],
    *,
    on_change: Callable[[bool], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> None:
    """Runs `work` whenever this instance holds the role's lock, for ever.

    `work` restarts (after a pause) when it fails (`on_failure` is told why); it is
    cancelled when the lock is lost.
    """
    key = lock_key(role)
    pause = RETRY_SECONDS
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                lock_conninfo(database_url, role), autocommit=True, connect_timeout=5,
            ) as conn:
                log.info("waiting for leadership", role=role)
                await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                log.info("leading", role=role)
                pause = RETRY_SECONDS
                if on_change:
                    on_change(True)
                try:
                    await _race(work(), _watch(conn))
                finally:
                    if on_change:
                        on_change(False)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("role stopped; retrying", role=role, error=repr(error), in_seconds=pause)
            if on_failure:
                on_failure(repr(error))
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_RETRY_SECONDS)


async def _race(*coroutines: Awaitable[None]) -> None:
    """Runs until the first finishes or fails, cancelling the rest; re-raises its error."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        await stop_tasks(tasks)


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancels the tasks and waits until they have ended, cancelling again while any runs:
    on Python 3.11 an `asyncio.wait_for` inside a library (nats-py's requests) can swallow
    a cancellation that coincides with its answer (CPython gh-86296).

    Cancelling the caller does not cut this short (the tasks would outlive it, still
    working against connections their owner is closing); it is raised once they have ended.
    """
    cancelled = False
    while pending := {t for t in tasks if not t.done()}:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending, timeout=0.5)
        except asyncio.CancelledError:
            cancelled = True
    await asyncio.gather(*tasks, return_exceptions=True)
    if cancelled:
        raise asyncio.CancelledError
