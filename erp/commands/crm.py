"""CRM commands: opportunities."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from aggregates.opportunity import Opportunity
from erp.commands import CommandContext, CommandRunner, Loader
from erp.eventstore import Saved


async def open_opportunity(
    runner: CommandRunner, ctx: CommandContext, *, customer_id: str, title: str, owner: str,
    stage: str | None, probability: int | None, amount: Decimal | None, currency: str | None,
    expected_close: str | None, source_lead_id: str | None,
) -> Saved:
    def decide(load: Loader) -> Opportunity:
        settings = load.read_settings()
        return Opportunity.open(
            tenant_id=ctx.tenant_id, customer_id=customer_id, title=title, owner=owner,
            stage=stage, probability=probability, amount=amount, currency=currency or settings.currency,
            expected_close=expected_close, source_lead_id=source_lead_id, stages=settings.stages,
        )

    return await runner.execute(ctx, decide)


async def update_opportunity(
    runner: CommandRunner, ctx: CommandContext, opportunity_id: UUID, *, title: str | None,
    owner: str | None, amount: Decimal | None, expected_close: str | None,
    probability: int | None,
) -> Saved:
    def decide(load: Loader) -> Opportunity:
        opportunity = load.target(Opportunity, opportunity_id)
        opportunity.update(title=title, owner=owner, amount=amount,
                           expected_close=expected_close, probability=probability)
        return opportunity

    return await runner.execute(ctx, decide)


async def change_stage(
    runner: CommandRunner, ctx: CommandContext, opportunity_id: UUID, stage: str,
    probability: int | None,
) -> Saved:
    def decide(load: Loader) -> Opportunity:
        opportunity = load.target(Opportunity, opportunity_id)
        opportunity.change_stage(stage, probability=probability, stages=load.read_settings().stages)
        return opportunity

    return await runner.execute(ctx, decide)


async def win(
    runner: CommandRunner, ctx: CommandContext, opportunity_id: UUID, amount: Decimal | None
) -> Saved:
    def decide(load: Loader) -> Opportunity:
        opportunity = load.target(Opportunity, opportunity_id)
        opportunity.win(amount)
        return opportunity

    return await runner.execute(ctx, decide)


async def lose(
    runner: CommandRunner, ctx: CommandContext, opportunity_id: UUID, reason: str,
    competitor: str | None,
) -> Saved:
    def decide(load: Loader) -> Opportunity:
        opportunity = load.target(Opportunity, opportunity_id)
        opportunity.lose(reason, competitor)
        return opportunity

    return await runner.execute(ctx, decide)


async def reopen(
    runner: CommandRunner, ctx: CommandContext, opportunity_id: UUID, reason: str
) -> Saved:
    def decide(load: Loader) -> Opportunity:
        opportunity = load.target(Opportunity, opportunity_id)
        opportunity.reopen(reason, stages=load.read_settings().stages)
        return opportunity

    return await runner.execute(ctx, decide)


async def link_invoice(runner: CommandRunner, ctx: CommandContext, opportunity_id: UUID, invoice_id: str,
                       status: str) -> Saved:
    def decide(load: Loader) -> Opportunity:
        opportunity = load.get(Opportunity, opportunity_id)
        opportunity.link_invoice(invoice_id, status)
        return opportunity

    return await runner.execute(ctx, decide)
