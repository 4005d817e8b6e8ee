"""A fixed-rate load of new opportunities, in its own process: latency of each command
(from its scheduled start, so a slow server cannot hide behind a slow client) and the
freshness of its read model (from the 2xx to the NOTIFY of the projector's commit that
contains it). Prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import psycopg

from projections.base import POSITIONS_CHANNEL


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(url: str, token: str, database_url: str, rate: int, seconds: int) -> dict[str, Any]:
    visible = 0  # the opportunities read model's position, as last notified
    waiting: dict[int, float] = {}  # log position -> when its 2xx arrived
    freshness: list[float] = []
    all_seen = asyncio.Event()

    listener = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await listener.execute(f"LISTEN {POSITIONS_CHANNEL}")

    async def listen() -> None:
        nonlocal visible
        async for notice in listener.notifies():
            name, _, position = notice.payload.partition(":")
            if name != "opportunities":
                continue
            now = time.perf_counter()
            visible = max(visible, int(position))
            for seen in [p for p in waiting if p <= visible]:
                freshness.append(now - waiting.pop(seen))
            if sending_done and not waiting:
                all_seen.set()

    latencies: list[float] = []
    failed = 0
    sending_done = False
    headers = {"Authorization": f"Bearer {token}"}
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends: reusing one it is
    # closing at that moment fails the request.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:

        async def send(i: int, scheduled: float) -> None:
            nonlocal failed
            try:
                answer = await client.post("/api/v1/crm/opportunities",
                                           json={"customer_id": f"c{i}", "title": f"fixed {i}", "owner": "o"})
            except httpx.HTTPError:
                failed += 1
                return
            done = time.perf_counter()
            latencies.append(done - scheduled)
            if answer.status_code != 201:
                failed += 1
                return
            position = int(answer.json()["log_position"])
            if position <= visible:
                freshness.append(0.0)
            else:
                waiting[position] = done

        listening = asyncio.create_task(listen())
        tasks = []
        start = time.perf_counter() + 0.1
        for i in range(rate * seconds):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, scheduled)))
        await asyncio.gather(*tasks)
        sending_done = True
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await all_seen.wait()
        listening.cancel()
    await listener.close()
    ms = [x * 1000 for x in latencies]
    fresh = [x * 1000 for x in freshness]
    return {"sent": len(tasks), "failed": failed, "never_visible": len(waiting),
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "fresh_p50_ms": percentile(fresh, 50), "fresh_p99_ms": percentile(fresh, 99)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.token, args.database_url, args.rate, args.seconds))))


if __name__ == "__main__":
    main()
