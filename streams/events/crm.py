"""CRM events on the wire.

The `Struct`s are the contract shared by the relay, the projectors and subscribers
in other services. Catalogued events of the integration guide carry exactly the
fields the guide lists (e.g. `erp.opportunity.won`).
"""

from __future__ import annotations

from decimal import Decimal
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
    amount: Decimal | None
    currency: str


class OpportunityStageChanged(msgspec.Struct, frozen=True, kw_only=True):
    opportunity_id: UUID
    stage: str
    from_stage: str


class OpportunityWon(msgspec.Struct, frozen=True, kw_only=True):
    """Integration guide: `erp.opportunity.won` (treasury creates the invoice)."""

    opportunity_id: UUID
    customer_id: str
    amount: Decimal
    currency: str


class OpportunityLost(msgspec.Struct, frozen=True, kw_only=True):
    opportunity_id: UUID
    reason: str
    competitor: str | None


PUBLICATIONS: dict[type, Publication] = {
    domain_event(Opportunity, "Opened"): Publication(
        "erp.opportunity.opened", OpportunityOpened, "opportunity",
        lambda e: OpportunityOpened(
            opportunity_id=e.originator_id, customer_id=e.customer_id, title=e.title,
            owner=e.owner, stage=e.stage, amount=e.amount, currency=e.currency,
        ),
    ),
    domain_event(Opportunity, "StageChanged"): Publication(
        "erp.opportunity.stage_changed", OpportunityStageChanged, "opportunity",
        lambda e: OpportunityStageChanged(
            opportunity_id=e.originator_id, stage=e.stage, from_stage=e.from_stage
        ),
    ),
    domain_event(Opportunity, "Won"): Publication(
        "erp.opportunity.won", OpportunityWon, "opportunity",
        lambda e: OpportunityWon(
            opportunity_id=e.originator_id, customer_id=e.customer_id,
            amount=e.amount, currency=e.currency,
        ),
    ),
    domain_event(Opportunity, "Lost"): Publication(
        "erp.opportunity.lost", OpportunityLost, "opportunity",
        lambda e: OpportunityLost(
            opportunity_id=e.originator_id, reason=e.reason, competitor=e.competitor
        ),
    ),
}
