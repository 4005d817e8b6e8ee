"""`erp events` (an aggregate's history and its state at any version or time, the live
stream) and `erp projections` (each read model's checkpoint and lag)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import click
import psycopg
import uvloop
from nats.js.api import DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from erp.cli_dead_letters import connect_once, nats_url
from erp.cli_secrets import database_url
from erp.eventstore import ErpEventStore, close_store, event_metadata, store_for
from erp.settings import Settings
from streams import envelope as env
from streams.relay import to_message

_HIDDEN = frozenset({"originator_id", "originator_version", "originator_topic", "timestamp", "metadata"})


@click.group(help="The event store and the stream.")
def events() -> None:
    pass


_MOMENT = click.DateTime(formats=["%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S%z",
                                  "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"])


@events.command("show", help="An aggregate's history, and its state at a version or a time (time travel).")
@click.argument("aggregate_id", type=click.UUID)
@click.option("--version", type=click.IntRange(min=1), help="Its state after this version.")
@click.option("--at", "at", type=_MOMENT, help="Its state at this time (ISO 8601; UTC without an offset).")
def show(aggregate_id: UUID, version: int | None, at: datetime | None) -> None:
    store = store_for(database_url(Settings()), 1)
    try:
        history: list[Any] = list(store.repository.event_store.get(aggregate_id))
        if not history:
            raise click.ClickException(f"no events of {aggregate_id}")
        for event in history:
            details = {k: v for k, v in vars(event).items() if k not in _HIDDEN}
            click.echo(f"v{event.originator_version}  {event.timestamp.isoformat()}  {type(event).__name__}  "
                       f"by {event_metadata(event).get('actor') or '-'}  {_json(details)}")
        if version is None and at is not None:
            moment = at if at.tzinfo else at.replace(tzinfo=history[0].timestamp.tzinfo)
            earlier = [e.originator_version for e in history if e.timestamp <= moment]
            if not earlier:
                raise click.ClickException(f"{aggregate_id} did not exist yet at {moment.isoformat()}")
            version = earlier[-1]
        if version is not None:
            last = history[-1].originator_version
            if version > last:
                raise click.ClickException(f"{aggregate_id} has {last} versions, not {version}")
            click.echo(f"state at v{version}: {_json(_state(store, aggregate_id, version))}")
    finally:
        close_store(store)


def _state(store: ErpEventStore, aggregate_id: UUID, version: int) -> dict[str, Any]:
    aggregate: Any = store.repository.get(aggregate_id, version=version)
    return {"type": type(aggregate).__name__, "version": aggregate.version,
            **{k.lstrip("_"): v for k, v in vars(aggregate).items() if k not in ("_id", "_version",
                                                                                  "_pending_events")}}


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)


@events.command("tail", help="Follow the ERP stream live.")
@click.option("--type", "event_type",
              help="Only this event type, e.g. erp.opportunity.won (wildcards: erp.payroll.*).")
@click.option("--tenant", help="Only this tenant's events.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
def tail(event_type: str | None, tenant: str | None, limit: int | None) -> None:
    settings = Settings()

    async def follow() -> None:
        shown = 0
        done = asyncio.Event()
        lost = False

        async def closed() -> None:
            nonlocal lost
            lost = not done.is_set()
            done.set()

        nc = await connect_once(nats_url(settings), on_closed=closed)

        async def each(msg: Any) -> None:
            nonlocal shown
            body = json.loads(msg.data)
            if done.is_set() or (tenant is not None and body.get("tenant_id") != tenant):
                return  # past the limit: messages already on their way are not shown
            click.echo(f"{msg.metadata.sequence.stream}  {body['timestamp']}  {msg.subject}  "
                       f"{body['tenant_id']}  {_json(body['data'])}")
            shown += 1
            if limit is not None and shown >= limit:
                done.set()

        sub = await nc.jetstream().subscribe(event_type or "erp.>", stream=settings.stream, cb=each,
                                             ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        try:
            await done.wait()
        finally:
            if not nc.is_closed:
                await sub.unsubscribe()
                await nc.close()
        if lost:
            raise click.ClickException("the connection to NATS was lost")

    asyncio.run(follow())


@click.group(help="Read models: their checkpoints and lag.")
def projections() -> None:
    pass


def _status() -> None:
    from projections.rebuild import in_progress

    async def read() -> None:
        async with await psycopg.AsyncConnection.connect(database_url(Settings())) as conn:
            head = (await (await conn.execute("SELECT coalesce(max(notification_id), 0) FROM erp_events"))
                    .fetchone() or (0,))[0]
            cur = await conn.execute("SELECT name, stream_seq, log_position, updated_at FROM "
                                     "projection_checkpoints ORDER BY name")
            click.echo(f"event store head: {head}")
            for name, seq, position, updated in await cur.fetchall():
                # Events, not log positions: a save rolled back leaves positions unused.
                behind = (await (await conn.execute(
                    "SELECT count(*) FROM erp_events WHERE notification_id > %s", (position,)
                )).fetchone() or (0,))[0]
                state = "caught up" if behind == 0 else f"{behind} events behind"
                found = await in_progress(conn, name)
                note = "" if found is None else "  rebuild from the {} interrupted at {}".format(*found)
                click.echo(f"{name:16s} position {position:>10}  stream seq {seq:>10}  {state:>18}  "
                           f"updated {updated:%Y-%m-%d %H:%M:%S}{note}")

    asyncio.run(read())


projections.command("status", help="Each projection's checkpoint, how far it is behind the event store, and "
                                   "any interrupted rebuild.")(_status)
projections.command("list", help="The same as status.")(_status)


@projections.command("rebuild", help="Rebuild read models into new tables, then swap them in; the API keeps "
                                     "serving the old ones meanwhile.")
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every projection.")
@click.option("--from-stream", is_flag=True, help="Read the JetStream stream instead of the event store.")
@click.option("--resume", is_flag=True, help="Resume an interrupted rebuild.")
@click.option("--discard", is_flag=True, help="Discard an interrupted rebuild and start again.")
def rebuild_command(names: tuple[str, ...], everything: bool, from_stream: bool,
                    resume: bool, discard: bool) -> None:
    from erp.bootstrap import all_projections
    from projections.rebuild import (
        EventStoreSource,
        Interrupted,
        InterruptedRebuild,
        RebuildRunning,
        StreamSource,
        rebuild_many,
    )

    known = {p.name: p for p in all_projections()}
    if bool(names) == everything:
        raise click.UsageError(f"name projections ({', '.join(sorted(known))}) or --all")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise click.UsageError(f"unknown projections {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if len(set(names)) < len(names):
        raise click.UsageError(f"a projection named twice: {' '.join(names)}")
    if resume and discard:
        raise click.UsageError("--resume or --discard, not both")
    settings = Settings()
    url = database_url(settings)
    store = store_for(url, 2)

    mode: Interrupted = "resume" if resume else "discard" if discard else "refuse"

    chosen = [known[name] for name in (sorted(known) if everything else names)]
    label = ", ".join(p.name for p in chosen)
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        eta = (total - done) / rate if rate else 0
        line = f"{label}: {done}/{total}, {rate:,.0f} events/s, ETA {eta:.0f} s"
        if sys.stdout.isatty():  # one line, redrawn
            click.echo(f"\r{line}   ", nl=False)
        else:
            click.echo(line)

    async def run() -> Any:
        if not from_stream:
            return await rebuild_many(url, EventStoreSource(store, url), chosen, progress=report,
                                      interrupted=mode)
        nc = await connect_once(nats_url(settings))
        try:
            source = StreamSource(nc.jetstream(), settings.stream)
            return await rebuild_many(url, source, chosen, progress=report, interrupted=mode)
        finally:
            await nc.close()

    try:
        try:
            rebuilt = uvloop.run(run())
        except (InterruptedRebuild, RebuildRunning) as error:
            raise click.ClickException(str(error)) from None
        if sys.stdout.isatty():
            click.echo()
        for done in rebuilt:
            click.echo(f"{done.projection}: rebuilt from {done.events} events in {done.seconds:.1f} s "
                       f"({done.rate:,.0f} events/s); live processing resumes after {done.position}")
    finally:
        close_store(store)


@events.command("replay", help="Republish stored events under `replay.<NAME>.` to the stream ERP_REPLAY, for "
                               "one subscriber to consume again (ids unchanged: it can deduplicate).")
@click.option("--name", required=True, help="The replay's name: subjects become replay.<name>.erp.…")
@click.option("--from-position", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--to-position", type=click.IntRange(min=1), help="Inclusive; default: the end of the log.")
@click.option("--type", "event_types", multiple=True,
              help="Only these event types (repeat; wildcards: erp.payroll.*, erp.>).")
@click.option("--tenant", help="Only this tenant's events.")
@click.option("--aggregate", "aggregate_id", type=click.UUID, help="Only this aggregate's events.")
@click.option("--since", type=_MOMENT, help="Only events at or after this time (ISO 8601; UTC by default).")
@click.option("--until", type=_MOMENT, help="Only events before this time.")
@click.option("--dry-run", is_flag=True, help="Count what would go; publish nothing.")
def replay(name: str, from_position: int, to_position: int | None, event_types: tuple[str, ...],
           tenant: str | None, aggregate_id: UUID | None, since: datetime | None, until: datetime | None,
           dry_run: bool) -> None:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise click.UsageError("--name: letters, digits, - and _ only")
    types = _known_types(event_types)
    settings = Settings()
    store = store_for(database_url(settings), 1)
    try:
        chosen = list(selected_messages(store, from_position, to_position, types, tenant,
                                        aggregate_id, (_utc(since), _utc(until))))
    finally:
        close_store(store)
    if dry_run:
        click.echo(f"would replay {len(chosen)} events to replay.{name}.*")
        return

    async def publish() -> None:
        nc = await connect_once(nats_url(settings))
        try:
            js = nc.jetstream()
            await _ensure_replay_stream(js)
            for message in chosen:
                await js.publish(f"replay.{name}.{message.subject}", message.payload, stream=REPLAY_STREAM,
                                 headers={k: v for k, v in message.headers.items() if k != env.MSG_ID})
        finally:
            await nc.close()

    uvloop.run(publish())
    click.echo(f"replayed {len(chosen)} events to replay.{name}.* in {REPLAY_STREAM}")


@events.command("recover-stream", help="Recreate the ERP stream from the event store when it was lost, "
                                       "purged or truncated (its consumers go with it).")
@click.option("--yes", is_flag=True, help="Do it; without it, only say what is wrong.")
def recover_stream(yes: bool) -> None:
    from streams.recovery import diagnose, recover

    settings = Settings()
    url = database_url(settings)

    async def run() -> None:
        nc = await connect_once(nats_url(settings))
        try:
            problem = await diagnose(nc, url, settings.stream)
            if problem is None:
                click.echo(f"stream {settings.stream} is whole: the relay carries on from its last event")
                return
            click.echo(problem)
            if not yes:
                click.echo("run again with --yes to recreate it and republish every stored event "
                           "(consumers of the stream are deleted with it)")
                raise SystemExit(1)  # not whole: a script or a check must see it
            store = store_for(url, 2)
            try:
                def report(done: int, total: int) -> None:
                    click.echo(f"republished {done}/{total}")
                total = await recover(nc, url, store, settings.stream, settings.stream_replicas, report)
            finally:
                close_store(store)
            click.echo(f"stream {settings.stream} recreated: {total} events republished, ids unchanged")
        finally:
            await nc.close()

    uvloop.run(run())


REPLAY_STREAM = "ERP_REPLAY"


async def _ensure_replay_stream(js: Any) -> None:
    try:
        await js.stream_info(REPLAY_STREAM)
    except NotFoundError:
        await js.add_stream(StreamConfig(name=REPLAY_STREAM, subjects=["replay.>"], max_age=7 * 86400,
                                         description="events republished for one subscriber to re-consume"))


def _utc(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is any one token, a final `>` one or more."""
    tokens, wanted = subject.split("."), pattern.split(".")
    for i, token in enumerate(wanted):
        if token == ">" and i == len(wanted) - 1:
            return len(tokens) > i
        if i >= len(tokens) or token not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)


