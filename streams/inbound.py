"""Events from other platform services, consumed by a durable JetStream pull consumer.

Delivery is at least once; each effect is exactly once: a command whose idempotency key
is the inbound `event_id` (recorded in the transaction that stores its events), or a
read-model write in the transaction that records the `event_id`. A message that can never
be handled (malformed, refused by a business rule, about something unknown here) is
parked at once in the dead-letter stream with its reason; other failures are retried
with exponential backoff (1 s doubling to 30 s) and parked after `max_deliver` attempts.
The consumer then moves on. `erp dead-letters` lists, shows and replays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from aggregates.errors import DomainError
from aggregates.tenant_settings import valid_tenant_id
from erp.commands import CommandContext, NotFound, NothingChanged
from erp.eventstore import EventMetadata
from erp.idempotency import INBOUND_KEY_PREFIX, IdempotencyKey, IdempotencyKeyReused
from erp.identity import Forbidden
from streams import envelope as env

log = structlog.get_logger("erp.inbound")

DEAD_LETTER_SUBJECTS = ["dlq.>"]  # dlq.<consumer>.<original subject>
DLQ_CONSUMER, DLQ_ERROR, DLQ_ATTEMPTS = "Erp-Dlq-Consumer", "Erp-Dlq-Error", "Erp-Dlq-Attempts"
DLQ_STREAM, DLQ_STREAM_SEQ, DLQ_SUBJECT = "Erp-Dlq-Stream", "Erp-Dlq-Stream-Seq", "Erp-Dlq-Subject"
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
STREAM_WAIT_SECONDS = 2.0

Handler = Callable[[env.Envelope[Any], CommandContext], Awaitable[object]]


@dataclass(frozen=True)
class Subscription:
    subject: str
    payload: type[msgspec.Struct]
    handle: Handler


class Unhandleable(Exception):
    """This message will never succeed: it is not retried."""


class ConsumerGone(Exception):
    """The durable consumer was deleted (its stream recreated, or by an operator)."""


async def consume_durable(js: JetStreamContext, stream: str, durable: str,
                          create: Callable[[], Awaitable[None]], batch: int,
                          deliver: Callable[[Any], Awaitable[None]]) -> None:
    """Creates the durable consumer and hands each of its messages to `deliver`, one at a
    time, for ever; creates it again if it is deleted."""
    while True:
        try:
            await create()
            sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        except Exception as error:  # NATS unreachable or electing a leader: our place is kept
            log.warning("consumer not reachable; trying again", stream=stream, durable=durable,
                        error=repr(error))
            await asyncio.sleep(1)
            continue
        try:
            await consume(sub, batch, deliver)
        except ConsumerGone:
            log.warning("consumer deleted; creating it again", stream=stream, durable=durable)


async def consume(sub: Any, batch: int, deliver: Callable[[Any], Awaitable[None]]) -> None:
    """Hands each message of a pull subscription to `deliver`, one at a time, until the
    consumer is deleted (ConsumerGone); then ends the subscription (one left open holds
    the connection's drain for 30 s)."""
    try:
        while True:
            try:
                messages = await sub.fetch(batch, timeout=5)
            except NatsTimeout:
                continue
            except Exception as error:  # NATS reconnecting: the durable consumer keeps our place
                log.warning("fetch failed; fetching again", error=repr(error))
                await _check_consumer(sub)
                await asyncio.sleep(1)
                continue
            for msg in messages:
                try:
                    await deliver(msg)
                except Exception as error:  # unacknowledged: JetStream redelivers it after ack_wait
                    log.error("delivery failed; left for redelivery", subject=msg.subject, error=repr(error))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _check_consumer(sub: Any) -> None:
    try:
        await sub.consumer_info()
    except NotFoundError:
        raise ConsumerGone() from None
    except Exception as error:  # NATS unreachable: fetching again will tell
        log.debug("consumer check failed", error=repr(error))


def backoff(attempt: int) -> float:
    """Seconds before delivery `attempt + 1`: 1, 2, 4, ... up to 30."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** (attempt - 1)))


def inbound_envelope(payload: bytes, data_type: type[Any]) -> env.Envelope[Any]:
    """An event of another service, decoded and validated (`env.decode`) with its tenant id
    too: it becomes the tenant of the commands the event causes."""
    envelope = env.decode(payload, data_type)
    if not valid_tenant_id(envelope.tenant_id):
        raise msgspec.ValidationError(f"tenant_id {envelope.tenant_id[:140]!r} is not a tenant id "
                                      "(1-128 of letters, digits and . _ : -) - at `$.tenant_id`")
    return envelope


def context_of(envelope: env.Envelope[Any], subject: str, raw: bytes) -> CommandContext:
    """The command context of an inbound event: its tenant, and its event_id as the
    idempotency key (the effect happens once however often the event is delivered)."""
    event_id = str(envelope.event_id)
    return CommandContext(
        tenant_id=envelope.tenant_id,
        metadata=EventMetadata(envelope.tenant_id, correlation_id=event_id, causation_id=event_id,
                               actor=f"service:{subject.split('.')[0]}"),
        idempotency=IdempotencyKey.of(f"{INBOUND_KEY_PREFIX}{event_id}", "EVENT", subject, raw),
    )


async def ensure_dead_letter_stream(js: JetStreamContext, name: str, replicas: int) -> None:
    config = StreamConfig(name=name, subjects=DEAD_LETTER_SUBJECTS, retention=RetentionPolicy.LIMITS,
                          storage=StorageType.FILE, num_replicas=replicas, duplicate_window=120.0,
                          description="inbound events the ERP could not handle, with the reason")
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)


def deliveries(tries: int) -> int:
    """A consumer's max_deliver for `tries` tries: one more, so that a message whose last try
    ended unanswered (the process stopped while handling it, or its acknowledgement was lost)
    comes once more, to be parked; past max_deliver JetStream would never deliver it again."""
    return tries + 1


def unanswered(attempt: int, tries: int) -> str | None:
    """Why a delivery is parked without being tried: the delivery `deliveries` added."""
    if attempt <= tries:
        return None
    return f"no answer to the last of {tries} tries (the process handling it stopped, or its ack was lost)"


async def park(js: JetStreamContext, dead_letters: str, durable: str, stream: str, msg: Any, reason: str,
               attempts: int) -> None:
    """Into the dead-letter stream with the reason, then off its consumer; published with the
    id of its origin (stream and sequence), so parking it twice (a crash in between, a
    later delivery) keeps one copy."""
    seq = msg.metadata.sequence.stream
    await js.publish(
        f"dlq.{durable}.{msg.subject}", msg.data, stream=dead_letters,
        headers={DLQ_CONSUMER: durable, DLQ_ERROR: reason[:2000], DLQ_ATTEMPTS: str(attempts),
                 DLQ_STREAM: stream, DLQ_STREAM_SEQ: str(seq), DLQ_SUBJECT: msg.subject,
                 "Nats-Msg-Id": f"{stream}:{seq}"})
    log.error("event parked", consumer=durable, subject=msg.subject, reason=reason, stream_seq=seq)
    await msg.term()


class InboundConsumer:
    def __init__(self, js: JetStreamContext, stream: str, durable: str,
                 subscriptions: Sequence[Subscription], *, dead_letters: str, max_deliver: int = 20,
                 in_order: bool = False, batch: int = 64, ack_wait_seconds: float = 60.0) -> None:
        """`in_order`: one message in flight across every instance, so a later announcement
        is never overtaken by an earlier one that is being retried."""
        self._js = js
        self._stream = stream
        self._durable = durable
        self._dead_letters = dead_letters
        self._by_subject = {s.subject: s for s in subscriptions}
        self._max_deliver = max_deliver
        self._in_order = in_order
        self._batch = 1 if in_order else batch
        self._ack_wait = ack_wait_seconds
        self.handled = 0
        self.terminated = 0  # parked in the dead-letter stream
        self.redelivered = 0  # deliveries after the first (retries and lost acks)
        self.pending = 0  # in the stream for this consumer, as of the last delivery

    async def run(self) -> None:
        await consume_durable(self._js, self._stream, self._durable, self._create, self._batch, self._deliver)

    async def _create(self) -> None:
        config = ConsumerConfig(
            durable_name=self._durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait, max_deliver=deliveries(self._max_deliver),
            filter_subjects=sorted(self._by_subject), max_ack_pending=1 if self._in_order else 1000,
        )
        for attempt in itertools.count():  # the peer's stream may not exist yet
            try:
                await self._js.add_consumer(self._stream, config)
            except NotFoundError:
                if attempt % 30 == 0:
                    log.info("waiting for the stream", stream=self._stream)
                await asyncio.sleep(STREAM_WAIT_SECONDS)
                continue
            log.info("consuming", stream=self._stream, durable=self._durable,
                     subjects=sorted(self._by_subject))
            return

    @property
    def durable(self) -> str:
        return self._durable

    async def _deliver(self, msg: Any) -> None:
        attempt = msg.metadata.num_delivered
        self.pending = msg.metadata.num_pending
        if attempt > 1:
            self.redelivered += 1
        if reason := unanswered(attempt, self._max_deliver):
            await self._park(msg, reason, attempt - 1)
            return
        try:
            await self._handle(msg)
        except Unhandleable as refused:
            await self._park(msg, str(refused), attempt)
        except Exception as error:  # retried: the database or a peer may be back soon
            if attempt >= self._max_deliver:
                await self._park(msg, f"gave up after {attempt} attempts: {error!r}", attempt)
                return
            delay = backoff(attempt)
            log.warning("inbound event failed; retrying", subject=msg.subject, attempt=attempt,
                        max_deliver=self._max_deliver, in_seconds=delay, error=repr(error))
            await msg.nak(delay=delay)
        else:
            self.handled += 1
            await msg.ack()

    async def _park(self, msg: Any, reason: str, attempts: int) -> None:
        await park(self._js, self._dead_letters, self._durable, self._stream, msg, reason, attempts)
        self.terminated += 1

    async def _handle(self, msg: Any) -> None:
        subscription = self._by_subject.get(msg.subject)
        if subscription is None:
            raise Unhandleable(f"no handler for {msg.subject}")
        try:
            envelope = inbound_envelope(msg.data, subscription.payload)
        except msgspec.DecodeError as error:  # ValidationError is a DecodeError
            raise Unhandleable(f"malformed {msg.subject}: {error}") from None
        if envelope.event_type != msg.subject:
            raise Unhandleable(f"event_type {envelope.event_type!r} arrived on {msg.subject}")
        try:
            await subscription.handle(envelope, context_of(envelope, msg.subject, msg.data))
        except NothingChanged:
            pass  # already as announced: a repeat, or an update that changes nothing here
        except (DomainError, IdempotencyKeyReused, Forbidden, NotFound) as error:
            # Forbidden: a user of a tenant never announced; in order, waiting will not help.
            raise Unhandleable(f"{msg.subject} refused: {error}") from None
