"""Crashes and outages of a running service: `erp serve` killed with SIGKILL, nats-server and
PostgreSQL stopped under load, the leading instance of two killed. Every command answered
2xx is in the event store, in the stream and in the read model exactly once; none is
ever stored twice."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import psycopg
import pytest

import nats
from tests.conftest import as_user, eventually, stream_matches_event_store
from tests.reliability.conftest import Figures
from tests.reliability.service_process import (
    OPPORTUNITIES,
    Attempt,
    CommandLoad,
    OwnServers,
    ServiceProcess,
    log_head,
    own_servers,
    read_model_position,
    read_model_titles,
    register_tenant,
    send,
    stored_events,
    stored_titles,
    stream_last_sequence,
    streamed_titles,
)

ROLES = {"relay", *(f"projector:{name}" for name in
                    ("boms", "opportunities", "payroll", "purchase_orders", "users", "work_orders"))}


@pytest.fixture
def own(request: pytest.FixtureRequest) -> Iterator[OwnServers]:
    """A PostgreSQL and a nats-server of this test's own: it stops them at will."""
    with own_servers(request.node.name.removeprefix("test_")[:32]) as servers:
        yield servers


class Services:
    """`erp serve` processes of one test, all killed at its end whatever happened."""

    def __init__(self, servers: OwnServers) -> None:
        self.servers = servers
        self.started: list[ServiceProcess] = []

    async def start(self, name: str) -> ServiceProcess:
        service = ServiceProcess(self.servers, name)
        self.started.append(service)
        service.start()
        await service.ready()
        return service


@pytest.fixture
def services(own: OwnServers) -> Iterator[Services]:
    running = Services(own)
    try:
        yield running
    finally:
        for service in running.started:
            service.kill()


async def registered(own: OwnServers) -> None:
    await asyncio.to_thread(register_tenant, own)


def statuses(attempts: list[Attempt]) -> Counter[int | None]:
    return Counter(a.status for a in attempts)


async def first_success(attempts: list[Attempt], since: float, timeout: float = 30.0) -> float:
    """When the first request sent after `since` was answered 2xx."""
    async def answered() -> float:
        return min((a.started + a.seconds for a in attempts if a.acknowledged and a.started >= since),
                   default=0.0)

    return float(await eventually(answered, timeout=timeout, interval=0.02))


async def first_acknowledged_after(load: CommandLoad, since: float) -> float:
    return await first_success(load.attempts, since)


async def recovered(attempts: list[Attempt], since: float, service: ServiceProcess, own: OwnServers) -> float:
    """`first_success`, and what was going on if there was none."""
    try:
        return await first_success(attempts, since)
    except AssertionError:
        async with await psycopg.AsyncConnection.connect(own.postgres.url) as conn:
            cur = await conn.execute("SELECT application_name, state, wait_event, left(query, 80) "
                                     "FROM pg_stat_activity WHERE datname = current_database()")
            sessions = await cur.fetchall()
        answers = [(a.title, a.status, a.error, round(a.started - since, 2), round(a.seconds, 2), a.body)
                   for a in attempts if a.started >= since - 2]
        raise AssertionError(f"no success within 30 s; answers: {answers[-10:]}\n"
                             f"sessions: {sessions}\nlog:\n{service.log_tail()}") from None


async def resend(url: str, attempts: list[Attempt]) -> dict[str, str]:
    """Sends the commands again with the same Idempotency-Keys, as a client does after no
    answer (or a 5xx), until each is answered 2xx: title -> opportunity id."""
    answered: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, headers=as_user(), timeout=10) as http:
        for attempt in attempts:
            for _ in range(50):
                again = await send(http, attempt.title)
                if again is not None and again.acknowledged:
                    answered[attempt.title] = again.body["id"]
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"{attempt.title} was never acknowledged when sent again: {again}")
    return answered


async def everything_exactly_once(own: OwnServers, acknowledged: dict[str, str]) -> int:
    """The event store, the stream and the read model hold every acknowledged command once,
    under the id its answer gave, and no other opportunity; the stream equals the event
    store event for event. Answers the number of events checked."""
    database_url, nats_url = own.postgres.url, own.nats.url
    expected = {title: [aggregate_id] for title, aggregate_id in acknowledged.items()}
    assert await stored_titles(database_url) == expected, "event store"
    total = await stored_events(database_url)

    async def published() -> bool:
        return await stream_last_sequence(nats_url) >= total

    await eventually(published, timeout=30, interval=0.1)
    nc = await nats.connect(nats_url)
    try:
        await stream_matches_event_store(nc.jetstream(), database_url, total)
    finally:
        await nc.close()
    assert await streamed_titles(nats_url, total) == expected, "stream"

    async def projected() -> bool:
        return await read_model_titles(database_url) == expected

    try:
        await eventually(projected, timeout=30, interval=0.1)
    except AssertionError:
        found = await read_model_titles(database_url)
        missing = expected.keys() - found.keys()
        twice = {t: ids for t, ids in found.items() if len(ids) > 1}
        raise AssertionError(f"read model: {len(missing)} missing, {len(found.keys() - expected.keys())} "
                             f"unexpected, twice: {twice}") from None
    return total


