"""Rebuilding read models from the event store gives exactly what live processing built,
and loses nothing that happens while it runs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from erp.bootstrap import Service, all_projections
from erp.cli import main
from erp.helper_processes import HelperProcesses
from projections.base import CHECKPOINTS_DDL, POSITIONS_CHANNEL, positions_payload, read_positions
from projections.positions import ReadModelPositions
from projections.rebuild import EventStoreSource, rebuild, rebuild_many
from tests.conftest import eventually
from tests.test_hrm_api import hire, ok
from tests.test_procurement_api import approved

OPPORTUNITIES = "/api/v1/crm/opportunities"
TABLES = ("opportunities", "opportunity_stage_history", "purchase_orders", "purchase_order_lines",
          "purchase_order_receipts", "employees", "employee_pay", "payroll_runs", "payslips", "users")


async def rows(service: Service) -> dict[str, list[str]]:
    """The read models' rows, and their indexes (a rebuild builds some only once its rows are in)."""
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        found = {table: [r[0] for r in await (await conn.execute(
            f"SELECT row_to_json(t)::text FROM {table} t ORDER BY 1")).fetchall()] for table in TABLES}
        cur = await conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' "
                                 "AND tablename = ANY(%s) ORDER BY 1", (list(TABLES),))
        found["indexes"] = [r[0] for r in await cur.fetchall()]
        return found


async def caught_up(service: Service) -> None:
    head = await asyncio.to_thread(service.store.recorder.max_notification_id) or 0
    for projection in all_projections():
        await service.positions.wait(projection.name, head, 20.0)


async def leave_a_gap(service: Service) -> None:
    """Log positions skipped, as a save rolled back leaves them: stream sequences and log
    positions differ from here on."""
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        await conn.execute("SELECT nextval(pg_get_serial_sequence('erp_events', 'notification_id')) "
                           "FROM generate_series(1, 20)")


async def live_processing_goes_on(client: httpx.AsyncClient) -> None:
    """After a rebuild, live processing goes on from the stream sequence where it ended: the
    next events reach the new tables."""
    after = [(await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": f"then {i}", "owner": "o"}
                                )).json() for i in range(3)]
    listed = (await client.get(OPPORTUNITIES, params={"min_position": after[-1]["log_position"],
                                                     "limit": 100})).json()
    assert {f"then {i}" for i in range(3)} <= {o["title"] for o in listed.get("items", [])}, listed


async def build_history(client: httpx.AsyncClient) -> None:
    for i in range(5):
        oid = (await client.post(OPPORTUNITIES, json={"customer_id": f"c{i}", "title": f"t{i}", "owner": "o",
                                                      "amount": 100 + i})).json()["id"]
        await client.post(f"{OPPORTUNITIES}/{oid}/stage", json={"stage": "proposal"})
        if i % 2:
            await client.post(f"{OPPORTUNITIES}/{oid}/win", json={})
    order = await approved(client)
    await client.post(f"/api/v1/procurement/purchase-orders/{order}/receive",
                      json={"lines": [{"line_no": 1, "accepted_quantity": 3}]})
    await hire(client, "E-1")
    run = (await ok(client, "/api/v1/hrm/payroll-runs", {"period": "2026-02"}, status=201))["id"]
    await ok(client, f"/api/v1/hrm/payroll-runs/{run}/calculate")
    await client.post("/api/v1/users/sync", json={"user_id": "u-1", "email": "a@b.co"})


def cli(service: Service, *args: str) -> Any:
    env = {"ERP_DATABASE_URL": service.endpoints.database_url, "ERP_NATS_URL": service.endpoints.nats_url}
    return CliRunner().invoke(main, list(args), env=env)


@pytest.mark.parametrize("source", [(), ("--from-stream",)], ids=["from the event store", "from the stream"])
async def test_a_rebuild_equals_live_processing_row_by_row(
    client: httpx.AsyncClient, service: Service, source: tuple[str, ...]
) -> None:
    await leave_a_gap(service)
    await build_history(client)
    await caught_up(service)
    live = await rows(service)
    assert all(live[t] for t in ("opportunities", "purchase_orders", "payslips", "users"))

    result = await asyncio.to_thread(cli, service, "projections", "rebuild", "--all", *source)
    assert result.exit_code == 0, result.output
    assert "events/s" in result.output and "opportunities: rebuilt from" in result.output
    await caught_up(service)
    assert await rows(service) == live
    # still isolated: the API role sees only its tenant in the new tables
    listed = (await client.get(OPPORTUNITIES)).json()["items"]
    assert len(listed) == 5
    await live_processing_goes_on(client)


