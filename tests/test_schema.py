"""Schema changes at start-up: an unchanged restart locks no table; a changed text runs."""

from __future__ import annotations

import psycopg

from erp.bootstrap import all_projections, ensure_schemas
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
