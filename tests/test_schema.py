"""Schema changes at start-up: an unchanged restart locks no table; a changed text runs."""

from __future__ import annotations

import asyncio

import psycopg

from erp.bootstrap import all_projections, ensure_schemas
from erp.eventstore import store_for
from projections.opportunities import OpportunitiesProjection
from projections.runner import ensure_schema


async def test_a_restart_with_nothing_to_change_waits_for_no_table_lock(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await ensure_schemas(conn)
    # Transactions in flight, as while another instance serves: a projector writing every
    # read model (ROW EXCLUSIVE) and a query reading them (ACCESS SHARE).
    tables = ["opportunities", "opportunity_stage_history", "purchase_orders", "payroll_runs", "employees",
              "work_orders", "boms", "users", "device_alerts", "webhook_endpoints"]
    async with await psycopg.AsyncConnection.connect(database_url) as writer, \
            await psycopg.AsyncConnection.connect(database_url, autocommit=True) as starting:
        await writer.execute(f"LOCK TABLE {', '.join(tables)} IN ROW EXCLUSIVE MODE")
        await starting.execute("SET lock_timeout = '2s'")
        await ensure_schemas(starting)  # before: ALTER TABLE and CREATE INDEX waited, then failed
        await writer.rollback()


async def test_a_changed_schema_text_is_applied_once(database_url: str) -> None:
    class Widened(OpportunitiesProjection):
        ddl = OpportunitiesProjection.ddl + "ALTER TABLE opportunities ADD COLUMN IF NOT EXISTS region text;"

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for projection in all_projections():
            await ensure_schema(conn, projection)
        await ensure_schema(conn, Widened())
        await ensure_schema(conn, Widened())
        cur = await conn.execute("SELECT count(*) FROM information_schema.columns "
                                 "WHERE table_name = 'opportunities' AND column_name = 'region'")
        assert await cur.fetchone() == (1,)
        cur = await conn.execute("SELECT count(*) FROM erp_schema_applied "
                                 "WHERE name = 'projection:opportunities'")
        assert await cur.fetchone() == (2,)  # the first text and the widened one, each once


async def test_an_event_store_starting_beside_saves_in_flight_waits_for_none(database_url: str) -> None:
    """The library creates its index with `CREATE UNIQUE INDEX IF NOT EXISTS` at every start,
    which waited for a SHARE lock behind every save in flight (and held up the saves after)."""
    first = await asyncio.to_thread(store_for, database_url, 2)
    first.close()
    async with await psycopg.AsyncConnection.connect(database_url) as saving:
        await saving.execute("LOCK TABLE erp_events, erp_snapshots IN ROW EXCLUSIVE MODE")
        try:
            second = await asyncio.wait_for(asyncio.to_thread(store_for, database_url, 2), timeout=10)
        finally:
            await saving.rollback()
    second.close()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT name FROM erp_schema_applied WHERE name LIKE 'recorder:%' "
                                 "ORDER BY name")
        assert await cur.fetchall() == [("recorder:erp_events",), ("recorder:erp_snapshots",)]


async def test_money_columns_take_any_amount_the_domain_accepted_even_on_older_tables(
    database_url: str,
) -> None:
    """A column of bounded precision would refuse an amount, and its projection would stop
    there for every tenant. Tables an older version made with numeric(18, 2) are widened."""
    payroll = next(p for p in all_projections() if p.name == "payroll")

    class Older(type(payroll)):  # type: ignore[misc]
        ddl = payroll.ddl.split("DO $$")[0].replace("gross_pay numeric", "gross_pay numeric(18, 2)")

    bounded = ("SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
               "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' "
               "WHERE c.relkind = 'r' AND a.atttypid = 'numeric'::regtype AND a.atttypmod <> -1 "
               "AND c.relname <> 'opportunities'")  # an opportunity's one amount: bounded by the API
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await ensure_schema(conn, Older())
        assert sorted(await (await conn.execute(bounded)).fetchall()) == [
            ("payroll_runs", "gross_pay"), ("payslips", "gross_pay")]
        for projection in all_projections():
            await ensure_schema(conn, projection)
        assert await (await conn.execute(bounded)).fetchall() == []
        await conn.execute(
            "INSERT INTO payroll_runs (payroll_id, tenant_id, period, status, net_pay, version, "
            "created_position, log_position, created_at, updated_at) VALUES (gen_random_uuid(), 't', "
            "'2026-02', 'processed', 12345678901234567890.12, 1, 1, 1, now(), now())")
