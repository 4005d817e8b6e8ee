"""Helper processes that read stored events and turn them into what is published.

Decoding a stored event (the library's stored state, then the domain event) and encoding
its envelope is most of the CPU of the relay and of a rebuild, and a Python process does
it on one core while the other has room. A `HelperProcesses` pool runs such work in
processes of its own, each with its own event store connection; the work is a module-level
function of the caller's that gets the helper's store from `helper_store()`.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from erp.eventstore import ErpEventStore, store_for

T = TypeVar("T")

_store: ErpEventStore | None = None  # in a helper process


def helper_store() -> ErpEventStore:
    assert _store is not None, "not in a helper process"
    return _store


def _open(database_url: str, parent_pid: int) -> None:
    global _store
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    _store = store_for(database_url, 1)
    gc.collect()
    gc.freeze()  # full collections would scan every module's objects (see `erp serve`)


def _exit_when_orphaned(parent_pid: int) -> None:
    """A process killed outright cannot stop its helpers: they stop themselves."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


class HelperProcesses:
    def __init__(self, database_url: str, processes: int = 1) -> None:
        self._processes = processes
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_open, initargs=(database_url, os.getpid()))
        # Started now (about a second each); `ready` says when they are up.
        loop = asyncio.get_running_loop()
        self._started = [loop.run_in_executor(self._pool, int) for _ in range(processes)]

    @property
    def ready(self) -> bool:
        return all(started.done() and started.exception() is None for started in self._started)

    async def wait_ready(self) -> None:
        await asyncio.gather(*self._started)

    def run(self, work: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    async def in_ranges(self, work: Callable[..., T], after: int, end: int, size: int,
                        *args: Any) -> AsyncGenerator[T, None]:
        """`work(after, up_to, size, *args)` for each range (after, up_to] of log positions up to
        `end`, `size` positions each (so at most `size` events: positions have gaps, never
        duplicates), two per helper asked ahead; the results in order."""
        ranges: deque[asyncio.Future[T]] = deque()
        try:
            while after < end or ranges:
                while after < end and len(ranges) < 2 * self._processes:
                    up_to = min(after + size, end)
                    ranges.append(self.run(work, after, up_to, size, *args))
                    after = up_to
                yield await ranges.popleft()
        finally:
            for waiting in ranges:
                waiting.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
