"""Tier-1 credentials: encrypted at rest, bound to their row, rotated without loss."""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from pydantic import SecretStr
from structlog.testing import capture_logs

from erp.cli_secrets import secrets
from erp.credentials import (
    MASK,
    CredentialNotFound,
    CredentialUnreadable,
    InvalidCredential,
    InvalidKeyring,
    KeyNotInKeyring,
    Keyring,
    delete,
    describe,
    ensure_schema,
    new_key,
    put,
    reveal,
    rotate,
)
from erp.settings import Settings

KEYS = {"k1": new_key(), "k2": new_key(), "k3": new_key()}
Connection = psycopg.AsyncConnection[Any]


def keyring(*key_ids: str) -> Keyring:
    return Keyring.parse(",".join(f"{key_id}:{KEYS[key_id]}" for key_id in key_ids))


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Connection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        await ensure_schema(connection)
        yield connection


async def key_ids(conn: Connection) -> dict[str, str]:
    return {f"{i.tenant_id}/{i.name}": i.key_id for i in await describe(conn)}


async def test_a_value_set_is_read_back_and_not_stored_in_clear(conn: Connection) -> None:
    first = await put(conn, keyring("k1"), "acme", "mpesa.consumer-secret", "sk_live_0123456789",
                      actor="wanjiru")
    assert (first.key_id, first.hint, first.updated_by) == ("k1", MASK + "6789", "wanjiru")
    assert await reveal(conn, keyring("k1"), "acme", "mpesa.consumer-secret") == "sk_live_0123456789"
    stored = await (await conn.execute("SELECT ciphertext FROM tier1_credentials")).fetchone()
    assert stored is not None and b"sk_live" not in stored[0]

    second = await put(conn, keyring("k1"), "acme", "mpesa.consumer-secret", "short", actor="otieno")
    assert await reveal(conn, keyring("k1"), "acme", "mpesa.consumer-secret") == "short"
    assert (second.hint, second.updated_by) == (MASK, "otieno")
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at


async def test_an_unknown_credential_is_not_found(conn: Connection) -> None:
    with pytest.raises(CredentialNotFound, match=r"acme/nothing\.here"):
        await reveal(conn, keyring("k1"), "acme", "nothing.here")
    assert not await delete(conn, "acme", "nothing.here")


@pytest.mark.parametrize(("tenant_id", "name"), [("acme", "Upper"), ("acme", ".dot-first"),
                                                 ("acme", "x" * 101), ("", "ok"), ("a b", "ok")])
async def test_a_bad_tenant_or_name_is_refused(conn: Connection, tenant_id: str, name: str) -> None:
    with pytest.raises(InvalidCredential):
        await put(conn, keyring("k1"), tenant_id, name, "some value", actor="wanjiru")


@pytest.mark.parametrize("target", [("acme", "peer.service-key"), ("globex", "mpesa.secret")])
async def test_a_ciphertext_moved_to_another_row_cannot_be_read(
    conn: Connection, target: tuple[str, str]
) -> None:
    await put(conn, keyring("k1"), "acme", "mpesa.secret", "acme-value-123456", actor="t")
    await put(conn, keyring("k1"), *target, "target-value-123456", actor="t")
    await conn.execute(
        "UPDATE tier1_credentials t SET nonce = s.nonce, ciphertext = s.ciphertext "
        "FROM tier1_credentials s WHERE (s.tenant_id, s.name) = ('acme', 'mpesa.secret') "
        "AND (t.tenant_id, t.name) = (%s, %s)",
        target,
    )
    with pytest.raises(CredentialUnreadable) as error:
        await reveal(conn, keyring("k1"), *target)
    assert error.type is CredentialUnreadable
    assert f"{target[0]}/{target[1]}" in str(error.value)
    assert "value-123456" not in str(error.value)


async def test_a_value_relabelled_with_another_key_id_cannot_be_read(conn: Connection) -> None:
    same_key_twice = Keyring.parse(f"k1:{KEYS['k1']},alias:{KEYS['k1']}")
    await put(conn, same_key_twice, "acme", "peer.service-key", "a-service-key-value", actor="t")
    await conn.execute("UPDATE tier1_credentials SET key_id = 'alias'")
    with pytest.raises(CredentialUnreadable) as error:
        await reveal(conn, same_key_twice, "acme", "peer.service-key")
    assert error.type is CredentialUnreadable and "'alias'" in str(error.value)


async def test_a_tampered_ciphertext_cannot_be_read(conn: Connection) -> None:
    await put(conn, keyring("k1"), "acme", "peer.service-key", "a-service-key-value", actor="t")
    await conn.execute(
        "UPDATE tier1_credentials SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1)"
    )
    with pytest.raises(CredentialUnreadable, match=r"acme/peer\.service-key"):
        await reveal(conn, keyring("k1"), "acme", "peer.service-key")