KILLS = 10


@pytest.mark.timeout(150)
async def test_sigkill_during_a_stream_of_commands_loses_and_duplicates_nothing(
    own: OwnServers, services: Services, figures: Figures,
) -> None:
    await registered(own)
    service = await services.start("service")
    load = CommandLoad(service.url, "kill", clients=6)
    recoveries: list[float] = []
    ready: list[float] = []
    async with load:
        for _ in range(KILLS):
            await first_acknowledged_after(load, time.monotonic())  # commands are flowing
            await asyncio.sleep(random.uniform(0.2, 1.0))
            service.kill()
            killed = time.monotonic()
            service.start()
            await service.ready()
            ready.append(time.monotonic() - killed)
            recoveries.append(await recovered(load.attempts, killed, service, own) - killed)
        await asyncio.sleep(0.5)
    answers = load.statuses()
    assert set(answers) <= {201, None}, f"answers besides 201 and none: {answers}"
    unanswered = [a for a in load.attempts if not a.acknowledged]
    stored_before = await stored_titles(own.postgres.url)
    # Stored but never answered: the crash came between the commit and the answer.
    stored_unanswered = [a.title for a in unanswered if a.title in stored_before]
    again = await resend(service.url, unanswered)
    for title in stored_unanswered:  # the key was stored with the events: the same opportunity
        assert again[title] == stored_before[title][0]
    events = await everything_exactly_once(own, {**load.acknowledged, **again})
    figures.record(
        "1. SIGKILL during commands",
        kills=KILLS,
        concurrent_clients=load.clients,
        commands_sent=len(load.attempts),
        commands_acknowledged=len(load.acknowledged),
        commands_unanswered=len(unanswered),
        unanswered_but_stored_then_answered_by_their_key=len(stored_unanswered),
        events_checked=events,
        seconds_to_ready_again_max=round(max(ready), 2),
        seconds_to_recover_max=round(max(recoveries), 2),
        seconds_to_recover_mean=round(statistics.mean(recoveries), 2),
        recovery_measured="from SIGKILL to the first 2xx of a command sent after it (process start included)",
    )
    assert len(load.acknowledged) > KILLS * 20, "too few commands to mean anything"


NATS_OUTAGE_SECONDS = 20.0


@pytest.mark.timeout(150)
async def test_commands_are_accepted_while_nats_is_down_and_the_backlog_drains_after(
    own: OwnServers, services: Services, figures: Figures,
) -> None:
    await registered(own)
    service = await services.start("service")
    async with CommandLoad(service.url, "nats", clients=4) as load:
        await first_acknowledged_after(load, time.monotonic())
        await asyncio.sleep(1.0)
        published_before = await stream_last_sequence(own.nats.url)
        await asyncio.to_thread(own.nats.stop)
        down = time.monotonic()
        await asyncio.sleep(NATS_OUTAGE_SECONDS / 2)
        degraded = await service.readiness()
        await asyncio.sleep(NATS_OUTAGE_SECONDS / 2)
        backlog = await stored_events(own.postgres.url) - published_before
        await asyncio.to_thread(own.nats.start)  # the same port and data folder
        up = time.monotonic()
        head = published_before + backlog

        async def drained() -> bool:
            return await stream_last_sequence(own.nats.url) >= head

        await eventually(drained, timeout=30, interval=0.05)
        drain_seconds = time.monotonic() - up
        await asyncio.sleep(2.0)  # commands keep flowing after the drain
    during = [a for a in load.attempts if down <= a.started and a.started + a.seconds < up]
    accepted = [a for a in during if a.acknowledged]
    assert degraded["checks"]["nats"] == "unreachable"
    assert (degraded["code"], degraded["status"]) == (200, "degraded"), "takes commands: stays in rotation"
    assert statuses(during) == {201: len(during)}, "every command during the outage is accepted"
    assert len(accepted) >= NATS_OUTAGE_SECONDS * 5, f"only {len(accepted)} commands during the outage"
    assert load.statuses() == {201: len(load.attempts)}
    events = await everything_exactly_once(own, load.acknowledged)
    figures.record(
        "2. nats-server stopped for 20 s under load",
        outage_seconds=round(up - down, 1),
        commands_accepted_during_outage=len(accepted),
        slowest_command_during_outage_seconds=round(max(a.seconds for a in during), 3),
        backlog_events_at_restart=backlog,
        drain_seconds=round(drain_seconds, 2),
        commands_acknowledged=len(load.acknowledged),
        events_checked=events,
    )


