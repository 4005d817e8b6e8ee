"""How far each read model has got, for queries that must see their own writes.

A command answers with its log position; a query may ask to wait until the read
model has applied that position. Projectors NOTIFY after each batch; one LISTEN
connection per process keeps the positions and wakes the waiting queries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from erp.listening import listen_forever
from projections.base import POSITIONS_CHANNEL, REPLACED, read_positions


class NotCaughtUp(Exception):
    def __init__(self, projection: str, wanted: int, reached: int, timeout: float) -> None:
        super().__init__(
            f"read model {projection!r} has reached log position {reached}, "
            f"not {wanted}, after waiting {timeout:g} s"
        )
        self.projection = projection
        self.wanted = wanted
        self.reached = reached


class ReadModelPositions:
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._positions: dict[str, int] = {}
        self._changed = asyncio.Condition()

    def position(self, projection: str) -> int:
        return self._positions.get(projection, 0)

    async def run(self) -> None:
        async def notified(payload: str) -> None:
            await self._advance(read_positions(payload), replaced=payload.startswith(REPLACED))

        await listen_forever(self._database_url, POSITIONS_CHANNEL, name="erp-positions",
                             caught_up=self._reload, notified=notified)

    async def _reload(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The checkpoints as stored, even where they are behind what was announced: a rebuild
        may have replaced a read model while the listener was away, and waiting longer than
        needed is safe where answering too early is not."""
        try:
            cur = await conn.execute("SELECT name, log_position FROM projection_checkpoints")
        except psycopg.errors.UndefinedTable:
            return
        await self._advance({name: int(pos) for name, pos in await cur.fetchall()}, replaced=True)

    async def _advance(self, positions: dict[str, int], *, replaced: bool = False) -> None:
        """Positions only move forward, except for read models `replaced` by a rebuild: they
        are where the rebuild ended, and a query waiting for a later write waits for the live
        runner to apply it to the new tables."""
        async with self._changed:
            for name, position in positions.items():
                if replaced or position > self._positions.get(name, 0):
                    self._positions[name] = position
            self._changed.notify_all()

    async def wait(self, projection: str, position: int, timeout: float) -> None:
        if self.position(projection) >= position:
            return
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.position(projection) >= position)
        except TimeoutError:
            # The listener may have missed a NOTIFY while reconnecting: ask once.
            async with await psycopg.AsyncConnection.connect(
                self._database_url, autocommit=True, connect_timeout=2
            ) as conn:
                await self._reload(conn)
            if self.position(projection) < position:
                raise NotCaughtUp(projection, position, self.position(projection), timeout) from None