async def test_rotation_moves_every_value_to_the_new_key_so_the_old_one_can_go(
    conn: Connection,
) -> None:
    values = {("acme", "mpesa.secret"): "acme-mpesa-secret", ("acme", "kra.pin"): "P051234567X",
              ("globex", "mpesa.secret"): "globex-mpesa-secret", ("*", "peer.hr"): "hr-service-key",
              ("*", "peer.pos"): "pos-service-key"}
    for (tenant_id, name), value in values.items():
        await put(conn, keyring("k1"), tenant_id, name, value, actor="t")
    progress: list[tuple[int, int]] = []

    rotated = await rotate(conn, keyring("k2", "k1"), batch_size=2,
                           progress=lambda done, total: progress.append((done, total)))

    assert rotated == 5 and progress == [(2, 5), (4, 5), (5, 5)]
    for ring in (keyring("k2", "k1"), keyring("k2")):
        for (tenant_id, name), value in values.items():
            assert await reveal(conn, ring, tenant_id, name) == value
    assert set((await key_ids(conn)).values()) == {"k2"}
    with pytest.raises(KeyNotInKeyring, match="'k2'"):
        await reveal(conn, keyring("k1"), "acme", "mpesa.secret")
    assert await rotate(conn, keyring("k2", "k1")) == 0


async def test_rotation_refuses_a_value_under_a_removed_key_before_changing_anything(
    conn: Connection,
) -> None:
    await put(conn, keyring("k1"), "acme", "a", "value under k1", actor="t")
    await put(conn, keyring("k3"), "acme", "b", "value under k3", actor="t")
    with pytest.raises(KeyNotInKeyring, match=r"'k3'.*nothing was re-encrypted"):
        await rotate(conn, keyring("k2", "k1"), batch_size=1)
    assert await key_ids(conn) == {"acme/a": "k1", "acme/b": "k3"}


async def test_values_set_while_rotation_runs_keep_their_new_values(
    conn: Connection, database_url: str
) -> None:
    both = keyring("k2", "k1")
    for i in range(60):
        await put(conn, keyring("k1"), "acme", f"v{i:02}", f"old-{i}", actor="t")

    async def set_some_meanwhile() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as writer:
            for i in range(0, 60, 3):
                await put(writer, both, "acme", f"v{i:02}", f"new-{i}", actor="t")

    await asyncio.gather(rotate(conn, both, batch_size=5), set_some_meanwhile())

    for i in range(60):
        expected = f"new-{i}" if i % 3 == 0 else f"old-{i}"
        assert await reveal(conn, keyring("k2"), "acme", f"v{i:02}") == expected


async def test_rotation_leaves_a_row_being_written_to_its_writer(
    conn: Connection, database_url: str
) -> None:
    for i in range(10):
        await put(conn, keyring("k1"), "acme", f"v{i}", f"old-{i}", actor="t")
    async with (
        await psycopg.AsyncConnection.connect(database_url) as stale_instance,
        stale_instance.transaction(),
    ):
        await put(stale_instance, keyring("k1"), "acme", "v3", "new-3", actor="t")
        rotated = await asyncio.wait_for(rotate(conn, keyring("k2", "k1"), batch_size=4), 10)
    assert rotated == 9
    assert await reveal(conn, keyring("k2", "k1"), "acme", "v3") == "new-3"
    assert await rotate(conn, keyring("k2", "k1")) == 1
    assert set((await key_ids(conn)).values()) == {"k2"}


HEX_KEY = "00" * 32  # a hex key pasted where base64 was expected
SHORT_KEY = base64.b64encode(b"sixteen byte key").decode()


@pytest.mark.parametrize(("text", "problem"), [
    ("", "ERP_SECRET_KEYS holds no keys"),
    ("# the keys\n\n", "ERP_SECRET_KEYS holds no keys"),
    (KEYS["k1"], "entry 1: expected `id:BASE64KEY`"),
    (f"k1:{KEYS['k1']}\nkey one:{KEYS['k2']}", "entry 2: a key id must be 1-32"),
    (f"k1:{KEYS['k1']},k1:{KEYS['k2']}", "entry 2: key id 'k1' appears twice"),
    (f"k1:{KEYS['k1']}\n# old\nk2:{KEYS['k2'][:-2]}*=", "entry 2 (key 'k2'): the key is not valid base64"),
    (f"k1:{SHORT_KEY}", "entry 1 (key 'k1'): the key is 16 bytes, AES-256 needs 32"),
    (f"k1:{HEX_KEY}", "the key is 48 bytes"),
])
def test_a_bad_keyring_names_the_problem_but_not_the_key(text: str, problem: str) -> None:
    with pytest.raises(InvalidKeyring) as error:
        Keyring.parse(text, source="ERP_SECRET_KEYS")
    told = "".join(traceback.format_exception(error.value))
    assert problem in str(error.value)
    for key in (KEYS["k1"], KEYS["k2"], KEYS["k2"][:-2], SHORT_KEY, HEX_KEY):
        assert key not in told


