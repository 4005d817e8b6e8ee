"""Service-to-service API keys: shown once, stored as a SHA-256 hash, found by their prefix.

A key reads `erpk_<prefix>_<secret>`. The secret is 256 random bits, so a fast hash is
enough (nothing to brute-force); the prefix finds the row and names the key in logs. The
API compares hashes inside PostgreSQL (`erp_api_key`), so its role never reads one.
A key may be pinned to one tenant; a platform key acts for the tenant in `X-Tenant-ID`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from aggregates.tenant_settings import valid_tenant_id
from erp import schema
from erp.identity import ALL_SCOPES
from projections.tenancy import API_ROLE, ensure_api_role

DDL = """
CREATE TABLE IF NOT EXISTS api_keys (
    prefix text PRIMARY KEY,
    secret_hash bytea NOT NULL,
    owner text NOT NULL,
    scopes text[] NOT NULL,
    tenant_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
-- The API role checks a key through this function and never reads the table (or a hash).
CREATE OR REPLACE FUNCTION erp_api_key(presented_prefix text, presented_hash bytea)
RETURNS TABLE (prefix text, owner text, scopes text[], tenant_id text, created_at timestamptz,
               revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT k.prefix, k.owner, k.scopes, k.tenant_id, k.created_at, k.revoked_at FROM api_keys k
    WHERE k.prefix = presented_prefix AND k.secret_hash = presented_hash AND k.revoked_at IS NULL
$$;
REVOKE ALL ON FUNCTION erp_api_key(text, bytea) FROM PUBLIC;
"""
_KEY = re.compile(r"^erpk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_OWNER = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
CACHE_SECONDS = 30.0  # a revoked key stops working within this long in every process


class InvalidKeyRequest(ValueError):
    pass


@dataclass(frozen=True)
class ApiKey:
    prefix: str
    owner: str
    scopes: tuple[str, ...]
    tenant_id: str | None
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def ensure_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        await conn.execute(schema.LOCK)
        await ensure_api_role(conn)
        await conn.execute(DDL)
        await conn.execute(f"GRANT EXECUTE ON FUNCTION erp_api_key(text, bytea) TO {API_ROLE}")


async def create(conn: psycopg.AsyncConnection[Any], owner: str, scopes: list[str],
                 tenant_id: str | None = None) -> tuple[str, ApiKey]:
    """A new key for `owner`: answers the full key (shown once, never stored) and its record."""
    if not _OWNER.match(owner):
        raise InvalidKeyRequest(f"owner {owner!r} must be a service name: 2-63 of lower-case letters, "
                                "digits and -, starting with a letter")
    if tenant_id is not None and not valid_tenant_id(tenant_id):
        raise InvalidKeyRequest(f"tenant {tenant_id!r}: 1-128 of letters, digits and . _ : -")
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown or not scopes:
        raise InvalidKeyRequest(f"unknown scopes {unknown or '(none given)'}; known: "
                                f"{', '.join(sorted(ALL_SCOPES))}")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    cur = await conn.execute(
        "INSERT INTO api_keys (prefix, secret_hash, owner, scopes, tenant_id) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING created_at", (prefix, _hash(secret), owner, sorted(set(scopes)), tenant_id))
    row = await cur.fetchone()
    assert row is not None
    return f"erpk_{prefix}_{secret}", ApiKey(prefix, owner, tuple(sorted(set(scopes))), tenant_id,
                                             row[0], None)


async def revoke(conn: psycopg.AsyncConnection[Any], prefix: str) -> bool:
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = %s AND revoked_at IS NULL", (prefix,))
    return cur.rowcount == 1


async def listed(conn: psycopg.AsyncConnection[Any]) -> list[ApiKey]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT prefix, owner, scopes, tenant_id, created_at, revoked_at FROM api_keys "
                      "ORDER BY created_at")
    return [ApiKey(**{**row, "scopes": tuple(row["scopes"])}) for row in await cur.fetchall()]


class ApiKeys:
    """Checks presented keys against the table, remembering good ones for `CACHE_SECONDS`."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, ApiKey]] = {}

    async def check(self, conn: psycopg.AsyncConnection[Any], presented: str) -> ApiKey | None:
        found = _KEY.match(presented)
        if not found:
            return None
        prefix, secret = found.groups()
        cache_key = hashlib.sha256(presented.encode()).hexdigest()
        cached = self._known.get(cache_key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM erp_api_key(%s, %s)", (prefix, _hash(secret)))
        row = await cur.fetchone()
        if row is None:  # unknown, revoked, or the wrong secret
            return None
        key = ApiKey(**{**row, "scopes": tuple(row["scopes"])})
        self._known[cache_key] = (time.monotonic(), key)
        return key
