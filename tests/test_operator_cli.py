"""Operators' commands: an aggregate's history and its state back in time; projections'
checkpoints and lag; the live stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from click.testing import CliRunner, Result
from nats.js.api import StreamConfig

import nats
from erp.bootstrap import Service
from erp.cli import main
from erp.embedded import EmbeddedNats
from tests.conftest import ROOT, eventually, stream_matches_event_store
from tests.test_rebuild import leave_a_gap

OPPORTUNITIES = "/api/v1/crm/opportunities"


def erp(service: Service, *args: str) -> Result:
    env = {"ERP_DATABASE_URL": service.endpoints.database_url,
           "ERP_NATS_URL": service.endpoints.nats_url}
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


async def test_time_travel_shows_an_aggregate_at_any_version(
    client: httpx.AsyncClient, service: Service
) -> None:
    oid = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "Fleet", "owner": "o",
                                                  "amount": 100})).json()["id"]
    await client.post(f"{OPPORTUNITIES}/{oid}/stage", json={"stage": "proposal"})
    await client.post(f"{OPPORTUNITIES}/{oid}/win", json={"amount": 90})

    history = (await asyncio.to_thread(erp, service, "events", "show", oid)).output
    lines = [line for line in history.splitlines() if line.startswith("v")]
    assert [line.split()[2] for line in lines] == ["Opened", "StageChanged", "Won"]
    assert all("by user-1" in line for line in lines)
    at_two = (await asyncio.to_thread(erp, service, "events", "show", oid, "--version", "2")).output
    state = _state_line(at_two)
    assert '"stage": "proposal"' in state and '"status": "open"' in state and '"version": 2' in state
    env = {"ERP_DATABASE_URL": service.endpoints.database_url}
    never = await asyncio.to_thread(CliRunner().invoke, main, ["events", "show", oid, "--version", "9"],
                                    env=env)
    assert never.exit_code == 1 and "has 3 versions, not 9" in never.output and "state at" not in never.output
    when_staged = lines[1].split()[1]  # the StageChanged event's exact time
    back_then = (await asyncio.to_thread(erp, service, "events", "show", oid, "--at", when_staged)).output
    assert '"version": 2' in _state_line(back_then) and '"stage": "proposal"' in back_then


def _state_line(output: str) -> str:
    """The command's `state at vN: {...}` line: the service under test runs in this process
    and may log to the same captured output meanwhile."""
    return [line for line in output.splitlines() if line.startswith("state at v")][-1]


async def test_projection_status_shows_each_checkpoint_and_lag(
    client: httpx.AsyncClient, service: Service
) -> None:
    opened = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o"})).json()
    await client.get(OPPORTUNITIES, params={"min_position": opened["log_position"]})
    out = (await asyncio.to_thread(erp, service, "projections", "status")).output
    assert f"event store head: {opened['log_position']}" in out
    row = next(line for line in out.splitlines() if line.startswith("opportunities"))
    assert "caught up" in row

    await leave_a_gap(service)
    for title in ("after the gap", "and another"):
        body = {"customer_id": "c", "title": title, "owner": "o"}
        later = (await client.post(OPPORTUNITIES, json=body)).json()
    await client.get(OPPORTUNITIES, params={"min_position": later["log_position"]})
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        applied = await (await conn.execute("SELECT stream_seq, log_position FROM projection_checkpoints "
                                            "WHERE name = 'opportunities'")).fetchone()
        assert applied is not None
        # As if the projector had stopped after the first event: two events (not 22 positions) behind.
        await conn.execute("UPDATE projection_checkpoints SET stream_seq = stream_seq - 2, log_position = %s "
                           "WHERE name = 'opportunities'", (opened["log_position"],))
        try:
            out = (await asyncio.to_thread(erp, service, "projections", "status")).output
        finally:
            await conn.execute("UPDATE projection_checkpoints SET stream_seq = %s, log_position = %s "
                               "WHERE name = 'opportunities'", applied)
    row = next(line for line in out.splitlines() if line.startswith("opportunities"))
    assert "2 events behind" in row, out


async def test_tail_follows_the_stream_filtered_by_type(client: httpx.AsyncClient, service: Service) -> None:
    found: list[Any] = []

    def follow() -> None:
        found.append(erp(service, "events", "tail", "--type", "erp.opportunity.won", "--limit", "1"))

    follower = threading.Thread(target=follow)
    follower.start()
    await asyncio.sleep(1.0)  # subscribed before the events happen
    oid = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                  "amount": 5})).json()["id"]
    await client.post(f"{OPPORTUNITIES}/{oid}/win", json={})
    await asyncio.to_thread(follower.join, 20)
    assert found and "erp.opportunity.won" in found[0].output and oid in found[0].output


async def test_replay_by_range_to_a_prefix_delivers_exactly_that_range(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    positions = []
    for i in range(6):
        opened = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": f"t{i}", "owner": "o"})
        positions.append(opened.json()["log_position"])
    low, high = positions[1], positions[3]
    window = ("--name", "crm-fix", "--from-position", str(low), "--to-position", str(high))
    counted = await asyncio.to_thread(erp, service, "events", "replay", *window, "--dry-run")
    assert "would replay 3 events" in counted.output
    for wildcard in ("erp.opportunity.*", "erp.>"):
        matched = await asyncio.to_thread(erp, service, "events", "replay", *window, "--type", wildcard,
                                          "--dry-run")
        assert "would replay 3 events" in matched.output, wildcard
    none = await asyncio.to_thread(erp, service, "events", "replay", *window, "--type", "erp.opportunity.won",
                                   "--dry-run")
    assert "would replay 0 events" in none.output
    env = {"ERP_DATABASE_URL": service.endpoints.database_url, "ERP_NATS_URL": service.endpoints.nats_url}
    typo = CliRunner().invoke(main, ["events", "replay", *window, "--type", "erp.oportunity.opened"], env=env)
    assert typo.exit_code == 2 and "no event type matches it" in typo.output
    await asyncio.to_thread(erp, service, "events", "replay", *window, "--type", "erp.opportunity.opened")
    info = await js.stream_info("ERP_REPLAY")
    replayed = [await js.get_msg("ERP_REPLAY", seq) for seq in range(info.state.first_seq,
                                                                       info.state.last_seq + 1)]
    assert [m.subject for m in replayed] == ["replay.crm-fix.erp.opportunity.opened"] * 3
    assert [int(m.headers["Erp-Log-Position"]) for m in replayed] == positions[1:4]
    original = await js.get_msg("ERP", positions[1])
    assert replayed[0].data == original.data  # the same envelope, the same event_id
    assert (await js.stream_info("ERP")).state.messages == positions[-1]  # our stream untouched


async def test_replay_by_time_range_delivers_the_events_of_that_window(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    positions = []
    for i in range(4):
        opened = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": f"t{i}", "owner": "o"})
        positions.append(opened.json()["log_position"])
        await asyncio.sleep(0.05)
    await eventually(lambda: _stream_has(js, positions[-1]))
    moments = [json.loads((await js.get_msg("ERP", p)).data)["timestamp"] for p in positions]
    window = ("--name", "by-time", "--since", moments[1][:26], "--until", moments[3][:26])
    counted = await asyncio.to_thread(erp, service, "events", "replay", *window, "--dry-run")
    assert "would replay 2 events" in counted.output
    await asyncio.to_thread(erp, service, "events", "replay", *window)
    info = await js.stream_info("ERP_REPLAY")
    replayed = [await js.get_msg("ERP_REPLAY", seq) for seq in range(info.state.first_seq,
                                                                       info.state.last_seq + 1)]
    assert [int(m.headers["Erp-Log-Position"]) for m in replayed] == positions[1:3]


async def _stream_has(js: Any, position: int) -> bool:
    last_seq = (await js.stream_info("ERP")).state.last_seq
    return bool(last_seq) and int((await js.get_msg("ERP", last_seq)).headers["Erp-Log-Position"]) >= position


async def test_a_purged_stream_is_recovered_from_the_event_store(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    await leave_a_gap(service)  # stream sequences and log positions differ: a whole stream all the same
    for i in range(5):
        body = {"customer_id": "c", "title": f"t{i}", "owner": "o"}
        last = (await client.post(OPPORTUNITIES, json=body)).json()
    await eventually(lambda: _stream_has(js, last["log_position"]))
    assert "is whole" in (await asyncio.to_thread(erp, service, "events", "recover-stream")).output
    await js.purge_stream("ERP")

    env = {"ERP_DATABASE_URL": service.endpoints.database_url, "ERP_NATS_URL": service.endpoints.nats_url}
    broken = await asyncio.to_thread(CliRunner().invoke, main, ["events", "recover-stream"], env=env)
    diagnosed = broken.output
    assert broken.exit_code == 1 and "holds no event of the relay" in diagnosed and "--yes" in diagnosed
    assert (await js.stream_info("ERP")).state.messages == 0  # nothing done without --yes
    recovered = (await asyncio.to_thread(erp, service, "events", "recover-stream", "--yes")).output
    total = last["log_position"] - 20
    assert f"{total} events republished" in recovered
    await stream_matches_event_store(js, service.endpoints.database_url, total)

    # and the service carries on: its relay resumes on the new stream, its projectors follow
    body = {"customer_id": "c", "title": "after", "owner": "o"}
    after = (await client.post(OPPORTUNITIES, json=body)).json()
    await eventually(lambda: _stream_has(js, after["log_position"]))

    async def projected() -> bool:
        shown = await client.get(f"{OPPORTUNITIES}/{after['id']}")
        return shown.status_code == 200 and shown.json()["title"] == "after"
    started = time.monotonic()
    await eventually(projected, timeout=30)
    print(f"projected {time.monotonic() - started:.1f} s after")
    await stream_matches_event_store(js, service.endpoints.database_url, total + 1)


async def test_the_subscriber_example_gets_each_won_opportunity_typed_once(
    client: httpx.AsyncClient, service: Service
) -> None:
    from examples.subscriber import follow

    ids = []
    for i in range(2):
        oid = (await client.post(OPPORTUNITIES, json={"customer_id": f"c{i}", "title": "t", "owner": "o",
                                                      "amount": 10})).json()["id"]
        await client.post(f"{OPPORTUNITIES}/{oid}/win", json={})
        ids.append(oid)
    seen = await asyncio.wait_for(follow(service.endpoints.nats_url, stop_after=2), 30)
    assert seen == ids


async def test_the_subscriber_terminates_a_malformed_event_and_carries_on(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    from streams.events.crm import OpportunityWon
    from streams.subscriber import ErpSubscriber

    oid = (await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o",
                                                  "amount": 10})).json()["id"]
    await client.post(f"{OPPORTUNITIES}/{oid}/win", json={})
    await eventually(lambda: _stream_has(js, 3))
    await js.publish("erp.opportunity.won", b'{"event_id": "not a uuid"}', stream="ERP")
    seen: list[str] = []
    async with await ErpSubscriber.connect(service.endpoints.nats_url, "malformed-test") as erp:
        @erp.on("erp.opportunity.won", OpportunityWon)
        async def won(event: Any) -> None:
            seen.append(str(event.data.opportunity_id))

        async with asyncio.timeout(20):
            await erp.run(until=lambda: erp.handled + erp.refused >= 2)
    assert seen == [oid] and erp.refused == 1


def test_setup_errors_are_one_line_each_and_fail_fast() -> None:
    """An unreachable server, a bad setting or a missing server: a line saying which, exit 1,
    within seconds (the service's own NATS connection retries for ever; a command must not)."""
    unreachable = {"ERP_DATABASE_URL": "postgresql://erp@127.0.0.1:1/erp",
                   "ERP_NATS_URL": "nats://u:pw@127.0.0.1:1"}
    cases = [
        (["dead-letters", "list"], unreachable, "cannot reach NATS at nats://127.0.0.1:1"),
        (["projections", "status"], unreachable, "cannot reach PostgreSQL"),
        (["projections", "status"], {**unreachable, "ERP_STREAM_REPLICAS": "abc"},
         "ERP_STREAM_REPLICAS: Input"),
        (["projections", "status"], {**unreachable, "ERP_LOG_LEVEL": "loud"},
         "ERP_LOG_LEVEL: Input should be"),
    ]
    for args, env, said in cases:
        started = time.monotonic()
        result = CliRunner().invoke(main, args, env=env)
        assert (result.exit_code, isinstance(result.exception, SystemExit)) == (1, True), result.output
        assert said in result.output and "Traceback" not in result.output and "pw" not in result.output
        assert time.monotonic() - started < 15, args


def test_tail_ends_saying_so_when_nats_goes_away(tmp_path: Path) -> None:
    """A command's connection does not reconnect: a tail whose server is gone must not wait
    for ever in silence."""
    async def erp_stream(url: str) -> None:
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(StreamConfig(name="ERP", subjects=["erp.>"]))
        await nc.close()

    async def consumers(url: str) -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info("ERP")).state.consumer_count)
        finally:
            await nc.close()

    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    try:
        asyncio.run(erp_stream(url))
        following = subprocess.Popen([sys.executable, "-m", "erp", "events", "tail"], cwd=ROOT,
                                     env={**os.environ, "ERP_NATS_URL": url}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not asyncio.run(consumers(url)):  # until the tail has subscribed
            assert following.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.stop()
    output, _ = following.communicate(timeout=20)
    assert following.returncode == 1 and b"the connection to NATS was lost" in output, output
