"""A small helper for other Python services that consume the ERP's events.

    async with await ErpSubscriber.connect("nats://nats:4222", durable="treasury-invoicing") as erp:
        @erp.on("erp.opportunity.won", OpportunityWon)
        async def invoice(event: Envelope[OpportunityWon]) -> None: ...
        await erp.run()

It makes (or reuses) a durable pull consumer on the stream `ERP` for the subjects you
handle, decodes each message into the typed envelope from `streams.events` (the same
Structs that produced it), skips an `event_id` it has already handled (JetStream
delivers at least once), and acknowledges only after your handler returns; a handler
that raises gets the message again after a delay, and a message that does not decode is
logged and terminated (it would never decode). Deduplication here is per process
(the last `remember` ids); for exactly-once effects, record `event.event_id` in the
transaction of your effect, as the ERP itself does. See `examples/subscriber.py`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

import nats
from streams import envelope as env

log = structlog.get_logger("erp.subscriber")
T = TypeVar("T", bound=msgspec.Struct)
Handler = Callable[[env.Envelope[Any]], Awaitable[None]]


class ErpSubscriber:
    def __init__(self, nc: NATS, durable: str, *, stream: str = "ERP", remember: int = 100_000,
                 retry_seconds: float = 5.0) -> None:
        self._nc = nc
        self._durable = durable
        self._stream = stream
        self._remember = remember
        self._retry = retry_seconds
        self._handlers: dict[str, tuple[type[msgspec.Struct], Handler]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.handled = 0
        self.refused = 0  # malformed: terminated, never redelivered
        self.duplicates = 0

    @classmethod
    async def connect(cls, url: str, durable: str, **options: Any) -> ErpSubscriber:
        return cls(await nats.connect(url), durable, **options)

    def on(self, subject: str, payload: type[T]) -> Callable[[Handler], Handler]:
        """Registers the handler of one event type (e.g. "erp.opportunity.won")."""

        def register(handler: Handler) -> Handler:
            self._handlers[subject] = (payload, handler)
            return handler

        return register

    async def run(self, *, until: Callable[[], bool] = lambda: False) -> None:
        """Consumes until cancelled (or until `until()` is true after a delivery)."""
        js = self._nc.jetstream()
        await js.add_consumer(self._stream, ConsumerConfig(
            durable_name=self._durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            filter_subjects=sorted(self._handlers), ack_wait=60))
        sub = await js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        try:
            while not until():
                try:
                    messages = await sub.fetch(64, timeout=2)
                except NatsTimeout:
                    continue
                for msg in messages:
                    await self._deliver(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _deliver(self, msg: Any) -> None:
        payload, handler = self._handlers[msg.subject]
        try:
            event = env.decode(msg.data, payload)
        except msgspec.DecodeError as error:  # delivering it again cannot help
            log.error("malformed event; terminated", subject=msg.subject, error=str(error))
            self.refused += 1
            await msg.term()
            return
        key = str(event.event_id)
        if key in self._seen:
            self.duplicates += 1
            await msg.ack()
            return
        try:
            await handler(event)
        except Exception as error:  # delivered again after the delay
            log.warning("handler failed; retrying", subject=msg.subject, event_id=key, error=repr(error))
            await msg.nak(delay=self._retry)
            return
        self._seen[key] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        self.handled += 1
        await msg.ack()

    async def __aenter__(self) -> ErpSubscriber:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self._nc.close()
