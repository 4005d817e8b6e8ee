"""Who is calling: JWTs from the auth service, verified against its keys, and what roles allow.

Only asymmetric algorithms are accepted (RS256, ES256), and the algorithm is taken from
the verifying key, never from the token, so `alg: none` and an HS256 token "signed" with
the public key are refused before any signature check.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from aggregates.tenant_settings import valid_tenant_id

log = structlog.get_logger("erp.identity")

ALGORITHMS = ("RS256", "ES256")
LEEWAY_SECONDS = 30
DEV_ISSUER = "erp-dev"
DEV_AUDIENCE = "erp"

# Scopes are what a route requires; roles in a token grant scopes (a token or API key may
# also carry scopes directly). PO approval roles are the tenant's own (its approval chain)
# and are checked by the purchase order itself.
MODULES = ("crm", "procurement", "hrm", "manufacturing", "settings", "users")
READ_ALL = frozenset(f"{m}:read" for m in MODULES)
# users:write (user sync) belongs to the auth service's key and superusers: user references
# follow the auth service, not a tenant admin.
WRITE_ALL = frozenset(f"{m}:write" for m in MODULES if m != "users")
ROLE_SCOPES: Mapping[str, frozenset[str]] = {
    "erp.viewer": READ_ALL,
    "erp.admin": READ_ALL | WRITE_ALL | {"payroll:process"},
    "erp.superuser": READ_ALL | WRITE_ALL | {"payroll:process", "users:write", "credentials:manage"},
    "crm.user": frozenset({"crm:read", "crm:write"}),
    "procurement.user": frozenset({"procurement:read", "procurement:write"}),
    "hr.user": frozenset({"hrm:read", "hrm:write"}),
    "payroll.admin": frozenset({"hrm:read", "hrm:write", "payroll:process"}),
    "manufacturing.user": frozenset({"manufacturing:read", "manufacturing:write"}),
}
ALL_SCOPES = frozenset().union(*ROLE_SCOPES.values())


class Unauthenticated(Exception):
    """Credentials missing or refused. The detail is logged, never sent to the caller."""


class Forbidden(Exception):
    """The caller is known, but its roles or key do not allow this."""


class KeysUnavailable(Exception):
    """The auth service's keys could not be fetched, so no token can be checked."""


@dataclass(frozen=True)
class Principal:
    subject: str  # the user id, or "service:<owner>" for an API key
    tenant_id: str
    roles: frozenset[str]
    scopes: frozenset[str]
    kind: Literal["user", "service"]

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def scopes_for(roles: Iterable[str], granted: Iterable[str] = ()) -> frozenset[str]:
    scopes = set(granted) & ALL_SCOPES
    for role in roles:
        scopes |= ROLE_SCOPES.get(role, frozenset())
    return frozenset(scopes)


def _algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("only RSA (2048 bits or more) and EC P-256 public keys can verify tokens")


class StaticKey:
    """One public key from a PEM file: the configured or the development key."""

    def __init__(self, pem: bytes) -> None:
        self._key = serialization.load_pem_public_key(pem)
        self._algorithm = _algorithm(self._key)

    async def key_for(self, kid: str | None) -> tuple[Any, str] | None:
        return self._key, self._algorithm


class JwksKeys:
    """The auth service's JWKS: cached, refetched for an unknown `kid` at most every
    `min_refresh_seconds`, and after `max_age_seconds` in any case. While the auth service
    cannot be reached the cached keys serve for `max_stale_seconds`, then none do (503):
    a key it has withdrawn must not be trusted for ever."""

    def __init__(self, url: str, *, min_refresh_seconds: float = 5.0, max_age_seconds: float = 600.0,
                 max_stale_seconds: float = 3600.0, timeout_seconds: float = 5.0) -> None:
        self._url = url
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._max_stale = max_stale_seconds
        self._timeout = timeout_seconds
        self._keys: dict[str, tuple[Any, str]] = {}
        self._fetched_at = float("-inf")  # last attempt (success or not)
        self._fresh_at = float("-inf")  # last success
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key_for(self, kid: str | None) -> tuple[Any, str] | None:
        if kid is None:
            return None
        if self._stale(kid):
            async with self._lock:  # one fetch however many requests bring the new kid
                if self._stale(kid):
                    await self._fetch()
        if time.monotonic() - self._fresh_at > self._max_stale:
            self._keys = {}  # whether or not a fetch was due: cached keys serve that long at most
        if not self._keys:
            raise KeysUnavailable(f"no usable keys from {self._url}")
        return self._keys.get(kid)

    def _stale(self, kid: str) -> bool:
        """Time to fetch: the keys are older than `max_age`, or a kid is unknown or the keys
        are past `max_stale` and the last attempt is `min_refresh` ago."""
        now = time.monotonic()
        age = now - self._fetched_at
        wanted = kid not in self._keys or now - self._fresh_at > self._max_stale
        return age > self._max_age or (wanted and age >= self._min_refresh)

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                response = await http.get(self._url)
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError) as error:
            self._fetched_at = time.monotonic()  # the rate limit also spares a failing service
            if self._fetched_at - self._fresh_at > self._max_stale:
                self._keys = {}
            if not self._keys:
                raise KeysUnavailable(f"JWKS {self._url}: {error}") from error
            log.warning("JWKS refresh failed; keeping the cached keys", url=self._url, error=str(error))
            return
        keys: dict[str, tuple[Any, str]] = {}
        for entry in document.get("keys", []):
            try:
                jwk = jwt.PyJWK(entry)
                keys[str(entry["kid"])] = (jwk.key, _algorithm(jwk.key))
            except (jwt.PyJWTError, KeyError, ValueError, TypeError) as error:
                log.warning("JWKS key skipped", kid=entry.get("kid"), error=str(error))
        self._keys, self._fetched_at = keys, time.monotonic()
        self._fresh_at = self._fetched_at
        log.info("JWKS fetched", url=self._url, kids=sorted(keys))


