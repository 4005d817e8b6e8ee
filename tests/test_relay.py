"""The relay under SIGKILL, takeover and a foreign writer: the stream always equals the log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError

from erp.bootstrap import Endpoints
from erp.eventstore import store_for
from streams.jetstream import NO_PEERS_FOR_PLACEMENT, ensure_stream
from streams.publisher import PipelinedPublisher, header_block
from streams.relay import Relay
from tests.conftest import eventually, record_history, stream_matches_event_store, worker


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


async def messages(js: Any) -> int:
    return int((await js.stream_info("ERP")).state.messages)


async def wait_until_published(js: Any, at_least: int, timeout: float = 60) -> int:
    async def reached() -> int:
        count = await messages(js)
        return count if count >= at_least else 0

    return int(await eventually(reached, timeout=timeout, interval=0.002))


async def test_relay_killed_mid_publishing_leaves_no_gap_or_duplicate(
    endpoints: Endpoints, js: Any
) -> None:
    total = await asyncio.to_thread(record_history, endpoints.database_url, 10_000)
    await ensure_stream(js, "ERP", 1)
    killed_at = []
    helpers: set[int] = set()
    for threshold in (1, total // 3, 2 * total // 3):
        relay = worker("relay", endpoints)
        try:
            killed_at.append(await wait_until_published(js, threshold))
            helpers |= children(relay.pid)
        finally:
            relay.send_signal(signal.SIGKILL)
            relay.wait()
    assert all(0 < n < total for n in killed_at), f"not killed mid-publishing: {killed_at}"
    assert helpers, "the relay started no helper process"

    async def helpers_gone() -> bool:  # they stop themselves once their relay is gone
        return not any(os.path.exists(f"/proc/{pid}") for pid in helpers)  # noqa: ASYNC240 - procfs

    await eventually(helpers_gone, timeout=5)
    relay = worker("relay", endpoints)
    try:
        await wait_until_published(js, total)
        # It keeps following the log: new events arrive by NOTIFY.
        more = await asyncio.to_thread(record_history, endpoints.database_url, 30)
        await wait_until_published(js, total + more)
        await asyncio.sleep(0.3)  # anything extra would show up now
        await stream_matches_event_store(js, endpoints.database_url, total + more)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait()


async def test_a_second_relay_takes_over_when_the_first_dies(
    endpoints: Endpoints, js: Any
) -> None:
    before = await asyncio.to_thread(record_history, endpoints.database_url, 500)
    await ensure_stream(js, "ERP", 1)
    first = worker("relay", endpoints)
    await wait_until_published(js, before)
    second = worker("relay", endpoints)
    await asyncio.sleep(1.5)  # the second is up and waiting for the lock
    # Killed while publishing: events are still being stored (a relay publishes a finished
    # backlog of 10,000 in under a second on a quiet machine).
    recording = asyncio.create_task(asyncio.to_thread(record_history, endpoints.database_url, 10_000))
    await wait_until_published(js, before + 100)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = await messages(js)
    died = time.monotonic()
    try:
        await wait_until_published(js, killed_at + 1)
        takeover = time.monotonic() - died
        total = before + await recording
        await wait_until_published(js, total)
        await stream_matches_event_store(js, endpoints.database_url, total)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait()
    assert killed_at < total
    assert takeover < 5, f"takeover took {takeover:.1f} s"


async def test_a_backlog_read_ahead_by_the_helper_process_is_published_in_order(
    endpoints: Endpoints, js: Any
) -> None:
    await ensure_stream(js, "ERP", 1)
    store = await asyncio.to_thread(store_for, endpoints.database_url, 2)
    relay = Relay(store, endpoints.database_url, js._nc, "ERP", batch_size=40,
                  idle_catch_up_seconds=0.2, ack_timeout_seconds=5, helpers_kept_seconds=6)
    running = asyncio.create_task(relay.run())
    try:
        first = await asyncio.to_thread(record_history, endpoints.database_url, 100)  # a backlog
        await wait_until_published(js, first)
        helpers = {pid for pid in children(os.getpid())
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}  # noqa: ASYNC240 - procfs
        await asyncio.sleep(3)  # the helper processes it started are up
        more = await asyncio.to_thread(record_history, endpoints.database_url, 1_000)
        await wait_until_published(js, first + more)
        assert relay.read_ahead_total > more // 2
        await stream_matches_event_store(js, endpoints.database_url, first + more)

        async def helpers_stopped() -> bool:  # after helpers_kept_seconds without a backlog
            return not any(os.path.exists(f"/proc/{pid}") for pid in helpers)  # noqa: ASYNC240 - procfs

        assert helpers
        await eventually(helpers_stopped, timeout=15)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        store.close()


async def test_the_stream_refuses_a_gap_and_the_relay_recovers(
    endpoints: Endpoints, js: Any
) -> None:
    """A message written behind the relay's back breaks its expected sequence: the server
    refuses the next publish, and every one after it, and the relay resumes from what the
    stream holds. The events after it are saved at once and read together, so the refused
    publish is one that asked for no acknowledgement: the read's last one reports it."""
    await ensure_stream(js, "ERP", 1)
    first = await asyncio.to_thread(record_history, endpoints.database_url, 20)
    store = await asyncio.to_thread(store_for, endpoints.database_url, 2)
    relay = Relay(store, endpoints.database_url, js._nc, "ERP", batch_size=100,
                  idle_catch_up_seconds=0.2, ack_timeout_seconds=5)
    running = asyncio.create_task(relay.run())
    try:
        await wait_until_published(js, first)
        await js.publish("erp.foreign.note", b"{}")  # not the relay's: no log position
        second = await asyncio.to_thread(record_history, endpoints.database_url, 50)
        await wait_until_published(js, first + 1 + second)
        assert relay.failures >= 1
        subjects = []
        positions = []
        for seq in range(1, first + 1 + second + 1):
            msg = await js.get_msg("ERP", seq=seq)
            subjects.append(msg.subject)
            if msg.headers and "Erp-Log-Position" in msg.headers:
                positions.append(int(msg.headers["Erp-Log-Position"]))
        assert subjects.count("erp.foreign.note") == 1
        assert len(positions) == first + second == len(set(positions))
        assert positions == sorted(positions)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        store.close()