async def test_a_rebuild_read_by_helper_processes_equals_live_processing(
    client: httpx.AsyncClient, service: Service
) -> None:
    await build_history(client)
    await leave_a_gap(service)
    for i in range(10):
        await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": f"after {i}", "owner": "o"})
    await caught_up(service)
    live = await rows(service)

    helpers = HelperProcesses(service.endpoints.database_url, 2)
    try:
        await helpers.wait_ready()
        source = EventStoreSource(service.store, service.endpoints.database_url, helpers=helpers)
        rebuilt = await asyncio.wait_for(rebuild_many(service.endpoints.database_url, source,
                                                      all_projections(), batch=7), timeout=60)
    finally:
        helpers.close()
    assert source.helped == max(r.events for r in rebuilt) > 30
    await caught_up(service)
    assert await rows(service) == live
    await live_processing_goes_on(client)


async def test_a_rebuild_while_commands_keep_arriving_loses_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    for i in range(50):
        await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": f"before {i}", "owner": "o"})
    opportunities = next(p for p in all_projections() if p.name == "opportunities")

    async def keep_opening() -> list[Any]:
        return [(await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": f"during {i}",
                                                        "owner": "o"})).json()["id"] for i in range(60)]

    rebuilt, during = await asyncio.gather(
        rebuild(service.endpoints.database_url, store_source(service), opportunities, batch=10),
        keep_opening())
    assert rebuilt.events >= 50 + 4  # the opened ones and the tenants' registrations
    await caught_up(service)
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        titles = [r[0] for r in await (await conn.execute("SELECT title FROM opportunities")).fetchall()]
    assert len(titles) == 110 and len(set(titles)) == 110
    page = (await client.get(OPPORTUNITIES, params={"limit": 200})).json()["items"]
    assert set(during) <= {o["opportunity_id"] for o in page}  # every command made during it is there


async def test_queries_wait_for_what_the_swapped_in_tables_have_not_applied_yet(database_url: str) -> None:
    """The live tables may have got further than the rebuilt ones that replace them: after the
    swap's NOTIFY a query waits for the live runner to apply its write to the new tables
    instead of being told it is there."""
    positions = ReadModelPositions(database_url)
    listening = asyncio.create_task(positions.run())
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            async def notify(payload: str) -> None:
                await conn.execute("SELECT pg_notify(%s, %s)", (POSITIONS_CHANNEL, payload))

            async def listening_and_at(payload: str, name: str, position: int) -> bool:
                await notify(payload)  # until the listener has started
                return positions.position(name) == position

            await eventually(lambda: listening_and_at(positions_payload(["opportunities", "payroll"], 100),
                                                      "opportunities", 100))
            await notify(positions_payload(["payroll"], 60))  # older news: no step back
            await notify(positions_payload(["opportunities"], 50, replaced=True))  # the rebuild ended at 50
            await eventually(lambda: listening_and_at("opportunities:40", "opportunities", 50))
            assert positions.position("payroll") == 100
            waiting = asyncio.create_task(positions.wait("opportunities", 75, 10))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await notify(positions_payload(["opportunities"], 80))  # the live runner applied it again
            await waiting
            assert read_positions(positions_payload(["payroll"], 5, replaced=True)) == {"payroll": 5}
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_a_swap_missed_while_the_listener_was_away_is_read_from_the_checkpoints(
    database_url: str,
) -> None:
    """The listener reconnects and reads the checkpoints as stored, even where they are behind
    what it was told before: a rebuild swapped in while it was away ended there."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(CHECKPOINTS_DDL)
        await conn.execute("INSERT INTO projection_checkpoints (name, stream_seq, log_position) "
                           "VALUES ('opportunities', 100, 100)")
    positions = ReadModelPositions(database_url)
    listening = asyncio.create_task(positions.run())
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:

            async def at(position: int) -> bool:
                await conn.execute("SELECT pg_notify(%s, %s)",
                                   (POSITIONS_CHANNEL, positions_payload(["payroll"], 1)))
                return positions.position("opportunities") == position

            await eventually(lambda: at(100))
            await conn.execute("UPDATE projection_checkpoints SET stream_seq = 40, log_position = 40")
            dropped = await (await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'erp-positions'")).fetchone()
            assert dropped == (1,)
            await eventually(lambda: at(40))
            waiting = asyncio.create_task(positions.wait("opportunities", 75, 10))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await conn.execute("SELECT pg_notify(%s, %s)",
                               (POSITIONS_CHANNEL, positions_payload(["opportunities"], 80)))
            await waiting
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_tables_swapped_in_behind_the_live_runner_catch_up_with_no_new_event(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A rebuild that ends before what the live runner applied, swapped in after the last
    command: no event comes to fail the runner's guard, yet the new tables catch up."""
    opened = [(await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": f"t{i}", "owner": "o"}
                                 )).json() for i in range(5)]
    await caught_up(service)
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url, autocommit=True) as conn:
        # as a swap leaves them: the tables and the checkpoint two events behind
        await conn.execute("DELETE FROM opportunities WHERE opportunity_id = ANY(%s)",
                           ([o["id"] for o in opened[-2:]],))
        await conn.execute("UPDATE projection_checkpoints SET stream_seq = stream_seq - 2, log_position = %s "
                           "WHERE name = 'opportunities'", (opened[-3]["log_position"],))

        async def all_there() -> bool:
            cur = await conn.execute("SELECT count(*) FROM opportunities")
            return bool((await cur.fetchone() or (0,))[0] == 5)
        await eventually(all_there, timeout=30)


