"""Pipelined JetStream publishes whose refusals are reported, not lost.

nats-py 2.16's `publish_async` raises a refused publish's error inside its reply
callback instead of failing the future, so the future never completes. This keeps
its own reply inbox and answers every publish with its acknowledgement or refusal.

Headers come encoded (`header_block`): nats-py's publish validates and encodes a header
dict one header at a time, which was about a quarter of the relay's CPU with its ten headers.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nats import errors

_decode_reply = msgspec.json.Decoder(dict[str, Any]).decode
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def header_block(headers: Mapping[str, str]) -> bytes:
    """The headers as the NATS protocol carries them, values cleaned as nats-py's publish
    cleans them (a line break would end the header). The names are the caller's constants."""
    lines = "".join([f"{name}: {value.strip()}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):  # rare: clean them
        lines = "".join([f"{name}: {value.strip().translate(_NEWLINES)}\r\n"
                         for name, value in headers.items()])
    return f"NATS/1.0\r\n{lines}\r\n".encode()


class PublishRefused(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code


@dataclass(frozen=True)
class Ack:
    stream: str
    seq: int
    duplicate: bool


class PipelinedPublisher:
    def __init__(self, nc: NATS, *, max_pending: int = 4000, room_timeout: float = 10.0) -> None:
        self._nc = nc
        self._room_timeout = room_timeout
        self._inbox = nc.new_inbox()
        self._pending: dict[str, asyncio.Future[Ack]] = {}
        self._room = asyncio.Semaphore(max_pending)
        self._tokens = itertools.count()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        for future in list(self._pending.values()):
            future.cancel()

    async def send(self, subject: str, payload: bytes, header: bytes) -> None:
        """Sends one message without asking for its acknowledgement."""
        await self._write(subject, "", payload, header)

    async def publish(self, subject: str, payload: bytes, header: bytes) -> asyncio.Future[Ack]:
        """Sends one message; the future holds its acknowledgement. Waits while
        `max_pending` publishes are unanswered, and refuses after `room_timeout`: replies
        lost in a disconnect never come, and waiting for them for ever would stall."""
        if self._room.locked():
            try:
                async with asyncio.timeout(self._room_timeout):
                    await self._room.acquire()
            except TimeoutError:
                raise PublishRefused(0, f"{len(self._pending)} publishes unanswered for "
                                        f"{self._room_timeout:g} s") from None
        else:
            await self._room.acquire()  # free room: returns at once
        token = str(next(self._tokens))
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def settled(_: asyncio.Future[Ack]) -> None:
            self._room.release()
            self._pending.pop(token, None)

        future.add_done_callback(settled)
        self._pending[token] = future
        try:
            await self._write(subject, f"{self._inbox}.{token}", payload, header)
        except BaseException:
            future.cancel()
            raise
        return future

    async def _write(self, subject: str, reply: str, payload: bytes, header: bytes) -> None:
        """nats-py's `publish` (its checks, then its private send and flush: nats-py is pinned)
        for a header block encoded beforehand."""
        nc = self._nc
        if nc.is_closed:
            raise errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise errors.ConnectionDrainingError
        if len(payload) > nc.max_payload:
            raise errors.MaxPayloadError
        route = f"{subject} {reply}" if reply else subject
        command = b"HPUB %s %d %d\r\n%s%s\r\n" % (
            route.encode(), len(header), len(header) + len(payload), header, payload)
        if not nc.is_connected and (
            nc._max_pending_size <= 0 or len(command) + nc._pending_data_size > nc._max_pending_size
        ):  # disconnected, and its buffer for the reconnection is off or full
            raise errors.OutboundBufferLimitError
        await nc._send_command(command)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.get(msg.subject.rpartition(".")[2])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(PublishRefused(503, "no stream answered"))
            return
        try:
            reply = _decode_reply(msg.data)
        except msgspec.DecodeError:
            future.set_exception(PublishRefused(0, f"unreadable reply {msg.data[:80]!r}"))
            return
        error = reply.get("error")
        if error:
            future.set_exception(
                PublishRefused(int(error.get("err_code", 0)), str(error.get("description")))
            )
        else:
            future.set_result(Ack(reply.get("stream", ""), int(reply["seq"]),
                                  bool(reply.get("duplicate", False))))