async def test_a_header_block_reads_back_as_nats_py_would_have_sent_the_headers(js: Any) -> None:
    await js.add_stream(StreamConfig(name="HEADERS", subjects=["headers.>"]))
    publisher = PipelinedPublisher(js._nc)
    await publisher.start()
    try:
        headers = {"Erp-Correlation-Id": "  two\r\nlines ", "Erp-Log-Position": "7", "Erp-Empty": ""}
        await publisher.send("headers.sent", b"{}", header_block({**headers, "Nats-Msg-Id": "m-1"}))
        ours = await (await publisher.publish("headers.ours", b"{}",
                                              header_block({**headers, "Nats-Msg-Id": "m-2"})))
        theirs = await js.publish("headers.theirs", b"{}", headers={**headers, "Nats-Msg-Id": "m-3"})
        assert (ours.seq, theirs.seq) == (2, 3)  # the unacknowledged one was stored first
        read = [(await js.get_msg("HEADERS", seq=seq)).headers for seq in (1, 2, 3)]
        assert read[2]["Erp-Correlation-Id"] == "two  lines"
        for seq, msg_id in ((1, "m-1"), (2, "m-2")):
            assert read[seq - 1] == {**read[2], "Nats-Msg-Id": msg_id}
    finally:
        await publisher.close()
        await js.delete_stream("HEADERS")


async def test_a_stream_the_server_cannot_make_is_refused_at_once_not_waited_for(js: Any) -> None:
    """Only a settling cluster is waited for; a single server refuses replicas for good."""
    started = time.monotonic()
    with pytest.raises(APIError) as refused:
        await ensure_stream(js, "REPLICATED", 3)
    assert refused.value.err_code != NO_PEERS_FOR_PLACEMENT
    assert time.monotonic() - started < 5