KeySource = StaticKey | JwksKeys


VERIFIED_CACHE_SECONDS = 60.0  # a token whose key left the JWKS stops working within this long
VERIFIED_CACHE_SIZE = 10_000


class TokenVerifier:
    """Verifies bearer tokens. A token verified once is remembered (by its SHA-256) until it
    expires or for a minute at most: a client sends the same token with every request, and
    checking its signature again was a tenth of a command's cost."""

    def __init__(self, keys: KeySource, *, issuer: str, audience: str) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._verified: OrderedDict[bytes, tuple[Principal, float, float]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            principal, until, expires = hit
            if time.monotonic() < until and time.time() < expires + LEEWAY_SECONDS:
                self._verified.move_to_end(digest)
                return principal
            del self._verified[digest]
        principal, expires = await self._verify(token)
        self._verified[digest] = (principal, time.monotonic() + VERIFIED_CACHE_SECONDS, expires)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"malformed token: {error}") from None
        if header.get("alg") not in ALGORITHMS:
            raise Unauthenticated(f"algorithm {header.get('alg')!r} is not accepted")
        found = await self._keys.key_for(header.get("kid"))
        if found is None:
            raise Unauthenticated(f"unknown key id {header.get('kid')!r}")
        key, algorithm = found
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self._audience, issuer=self._issuer,
                leeway=LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"token refused: {type(error).__name__}: {error}") from None
        tenant_id = claims.get("tenant_id")
        if not isinstance(tenant_id, str) or not valid_tenant_id(tenant_id):
            raise Unauthenticated("token has no valid tenant_id claim")
        roles = claims.get("roles") or []
        scope = claims.get("scope") or ""
        if not isinstance(roles, list) or not isinstance(scope, str):
            raise Unauthenticated("roles must be a list and scope a string")
        role_names = frozenset(str(r) for r in roles)
        principal = Principal(subject=str(claims["sub"]), tenant_id=tenant_id, roles=role_names,
                              scopes=scopes_for(role_names, scope.split()), kind="user")
        return principal, float(claims["exp"])


# Development tokens: a key made on first use under the data folder, trusted only by a
# service started on embedded servers without JWT settings.

def dev_key_path(data_dir: Path) -> Path:
    return data_dir / "dev-jwt-key.pem"


def dev_private_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    path = dev_key_path(data_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def dev_public_pem(data_dir: Path) -> bytes:
    return dev_private_key(data_dir).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def mint(private_key: Any, *, tenant_id: str, subject: str, roles: Iterable[str] = (),
         issuer: str = DEV_ISSUER, audience: str = DEV_AUDIENCE, ttl_seconds: int = 3600,
         kid: str | None = None, **claims: Any) -> str:
    """A signed token (development and tests): ES256 for EC keys, RS256 for RSA keys."""
    now = int(time.time())
    algorithm = "ES256" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS256"
    payload = {"iss": issuer, "aud": audience, "sub": subject, "tenant_id": tenant_id,
               "roles": list(roles), "iat": now, "nbf": now, "exp": now + ttl_seconds, **claims}
    return jwt.encode(payload, private_key, algorithm=algorithm,
                      headers={"kid": kid} if kid else None)


class MisconfiguredTokens(ValueError):
    pass


def token_verifier(settings: Any, *, embedded: bool) -> TokenVerifier | None:
    """From ERP_JWT_* settings; without them, the development key only on embedded servers."""
    if settings.jwt_jwks_url or settings.jwt_public_key:
        if not (settings.jwt_issuer and settings.jwt_audience):
            raise MisconfiguredTokens("ERP_JWT_ISSUER and ERP_JWT_AUDIENCE are required with "
                                      "ERP_JWT_JWKS_URL or ERP_JWT_PUBLIC_KEY")
        keys: KeySource = (JwksKeys(settings.jwt_jwks_url) if settings.jwt_jwks_url
                           else StaticKey(Path(settings.jwt_public_key).read_bytes()))
        return TokenVerifier(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    if embedded:
        log.warning("DEVELOPMENT MODE: trusting tokens signed by the local development key "
                    f"({dev_key_path(settings.data_dir)}); mint one with `erp dev-token`. "
                    "Never run like this with real data.")
        return TokenVerifier(StaticKey(dev_public_pem(settings.data_dir)), issuer=DEV_ISSUER,
                             audience=DEV_AUDIENCE)
    log.error("no JWT verification configured (ERP_JWT_JWKS_URL or ERP_JWT_PUBLIC_KEY): "
              "only API keys are accepted")
    return None
