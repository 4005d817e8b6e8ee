"""The HTTP protocol `erp serve` runs: whole responses, one write each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from api.server import CoalescingTransport, OneWriteProtocol
from erp.embedded import free_port
from tests.conftest import eventually


class Recorded:
    """The transport's side of the test: what was written, in which calls."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


async def test_a_head_and_its_body_go_out_in_one_call_at_once() -> None:
    recorded = Recorded()
    transport = CoalescingTransport(recorded, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert recorded.writes == []  # held for the body
    transport.write(b"body")
    assert recorded.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]  # not waiting for the step's end
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.write(b"")
    assert recorded.writes[1:] == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert transport.get_extra_info("peername") == "info peername"  # the rest is the transport's


async def test_a_write_alone_goes_out_when_the_step_ends() -> None:
    recorded = Recorded()
    transport = CoalescingTransport(recorded, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"head of a streamed body")
    assert recorded.writes == []
    await asyncio.sleep(0)
    transport.write(b"part 1")
    await asyncio.sleep(0)
    assert recorded.writes == [b"head of a streamed body", b"part 1"]


async def test_closing_sends_what_was_written_and_nothing_after() -> None:
    recorded = Recorded()
    transport = CoalescingTransport(recorded, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"last words")
    transport.close()
    assert recorded.writes == [b"last words"] and recorded.closed
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert recorded.writes == [b"last words"]


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":  # a body in parts, sent across steps of the event loop
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b"%s %s" % (scope["path"].encode(), body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = free_port()
    running = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, http=OneWriteProtocol,
                                            lifespan="off", log_level="warning", access_log=False))
    serving = asyncio.create_task(running.serve())
    await eventually(lambda: _true(running.started), timeout=15)
    yield port
    running.should_exit = True
    await serving


async def _true(value: bool) -> bool:
    return value


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 10)  # until the server closes
    finally:
        writer.close()


def _responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    out: list[tuple[str, dict[str, str], bytes]] = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status, *lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size, _, raw = raw.partition(b"\r\n")
                chunk, raw = raw[:int(size, 16)], raw[int(size, 16) + 2:]
                if not chunk:
                    break
                body += chunk
        else:
            length = int(headers["content-length"])
            body, raw = raw[:length], raw[length:]
        out.append((status, headers, body))
    return out


async def test_pipelined_requests_get_their_answers_in_order(server: int) -> None:
    requests = b"".join(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nn=%d" % (i, i)
                        for i in range(3))
    raw = await _exchange(server, requests + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    responses = _responses(raw)
    assert [(status, body) for status, _, body in responses] == [
        ("HTTP/1.1 200 OK", b"/0 n=0"), ("HTTP/1.1 200 OK", b"/1 n=1"), ("HTTP/1.1 200 OK", b"/2 n=2"),
        ("HTTP/1.1 200 OK", b"/last ")]
    assert responses[-1][1]["connection"] == "close"


async def test_a_body_sent_in_parts_arrives_whole(server: int) -> None:
    raw = await _exchange(server, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    ((status, headers, body),) = _responses(raw)
    assert (status, headers["transfer-encoding"], body) == ("HTTP/1.1 200 OK", "chunked", b"one,two,three")


async def test_a_malformed_request_is_answered_and_closed(server: int) -> None:
    raw: Any = await _exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    ((status, headers, body),) = _responses(raw)
    assert status == "HTTP/1.1 400 Bad Request" and headers["connection"] == "close"
    assert body == b"Invalid HTTP request received."
