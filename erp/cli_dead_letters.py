"""`erp dead-letters`: inbound events the service could not handle, parked with the reason.

`replay` publishes a dead letter's original message to its original subject, where its
consumer picks it up again (its effect still happens once: the event_id decides), and
removes it from the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

import nats
from erp.embedded import EmbeddedNats
from erp.settings import Settings
from streams.inbound import DLQ_ATTEMPTS, DLQ_CONSUMER, DLQ_ERROR, DLQ_STREAM, DLQ_STREAM_SEQ, DLQ_SUBJECT
from streams.jetstream import server_urls

T = TypeVar("T")


@click.group("dead-letters", help="Inbound events parked after failing (needs ERP_NATS_URL, or an "
                                  "`erp serve` on embedded servers from this folder).")
def dead_letters() -> None:
    pass


@dead_letters.command("list", help="Parked events, oldest first.")
@click.option("--consumer", help="Only this consumer's (e.g. erp-treasury).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
def list_letters(consumer: str | None, limit: int) -> None:
    async def work(js: JetStreamContext, stream: str) -> None:
        letters = await _letters(js, stream, consumer)
        if not letters:
            click.echo("no dead letters")
        for seq, msg in letters[:limit]:
            h = msg.headers or {}
            click.echo(f"{seq}  {h.get(DLQ_CONSUMER)}  {h.get(DLQ_SUBJECT)}  event {_event_id(msg.data)}  "
                       f"attempts {h.get(DLQ_ATTEMPTS)}  {h.get(DLQ_ERROR, '')[:120]}")

    _run(work)


@dead_letters.command("show", help="One parked event: why, and its message.")
@click.argument("seq", type=int)
def show_letter(seq: int) -> None:
    async def work(js: JetStreamContext, stream: str) -> None:
        msg = await _get(js, stream, seq)
        for name, value in sorted((msg.headers or {}).items()):
            click.echo(f"{name}: {value}")
        click.echo(_pretty(msg.data))

    _run(work)


@dead_letters.command("replay", help="Send parked events back to their consumers.")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Every parked event (of --consumer).")
@click.option("--consumer", help="With --all: only this consumer's.")
def replay(seqs: tuple[int, ...], everything: bool, consumer: str | None) -> None:
    if bool(seqs) == everything:
        raise click.UsageError("name the dead letters' sequence numbers, or --all")

    async def work(js: JetStreamContext, stream: str) -> None:
        chosen = await _letters(js, stream, consumer) if everything else [
            (seq, await _get(js, stream, seq)) for seq in seqs]
        for seq, msg in chosen:
            subject = (msg.headers or {})[DLQ_SUBJECT]
            if subject.startswith("erp."):  # a reaction's: only the relay writes the ERP stream
                click.echo(f"skipped {seq}: {subject} is our own event (a treasury reaction's); it "
                           "cannot be republished — see `erp dead-letters show`")
                continue
            ack = await js.publish(subject, msg.data)
            await js.delete_msg(stream, seq)
            headers = msg.headers or {}
            click.echo(f"replayed {seq} to {subject} (stream {ack.stream} seq {ack.seq}); "
                       f"first delivered from {headers.get(DLQ_STREAM)} seq {headers.get(DLQ_STREAM_SEQ)}")

    _run(work)


async def _letters(js: JetStreamContext, stream: str, consumer: str | None) -> list[tuple[int, Any]]:
    state = (await js.stream_info(stream)).state
    found = []
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:  # replayed (deleted) ones leave holes
            continue
        if consumer is None or (msg.headers or {}).get(DLQ_CONSUMER) == consumer:
            found.append((seq, msg))
    return found


async def _get(js: JetStreamContext, stream: str, seq: int) -> Any:
    try:
        return await js.get_msg(stream, seq)
    except NotFoundError:
        raise click.ClickException(f"no dead letter {seq} in {stream}") from None


def _event_id(data: bytes) -> str:
    try:
        return str(json.loads(data).get("event_id", "?"))
    except (ValueError, AttributeError):
        return "(not JSON)"


def _pretty(data: bytes) -> str:
    try:
        return json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    except ValueError:
        return data.decode(errors="replace")


def nats_url(settings: Settings) -> str:
    """ERP_NATS_URL, or the embedded nats-server of an `erp serve` running on this data folder."""
    url = settings.nats_url or EmbeddedNats.running_url(settings.data_dir / "nats")
    if url is None:
        raise click.ClickException("ERP_NATS_URL must point at the service's NATS (or run `erp serve` "
                                   "on embedded servers from this folder first)")
    return url


async def connect_once(url: str, *, on_closed: Callable[[], Awaitable[None]] | None = None) -> NATS:
    """A connection for one command: refused within seconds, with one line saying so, when NATS
    cannot be reached, instead of retrying (a service's connection retries for ever); closed,
    not reconnected, when it drops (`on_closed`)."""
    async def quiet(_: Exception) -> None:
        pass

    try:
        client: NATS = await nats.connect(server_urls(url), allow_reconnect=False, connect_timeout=3,
                                          max_reconnect_attempts=1, error_cb=quiet, closed_cb=on_closed)
    except (nats.errors.Error, OSError, TimeoutError) as error:
        shown = re.sub(r"//[^/@]*@", "//", url)  # without a user and password
        raise click.ClickException(f"cannot reach NATS at {shown}: {error}") from None
    return client


def _run(work: Callable[[JetStreamContext, str], Awaitable[T]]) -> T:
    settings = Settings()
    url = nats_url(settings)

    async def run() -> T:
        nc = await connect_once(url)
        try:
            return await work(nc.jetstream(), settings.dead_letter_stream)
        finally:
            await nc.close()

    return asyncio.run(run())