class Interrupt(Exception):
    pass


async def test_an_interrupted_rebuild_is_resumed_or_discarded(
    client: httpx.AsyncClient, service: Service
) -> None:
    await build_history(client)
    await caught_up(service)
    live = await rows(service)
    payroll = next(p for p in all_projections() if p.name == "payroll")

    def stop_after_the_first_batch(done: int, total: int) -> None:
        raise Interrupt(f"interrupted at {done} of {total}")

    with pytest.raises(Interrupt):
        await rebuild(service.endpoints.database_url, store_source(service), payroll, batch=5,
                      progress=stop_after_the_first_batch)
    status = (await asyncio.to_thread(cli, service, "projections", "status")).output
    assert "payroll" in status and "rebuild from the event store interrupted at 5" in status
    refused = await asyncio.to_thread(cli, service, "projections", "rebuild", "payroll")
    assert refused.exit_code == 1 and "resume it (--resume) or discard it (--discard)" in refused.output
    elsewhere = await asyncio.to_thread(cli, service, "projections", "rebuild", "payroll", "--from-stream",
                                        "--resume")
    assert elsewhere.exit_code == 1, elsewhere.output
    assert "resumes from the event store only; discard it (--discard) to rebuild from the stream" in \
        elsewhere.output
    both = await asyncio.to_thread(cli, service, "projections", "rebuild", "payroll", "--resume", "--discard")
    assert both.exit_code == 2 and "not both" in both.output
    twice = await asyncio.to_thread(cli, service, "projections", "rebuild", "payroll", "payroll")
    assert twice.exit_code == 2 and "named twice" in twice.output

    resumed = await asyncio.to_thread(cli, service, "projections", "rebuild", "payroll", "--resume")
    assert resumed.exit_code == 0, resumed.output
    head = await asyncio.to_thread(service.store.recorder.max_notification_id) or 0
    assert f"payroll: rebuilt from {head - 5} events" in resumed.output  # only what was left
    await caught_up(service)
    assert await rows(service) == live

    with pytest.raises(Interrupt):
        await rebuild(service.endpoints.database_url, store_source(service), payroll, batch=5,
                      progress=stop_after_the_first_batch)
    discarded = await asyncio.to_thread(cli, service, "projections", "rebuild", "payroll", "--discard")
    assert discarded.exit_code == 0 and f"payroll: rebuilt from {head} events" in discarded.output
    await caught_up(service)
    assert await rows(service) == live
    assert "interrupted" not in (await asyncio.to_thread(cli, service, "projections", "list")).output


async def test_one_rebuild_of_a_projection_at_a_time_and_a_refused_one_leaves_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    await build_history(client)
    await caught_up(service)
    url = service.endpoints.database_url
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
        await other.execute("SELECT pg_advisory_lock(hashtext('erp-rebuild'), hashtext('payroll'))")
        running = await asyncio.to_thread(cli, service, "projections", "rebuild", "opportunities", "payroll")
    assert running.exit_code == 1 and "a rebuild of payroll is running" in running.output, running.output
    status = (await asyncio.to_thread(cli, service, "projections", "status")).output
    assert "interrupted" not in status, status  # the opportunities' fresh schema is gone too
    after = await asyncio.to_thread(cli, service, "projections", "rebuild", "opportunities", "payroll")
    assert after.exit_code == 0, after.output


def store_source(service: Service) -> EventStoreSource:
    return EventStoreSource(service.store, service.endpoints.database_url)
