"""Following a PostgreSQL NOTIFY channel for as long as the process runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

log = structlog.get_logger("erp.listening")


async def listen_forever(database_url: str, channel: str, *, name: str,
                         caught_up: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
                         notified: Callable[[str], Awaitable[None]]) -> None:
    """LISTENs on `channel`; `caught_up` reads the whole state on each (re)connection (a
    NOTIFY may have been missed meanwhile), `notified` takes each payload. Reconnects after
    any failure, a second later."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                database_url, autocommit=True, application_name=name
            ) as conn:
                await conn.execute(f"LISTEN {channel}")
                await caught_up(conn)
                async for notify in conn.notifies():
                    await notified(notify.payload)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("listener reconnecting", channel=channel, error=repr(error))
            await asyncio.sleep(1.0)


async def wait_for_notifies(conn: psycopg.AsyncConnection[Any], timeout: float | None = None) -> None:
    """Until a NOTIFY on `conn` (or `timeout` seconds), then drops the rest of its backlog:
    one read of the state covers them all."""
    async for _ in conn.notifies(timeout=timeout, stop_after=1):
        break
    async for _ in conn.notifies(timeout=0):
        pass
