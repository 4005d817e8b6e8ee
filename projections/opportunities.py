"""Opportunities read models: list/detail with stage history; pipeline and forecast are
queries over the same table (see api/crm.py)."""

from __future__ import annotations

from typing import Any

from projections.base import Delivered, Statements
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
    probability integer NOT NULL,
    amount numeric(18, 2),
    currency text NOT NULL,
    expected_close date,
    source_lead_id text,
    lost_reason text,
    competitor text,
    version integer NOT NULL,
    opened_position bigint NOT NULL,
    log_position bigint NOT NULL,
    opened_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
ALTER TABLE opportunities ADD COLUMN IF NOT EXISTS invoice_id text;
ALTER TABLE opportunities ADD COLUMN IF NOT EXISTS invoice_status text;
CREATE INDEX IF NOT EXISTS opportunities_tenant_opened
    ON opportunities (tenant_id, opened_position DESC);
CREATE INDEX IF NOT EXISTS opportunities_tenant_stage ON opportunities (tenant_id, stage);
CREATE INDEX IF NOT EXISTS opportunities_tenant_owner ON opportunities (tenant_id, owner);
CREATE INDEX IF NOT EXISTS opportunities_tenant_customer ON opportunities (tenant_id, customer_id);
CREATE INDEX IF NOT EXISTS opportunities_tenant_close ON opportunities (tenant_id, expected_close);
CREATE TABLE IF NOT EXISTS opportunity_stage_history (
    opportunity_id uuid NOT NULL,
    version integer NOT NULL,
    tenant_id text NOT NULL,
    stage text NOT NULL,
    status text NOT NULL,
    probability integer NOT NULL,
    reason text,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (opportunity_id, version)
);
"""

# Each change applies only on top of the version before it, so a replayed event is a no-op.
_OPENED = """
INSERT INTO opportunities (opportunity_id, tenant_id, customer_id, title, owner, stage, status,
    probability, amount, currency, expected_close, source_lead_id, version, opened_position,
    log_position, opened_at, updated_at)
VALUES (%(id)s, %(tenant)s, %(customer_id)s, %(title)s, %(owner)s, %(stage)s, 'open', %(probability)s,
    %(amount)s, %(currency)s, %(expected_close)s, %(source_lead_id)s, %(v)s, %(pos)s, %(pos)s, %(at)s, %(at)s)
ON CONFLICT (opportunity_id) DO NOTHING
"""
_NEXT = "version = %(v)s, log_position = %(pos)s, updated_at = %(at)s"
_WHERE = "WHERE opportunity_id = %(id)s AND version = %(v)s - 1"
_UPDATED = f"""
UPDATE opportunities SET title = coalesce(%(title)s, title), owner = coalesce(%(owner)s, owner),
    amount = coalesce(%(amount)s, amount),
    expected_close = coalesce(%(expected_close)s::date, expected_close),
    probability = coalesce(%(probability)s, probability), {_NEXT} {_WHERE}
"""
_STAGE_CHANGED = f"""
UPDATE opportunities SET stage = %(stage)s, probability = %(probability)s, {_NEXT} {_WHERE}
"""
_WON = f"""
UPDATE opportunities SET status = 'won', probability = 100, amount = %(amount)s, {_NEXT} {_WHERE}
"""
_LOST = f"""
UPDATE opportunities SET status = 'lost', probability = 0, lost_reason = %(reason)s,
    competitor = %(competitor)s, {_NEXT} {_WHERE}
"""
_INVOICED = f"""
UPDATE opportunities SET invoice_id = %(invoice_id)s, invoice_status = %(status)s, {_NEXT} {_WHERE}
"""
_REOPENED = f"""
UPDATE opportunities SET status = 'open', stage = %(stage)s, probability = %(probability)s,
    lost_reason = NULL, competitor = NULL, {_NEXT} {_WHERE}
"""


def _with_history(change: str) -> str:
    """`change` to the opportunity's row and, if it changed it, the stage history row it makes
    (the row's stage after the change), in one statement."""
    return f"""
WITH changed AS ({change} RETURNING opportunity_id, tenant_id, stage)
INSERT INTO opportunity_stage_history (opportunity_id, version, tenant_id, stage, status,
    probability, reason, changed_at)
SELECT opportunity_id, %(v)s, tenant_id, stage, %(history_status)s, %(history_probability)s,
    %(history_reason)s, %(at)s FROM changed
ON CONFLICT DO NOTHING
"""


_OPENED_WITH_HISTORY = _with_history(_OPENED)
_STAGE_CHANGED_WITH_HISTORY = _with_history(_STAGE_CHANGED)
_WON_WITH_HISTORY = _with_history(_WON)
_LOST_WITH_HISTORY = _with_history(_LOST)
_REOPENED_WITH_HISTORY = _with_history(_REOPENED)


class OpportunitiesProjection:
    name = "opportunities"
    ddl = DDL
    _reads: dict[str, type[Any]] = {
        "erp.opportunity.opened": c.OpportunityOpened,
        "erp.opportunity.updated": c.OpportunityUpdated,
        "erp.opportunity.stage_changed": c.OpportunityStageChanged,
        "erp.opportunity.won": c.OpportunityWon,
        "erp.opportunity.lost": c.OpportunityLost,
        "erp.opportunity.reopened": c.OpportunityReopened,
        "erp.opportunity.invoice_linked": c.OpportunityInvoiceLinked,
    }

    def reads(self, subject: str) -> type[Any] | None:
        return self._reads.get(subject)

    def apply(self, out: Statements, event: Delivered) -> None:
        assert event.envelope is not None
        data: Any = event.envelope.data
        at = event.envelope.timestamp
        step = {"id": data.opportunity_id, "v": event.aggregate_version, "pos": event.log_position, "at": at}

        def history(status: str, probability: int, reason: str | None = None) -> dict[str, Any]:
            return {"history_status": status, "history_probability": probability, "history_reason": reason}

        match data:
            case c.OpportunityOpened():
                out.add(_OPENED_WITH_HISTORY, {
                    **step, **history("open", data.probability), "tenant": event.envelope.tenant_id,
                    "customer_id": data.customer_id, "title": data.title, "owner": data.owner,
                    "stage": data.stage, "probability": data.probability, "amount": data.amount,
                    "currency": data.currency, "expected_close": data.expected_close,
                    "source_lead_id": data.source_lead_id,
                })
            case c.OpportunityUpdated():
                out.add(_UPDATED, {
                    **step, "title": data.title, "owner": data.owner, "amount": data.amount,
                    "expected_close": data.expected_close, "probability": data.probability,
                })
            case c.OpportunityStageChanged():
                out.add(_STAGE_CHANGED_WITH_HISTORY, {**step, **history("open", data.probability),
                                                      "stage": data.stage, "probability": data.probability})
            case c.OpportunityWon():
                out.add(_WON_WITH_HISTORY, {**step, **history("won", 100), "amount": data.amount})
            case c.OpportunityLost():
                out.add(_LOST_WITH_HISTORY, {**step, **history("lost", 0, data.reason),
                                             "reason": data.reason, "competitor": data.competitor})
            case c.OpportunityInvoiceLinked():
                out.add(_INVOICED, {**step, "invoice_id": data.invoice_id, "status": data.status})
            case c.OpportunityReopened():
                out.add(_REOPENED_WITH_HISTORY, {**step, **history("open", data.probability, data.reason),
                                                 "stage": data.stage, "probability": data.probability})
