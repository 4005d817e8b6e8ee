"""The `opportunities` read model: list (filter by stage, owner, customer) and detail."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor

from projections.base import Delivered
from streams.events import crm as c

DDL = """
CREATE TABLE IF NOT EXISTS opportunities (
    opportunity_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    customer_id text NOT NULL,
    title text NOT NULL,
    owner text NOT NULL,
    stage text NOT NULL,
    status text NOT NULL,
    amount numeric(18, 2),
    currency text NOT NULL,
    lost_reason text,
    competitor text,
    version integer NOT NULL,
    opened_position bigint NOT NULL,
    log_position bigint NOT NULL,
    opened_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS opportunities_tenant_opened
    ON opportunities (tenant_id, opened_position DESC);
CREATE INDEX IF NOT EXISTS opportunities_tenant_stage ON opportunities (tenant_id, stage);
CREATE INDEX IF NOT EXISTS opportunities_tenant_owner ON opportunities (tenant_id, owner);
CREATE INDEX IF NOT EXISTS opportunities_tenant_customer
    ON opportunities (tenant_id, customer_id);
"""

# Each update applies only the next version, so a replayed event changes nothing.
_OPENED = """
INSERT INTO opportunities (opportunity_id, tenant_id, customer_id, title, owner, stage,
    status, amount, currency, version, opened_position, log_position, opened_at, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (opportunity_id) DO NOTHING
"""
_STAGE_CHANGED = """
UPDATE opportunities SET stage = %s, version = %s, log_position = %s, updated_at = %s
WHERE opportunity_id = %s AND version = %s - 1
"""
_WON = """
UPDATE opportunities SET status = 'won', amount = %s, currency = %s,
    version = %s, log_position = %s, updated_at = %s
WHERE opportunity_id = %s AND version = %s - 1
"""
_LOST = """
UPDATE opportunities SET status = 'lost', lost_reason = %s, competitor = %s,
    version = %s, log_position = %s, updated_at = %s
WHERE opportunity_id = %s AND version = %s - 1
"""


class OpportunitiesProjection:
    name = "opportunities"
    ddl = DDL
    _reads: dict[str, type[Any]] = {
        "erp.opportunity.opened": c.OpportunityOpened,
        "erp.opportunity.stage_changed": c.OpportunityStageChanged,
        "erp.opportunity.won": c.OpportunityWon,
        "erp.opportunity.lost": c.OpportunityLost,
    }

    def reads(self, subject: str) -> type[Any] | None:
        return self._reads.get(subject)

    async def apply(self, cur: AsyncCursor[Any], event: Delivered) -> None:
        assert event.envelope is not None
        data: Any = event.envelope.data
        at = event.envelope.timestamp
        v, pos = event.aggregate_version, event.log_position
        match data:
            case c.OpportunityOpened():
                await cur.execute(_OPENED, (
                    data.opportunity_id, event.envelope.tenant_id, data.customer_id,
                    data.title, data.owner, data.stage, data.amount, data.currency,
                    v, pos, pos, at, at,
                ))
            case c.OpportunityStageChanged():
                await cur.execute(_STAGE_CHANGED, (data.stage, v, pos, at, data.opportunity_id, v))
            case c.OpportunityWon():
                await cur.execute(
                    _WON, (data.amount, data.currency, v, pos, at, data.opportunity_id, v)
                )
            case c.OpportunityLost():
                await cur.execute(
                    _LOST, (data.reason, data.competitor, v, pos, at, data.opportunity_id, v)
                )