def _known_types(patterns: tuple[str, ...]) -> set[str]:
    """The patterns, each matching some event type of the catalogue (else a usage error)."""
    from streams.catalogue import PUBLICATIONS

    subjects = {publication.subject for publication in PUBLICATIONS.values()}
    for pattern in patterns:
        if not any(subject_matches(pattern, subject) for subject in subjects):
            raise click.UsageError(f"--type {pattern}: no event type matches it (e.g. erp.opportunity.won, "
                                   "erp.payroll.*; the catalogue: GET /asyncapi.json)")
    return set(patterns)


def selected_messages(store: ErpEventStore, start: int, stop: int | None, types: set[str], tenant: str | None,
                      aggregate_id: UUID | None,
                      between: tuple[datetime | None, datetime | None] = (None, None)) -> Any:
    """The stored events chosen, as the relay would publish them, in log order."""
    since, until = between
    position = start - 1
    while True:
        notifications = store.recorder.select_notifications(position + 1, 1000, stop=stop)
        if not notifications:
            return
        for notification in notifications:
            if aggregate_id is not None and notification.originator_id != aggregate_id:
                continue
            message = to_message(store, vars(notification) | {"notification_id": notification.id})
            if types and not any(subject_matches(pattern, message.subject) for pattern in types):
                continue
            if tenant is not None or since is not None or until is not None:
                body = json.loads(message.payload)
                at = datetime.fromisoformat(body["timestamp"])
                if ((tenant is not None and body["tenant_id"] != tenant) or (since is not None and at < since)
                        or (until is not None and at >= until)):
                    continue
            yield message
        position = notifications[-1].id
