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

import psycopg

from projections.base import POSITIONS_CHANNEL, read_positions


class Connection:
    """One keep-alive HTTP/1.1 connection, written by hand: an HTTP client library costs
    more CPU per request than the server does, and on two cores it would be the bottleneck."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, path: str, token: str, body: bytes) -> tuple[int, bytes]:
        self._writer.write(f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                           .encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                      if line.lower().startswith("content-length:"))
        return status, await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()


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
            reached = read_positions(notice.payload).get("opportunities")
            if reached is None:
                continue
            now = time.perf_counter()
            visible = max(visible, reached)
            for seen in [p for p in waiting if p <= visible]:
                freshness.append(now - waiting.pop(seen))
            if sending_done and not waiting:
                all_seen.set()

    latencies: list[float] = []
    failed = 0
    sending_done = False
    connections: asyncio.Queue[Connection] = asyncio.Queue()
    host, port = url.removeprefix("http://").split(":")
    for _ in range(32):
        connections.put_nowait(await Connection.open(host, int(port)))

    async def send(i: int, scheduled: float) -> None:
        nonlocal failed
        body = json.dumps({"customer_id": f"c{i}", "title": f"fixed {i}", "owner": "o"}).encode()
        connection = await connections.get()
        try:
            status, answer = await connection.post("/api/v1/crm/opportunities", token, body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            failed += 1
            connections.put_nowait(await Connection.open(host, int(port)))
            return
        connections.put_nowait(connection)
        done = time.perf_counter()
        latencies.append(done - scheduled)
        if status != 201:
            failed += 1
            return
        position = int(json.loads(answer)["log_position"])
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
    while not connections.empty():
        connections.get_nowait().close()
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