def test_keys_come_from_a_key_file_first_current(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-11\nk2:{KEYS['k2']}\n\nk1:{KEYS['k1']}\n")
    ring = Keyring.from_settings(Settings(secret_keys=None, secret_keys_file=key_file))
    assert (ring.current, ring.key_ids) == ("k2", ["k2", "k1"])
    assert KEYS["k2"] not in repr(ring) and KEYS["k1"] not in repr(ring)


def test_missing_or_doubly_configured_keys_say_how_to_configure(tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyring, match=r"set ERP_SECRET_KEYS .* or ERP_SECRET_KEYS_FILE"):
        Keyring.from_settings(Settings(secret_keys=None, secret_keys_file=None))
    with pytest.raises(InvalidKeyring, match="not both"):
        Keyring.from_settings(Settings(secret_keys=SecretStr(f"k1:{KEYS['k1']}"),
                                       secret_keys_file=tmp_path / "keys"))
    with pytest.raises(InvalidKeyring, match=r"ERP_SECRET_KEYS_FILE .*absent"):
        Keyring.from_settings(Settings(secret_keys=None, secret_keys_file=tmp_path / "absent"))


async def test_values_and_keys_never_appear_in_logs_listings_or_reprs(
    conn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    value = "sk_live_TheSecretValue42"
    settings = Settings(secret_keys=SecretStr(f"k2:{KEYS['k2']},k1:{KEYS['k1']}"))
    with capture_logs() as logs, caplog.at_level(logging.DEBUG):
        info = await put(conn, keyring("k1"), "acme", "mpesa.secret", value, actor="t")
        assert await reveal(conn, keyring("k1"), "acme", "mpesa.secret") == value
        await rotate(conn, Keyring.from_settings(settings))
        listed = await describe(conn, "acme")
        await delete(conn, "acme", "mpesa.secret")
    assert listed[0].hint == MASK + "ue42"
    shown = repr(logs) + caplog.text + repr(info) + repr(listed) + repr(settings) + repr(
        Keyring.from_settings(settings))
    for secret in (value, "TheSecretValue", KEYS["k1"], KEYS["k2"]):
        assert secret not in shown


def cli(database_url: str | None, *args: str, keys: str = "k1", stdin: str | None = None) -> Result:
    env = {"ERP_DATABASE_URL": database_url, "ERP_SECRET_KEYS_FILE": None,
           "ERP_SECRET_KEYS": ",".join(f"{k}:{KEYS[k]}" for k in keys.split(",")) if keys else None}
    return CliRunner().invoke(secrets, list(args), input=stdin, env=env)


def test_the_cli_sets_a_value_from_stdin_and_lists_only_its_hint(database_url: str) -> None:
    value = "sk_live_0123456789abcdef"
    done = cli(database_url, "set", "acme", "mpesa.consumer-secret", "--actor", "wanjiru",
               stdin=value + "\n")
    assert done.exit_code == 0, done.output
    listed = cli(database_url, "list", "--tenant", "acme")
    assert listed.exit_code == 0, listed.output
    assert "mpesa.consumer-secret" in listed.output and MASK + "cdef" in listed.output
    assert "wanjiru" in listed.output
    assert value not in done.output + listed.output

    async def stored() -> str:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await reveal(conn, keyring("k1"), "acme", "mpesa.consumer-secret")

    assert asyncio.run(stored()) == value  # without the newline the pipe added


def test_the_cli_rotates_with_progress_and_a_summary(database_url: str) -> None:
    for name in ("a", "b", "c"):
        assert cli(database_url, "set", "*", f"peer.{name}", stdin=f"key-of-{name}").exit_code == 0
    rotated = cli(database_url, "rotate", "--batch-size", "2", keys="k2,k1")
    assert rotated.exit_code == 0, rotated.output
    assert "re-encrypted 2/3\nre-encrypted 3/3\nre-encrypted 3 values under key k2 in " in rotated.output
    assert cli(database_url, "list").output.count("  k2  ") == 3


def test_the_cli_deletes_a_value_once(database_url: str) -> None:
    assert cli(database_url, "set", "acme", "kra.pin", stdin="P051234567X").exit_code == 0
    assert cli(database_url, "delete", "acme", "kra.pin").output == "deleted acme/kra.pin\n"
    again = cli(database_url, "delete", "acme", "kra.pin")
    assert again.exit_code == 1 and "no credential acme/kra.pin" in again.output


def test_the_cli_says_what_is_missing(database_url: str) -> None:
    no_database = cli(None, "list")
    assert no_database.exit_code == 1  # not a usage mistake: no server to work on
    assert "ERP_DATABASE_URL must point at the service's database" in no_database.output
    no_keys = cli(database_url, "set", "acme", "kra.pin", keys="", stdin="P051234567X")
    assert no_keys.exit_code == 1 and "ERP_SECRET_KEYS" in no_keys.output


def test_the_cli_generates_a_usable_key() -> None:
    generated = CliRunner().invoke(secrets, ["generate-key"])
    assert generated.exit_code == 0
    assert Keyring.parse(generated.stdout).current.startswith("k")