PG_OUTAGE_SECONDS = 8.0
ANSWER_WITHIN_SECONDS = 5.0


@pytest.mark.timeout(150)
async def test_postgresql_restarting_is_answered_503_quickly_and_the_service_recovers_by_itself(
    own: OwnServers, services: Services, figures: Figures,
) -> None:
    await registered(own)
    service = await services.start("service")
    reads: list[Attempt] = []
    stage_changes: list[Attempt] = []  # commands that load their aggregate first
    async with CommandLoad(service.url, "pg", clients=4, timeout=30) as load:
        await first_acknowledged_after(load, time.monotonic())
        await asyncio.sleep(1.0)
        known = next(iter(load.acknowledged.values()))
        reading = asyncio.create_task(read_continuously(service.url, known, reads))
        staging = asyncio.create_task(change_stages_continuously(service.url, known, stage_changes))
        try:
            await first_success(reads, 0.0)  # in the read model
            await first_success(stage_changes, 0.0)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(own.postgres.stop)
            down = time.monotonic()
            await asyncio.sleep(PG_OUTAGE_SECONDS)
            restarting = time.monotonic()
            await asyncio.to_thread(own.postgres.start)  # the same port and data folder
            up = time.monotonic()
            first_command = await recovered(load.attempts, up, service, own) - up
            first_read = await recovered(reads, up, service, own) - up
            first_stage_change = await recovered(stage_changes, up, service, own) - up
            head = await log_head(own.postgres.url)

            async def projected() -> bool:
                return await read_model_position(own.postgres.url) >= head

            await eventually(projected, timeout=40, interval=0.05)
            read_model_back = time.monotonic() - up
            await asyncio.sleep(1.0)
        finally:
            reading.cancel()
            staging.cancel()
    during = [a for a in [*load.attempts, *reads, *stage_changes] if down <= a.started < restarting]
    problems = [a for a in during if a.status == 503]
    assert during and problems, "nothing was asked during the outage"
    # Only one still waiting when PostgreSQL came back may have been answered otherwise (not 5xx).
    others = [(a.status, a.error, a.body) for a in during if a.status != 503
              and not (a.status is not None and a.status < 500 and a.started + a.seconds > restarting)]
    assert not others, f"during the outage: answers besides 503: {others[:5]}"
    for attempt in problems:
        assert attempt.body["status"] == 503 and attempt.body["title"] == "Service unavailable"
        assert "unavailable" in attempt.body["detail"], attempt.body
    slowest = max(a.seconds for a in during)
    slow = [(a.title, a.status, round(a.started - down, 2), round(a.seconds, 2)) for a in during
            if a.seconds >= ANSWER_WITHIN_SECONDS / 2]
    assert slowest < ANSWER_WITHIN_SECONDS, f"during the outage: answered after {slowest:.1f} s: {slow[:10]}"
    assert {a.status for a in reads} <= {200, 503}, statuses(reads)
    assert all(a.status in (200, 503) or a.body.get("rule") == "AlreadyInStage" for a in stage_changes)
    for attempts, first in ((load.attempts, first_command), (reads, first_read),
                            (stage_changes, first_stage_change)):
        after = [a for a in attempts if a.started >= up + first]
        assert after and all(a.acknowledged for a in after), statuses(after)
    # A client sends a refused command again with its key: stored once whatever the 503 hid.
    refused = [a for a in load.attempts if not a.acknowledged]
    stored_before = await stored_titles(own.postgres.url)
    again = await resend(service.url, refused)
    events = await everything_exactly_once(own, {**load.acknowledged, **again})
    figures.record(
        "3. PostgreSQL restarted under load",
        outage_seconds=round(restarting - down, 1),
        seconds_to_start_postgresql_again=round(up - restarting, 1),
        requests_during_outage=len(during),
        answered_503=len(problems),
        commands_answered_503_yet_stored=sum(a.title in stored_before for a in refused),
        stage_changes_answered_503_yet_saved=sum(a.status == 409 for a in stage_changes),
        max_response_seconds_during_outage=round(slowest, 3),
        seconds_to_first_command_after_postgresql_back=round(first_command, 2),
        seconds_to_first_read_after_postgresql_back=round(first_read, 2),
        seconds_to_first_stage_change_after_postgresql_back=round(first_stage_change, 2),
        seconds_until_the_read_model_caught_up_after_postgresql_back=round(read_model_back, 2),
        commands_acknowledged=len(load.acknowledged),
        events_checked=events,
    )


