"""Tenants and their users' references, kept up to date from the auth service's announcements."""

from __future__ import annotations

from aggregates.tenant_settings import TenantSettings
from aggregates.user_reference import UserReference
from erp.commands import CommandContext, CommandRunner, Loader, NothingChanged
from erp.eventstore import ErpEventStore, EventMetadata, Saved, stamp


async def register(runner: CommandRunner, ctx: CommandContext, name: str, status: str = "active") -> Saved:
    """Registers the context's tenant with the default settings, or updates its name and
    status; raises `NothingChanged` when it is already as announced."""

    return await runner.execute(ctx, lambda load: _registered(load, name, status), tenant="any")


def register_now(
    store: ErpEventStore, tenant_id: str, name: str, status: str, metadata: EventMetadata
) -> int:
    """`register` for the CLI, saved at once without a running service; answers the version."""
    tenant = _registered(Loader(store, tenant_id), name, status)
    if not tenant.pending_events:
        raise NothingChanged(tenant)
    stamp(tenant, metadata)
    store.save(tenant)
    return tenant.version


def _registered(load: Loader, name: str, status: str) -> TenantSettings:
    tenant = load.find(TenantSettings, TenantSettings.id_for(load.tenant_id))
    if tenant is None:
        tenant = TenantSettings.register(load.tenant_id)
    tenant.describe(name, status)
    return tenant


async def sync_user(runner: CommandRunner, ctx: CommandContext, user_id: str, email: str, name: str,
                    active: bool = True) -> Saved:
    """Creates or updates the reference to one of the tenant's users; raises `NothingChanged`
    when it already holds these fields."""

    def decide(load: Loader) -> UserReference:
        user = load.find(UserReference, UserReference.id_for(ctx.tenant_id, user_id))
        if user is None:
            return UserReference.reference(ctx.tenant_id, user_id, email, name, active)
        user.sync(email, name, active)
        return user

    # A suspended tenant's users still follow the auth service (a deactivation must land).
    return await runner.execute(ctx, decide, tenant="known")
