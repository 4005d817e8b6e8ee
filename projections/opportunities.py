"""Opportunities read models: list/detail with stage history; pipeline and forecast are
queries over the same table (see api/crm.py)."""

from __future__ import annotations

from typing import Any

from projections.base import STEP, Delivered, Statements, rows_of, versioned_change
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

# Row-set statements (`Statements.add_row`): each applies the rows of a batch in one
# execution. A change applies only on top of the version before it, so a replayed event is a
# no-op; a change that makes a stage history row (the row's stage after the change) writes it
# in the same statement.
_HISTORY = "history_status text, history_probability integer, history_reason text"
_INTO_HISTORY = """
INSERT INTO opportunity_stage_history (opportunity_id, version, tenant_id, stage, status,
    probability, reason, changed_at)"""

_OPENED = f"""
WITH opened AS (
    INSERT INTO opportunities (opportunity_id, tenant_id, customer_id, title, owner, stage, status,
        probability, amount, currency, expected_close, source_lead_id, version, opened_position,
        log_position, opened_at, updated_at)
    SELECT r.id, r.tenant, r.customer_id, r.title, r.owner, r.stage, 'open', r.probability, r.amount,
        r.currency, r.expected_close, r.source_lead_id, r.v, r.pos, r.pos, r.at, r.at
    FROM {rows_of(f"{STEP}, tenant text, customer_id text, title text, owner text, stage text, "
                  "probability integer, amount numeric, currency text, expected_close date, "
                  "source_lead_id text")}
    ON CONFLICT (opportunity_id) DO NOTHING
    RETURNING opportunity_id, version, tenant_id, stage, probability, opened_at)
{_INTO_HISTORY}
SELECT opportunity_id, version, tenant_id, stage, 'open', probability, NULL, opened_at FROM opened
ON CONFLICT DO NOTHING
"""


def _change(columns: str, assignments: str, *, history: bool = False) -> str:
    """A change to opportunities in `r` (`columns` besides the step's), each on top of the
    version before it; with `history`, the stage history row it makes."""
    if history:
        columns = f"{columns}, {_HISTORY}"
    update = versioned_change("opportunities", "opportunity_id", columns, assignments)
    if not history:
        return update
    return f"""
WITH changed AS ({update}
    RETURNING t.opportunity_id, r.v, t.tenant_id, t.stage, r.history_status, r.history_probability,
        r.history_reason, r.at)
{_INTO_HISTORY}
SELECT * FROM changed
ON CONFLICT DO NOTHING
"""


_UPDATED = _change(
    "title text, owner text, amount numeric, expected_close date, probability integer",
    "title = coalesce(r.title, t.title), owner = coalesce(r.owner, t.owner), "
    "amount = coalesce(r.amount, t.amount), expected_close = coalesce(r.expected_close, t.expected_close), "
    "probability = coalesce(r.probability, t.probability)")
_STAGE_CHANGED = _change("stage text, probability integer", "stage = r.stage, probability = r.probability",
                         history=True)
_WON = _change("amount numeric", "status = 'won', probability = 100, amount = r.amount", history=True)
_LOST = _change("reason text, competitor text",
                "status = 'lost', probability = 0, lost_reason = r.reason, competitor = r.competitor",
                history=True)
_INVOICED = _change("invoice_id text, status text", "invoice_id = r.invoice_id, invoice_status = r.status")
_REOPENED = _change("stage text, probability integer",
                    "status = 'open', stage = r.stage, probability = r.probability, lost_reason = NULL, "
                    "competitor = NULL", history=True)


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
        key = data.opportunity_id
        step = {"id": key, "v": event.aggregate_version, "pos": event.log_position,
                "at": event.envelope.timestamp}

        def history(status: str, probability: int, reason: str | None = None) -> dict[str, Any]:
            return {"history_status": status, "history_probability": probability, "history_reason": reason}

        match data:
            case c.OpportunityOpened():
                out.add_row(_OPENED, key, {
                    **step, "tenant": event.envelope.tenant_id, "customer_id": data.customer_id,
                    "title": data.title, "owner": data.owner, "stage": data.stage,
                    "probability": data.probability, "amount": data.amount, "currency": data.currency,
                    "expected_close": data.expected_close, "source_lead_id": data.source_lead_id,
                })
            case c.OpportunityUpdated():
                out.add_row(_UPDATED, key, {
                    **step, "title": data.title, "owner": data.owner, "amount": data.amount,
                    "expected_close": data.expected_close, "probability": data.probability,
                })
            case c.OpportunityStageChanged():
                out.add_row(_STAGE_CHANGED, key, {**step, **history("open", data.probability),
                                                  "stage": data.stage, "probability": data.probability})
            case c.OpportunityWon():
                out.add_row(_WON, key, {**step, **history("won", 100), "amount": data.amount})
            case c.OpportunityLost():
                out.add_row(_LOST, key, {**step, **history("lost", 0, data.reason),
                                         "reason": data.reason, "competitor": data.competitor})
            case c.OpportunityInvoiceLinked():
                out.add_row(_INVOICED, key, {**step, "invoice_id": data.invoice_id, "status": data.status})
            case c.OpportunityReopened():
                out.add_row(_REOPENED, key, {**step, **history("open", data.probability, data.reason),
                                             "stage": data.stage, "probability": data.probability})
