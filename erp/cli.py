"""The `erp` command."""

from __future__ import annotations

import asyncio
import gc
import signal
import uuid

import click
import nats.errors
import nats.js.errors
import psycopg
import pydantic
import structlog
import uvloop
from eventsourcing import persistence
from pydantic_settings import SettingsError

from aggregates.errors import InvalidValue
from erp import api_keys, credentials, logs
from erp.bootstrap import Endpoints, ServersUnavailable, Service, servers
from erp.cli_dead_letters import dead_letters
from erp.cli_events import events, projections
from erp.cli_secrets import database_url, on_database, secrets
from erp.commands import NothingChanged, tenancy
from erp.eventstore import EventMetadata, close_store, store_for
from erp.identity import ALL_SCOPES, ROLE_SCOPES, MisconfiguredTokens, dev_private_key, mint
from erp.settings import Settings
from projections.rebuild import StreamTooShort

log = structlog.get_logger("erp")


def _one_line(error: Exception) -> str | None:
    """What an operator is told of an error that is the setup's, not the code's: the setting,
    the server that cannot be reached, the missing stream; None for anything else."""
    if isinstance(error, pydantic.ValidationError):
        return "; ".join(f"ERP_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}"
                         for e in error.errors())
    if isinstance(error, psycopg.OperationalError | persistence.OperationalError):
        first = (str(error).strip() or repr(error)).splitlines()[0]
        return f"cannot reach PostgreSQL: {first}"
    if isinstance(error, nats.js.errors.NotFoundError):
        return f"NATS: not found ({error.description or 'stream or consumer'})"
    if isinstance(error, nats.errors.Error):
        return f"NATS: {error}"
    if isinstance(error, SettingsError | ServersUnavailable | credentials.CredentialError
                  | MisconfiguredTokens | StreamTooShort):
        return str(error)
    return None


class _Commands(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as error:
            told = _one_line(error)
            if told is None:
                raise
            raise click.ClickException(told) from None


@click.group(cls=_Commands, help="ERP service. Configuration: ERP_* environment variables (see README).")
def main() -> None:
    pass


@main.command(help="Run the HTTP API with the relay and projectors.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers-only", is_flag=True, help="No HTTP: only relay and projectors.")
def serve(host: str, port: int, workers_only: bool) -> None:
    settings = Settings()
    logs.configure(settings.log_level, json=settings.log_json)
    with servers(settings) as endpoints:
        if workers_only:
            _run_until_signal(settings, endpoints)
            return
        import uvicorn

        from api.app import create_app
        from api.server import OneWriteProtocol

        # uvicorn re-raises SIGTERM after its graceful shutdown; as an exception it lets the
        # embedded servers stop too, where the default action would kill us first.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        embedded = settings.database_url is None and settings.nats_url is None
        app = create_app(Service(settings, endpoints), embedded=embedded, started=_freeze_start_up_objects)
        log.info("serving", url=f"http://{host}:{port}", openapi=f"http://{host}:{port}/openapi.json")
        # No `server: uvicorn` header: it tells a caller what to attack and costs every response.
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False,
                    lifespan="on", timeout_graceful_shutdown=10, loop="uvloop", http=OneWriteProtocol)


@main.command(help="Run only the relay (event store to JetStream).")
def relay() -> None:
    settings = Settings(run_projectors=False, run_inbound=False, run_reactions=False)
    logs.configure(settings.log_level, json=settings.log_json)
    with servers(settings) as endpoints:
        _run_until_signal(settings, endpoints)


@main.command(help="Run only the projectors (JetStream to read models).")
def project() -> None:
    settings = Settings(run_relay=False, run_inbound=False, run_reactions=False)
    logs.configure(settings.log_level, json=settings.log_json)
    with servers(settings) as endpoints:
        _run_until_signal(settings, endpoints)


@main.command("dev-token", help="Mint a development token, trusted only by `erp serve` on embedded "
                                 "servers without ERP_JWT_* settings.")
@click.option("--tenant", required=True, help="The tenant_id claim.")
@click.option("--role", "roles", multiple=True, default=("erp.admin",), show_default=True,
              help=f"A role (repeat for more): {', '.join(sorted(ROLE_SCOPES))}, or an approval role.")
@click.option("--subject", default="dev-user", show_default=True, help="The user id (sub).")
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(60, 86_400), help="Seconds.")
def dev_token(tenant: str, roles: tuple[str, ...], subject: str, ttl: int) -> None:
    key = dev_private_key(Settings().data_dir)
    click.echo(mint(key, tenant_id=tenant, subject=subject, roles=roles, ttl_seconds=ttl))


@main.group("api-keys", help="Service-to-service API keys (ERP_DATABASE_URL, or the embedded servers of an "
                             "`erp serve` running from this folder).")
def api_keys_group() -> None:
    pass


