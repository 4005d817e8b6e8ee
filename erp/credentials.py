"""Tier-1 credentials: integration credentials and service keys, encrypted at rest.

Values are sealed with AES-256-GCM under a master key from the environment or a key
file (a Kubernetes secret in production), never from the database. Each value is bound
to its key id, tenant and name as associated data, so a ciphertext copied to another
row, or relabelled with another key id, does not decrypt. Values are never logged and
never shown again once set: only a masked hint and metadata.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.rows import class_row

from aggregates.tenant_settings import valid_tenant_id
from erp.settings import Settings

PLATFORM = "*"  # the tenant id of platform-wide values, e.g. a peer's service key
KEY_BYTES = 32
NONCE_BYTES = 12
MASK = "\u2022" * 4
HINT_MIN_LENGTH = 12  # shorter values would give away too much of themselves
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")

DDL = """
CREATE TABLE IF NOT EXISTS tier1_credentials (
    tenant_id text NOT NULL,
    name text NOT NULL,
    key_id text NOT NULL,
    nonce bytea NOT NULL,
    ciphertext bytea NOT NULL,
    hint text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL,
    PRIMARY KEY (tenant_id, name)
)
"""
_INFO = "tenant_id, name, key_id, hint, created_at, updated_at, updated_by"


class CredentialError(Exception):
    """Every error here; none of their messages holds a value or key material."""


class InvalidKeyring(CredentialError):
    pass


class InvalidCredential(CredentialError):
    pass


class CredentialNotFound(CredentialError):
    def __init__(self, tenant_id: str, name: str) -> None:
        super().__init__(f"no credential {tenant_id}/{name}")


class CredentialUnreadable(CredentialError):
    """A stored value that does not decrypt: altered, moved from another row or relabelled."""


class KeyNotInKeyring(CredentialUnreadable):
    """A value is under a key the keyring no longer holds: removed before rotation ended."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class CredentialInfo:
    """What may be shown of a credential: never its value."""

    tenant_id: str
    name: str
    key_id: str
    hint: str
    created_at: datetime
    updated_at: datetime
    updated_by: str


