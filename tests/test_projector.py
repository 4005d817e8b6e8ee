"""The projector under SIGKILL, redelivery and gaps: the read model equals the event store."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from aggregates.purchase_order import OrderLine, PurchaseOrder
from erp.bootstrap import Endpoints
from erp.eventstore import store_for
from projections import base
from projections.base import (
    FOR_ROW_SETS,
    POSITIONS_CHANNEL,
    Delivered,
    Statements,
    pipelined_rows,
    read_positions,
)
from projections.opportunities import OpportunitiesProjection
from projections.purchase_orders import PurchaseOrdersProjection
from projections.runner import (
    Arrived,
    ProjectorGroup,
    ProjectorRunner,
    Resubscribe,
    ensure_schema,
    notify_positions,
)
from streams.catalogue import PUBLICATIONS
from streams.envelope import Envelope
from streams.events import crm as c
from streams.events.crm import OpportunityOpened
from streams.jetstream import ensure_stream
from streams.relay import Relay
from tests.conftest import eventually, read_stream, record_history, worker


async def publish_all(endpoints: Endpoints, js: Any, total: int) -> None:
    """Runs the relay in this process until the stream holds `total` events."""
    await ensure_stream(js, "ERP", 1)
    store = await asyncio.to_thread(store_for, endpoints.database_url, 2)
    relay = Relay(store, endpoints.database_url, js._nc, "ERP", batch_size=2000,
                  idle_catch_up_seconds=1, ack_timeout_seconds=10)
    running = asyncio.create_task(relay.run())

    async def published() -> bool:
        return bool((await js.stream_info("ERP")).state.messages >= total)

    try:
        await eventually(published, timeout=120)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        store.close()


async def checkpoint(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        try:
            cur = await conn.execute(
                "SELECT stream_seq FROM projection_checkpoints WHERE name = 'opportunities'"
            )
        except psycopg.errors.UndefinedTable:
            return 0
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def read_model_matches_event_store(database_url: str, total: int) -> None:
    """Every opportunity's row is at its aggregate's last version, in the state it reached."""
    store = await asyncio.to_thread(store_for, database_url, 2)
    try:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute(
                "SELECT originator_id, max(originator_version) FROM erp_events GROUP BY 1"
            )
            versions: dict[Any, int] = dict(await cur.fetchall())
            cur = await conn.execute(
                "SELECT opportunity_id, version, stage, status, amount FROM opportunities"
            )
            rows = {r[0]: r[1:] for r in await cur.fetchall()}
        assert len(rows) == len(versions)
        assert sum(version for version, *_ in rows.values()) == total  # no event skipped
        for aggregate_id, version in list(versions.items())[:: max(1, len(versions) // 200)]:
            aggregate: Any = await asyncio.to_thread(store.repository.get, aggregate_id)
            assert rows[aggregate_id] == (
                version, aggregate.stage, aggregate.status.value, aggregate.amount
            )
    finally:
        store.close()


async def test_projector_killed_mid_batch_applies_every_event_once(
    endpoints: Endpoints, js: Any
) -> None:
    total = await asyncio.to_thread(record_history, endpoints.database_url, 10_000)
    await publish_all(endpoints, js, total)
    killed_at = []
    for threshold in (1, total // 3, 2 * total // 3):
        projector = worker("project", endpoints, ERP_PROJECTOR_BATCH_SIZE="250")
        try:
            async def reached(threshold: int = threshold) -> int:
                seq = await checkpoint(endpoints.database_url)
                return seq if seq >= threshold else 0

            killed_at.append(await eventually(reached, timeout=60, interval=0.002))
        finally:
            projector.send_signal(signal.SIGKILL)
            projector.wait()
    assert all(0 < n < total for n in killed_at), f"not killed mid-way: {killed_at}"
    projector = worker("project", endpoints)
    try:
        async def caught_up() -> bool:
            return await checkpoint(endpoints.database_url) == total

        await eventually(caught_up, timeout=60)
    finally:
        projector.send_signal(signal.SIGTERM)
        projector.wait()
    await read_model_matches_event_store(endpoints.database_url, total)


@pytest.fixture
async def runner(endpoints: Endpoints, js: Any) -> Any:
    return ProjectorRunner(OpportunitiesProjection())


async def test_redelivered_events_are_skipped_and_a_gap_is_refused(
    endpoints: Endpoints, js: Any, runner: ProjectorRunner
) -> None:
    total = await asyncio.to_thread(record_history, endpoints.database_url, 30)
    await publish_all(endpoints, js, total)
    messages = [Arrived.of(m) for m in await read_stream(js, total)]
    async with await psycopg.AsyncConnection.connect(
        endpoints.database_url, autocommit=True
    ) as conn:
        await ensure_schema(conn, runner.projection)
        await runner.apply(conn, messages[:10])
        await runner.apply(conn, messages[5:20])  # 5..9 again: redelivered
        assert runner.stream_seq == 20
        with pytest.raises(Resubscribe):
            await runner.apply(conn, messages[21:])  # 21 is missing: a gap
        assert await checkpoint(endpoints.database_url) == 20  # the gap wrote nothing
        await runner.apply(conn, messages[20:])
    assert await checkpoint(endpoints.database_url) == total
    await read_model_matches_event_store(endpoints.database_url, total)


async def test_a_second_runner_cannot_apply_a_batch_twice(
    endpoints: Endpoints, js: Any, runner: ProjectorRunner
) -> None:
    """Should two runners ever both run, the guarded checkpoint lets only one apply a batch."""
    from projections.runner import CheckpointMoved

    total = await asyncio.to_thread(record_history, endpoints.database_url, 10)
    await publish_all(endpoints, js, total)
    messages = [Arrived.of(m) for m in await read_stream(js, total)]
    other = ProjectorRunner(OpportunitiesProjection())
    async with await psycopg.AsyncConnection.connect(
        endpoints.database_url, autocommit=True
    ) as conn:
        await ensure_schema(conn, runner.projection)
        await runner.apply(conn, messages)
        with pytest.raises(CheckpointMoved):
            await other.apply(conn, messages)  # it still believes the checkpoint is 0
    await read_model_matches_event_store(endpoints.database_url, total)


class OpenedLog:
    """A read model of opened opportunities that can be broken on purpose."""

    name = "opened_log"
    ddl = "CREATE TABLE IF NOT EXISTS opened_log (opportunity_id uuid PRIMARY KEY)"
    broken = True

    def reads(self, subject: str) -> type[Any] | None:
        return OpportunityOpened if subject == "erp.opportunity.opened" else None

    def apply(self, out: Statements, event: Delivered) -> None:
        if self.broken:
            raise RuntimeError("a bug in this projection")
        assert event.envelope is not None
        out.add("INSERT INTO opened_log VALUES (%s) ON CONFLICT DO NOTHING",
                (event.envelope.data.opportunity_id,))


async def test_one_subscription_feeds_every_projection_and_a_failing_one_does_not_stop_the_others(
    endpoints: Endpoints, js: Any
) -> None:
    total = await asyncio.to_thread(record_history, endpoints.database_url, 200)
    await publish_all(endpoints, js, total)
    flaky = OpenedLog()
    runners = [ProjectorRunner(OpportunitiesProjection()), ProjectorRunner(flaky)]
    group = ProjectorGroup(runners, endpoints.database_url, js, "ERP", batch_size=50, retry_seconds=0.5)
    notified: list[str] = []
    async with await psycopg.AsyncConnection.connect(endpoints.database_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {POSITIONS_CHANNEL}")
        running = asyncio.create_task(group.run())
        try:
            async def opportunities_done() -> bool:
                return await checkpoint(endpoints.database_url) == total

            await eventually(opportunities_done, timeout=60)
            assert runners[1].stream_seq == 0 and runners[1].applied_total == 0  # failing, left out
            await read_model_matches_event_store(endpoints.database_url, total)
            flaky.broken = False

            async def flaky_done() -> int:
                async with await psycopg.AsyncConnection.connect(endpoints.database_url) as conn:
                    cur = await conn.execute("SELECT count(*) FROM opened_log")
                    row = await cur.fetchone()
                    return int(row[0]) if row and row[0] == 200 and runners[1].stream_seq == total else 0

            await eventually(flaky_done, timeout=60)
            async for notice in listener.notifies(timeout=0.5):
                notified.append(notice.payload)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert runners[0].resubscribes == 0 and runners[1].resubscribes == 0
    reached = {name: position for payload in notified for name, position in read_positions(payload).items()}
    assert reached == {"opportunities": total, "opened_log": total}


class ReadsNothing(OpenedLog):
    name = "reads_nothing"
    broken = False

    def reads(self, subject: str) -> type[Any] | None:
        return None


async def test_a_projection_reading_nothing_of_a_batch_is_announced_by_one_that_applies_it(
    endpoints: Endpoints, js: Any
) -> None:
    total = await asyncio.to_thread(record_history, endpoints.database_url, 100)
    await publish_all(endpoints, js, total)
    group = ProjectorGroup([ProjectorRunner(OpportunitiesProjection()), ProjectorRunner(ReadsNothing())],
                           endpoints.database_url, js, "ERP", batch_size=20)
    notified: list[dict[str, int]] = []
    async with await psycopg.AsyncConnection.connect(endpoints.database_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {POSITIONS_CHANNEL}")
        running = asyncio.create_task(group.run())
        try:
            async for notice in listener.notifies(timeout=60):
                notified.append(read_positions(notice.payload))
                if notified[-1].get("opportunities") == total:
                    break
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert len(notified) >= total // 20  # a NOTIFY per applied batch
    assert all(positions.keys() == {"opportunities", "reads_nothing"} for positions in notified), notified
    assert notified[-1] == {"opportunities": total, "reads_nothing": total}


async def test_a_statement_prepared_in_a_pipeline_that_failed_is_prepared_again_under_a_new_name(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await psycopg.AsyncConnection.connect(endpoints.database_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE prepared_probe (n integer PRIMARY KEY)")
        insert = "INSERT INTO prepared_probe VALUES (%s)"
        with pytest.raises(psycopg.errors.DivisionByZero):  # prepared, then the pipeline fails
            await pipelined_rows(conn, [(insert, (1,)), ("SELECT 1 / %s", (0,))])
        # Its name may not be taken again: the statement prepared before the error still exists.
        assert await pipelined_rows(conn, [(insert, (1,)), ("SELECT count(*) FROM prepared_probe", ())]) \
            == [(["count"], [(1,)])]
        # Past the most a connection prepares, statements are sent to be parsed each time.
        monkeypatch.setattr(base, "_MAX_PREPARED", 2)
        for _ in range(2):
            found = await pipelined_rows(conn, [(f"SELECT %s::int + {k} AS k", (k,)) for k in range(4)])
            assert found == [(["k"], [(2 * k,)]) for k in range(4)]
        cur = await conn.execute("SELECT name FROM pg_prepared_statements WHERE name ^@ 'erp_' ORDER BY name")
        # the two of the failed pipeline, the insert and the count again; none of the four sums
        assert await cur.fetchall() == [("erp_0",), ("erp_1",), ("erp_2",), ("erp_3",)]


@pytest.mark.parametrize("count", [3, 200])
async def test_statements_run_all_or_nothing_with_values_kept_as_given(
    endpoints: Endpoints, count: int
) -> None:
    table = f"statements_probe_{count}"
    note = "it's 100% %s; -- not SQL\n"
    async with await psycopg.AsyncConnection.connect(endpoints.database_url, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {table} (n integer PRIMARY KEY, note text)")
        out = Statements(conn)
        out.add_many(f"INSERT INTO {table} VALUES (%s, %s)", [(n, note) for n in range(count)])
        await out.send()
        assert len(out) == 0
        out.add_many(f"INSERT INTO {table} VALUES (%s, %s)", [(count + n, "new") for n in range(count - 1)])
        out.add(f"INSERT INTO {table} VALUES (%s, %s)", (0, "a clash"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            await out.send()
        cur = await conn.execute(f"SELECT count(*), count(*) FILTER (WHERE note = %s) FROM {table}", (note,))
        assert await cur.fetchone() == (count, count)
        # The connection goes on after a failed transaction, with named values and NULLs too.
        out.add_many(f"UPDATE {table} SET note = %(note)s WHERE n = %(n)s",
                     [{"n": n, "note": None if n % 2 else "again"} for n in range(count)])
        await out.send()
        cur = await conn.execute(f"SELECT count(*) FILTER (WHERE note = 'again'), count(*) FILTER "
                                 f"(WHERE note IS NULL) FROM {table}")
        assert await cur.fetchone() == ((count + 1) // 2, count // 2)
        # A value that cannot be sent fails before anything is: the connection stays usable.
        out.add(f"INSERT INTO {table} VALUES (%s, %s)", (-1, object()))
        with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
            await out.send()
        cur = await conn.execute(f"SELECT count(*) FROM {table}")
        assert await cur.fetchone() == (count,)


SUBJECT_OF = {publication.payload: publication.subject for publication in PUBLICATIONS.values()}


def _history_of_every_kind(opportunities: int) -> list[Delivered]:
    """Each opportunity's events one after another in every order the domain allows, the
    opportunities interleaved, with the values a row-set statement must carry exactly."""
    lives: list[list[Any]] = []
    for n in range(opportunities):
        oid = uuid.uuid4()
        amount = Decimal("1234567.89") + n
        life: list[Any] = [
            c.OpportunityOpened(opportunity_id=oid, customer_id=f"c{n}", title=f"Mkate wa ngano {n} — 'x' %s",
                                owner="wanjiru", stage="qualification", probability=10, amount=amount,
                                currency="KES", expected_close="2026-12-31" if n % 2 else None,
                                source_lead_id=None if n % 3 else f"lead-{n}"),
            c.OpportunityUpdated(opportunity_id=oid, title=None if n % 2 else "renamed",
                                 amount=Decimal("0.01"), expected_close="2027-01-15", probability=None),
            c.OpportunityStageChanged(opportunity_id=oid, stage="proposal", from_stage="qualification",
                                      probability=60),
        ]
        if n % 3 == 0:
            life.append(c.OpportunityWon(opportunity_id=oid, customer_id=f"c{n}", amount=amount * 2,
                                         currency="KES"))
            life.append(c.OpportunityInvoiceLinked(opportunity_id=oid, invoice_id=f"INV-{n}", status="draft"))
        else:
            life.append(c.OpportunityLost(opportunity_id=oid, reason="price",
                                          competitor=None if n % 2 else "Acme"))
            if n % 3 == 1:
                life.append(c.OpportunityReopened(opportunity_id=oid, reason="back", from_status="lost",
                                                  stage="negotiation", probability=80))
                life.append(c.OpportunityUpdated(opportunity_id=oid, owner="otieno"))
        lives.append(life)
    return _interleaved(lives)


def _interleaved(lives: list[list[Any]]) -> list[Delivered]:
    """Payloads (or domain events) of several aggregates as a projector receives them, the
    histories interleaved: each aggregate's first event, then each one's second…"""
    at = datetime(2026, 11, 25, 8, 30, 0, 123456, tzinfo=UTC)
    delivered, position = [], 0
    for step in range(max(len(life) for life in lives)):
        for life in lives:
            if step < len(life):
                position += 1
                data = life[step]
                if type(data) in PUBLICATIONS:  # a domain event
                    data = PUBLICATIONS[type(data)].to_payload(data)
                subject = SUBJECT_OF[type(data)]
                delivered.append(Delivered(subject, position, position, step + 1, Envelope(
                    event_id=uuid.uuid4(), event_type=subject, tenant_id="tenant-a",
                    timestamp=at + timedelta(seconds=position), data=data)))
    return delivered


def _purchase_orders_of_every_kind(orders: int) -> list[Delivered]:
    lives = []
    day = "2026-11-27"  # the receipts' "today"
    for n in range(orders):
        po = PurchaseOrder.create(tenant_id="tenant-a", number=f"PO-2026-{n:06d}", vendor_id=f"v{n % 3}",
                                  requested_by="buyer", today="2026-11-25", required_by="2026-12-24", lines=[
                                      OrderLine("flour", "Flour 50 kg — 'unga'", Decimal(10), "bag",
                                                Decimal("3200.50")),
                                      OrderLine("sugar", "Sugar 50 kg", Decimal(4), "bag", Decimal(6100),
                                                "VAT16", Decimal(16))])
        if n % 4 == 3:
            po.cancel("not needed")
        else:
            if n % 4 == 1:
                po.add_line(OrderLine("salt", "Salt", Decimal("2.5"), "kg", Decimal("80.25")))
            po.submit()
            if n % 4 == 2:
                po.reject("approver-9", "too dear")
                po.remove_line(2)
                po.submit()
            for i, role in enumerate(po.pending_roles):
                po.approve(f"approver-{i}", role)
            if n % 4 == 0:
                po.receive("GRN-1", [(1, Decimal(10), Decimal(0))], received_on="2026-11-26", today=day)
                po.receive("GRN-2", [(2, Decimal(4), Decimal(0))], received_on="2026-11-27", today=day)
                po.link_bill(f"BILL-{n}", "draft")
                po.close()
            elif n % 4 == 1:
                po.receive("GRN-1", [(1, Decimal(5), Decimal(1))], received_on="2026-11-26", today=day)
                po.close("vendor out of stock")
        lives.append(list(po.collect_events()))
    return _interleaved(lives)


async def _tables(conn: psycopg.AsyncConnection[Any], *tables: str) -> list[list[Any]]:
    """Every row of the tables, in a fixed order."""
    return [sorted(await (await conn.execute(f"SELECT * FROM {table}")).fetchall(), key=repr)
            for table in tables]


async def _in_one_batch_and_one_at_a_time(database_url: str, projection: Any,
                                          events: list[Delivered]) -> tuple[list[list[Any]], int]:
    """Applies the events with each in its own transaction, then all in one batch and that
    batch again: the tables must come out the same each time. Answers them, and how many
    statements the batch took."""
    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", projection.ddl)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(FOR_ROW_SETS)
        await conn.execute(projection.ddl)
        for event in events:
            out = Statements(conn)
            projection.apply(out, event)
            await out.send()
        one_at_a_time = await _tables(conn, *tables)
        await conn.execute(f"TRUNCATE {', '.join(tables)}")
        out = Statements(conn)
        for event in events:
            projection.apply(out, event)
        executions = len(out)
        await out.send()
        in_one_batch = await _tables(conn, *tables)
        for event in events:
            projection.apply(out, event)
        await out.send()
        assert await _tables(conn, *tables) == in_one_batch
    assert in_one_batch == one_at_a_time
    return in_one_batch, executions


async def test_a_batch_of_row_sets_equals_its_events_applied_one_at_a_time(endpoints: Endpoints) -> None:
    """The opportunities projection's row-set statements: a whole history in one batch (an
    opportunity's events in order, several opportunities sharing each execution) leaves the
    tables as applying each event in its own transaction does, and applying it again changes
    nothing."""
    events = _history_of_every_kind(30)
    # One execution per kind of change in each round: opened; updated; stage changed; won
    # and lost; invoiced and reopened; updated — for 30 opportunities' events.
    (rows, history), executions = await _in_one_batch_and_one_at_a_time(
        endpoints.database_url, OpportunitiesProjection(), events)
    assert (len(events), executions) == (150, 8)
    kinds = [type(e.envelope.data) for e in events if e.envelope is not None]
    assert len(rows) == 30
    no_history = kinds.count(c.OpportunityUpdated) + kinds.count(c.OpportunityInvoiceLinked)
    assert len(history) == len(kinds) - no_history
    by_title = {row[3]: row for row in rows}
    assert by_title["Mkate wa ngano 1 — 'x' %s"][8] == Decimal("0.01")  # amount, to the cent
    assert {row[5] for row in rows} == {"proposal", "negotiation"}
    assert {row[6] for row in rows} == {"won", "lost", "open"}


async def test_purchase_orders_in_one_batch_equal_their_events_applied_one_at_a_time(
    endpoints: Endpoints
) -> None:
    """Row-set statements (created, submitted, approved…) mixed with a statement per change
    (line changes, goods receipts) in one batch: the same tables as one event at a time."""
    events = _purchase_orders_of_every_kind(24)
    (orders, lines, receipts), executions = await _in_one_batch_and_one_at_a_time(
        endpoints.database_url, PurchaseOrdersProjection(), events)
    # Statements per line change (3) and per goods receipt (3 for one line): 90 for 30 events;
    # the other 108 events (with the Received of each short-closed order) share 35 executions.
    assert (len(events), executions) == (138, 125)
    assert (len(orders), len(lines), len(receipts)) == (24, 48, 18)
    assert {row[5] for row in orders} == {"closed", "approved", "cancelled"}


async def test_positions_are_announced_only_for_checkpoints_still_where_their_runner_left_them(
    database_url: str,
) -> None:
    """A rebuild's swap moves a checkpoint row to where the rebuild ended and announces that;
    a runner that has not noticed yet must not announce its old tables' position after it."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn, \
            await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listening:
        for projection in (OpportunitiesProjection(), PurchaseOrdersProjection()):
            await ensure_schema(conn, projection)
        await conn.execute("UPDATE projection_checkpoints SET stream_seq = 7 WHERE name IN "
                           "('opportunities', 'purchase_orders')")
        await listening.execute(f"LISTEN {base.POSITIONS_CHANNEL}")

        async def announced(at: list[tuple[str, int]]) -> dict[str, int]:
            await conn.execute(*notify_positions(at, 12))
            await conn.execute(f"NOTIFY {base.POSITIONS_CHANNEL}, 'end:0'")  # a marker after it
            got: dict[str, int] = {}
            async for note in listening.notifies(timeout=5):
                if note.payload == "end:0":
                    return got
                got.update(base.read_positions(note.payload))
            raise AssertionError("no marker")

        both = [("opportunities", 7), ("purchase_orders", 7)]
        assert await announced(both) == {"opportunities": 12, "purchase_orders": 12}
        await conn.execute("UPDATE projection_checkpoints SET stream_seq = 5 WHERE name = 'purchase_orders'")
        assert await announced(both) == {"opportunities": 12}  # purchase_orders was swapped: not it
        assert await announced([("purchase_orders", 7)]) == {}
