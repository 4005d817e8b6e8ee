"""The tenant's user directory: references to users as the auth service announced them."""

from __future__ import annotations

from typing import Any

from projections.base import Delivered, Statements
from streams.events.tenancy import UserReferenced

DDL = """
CREATE TABLE IF NOT EXISTS users (
    user_reference_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    email text NOT NULL,
    name text NOT NULL,
    active boolean NOT NULL,
    version bigint NOT NULL,
    created_position bigint NOT NULL,
    log_position bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_tenant_user ON users (tenant_id, user_id);
CREATE INDEX IF NOT EXISTS users_tenant_created ON users (tenant_id, created_position DESC);
"""
# Only on top of the version before it, so a replayed event changes nothing.
_UPSERT = """
INSERT INTO users (user_reference_id, tenant_id, user_id, email, name, active, version,
    created_position, log_position, updated_at)
VALUES (%(id)s, %(tenant)s, %(user_id)s, %(email)s, %(name)s, %(active)s, %(v)s, %(pos)s, %(pos)s, %(at)s)
ON CONFLICT (user_reference_id) DO UPDATE SET email = excluded.email, name = excluded.name,
    active = excluded.active, version = excluded.version, log_position = excluded.log_position,
    updated_at = excluded.updated_at
WHERE users.version = excluded.version - 1
"""


class UsersProjection:
    name = "users"
    ddl = DDL
    _reads: dict[str, type[Any]] = {
        "erp.user_reference.referenced": UserReferenced,
        "erp.user_reference.synced": UserReferenced,
    }

    def reads(self, subject: str) -> type[Any] | None:
        return self._reads.get(subject)

    def apply(self, out: Statements, event: Delivered) -> None:
        assert event.envelope is not None
        data: UserReferenced = event.envelope.data
        out.add(_UPSERT, {
            "id": data.user_reference_id, "tenant": event.envelope.tenant_id, "user_id": data.user_id,
            "email": data.email, "name": data.name, "active": data.active,
            "v": event.aggregate_version, "pos": event.log_position, "at": event.envelope.timestamp,
        })