class Keyring:
    """Master keys by id: the first is current for writes, every one decrypts."""

    def __init__(self, ciphers: Mapping[str, AESGCM]) -> None:
        if not ciphers:
            raise InvalidKeyring("a keyring needs at least one key")
        self.current = next(iter(ciphers))
        self._ciphers = dict(ciphers)

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def __repr__(self) -> str:
        return f"Keyring(current={self.current!r}, key_ids={self.key_ids!r})"

    @classmethod
    def parse(cls, text: str, *, source: str = "the keyring") -> Keyring:
        """Reads `id:BASE64KEY` entries separated by commas or lines; `#` starts a comment line."""
        entries = [
            entry.strip()
            for line in text.splitlines()
            if not line.strip().startswith("#")
            for entry in line.split(",")
        ]
        entries = [entry for entry in entries if entry]
        if not entries:
            raise InvalidKeyring(f"{source} holds no keys; expected `id:BASE64KEY[,id:BASE64KEY...]`")
        ciphers: dict[str, AESGCM] = {}
        for number, entry in enumerate(entries, start=1):
            where = f"{source}, entry {number}"
            key_id, key = _parse_entry(entry, where)
            if key_id in ciphers:
                raise InvalidKeyring(f"{where}: key id {key_id!r} appears twice")
            ciphers[key_id] = AESGCM(key)
        return cls(ciphers)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        if settings.secret_keys is not None and settings.secret_keys_file is not None:
            raise InvalidKeyring("set ERP_SECRET_KEYS or ERP_SECRET_KEYS_FILE, not both")
        if settings.secret_keys is not None:
            return cls.parse(settings.secret_keys.get_secret_value(), source="ERP_SECRET_KEYS")
        if settings.secret_keys_file is not None:
            return cls.parse(_read_key_file(settings.secret_keys_file),
                             source=f"ERP_SECRET_KEYS_FILE {settings.secret_keys_file}")
        raise InvalidKeyring(
            "no master keys for Tier-1 credentials: set ERP_SECRET_KEYS to "
            "`id:BASE64KEY[,id:BASE64KEY...]` (the first is current for writes) or "
            "ERP_SECRET_KEYS_FILE to a file with one `id:BASE64KEY` per line; "
            "`erp secrets generate-key` makes a key"
        )

    def seal(self, tenant_id: str, name: str, value: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        bound = _associated_data(self.current, tenant_id, name)
        ciphertext = self._ciphers[self.current].encrypt(nonce, value.encode(), bound)
        return Sealed(self.current, nonce, ciphertext)

    def open(self, tenant_id: str, name: str, sealed: Sealed) -> str:
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise KeyNotInKeyring(
                f"credential {tenant_id}/{name} is under key {sealed.key_id!r}, which is not in "
                f"the keyring ({', '.join(self.key_ids)}); restore that key until "
                "`erp secrets rotate` has re-encrypted every value"
            )
        bound = _associated_data(sealed.key_id, tenant_id, name)
        try:
            return cipher.decrypt(sealed.nonce, sealed.ciphertext, bound).decode()
        except (InvalidTag, ValueError):
            raise CredentialUnreadable(
                f"credential {tenant_id}/{name} does not decrypt under key {sealed.key_id!r}: "
                "it was altered, moved from another row or relabelled with another key id"
            ) from None


def new_key() -> str:
    """A fresh master key, base64 (standard) of 32 random bytes."""
    return base64.b64encode(AESGCM.generate_key(bit_length=KEY_BYTES * 8)).decode()


def hint(value: str) -> str:
    return MASK + value[-4:] if len(value) >= HINT_MIN_LENGTH else MASK


def _parse_entry(entry: str, where: str) -> tuple[str, bytes]:
    # Messages name the entry by position and never echo it: it may be a misplaced key.
    key_id, colon, encoded = entry.partition(":")
    if not colon:
        raise InvalidKeyring(f"{where}: expected `id:BASE64KEY`, found no `:`")
    key_id = key_id.strip()
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidKeyring(f"{where}: a key id must be 1-32 of letters, digits, `_` and `-`")
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise InvalidKeyring(f"{where} (key {key_id!r}): the key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise InvalidKeyring(
            f"{where} (key {key_id!r}): the key is {len(key)} bytes, AES-256 needs {KEY_BYTES}"
        )
    return key_id, key


def _read_key_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidKeyring(f"ERP_SECRET_KEYS_FILE {path}: {error.strerror}") from None


def _associated_data(key_id: str, tenant_id: str, name: str) -> bytes:
    # A JSON array is unambiguous: ("a:b", "c") and ("a", "b:c") never encode alike.
    return json.dumps(["tier1-credential", key_id, tenant_id, name]).encode()


def _check(tenant_id: str, name: str) -> None:
    if tenant_id != PLATFORM and not valid_tenant_id(tenant_id):
        raise InvalidCredential(
            f"tenant id {tenant_id!r}: 1-128 of letters, digits and . _ : -, or {PLATFORM!r}"
        )
    if not _NAME.fullmatch(name):
        raise InvalidCredential(
            f"name {name!r}: 1-100 of a-z, 0-9 and . _ -, starting with a letter or digit"
        )


async def ensure_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        await conn.execute(DDL)


async def put(
    conn: psycopg.AsyncConnection[Any], keyring: Keyring, tenant_id: str, name: str, value: str,
    *, actor: str,
) -> CredentialInfo:
    """Stores the value under the current key, replacing any earlier one."""
    _check(tenant_id, name)
    if not value:
        raise InvalidCredential(f"credential {tenant_id}/{name}: the value is empty")
    if not actor:
        raise InvalidCredential(f"credential {tenant_id}/{name}: say who sets it (actor)")
    sealed = keyring.seal(tenant_id, name, value)
    async with conn.transaction(), conn.cursor(row_factory=class_row(CredentialInfo)) as cur:
        await cur.execute(
            "INSERT INTO tier1_credentials "
            "(tenant_id, name, key_id, nonce, ciphertext, hint, updated_by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (tenant_id, name) DO UPDATE SET key_id = excluded.key_id, "
            "nonce = excluded.nonce, ciphertext = excluded.ciphertext, hint = excluded.hint, "
            f"updated_at = now(), updated_by = excluded.updated_by RETURNING {_INFO}",
            (tenant_id, name, sealed.key_id, sealed.nonce, sealed.ciphertext, hint(value), actor),
        )
        info = await cur.fetchone()
    assert info is not None  # RETURNING always answers the row
    return info


async def reveal(conn: psycopg.AsyncConnection[Any], keyring: Keyring, tenant_id: str, name: str) -> str:
    """The value, for the service's own use (calling a peer); never for showing."""
    async with conn.transaction(), conn.cursor(row_factory=class_row(Sealed)) as cur:
        await cur.execute(
            "SELECT key_id, nonce, ciphertext FROM tier1_credentials "
            "WHERE tenant_id = %s AND name = %s",
            (tenant_id, name),
        )
        sealed = await cur.fetchone()
    if sealed is None:
        raise CredentialNotFound(tenant_id, name)
    return keyring.open(tenant_id, name, sealed)


async def describe(conn: psycopg.AsyncConnection[Any], tenant_id: str | None = None) -> list[CredentialInfo]:
    """Metadata and hints of every credential, or of one tenant's."""
    async with conn.transaction(), conn.cursor(row_factory=class_row(CredentialInfo)) as cur:
        await cur.execute(
            f"SELECT {_INFO} FROM tier1_credentials "
            "WHERE %(tenant)s::text IS NULL OR tenant_id = %(tenant)s ORDER BY tenant_id, name",
            {"tenant": tenant_id},
        )
        return await cur.fetchall()


async def delete(conn: psycopg.AsyncConnection[Any], tenant_id: str, name: str) -> bool:
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM tier1_credentials WHERE tenant_id = %s AND name = %s", (tenant_id, name)
        )
    return cur.rowcount > 0


