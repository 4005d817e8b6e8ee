"""Tenants: registered and kept up to date from the auth service's announcements."""

from __future__ import annotations

from aggregates.tenant_settings import TenantSettings
from erp.commands import CommandContext, CommandRunner, Loader
from erp.eventstore import Saved


async def register(runner: CommandRunner, ctx: CommandContext, name: str, status: str = "active") -> Saved:
    """Registers the context's tenant with the default settings, or updates its name and
    status; raises `NothingChanged` when it is already as announced."""

    def decide(load: Loader) -> TenantSettings:
        tenant = load.find(TenantSettings, TenantSettings.id_for(ctx.tenant_id))
        if tenant is None:
            tenant = TenantSettings(tenant_id=ctx.tenant_id)
        tenant.describe(name, status)
        return tenant

    return await runner.execute(ctx, decide, registers_tenant=True)