@api_keys_group.command("create", help="Create a key for a platform service; it is shown once.")
@click.argument("owner")
@click.option("--scope", "scopes", multiple=True, required=True,
              help=f"A permission (repeat for more): {', '.join(sorted(ALL_SCOPES))}.")
@click.option("--tenant", default=None, help="Pin the key to one tenant (default: X-Tenant-ID names it).")
def create_api_key(owner: str, scopes: tuple[str, ...], tenant: str | None) -> None:
    try:
        secret, key = on_database(Settings(), lambda conn: api_keys.create(conn, owner, list(scopes), tenant))
    except api_keys.InvalidKeyRequest as error:
        raise click.UsageError(str(error)) from None
    click.echo(secret)
    click.echo(f"key {key.prefix} for {key.owner}: {', '.join(key.scopes)}"
               f"{f' (tenant {tenant})' if tenant else ''}. Store it now: it is not shown again.", err=True)


@api_keys_group.command("list", help="Keys by prefix, owner and scopes (never the secrets).")
def list_api_keys() -> None:
    for key in on_database(Settings(), api_keys.listed):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        click.echo(f"{key.prefix}  {key.owner}  {','.join(key.scopes)}  tenant={key.tenant_id or '*'}  "
                   f"created {key.created_at:%Y-%m-%d %H:%M}  {state}")


@api_keys_group.command("revoke", help="Revoke a key by its prefix (refused within 30 s everywhere).")
@click.argument("prefix")
def revoke_api_key(prefix: str) -> None:
    if not on_database(Settings(), lambda conn: api_keys.revoke(conn, prefix)):
        raise click.ClickException(f"no active key with prefix {prefix}")
    click.echo(f"revoked {prefix}")


@main.group(help="Tenants (normally registered by the auth service's auth.tenant.created).")
def tenants() -> None:
    pass


@tenants.command("register", help="Register a tenant, or change its name or status, without the auth "
                                  "service (local use, or a missed announcement).")
@click.argument("tenant")
@click.option("--name", required=True)
@click.option("--status", type=click.Choice(["active", "suspended"]), default="active", show_default=True)
def register_tenant(tenant: str, name: str, status: str) -> None:
    store = store_for(database_url(Settings()), 1)
    cause = f"cli-{uuid.uuid4()}"
    try:
        version = tenancy.register_now(store, tenant, name, status,
                                       EventMetadata(tenant, cause, cause, actor="cli"))
    except NothingChanged:
        click.echo(f"tenant {tenant} is already registered as {name!r} ({status})")
        return
    except InvalidValue as error:
        raise click.UsageError(str(error)) from None
    finally:
        close_store(store)
    click.echo(f"tenant {tenant} registered as {name!r} ({status}), settings version {version}")


main.add_command(secrets)
main.add_command(dead_letters)
main.add_command(events)
main.add_command(projections)


def _freeze_start_up_objects() -> None:
    """Leaves everything alive after start-up (modules, schemas, the app: ~970,000 objects in
    the API process) out of the cycle collector's full collections, which then scan only what
    serving allocates. Measured under load: full collections took 2.3 s of 36 s (~100 ms each),
    0.4 s after; new opportunities +10-15 % (docs/performance.md)."""
    gc.collect()
    gc.freeze()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_until_signal(settings: Settings, endpoints: Endpoints) -> None:
    async def run() -> None:
        service = Service(settings, endpoints)
        await service.start()
        _freeze_start_up_objects()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("running", relay=settings.run_relay, projectors=settings.run_projectors)
        try:
            await stop.wait()
        finally:
            await service.stop()

    uvloop.run(run())  # the event loop `erp serve` runs its API on, here for the workers too


@main.group(help="The platform services we exchange events and calls with.")
def integrations() -> None:
    pass


@integrations.command("health", help="Each peer's circuit and each inbound consumer, from a running service.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The service to ask.")
def integrations_health(url: str) -> None:
    import httpx

    try:
        ready = httpx.get(f"{url.rstrip('/')}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError) as error:
        raise click.ClickException(f"{url}: {error}") from None
    click.echo(f"service: {ready['status']} ({', '.join(f'{k} {v}' for k, v in ready['checks'].items())})")
    leading = ", ".join(ready.get("leading", [])) or "nothing (another instance leads, or none)"
    click.echo(f"leading: {leading}")
    for role, why in ready.get("failing", {}).items():
        click.echo(f"failing: {role}: {why}")
    for peer in ready.get("peers", []):
        click.echo(f"peer {peer['peer']}: {peer['state']}, {peer['consecutive_failures']} failures in a row"
                   + (f", last error: {peer['last_error']}" if peer.get("last_error") else ""))
    if not ready.get("peers"):
        click.echo("peers: none called yet by this process")
    for consumer in ready.get("inbound", []):
        click.echo(f"consumer {consumer['consumer']}: {consumer['handled']} handled, "
                   f"{consumer['parked']} parked, {consumer['pending']} pending")