async def rotate(
    conn: psycopg.AsyncConnection[Any], keyring: Keyring, *, batch_size: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Re-encrypts under the current key every value under another, a batch per transaction;
    answers how many. Refuses before changing anything if a value is under an unknown key."""
    total = await _count_to_rotate(conn, keyring)
    done = 0
    while batch := await _rotate_batch(conn, keyring, batch_size):
        done += batch
        total = max(total, done)  # an instance with the old keyring may write meanwhile
        if progress:
            progress(done, total)
    return done


async def _count_to_rotate(conn: psycopg.AsyncConnection[Any], keyring: Keyring) -> int:
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT key_id, count(*) FROM tier1_credentials WHERE key_id <> %s GROUP BY key_id",
            (keyring.current,),
        )
        counts: dict[str, int] = dict(await cur.fetchall())
    unknown = sorted(set(counts) - set(keyring.key_ids))
    if unknown:
        raise KeyNotInKeyring(
            f"cannot rotate: {sum(counts[k] for k in unknown)} values are under key(s) "
            f"{', '.join(map(repr, unknown))}, not in the keyring; restore them after the "
            "current key and rotate again (nothing was re-encrypted)"
        )
    return sum(counts.values())


async def _rotate_batch(conn: psycopg.AsyncConnection[Any], keyring: Keyring, batch_size: int) -> int:
    async with conn.transaction():
        # FOR UPDATE: a concurrent put waits for this batch, then overwrites it (not lost);
        # SKIP LOCKED: a row a put is writing is left to it, or to the next batch.
        cur = await conn.execute(
            "SELECT tenant_id, name, key_id, nonce, ciphertext FROM tier1_credentials "
            "WHERE key_id <> %s ORDER BY tenant_id, name LIMIT %s FOR UPDATE SKIP LOCKED",
            (keyring.current, batch_size),
        )
        rows = await cur.fetchall()
        if not rows:
            return 0
        updates = []
        for tenant_id, name, key_id, nonce, ciphertext in rows:
            value = keyring.open(tenant_id, name, Sealed(key_id, nonce, ciphertext))
            sealed = keyring.seal(tenant_id, name, value)
            updates.append((sealed.key_id, sealed.nonce, sealed.ciphertext, tenant_id, name))
        async with conn.cursor() as update:
            await update.executemany(
                "UPDATE tier1_credentials SET key_id = %s, nonce = %s, ciphertext = %s "
                "WHERE tenant_id = %s AND name = %s",
                updates,
            )
    return len(rows)