async def read_continuously(url: str, opportunity_id: str, into: list[Attempt]) -> None:
    async with httpx.AsyncClient(base_url=url, headers=as_user(), timeout=30) as http:
        while True:
            started = time.monotonic()
            try:
                response = await http.get(f"{OPPORTUNITIES}/{opportunity_id}")
            except httpx.TransportError as error:
                into.append(Attempt("read", started, time.monotonic() - started, None,
                                    error=type(error).__name__))
                continue
            into.append(Attempt("read", started, time.monotonic() - started, response.status_code,
                                response.json()))
            await asyncio.sleep(0.05)


async def change_stages_continuously(url: str, opportunity_id: str, into: list[Attempt]) -> None:
    """Moves one opportunity back and forth between two stages: each command loads it first."""
    stage = "proposal"
    async with httpx.AsyncClient(base_url=url, headers=as_user(), timeout=30) as http:
        while True:
            started = time.monotonic()
            try:
                response = await http.post(f"{OPPORTUNITIES}/{opportunity_id}/stage", json={"stage": stage})
            except httpx.TransportError as error:
                into.append(Attempt("stage", started, time.monotonic() - started, None,
                                    error=type(error).__name__))
                continue
            into.append(Attempt("stage", started, time.monotonic() - started, response.status_code,
                                response.json()))
            # A change answered 503 may have been saved all the same (PostgreSQL stopped after
            # the commit, before the answer): the next one then finds it already in that stage.
            if response.is_success or response.json().get("rule") == "AlreadyInStage":
                stage = "qualification" if stage == "proposal" else "proposal"
            await asyncio.sleep(0.05)


@pytest.mark.timeout(150)
async def test_the_survivor_of_two_instances_takes_every_role_over_when_the_leader_is_killed(
    own: OwnServers, services: Services, figures: Figures,
) -> None:
    await registered(own)
    first = await services.start("first")
    second = await services.start("second")
    headers = (await first.readiness())["headers"]  # as `erp serve` answers, through uvicorn
    assert "server" not in headers and headers["x-content-type-options"] == "nosniff"

    async def roles() -> dict[str, set[str]]:
        return {s.name: set((await s.readiness())["leading"]) for s in (first, second)}

    async def divided() -> dict[str, set[str]]:
        found = await roles()
        both = list(found.values())
        return found if set.union(*both) == ROLES and not set.intersection(*both) else {}

    leading = await eventually(divided, timeout=15)
    for s in (first, second):
        metrics = await s.metrics()
        shown = {line.split('"')[1] for line in metrics.splitlines() if line.startswith("erp_leading{")}
        assert shown == leading[s.name], f"{s.name}: /metrics {shown}, /readyz {leading[s.name]}"
    leader, survivor = (first, second) if "relay" in leading["first"] else (second, first)
    moved = leading[leader.name]
    assert moved, "the leader leads nothing"
    async with CommandLoad(leader.url, "leader", clients=2) as on_leader, \
            CommandLoad(survivor.url, "survivor", clients=2) as on_survivor:
        await first_acknowledged_after(on_leader, time.monotonic())
        await first_acknowledged_after(on_survivor, time.monotonic())
        await asyncio.sleep(1.0)
        leader.kill()
        killed = time.monotonic()
        taken_over: dict[str, float] = {}
        while time.monotonic() - killed < 20 and taken_over.keys() != moved:
            now = set((await survivor.readiness())["leading"])
            taken_over.update({role: time.monotonic() - killed for role in (now & moved) - taken_over.keys()})
            await asyncio.sleep(0.02)
        head = await stored_events(own.postgres.url)

        async def caught_up() -> bool:
            return await stream_last_sequence(own.nats.url) >= head

        await eventually(caught_up, timeout=20, interval=0.05)
        stream_caught_up = time.monotonic() - killed
        await asyncio.sleep(2.0)  # commands keep going to the survivor
    assert taken_over.keys() == moved, f"not taken over within 20 s: {moved - taken_over.keys()}"
    assert set((await survivor.readiness())["leading"]) == ROLES
    after = [a for a in on_survivor.attempts if a.started > killed]
    assert after and all(a.acknowledged for a in after), statuses(after)
    assert on_survivor.statuses() == {201: len(on_survivor.attempts)}
    unanswered = [a for a in on_leader.attempts if not a.acknowledged]
    again = await resend(survivor.url, unanswered)
    events = await everything_exactly_once(
        own, {**on_leader.acknowledged, **on_survivor.acknowledged, **again})
    figures.record(
        "4. Two instances, the leader killed (SIGKILL)",
        roles_led_by_the_killed_instance=len(moved),
        takeover_seconds={role: round(seconds, 2) for role, seconds in sorted(taken_over.items())},
        takeover_seconds_max=round(max(taken_over.values()), 2),
        seconds_until_the_stream_held_every_event_stored_at_takeover=round(stream_caught_up, 2),
        commands_acknowledged=len(on_leader.acknowledged) + len(on_survivor.acknowledged),
        commands_to_the_killed_instance_unanswered=len(unanswered),
        events_checked=events,
    )
