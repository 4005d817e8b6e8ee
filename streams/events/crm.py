"""CRM events on the wire.

The `Struct`s are the contract shared by the relay, the projectors and subscribers
in other services. Catalogued events of the integration guide carry exactly the
fields the guide lists (e.g. `erp.opportunity.won`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from aggregates.opportunity import Opportunity
from streams.events.base import Publication, domain_event


class OpportunityOpened(msgspec.Struct, frozen=True, kw_only=True):
    opportunity_id: UUID
    customer_id: str
    title: str
    owner: str
    stage: str
    probability: int
    amount: Decimal | None
    currency: str
    expected_close: str | None
    source_lead_id: str | None


class OpportunityUpdated(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Only the fields that changed are present."""

    opportunity_id: UUID
    title: str | None = None
    owner: str | None = None
    amount: Decimal | None = None
    expected_close: str | None = None
    probability: int | None = None


class OpportunityStageChanged(msgspec.Struct, frozen=True, kw_only=True):
    opportunity_id: UUID
    stage: str
    from_stage: str
    probability: int


class OpportunityWon(msgspec.Struct, frozen=True, kw_only=True):
    """Integration guide: `erp.opportunity.won` (treasury creates the invoice)."""

    opportunity_id: UUID
    customer_id: str
    amount: Decimal
    currency: str


class OpportunityInvoiceLinked(msgspec.Struct, frozen=True, kw_only=True):
    """Treasury invoiced the won opportunity (from treasury.invoice.created)."""

    opportunity_id: UUID
    invoice_id: str
    status: str


class OpportunityLost(msgspec.Struct, frozen=True, kw_only=True):
    opportunity_id: UUID
    reason: str
    competitor: str | None


class OpportunityReopened(msgspec.Struct, frozen=True, kw_only=True):
    opportunity_id: UUID
    reason: str
    from_status: str
    stage: str
    probability: int


def _opened(e: Any) -> OpportunityOpened:
    return OpportunityOpened(
        opportunity_id=e.originator_id, customer_id=e.customer_id, title=e.title, owner=e.owner,
        stage=e.stage, probability=e.probability, amount=e.amount, currency=e.currency,
        expected_close=e.expected_close, source_lead_id=e.source_lead_id,
    )


PUBLICATIONS: dict[type, Publication] = {
    domain_event(Opportunity, "Opened"): Publication(
        "erp.opportunity.opened", OpportunityOpened, "opportunity", _opened),
    domain_event(Opportunity, "Updated"): Publication(
        "erp.opportunity.updated", OpportunityUpdated, "opportunity",
        lambda e: OpportunityUpdated(opportunity_id=e.originator_id, **e.changes)),
    domain_event(Opportunity, "StageChanged"): Publication(
        "erp.opportunity.stage_changed", OpportunityStageChanged, "opportunity",
        lambda e: OpportunityStageChanged(opportunity_id=e.originator_id, stage=e.stage,
                                          from_stage=e.from_stage, probability=e.probability)),
    domain_event(Opportunity, "Won"): Publication(
        "erp.opportunity.won", OpportunityWon, "opportunity",
        lambda e: OpportunityWon(opportunity_id=e.originator_id, customer_id=e.customer_id,
                                 amount=e.amount, currency=e.currency)),
    domain_event(Opportunity, "InvoiceLinked"): Publication(
        "erp.opportunity.invoice_linked", OpportunityInvoiceLinked, "opportunity",
        lambda e: OpportunityInvoiceLinked(opportunity_id=e.originator_id, invoice_id=e.invoice_id,
                                           status=e.status)),
    domain_event(Opportunity, "Lost"): Publication(
        "erp.opportunity.lost", OpportunityLost, "opportunity",
        lambda e: OpportunityLost(opportunity_id=e.originator_id, reason=e.reason,
                                  competitor=e.competitor)),
    domain_event(Opportunity, "Reopened"): Publication(
        "erp.opportunity.reopened", OpportunityReopened, "opportunity",
        lambda e: OpportunityReopened(opportunity_id=e.originator_id, reason=e.reason,
                                      from_status=e.from_status, stage=e.stage,
                                      probability=e.probability)),
}
