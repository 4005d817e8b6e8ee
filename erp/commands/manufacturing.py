"""Manufacturing commands: bills of materials and work orders."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID

from aggregates.bom import BillOfMaterials, UnknownBomVersion
from aggregates.work_order import ProductionAllowances, WorkOrder
from erp.commands import CommandContext, CommandRunner, Loader, NotFound
from erp.eventstore import Saved


def _allowances(load: Loader) -> ProductionAllowances:
    settings = load.read_settings()
    return ProductionAllowances(
        over_production_percent=settings.over_production_percent,
        over_consumption_percent=settings.over_consumption_percent,
    )


async def publish_bom_version(
    runner: CommandRunner, ctx: CommandContext, product_id: str, *,
    items: Sequence[tuple[str, Decimal, str]], process_loss_percent: Decimal,
    labour_cost_per_unit: Decimal | None, overhead_percent: Decimal,
) -> Saved:
    """Publishes the next version of the product's bill, creating the bill on first use."""

    def decide(load: Loader) -> BillOfMaterials:
        try:
            bill = load.target(BillOfMaterials, BillOfMaterials.create_id(ctx.tenant_id, product_id))
        except NotFound:
            bill = BillOfMaterials.create(tenant_id=ctx.tenant_id, product_id=product_id)
        bill.publish_version(items, process_loss_percent=process_loss_percent,
                             labour_cost_per_unit=labour_cost_per_unit,
                             overhead_percent=overhead_percent)
        return bill

    return await runner.execute(ctx, decide)


async def create_work_order(
    runner: CommandRunner, ctx: CommandContext, *, product_id: str, planned_quantity: Decimal,
    currency: str | None,
) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        return WorkOrder.create(tenant_id=ctx.tenant_id, product_id=product_id,
                                planned_quantity=planned_quantity,
                                currency=currency or load.read_settings().currency)

    return await runner.execute(ctx, decide)


async def release(
    runner: CommandRunner, ctx: CommandContext, work_order_id: UUID, bom_version: int | None
) -> Saved:
    """Pins `bom_version` of the product's bill, or its latest version when None."""

    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        bill = load.find(BillOfMaterials, BillOfMaterials.create_id(ctx.tenant_id, work_order.product_id))
        if bill is None:
            raise UnknownBomVersion(
                f"no bill of materials has been published for product {work_order.product_id!r}"
            )
        pinned = bill.latest_version if bom_version is None else bom_version
        work_order.release(bill.version_snapshot(pinned))
        return work_order

    return await runner.execute(ctx, decide)


async def start(runner: CommandRunner, ctx: CommandContext, work_order_id: UUID) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.start()
        return work_order

    return await runner.execute(ctx, decide)


async def record_consumption(
    runner: CommandRunner, ctx: CommandContext, work_order_id: UUID, *, item_id: str,
    quantity: Decimal, unit_cost: Decimal,
) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.record_consumption(item_id, quantity, unit_cost, allowances=_allowances(load))
        return work_order

    return await runner.execute(ctx, decide)


async def record_production(
    runner: CommandRunner, ctx: CommandContext, work_order_id: UUID, *, quantity: Decimal,
    scrap_quantity: Decimal,
) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.record_production(quantity, scrap_quantity, allowances=_allowances(load))
        return work_order

    return await runner.execute(ctx, decide)


async def record_labour(
    runner: CommandRunner, ctx: CommandContext, work_order_id: UUID, *, hours: Decimal, rate: Decimal
) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.record_labour(hours, rate)
        return work_order

    return await runner.execute(ctx, decide)


async def stop(runner: CommandRunner, ctx: CommandContext, work_order_id: UUID, reason: str | None) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.stop(reason)
        return work_order

    return await runner.execute(ctx, decide)


async def resume(runner: CommandRunner, ctx: CommandContext, work_order_id: UUID) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.resume()
        return work_order

    return await runner.execute(ctx, decide)


async def complete(runner: CommandRunner, ctx: CommandContext, work_order_id: UUID) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.complete()
        return work_order

    return await runner.execute(ctx, decide)


async def cancel(
    runner: CommandRunner, ctx: CommandContext, work_order_id: UUID, reason: str | None
) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.cancel(reason)
        return work_order

    return await runner.execute(ctx, decide)


async def close(runner: CommandRunner, ctx: CommandContext, work_order_id: UUID) -> Saved:
    def decide(load: Loader) -> WorkOrder:
        work_order = load.target(WorkOrder, work_order_id)
        work_order.close()
        return work_order

    return await runner.execute(ctx, decide)
