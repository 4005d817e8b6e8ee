"""Tenant settings commands."""

from __future__ import annotations

from collections.abc import Callable

from aggregates.tenant_settings import TenantSettings
from erp.commands import CommandContext, CommandRunner, Loader
from erp.eventstore import Saved


async def configure(
    runner: CommandRunner, ctx: CommandContext, change: Callable[[TenantSettings], None]
) -> Saved:
    """Applies one settings change (stages, approvals or tolerances) to the tenant's settings."""

    def decide(load: Loader) -> TenantSettings:
        settings = load.target_settings()
        change(settings)
        return settings

    return await runner.execute(ctx, decide)
