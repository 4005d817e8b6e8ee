"""Tenant isolation enforced by PostgreSQL: row-level security on every read-model table.

The API reads as `erp_api`, a role without BYPASSRLS that owns nothing, and names its
tenant per transaction (`erp.tenant_id`); a query that forgets its tenant filter still
sees only that tenant's rows, and one that forgets to name the tenant sees none. The
relay, projectors and CLI connect as the owner of the tables, which RLS does not hold back.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from erp import schema
from projections.base import pipelined_rows

API_ROLE = "erp_api"
POLICY = "tenant_isolation"
# Tables with a tenant_id that the API role never reads (API keys are checked through a
# SECURITY DEFINER function, so it never sees their hashes).
WRITE_SIDE = frozenset({"idempotency_keys", "tier1_credentials", "api_keys"})
# Tables the API reads across tenants: the projections' positions.
SHARED_READS = frozenset({"projection_checkpoints"})
NOT_READ_MODELS = WRITE_SIDE | SHARED_READS

_CREATE_ROLE = f"""
DO $$ BEGIN
    CREATE ROLE {API_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$
"""
_TENANT_TABLES = """
SELECT c.relname, c.relrowsecurity,
       EXISTS (SELECT 1 FROM pg_policies p WHERE p.schemaname = n.nspname
               AND p.tablename = c.relname AND p.policyname = %s)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p')
ORDER BY c.relname
"""


async def ensure_api_role(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(_CREATE_ROLE)


async def isolate_tenants(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Row-level security on every read-model table (any table with a tenant_id column),
    readable by the API role; answers the tables isolated. Safe to run on every start."""
    async with conn.transaction():
        await conn.execute(schema.LOCK)
        await ensure_api_role(conn)
        await conn.execute(f"GRANT USAGE ON SCHEMA {await _schema(conn)} TO {API_ROLE}")
        cur = await conn.execute(_TENANT_TABLES, (POLICY,))
        tables = [row for row in await cur.fetchall() if row[0] not in NOT_READ_MODELS]
        for table, enabled, has_policy in tables:
            if not enabled:
                await conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            if not has_policy:
                await conn.execute(
                    f"CREATE POLICY {POLICY} ON {table} FOR SELECT TO {API_ROLE} "
                    "USING (tenant_id = current_setting('erp.tenant_id', true))")
            await conn.execute(f"GRANT SELECT ON {table} TO {API_ROLE}")
        for table in SHARED_READS:
            await conn.execute(f"GRANT SELECT ON {table} TO {API_ROLE}")
    return [row[0] for row in tables]


async def _schema(conn: psycopg.AsyncConnection[Any]) -> str:
    cur = await conn.execute("SELECT quote_ident(current_schema())")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def as_api_role(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool `configure` callback: every connection of the API's read pool reads as `erp_api`.

    A query could `RESET ROLE`; in production give the read pool its own login, a member
    of `erp_api` (ERP_API_DATABASE_URL), and this is not used."""
    await conn.execute(f"SET ROLE {API_ROLE}")


_NAME_TENANT = "SELECT set_config('erp.tenant_id', %s, true)"


async def tenant_queries(
    pool: AsyncConnectionPool[Any], tenant_id: str, queries: list[tuple[str, Any]],
) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
    """Column names and rows of each query (each one returning rows), all sent in one round
    trip and run in one implicit transaction that names `tenant_id` (and ends with them)."""
    async with pool.connection() as conn:
        return (await pipelined_rows(conn, [(_NAME_TENANT, (tenant_id,)), *queries]))[1:]


async def tenant_rows(
    pool: AsyncConnectionPool[Any], tenant_id: str, sql: str, args: Any,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql`, run in a transaction that names `tenant_id`."""
    (found,) = await tenant_queries(pool, tenant_id, [(sql, args)])
    return found
