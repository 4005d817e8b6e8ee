"""`erp secrets`: Tier-1 credentials and service keys, encrypted at rest.

A value goes in on stdin or at a hidden prompt, never as an argument (which would land
in shell history), and is never printed again: `list` shows a masked hint.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import psycopg

from erp import api_keys, credentials
from erp.credentials import CredentialError, CredentialInfo, Keyring
from erp.embedded import EmbeddedPostgres
from erp.settings import Settings

T = TypeVar("T")
Work = Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]


@click.group(help="Tier-1 credentials and service keys, encrypted at rest (developers and "
                  "superusers). Uses ERP_DATABASE_URL (or the embedded servers of an `erp serve` "
                  "running from this folder); ERP_SECRET_KEYS or ERP_SECRET_KEYS_FILE to set or rotate.")
def secrets() -> None:
    pass


@secrets.command("set", help="Set a value: piped on stdin, else asked for at a hidden prompt. "
                             "TENANT '*' is platform-wide (quote it in the shell).")
@click.argument("tenant")
@click.argument("name")
@click.option("--actor", default=lambda: _os_user(), show_default="the OS user",
              help="Recorded as updated_by.")
def set_value(tenant: str, name: str, actor: str) -> None:
    settings = Settings()
    keyring = _keyring(settings)
    value = _read_value()
    info = on_database(settings,
                       lambda conn: credentials.put(conn, keyring, tenant, name, value, actor=actor))
    click.echo(f"set {info.tenant_id}/{info.name} ({info.hint}) under key {info.key_id}")


@secrets.command("list", help="Metadata and masked hints, never values.")
@click.option("--tenant", help="Only this tenant's ('*': the platform-wide ones).")
def list_values(tenant: str | None) -> None:
    infos = on_database(Settings(), lambda conn: credentials.describe(conn, tenant))
    click.echo(_table(infos) if infos else "no credentials")


@secrets.command("delete", help="Delete a value.")
@click.argument("tenant")
@click.argument("name")
def delete_value(tenant: str, name: str) -> None:
    if not on_database(Settings(), lambda conn: credentials.delete(conn, tenant, name)):
        raise click.ClickException(f"no credential {tenant}/{name}")
    click.echo(f"deleted {tenant}/{name}")


@secrets.command("rotate", help="Re-encrypt every value under the current (first) key. "
                                "Remove an old key only after this has run.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(min=1),
              help="Values re-encrypted per transaction.")
def rotate(batch_size: int) -> None:
    settings = Settings()
    keyring = _keyring(settings)

    def report(done: int, total: int) -> None:
        click.echo(f"re-encrypted {done}/{total}")

    async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
        count = await credentials.rotate(conn, keyring, batch_size=batch_size, progress=report)
        left = [i for i in await credentials.describe(conn) if i.key_id != keyring.current]
        return count, len(left)

    started = time.monotonic()
    count, left = on_database(settings, work)
    click.echo(f"re-encrypted {count} values under key {keyring.current} "
               f"in {time.monotonic() - started:.1f} s")
    if left:
        click.echo(f"{left} values are still under older keys (written meanwhile by an instance "
                   "with the old keyring); run `erp secrets rotate` again before removing a key")


@secrets.command("generate-key", help="Print a new master key as `id:BASE64KEY`.")
def generate_key() -> None:
    click.echo(f"{time.strftime('k%Y%m%d', time.gmtime())}:{credentials.new_key()}")
    click.echo("Put it first in ERP_SECRET_KEYS (or the key file) to make it current, keep the "
               "old keys after it, then run `erp secrets rotate`.", err=True)


def _keyring(settings: Settings) -> Keyring:
    try:
        return Keyring.from_settings(settings)
    except CredentialError as error:
        raise click.ClickException(str(error)) from None


def database_url(settings: Settings) -> str:
    """ERP_DATABASE_URL, or the embedded PostgreSQL of an `erp serve` running on this data folder."""
    url = settings.database_url or EmbeddedPostgres.running_url(settings.data_dir / "postgres")
    if url is None:
        raise click.ClickException("ERP_DATABASE_URL must point at the service's database (or run "
                                   "`erp serve` on embedded servers from this folder first)")
    return url


def on_database(settings: Settings, work: Work[T]) -> T:
    """Runs `work` on a connection to the service's database (the CLI's administration
    commands share it); credential errors become clear CLI errors."""
    url = database_url(settings)

    async def run() -> T:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await credentials.ensure_schema(conn)
            await api_keys.ensure_schema(conn)
            return await work(conn)

    try:
        return asyncio.run(run())
    except CredentialError as error:
        raise click.ClickException(str(error)) from None


def _read_value() -> str:
    if sys.stdin.isatty():
        value: str = click.prompt("Value", hide_input=True, confirmation_prompt=True)
        return value
    return sys.stdin.read().removesuffix("\n").removesuffix("\r")  # the newline `echo` adds


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user with no name
        return "unknown"


def _table(infos: list[CredentialInfo]) -> str:
    rows = [("TENANT", "NAME", "KEY", "HINT", "UPDATED", "BY")] + [
        (i.tenant_id, i.name, i.key_id, i.hint, i.updated_at.isoformat(timespec="seconds"),
         i.updated_by)
        for i in infos
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
