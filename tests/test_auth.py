"""Who may call: tokens from the auth service, API keys of other services, and what their
roles and scopes allow. Every refusal is a 401 that says no more than that."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from erp import api_keys
from erp.bootstrap import Service
from erp.cli import main
from erp.identity import (
    DEV_AUDIENCE,
    LEEWAY_SECONDS,
    JwksKeys,
    KeysUnavailable,
    StaticKey,
    TokenVerifier,
    Unauthenticated,
    dev_private_key,
    mint,
    token_verifier,
)
from erp.settings import Settings
from tests.conftest import AUDIENCE, AUTH_KEY, ISSUER, as_user, token

OPPORTUNITIES = "/api/v1/crm/opportunities"
REFUSED = {"type": "about:blank", "title": "Unauthorized", "status": 401,
           "detail": "missing or invalid credentials"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "tenant_id": "tenant-a",
            "roles": ["erp.superuser"], "iat": now, "nbf": now, "exp": now + 600, **changes}


def public_pem() -> bytes:
    return AUTH_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)


def hs256_with_public_key() -> str:
    """The classic confusion attack: HMAC "signed" with the verifier's public key as secret."""
    signing_input = unsigned({"alg": "HS256", "typ": "JWT"}, claims())
    signature = hmac.new(public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def tampered_payload() -> str:
    header, _, signature = token().split(".")
    return f"{header}.{b64(json.dumps(claims(tenant_id='tenant-b')).encode())}.{signature}"


def tampered_signature() -> str:
    head, _, signature = token().rpartition(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    return f"{head}.{flipped}"


ATTACKS: dict[str, Callable[[], str]] = {
    "alg none": lambda: unsigned({"alg": "none", "typ": "JWT"}, claims()) + ".",
    "HS256 signed with the public key": hs256_with_public_key,
    "expired": lambda: token(exp=int(time.time()) - 120),
    "not yet valid": lambda: token(nbf=int(time.time()) + 120),
    "wrong issuer": lambda: jwt.encode(claims(iss="https://evil.test"), AUTH_KEY, algorithm="ES256"),
    "wrong audience": lambda: jwt.encode(claims(aud="another-service"), AUTH_KEY, algorithm="ES256"),
    "tampered payload": tampered_payload,
    "tampered signature": tampered_signature,
    "signed by another key": lambda: jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()),
                                                algorithm="ES256"),
    "missing tenant claim": lambda: jwt.encode(
        {k: v for k, v in claims().items() if k != "tenant_id"}, AUTH_KEY, algorithm="ES256"),
    "missing expiry": lambda: jwt.encode(
        {k: v for k, v in claims().items() if k != "exp"}, AUTH_KEY, algorithm="ES256"),
    "garbage": lambda: "not.a.token",
    "platform tenant claim": lambda: token(tenant="*"),
    "tenant claim with a newline": lambda: token(tenant="tenant-a\nx"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_a_forged_or_invalid_token_is_refused_without_saying_why(
    client: httpx.AsyncClient, attack: str
) -> None:
    for method, path in (("GET", OPPORTUNITIES), ("POST", OPPORTUNITIES)):
        response = await client.request(
            method, path, headers={"Authorization": f"Bearer {ATTACKS[attack]()}"},
            json={"customer_id": "c", "title": "t", "owner": "o"})
        assert response.status_code == 401, (attack, response.text)
        assert response.json() == REFUSED
        assert response.headers["content-type"] == "application/problem+json"


async def test_no_credentials_or_another_scheme_is_refused(client: httpx.AsyncClient) -> None:
    for authorization in ("", "Basic dXNlcjpwYXNz", "Bearer", f"Token {token()}"):
        response = await client.get(OPPORTUNITIES, headers={"Authorization": authorization})
        assert (response.status_code, response.json()) == (401, REFUSED), authorization
    assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200
    assert (await client.get("/openapi.json", headers={"Authorization": ""})).status_code == 200


async def test_a_valid_token_within_clock_skew_is_accepted(client: httpx.AsyncClient) -> None:
    just_expired = token(exp=int(time.time()) - 5)  # 5 s late: within the 30 s skew allowed
    response = await client.get(OPPORTUNITIES, headers={"Authorization": f"Bearer {just_expired}"})
    assert response.status_code == 200


async def test_roles_decide_which_commands_a_user_may_run(client: httpx.AsyncClient) -> None:
    body = {"customer_id": "c", "title": "t", "owner": "o"}
    viewer = as_user(roles=("erp.viewer",))
    assert (await client.get(OPPORTUNITIES, headers=viewer)).status_code == 200
    refused = await client.post(OPPORTUNITIES, json=body, headers=viewer)
    assert refused.status_code == 403 and "crm:write" in refused.json()["detail"]
    crm_user = as_user(roles=("crm.user",))
    assert (await client.post(OPPORTUNITIES, json=body, headers=crm_user)).status_code == 201
    hr_only = as_user(roles=("hr.user",))
    run = await client.post("/api/v1/hrm/payroll-runs", json={"period": "2026-02"}, headers=hr_only)
    assert run.status_code == 403  # only payroll admins run payroll
    payroll_admin = as_user(roles=("payroll.admin",))
    run = await client.post("/api/v1/hrm/payroll-runs", json={"period": "2026-02"}, headers=payroll_admin)
    assert run.status_code == 201
    credentials = await client.get("/api/v1/integrations/credentials", headers=as_user(roles=("erp.admin",)))
    assert credentials.status_code == 403  # tier 1 is for superusers only
    scoped = as_user(roles=())
    scoped["Authorization"] = f"Bearer {token(roles=(), scope='crm:read')}"
    assert (await client.get(OPPORTUNITIES, headers=scoped)).status_code == 200
    assert (await client.post(OPPORTUNITIES, json=body, headers=scoped)).status_code == 403


async def test_only_a_holder_of_the_role_approves_a_purchase_order(client: httpx.AsyncClient) -> None:
    base = "/api/v1/procurement/purchase-orders"
    order = (await client.post(base, json={"vendor_id": "v", "lines": [
        {"item_id": "x", "quantity": 1, "unit": "pcs", "unit_price": 10}]})).json()["id"]
    assert (await client.post(f"{base}/{order}/submit", json={})).status_code == 200
    clerk = as_user(subject="clerk", roles=("procurement.user",))
    refused = await client.post(f"{base}/{order}/approve", json={"role": "approver"}, headers=clerk)
    assert refused.status_code == 403
    rejected = await client.post(f"{base}/{order}/reject", json={"reason": "no"}, headers=clerk)
    assert rejected.status_code == 403
    approver = as_user(subject="dana", roles=("procurement.user", "approver"))
    approved = await client.post(f"{base}/{order}/approve", json={"role": "approver"}, headers=approver)
    assert approved.status_code == 200, approved.text
    view = await client.get(f"{base}/{order}", params={"min_position": approved.json()["log_position"]})
    assert view.json()["approvals"][0]["approver_id"] == "dana"  # from the token, not the body


async def test_the_tenant_comes_from_the_token_and_a_mismatched_header_is_refused(
    client: httpx.AsyncClient
) -> None:
    response = await client.get(OPPORTUNITIES, headers={"X-Tenant-ID": "tenant-b"})
    assert response.status_code == 403
    response = await client.get(OPPORTUNITIES, headers={"X-Tenant-ID": "tenant-a"})
    assert response.status_code == 200
    malformed = await client.get(OPPORTUNITIES, headers={"X-Tenant-ID": "bad tenant!"})
    assert malformed.status_code == 400 and malformed.json()["errors"][0]["field"] == "header.X-Tenant-ID"


async def test_a_method_a_route_does_not_take_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put(OPPORTUNITIES, json={})
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_commands_for_an_unregistered_tenant_are_refused(client: httpx.AsyncClient) -> None:
    stranger = as_user("tenant-unknown")
    refused = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o"},
                                headers=stranger)
    assert refused.status_code == 403
    assert "not registered" in refused.json()["detail"]
    listed = await client.get(OPPORTUNITIES, headers=stranger)
    assert (listed.status_code, listed.json()["items"]) == (200, [])


# API keys of other platform services


@pytest.fixture
def no_key_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A revoked key is refused within CACHE_SECONDS; here, at once."""
    monkeypatch.setattr(api_keys, "CACHE_SECONDS", 0.0)


def cli(database_url: str, *args: str) -> Any:
    result = CliRunner().invoke(main, list(args), env={"ERP_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    return result


async def test_a_service_key_is_created_shown_once_used_and_revoked(
    client: httpx.AsyncClient, service: Service, no_key_cache: None
) -> None:
    url = service.endpoints.database_url
    created = await asyncio.to_thread(cli, url, "api-keys", "create", "treasury", "--scope", "crm:read")
    key = next(ln for ln in created.stdout.splitlines() if ln.startswith("erpk_"))  # (log lines too)
    assert key.startswith("erpk_") and len(key) > 50
    listed = (await asyncio.to_thread(cli, url, "api-keys", "list")).output
    prefix = key.split("_")[1]
    assert prefix in listed and key.split("_", 2)[2] not in listed  # the secret is never shown again
    as_treasury = {"Authorization": "", "X-API-Key": key, "X-Tenant-ID": "tenant-a"}
    assert (await client.get(OPPORTUNITIES, headers=as_treasury)).status_code == 200
    write = await client.post(OPPORTUNITIES, headers=as_treasury,
                              json={"customer_id": "c", "title": "t", "owner": "o"})
    assert write.status_code == 403  # its scopes allow reading only
    no_tenant = {"Authorization": "", "X-API-Key": key}
    assert (await client.get(OPPORTUNITIES, headers=no_tenant)).status_code == 401
    wrong = {**as_treasury, "X-API-Key": key[:-4] + "AAAA"}
    assert (await client.get(OPPORTUNITIES, headers=wrong)).json() == REFUSED
    await asyncio.to_thread(cli, url, "api-keys", "revoke", prefix)
    assert (await client.get(OPPORTUNITIES, headers=as_treasury)).status_code == 401


async def test_a_key_pinned_to_a_tenant_cannot_act_for_another(
    client: httpx.AsyncClient, service: Service
) -> None:
    async with service.read_pool.connection() as conn:
        await conn.execute("RESET ROLE")  # the CLI's owner role creates keys
        key, _ = await api_keys.create(conn, "pos", ["crm:read"], tenant_id="tenant-b")
        await conn.execute("SET ROLE erp_api")
    pinned = {"Authorization": "", "X-API-Key": key}
    assert (await client.get(OPPORTUNITIES, headers=pinned)).status_code == 200
    other = {"Authorization": "", "X-API-Key": key, "X-Tenant-ID": "tenant-a"}
    assert (await client.get(OPPORTUNITIES, headers=other)).status_code == 403


def test_unknown_scopes_or_owners_are_refused_by_the_cli(database_url: str) -> None:
    result = CliRunner().invoke(main, ["api-keys", "create", "treasury", "--scope", "everything"],
                                env={"ERP_DATABASE_URL": database_url})
    assert result.exit_code != 0 and "unknown scopes ['everything']" in result.output
    for args, said in ((["x", "--scope", "crm:read"], "2-63 of lower-case letters"),
                       (["svc", "--scope", "crm:read", "--tenant", "bad tenant!"], "tenant 'bad tenant!'")):
        refused = CliRunner().invoke(main, ["api-keys", "create", *args],
                                     env={"ERP_DATABASE_URL": database_url})
        assert refused.exit_code == 2 and said in refused.output, refused.output


# Keys of the auth service: JWKS, public key file, development key


class Jwks:
    """The auth service's JWKS endpoint, on a free port, counting fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def publish(self, kid: str, key: Any) -> None:
        entry = json.loads(jwt.algorithms.get_default_algorithms()[
            "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        ].to_jwk(key.public_key()))
        self.keys.append({**entry, "kid": kid, "use": "sig"})


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    served = Jwks()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()


@pytest.fixture
async def verifier(jwks: Jwks) -> AsyncIterator[TokenVerifier]:
    yield TokenVerifier(JwksKeys(jwks.url, min_refresh_seconds=0.5), issuer=ISSUER, audience=AUDIENCE)


def signed(key: Any, kid: str, **changes: Any) -> str:
    algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers={"kid": kid})


async def test_jwks_keys_verify_tokens_and_an_unknown_kid_refetches_at_most_once_per_interval(
    jwks: Jwks, verifier: TokenVerifier
) -> None:
    ec_key, rsa_key = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)
    jwks.publish("ec-1", ec_key)
    jwks.publish("rsa-1", rsa_key)
    assert (await verifier.verify(signed(ec_key, "ec-1"))).tenant_id == "tenant-a"
    assert (await verifier.verify(signed(rsa_key, "rsa-1"))).subject == "mallory"
    assert jwks.fetches == 1  # cached

    # A storm of tokens naming kids nobody published: one refetch, not one per token.
    await asyncio.sleep(0.6)
    storm = await asyncio.gather(*(verifier.verify(signed(ec_key, f"nope-{i}")) for i in range(50)),
                                 return_exceptions=True)
    assert all(isinstance(e, Unauthenticated) for e in storm)
    assert jwks.fetches == 2

    # The auth service rotates to a new key: a token with its kid is accepted after a refetch.
    new_key = ec.generate_private_key(ec.SECP256R1())
    jwks.publish("ec-2", new_key)
    await asyncio.sleep(0.6)
    assert (await verifier.verify(signed(new_key, "ec-2"))).tenant_id == "tenant-a"
    assert jwks.fetches == 3


async def test_a_jwks_key_cannot_verify_a_token_of_another_algorithm(
    jwks: Jwks, verifier: TokenVerifier
) -> None:
    rsa_key = rsa.generate_private_key(65537, 2048)
    jwks.publish("rsa-1", rsa_key)
    # Claims RS256 with the RSA key's kid but is signed PS256-style or ES256: refused.
    for forged in (jwt.encode(claims(), rsa_key, algorithm="PS256", headers={"kid": "rsa-1"}),
                   jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                              headers={"kid": "rsa-1"})):
        with pytest.raises(Unauthenticated):
            await verifier.verify(forged)


def test_jwt_settings_need_issuer_and_audience(tmp_path: Path) -> None:
    pem = tmp_path / "auth.pem"
    pem.write_bytes(public_pem())
    with pytest.raises(ValueError, match="ERP_JWT_ISSUER and ERP_JWT_AUDIENCE"):
        token_verifier(Settings(jwt_public_key=pem), embedded=False)


async def test_the_development_key_is_trusted_only_on_embedded_servers_without_jwt_settings(
    tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, ["dev-token", "--tenant", "acme", "--role", "crm.user"],
                                env={"ERP_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    dev = result.output.strip()
    assert jwt.decode(dev, options={"verify_signature": False})["aud"] == DEV_AUDIENCE
    embedded = token_verifier(Settings(data_dir=tmp_path), embedded=True)
    assert embedded is not None
    principal = await embedded.verify(dev)
    assert (principal.tenant_id, principal.roles) == ("acme", frozenset({"crm.user"}))
    assert token_verifier(Settings(data_dir=tmp_path), embedded=False) is None
    pem = tmp_path / "auth.pem"
    pem.write_bytes(public_pem())
    configured = token_verifier(Settings(data_dir=tmp_path, jwt_public_key=pem, jwt_issuer=ISSUER,
                                         jwt_audience=AUDIENCE), embedded=True)
    assert configured is not None
    with pytest.raises(Unauthenticated):
        await configured.verify(dev)  # with real settings, the dev key is not trusted
    assert (tmp_path / "dev-jwt-key.pem").stat().st_mode & 0o777 == 0o600
    assert mint(dev_private_key(tmp_path), tenant_id="x", subject="y") != dev


# Request hygiene


async def test_oversized_bodies_are_refused(client: httpx.AsyncClient) -> None:
    big = b'{"customer_id": "' + b"x" * 1_100_000 + b'"}'
    response = await client.post(OPPORTUNITIES, content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(20):
            yield b"x" * 100_000

    streamed = await client.post(OPPORTUNITIES, content=chunks())
    assert streamed.status_code == 413


async def test_a_body_said_not_to_be_json_is_415(client: httpx.AsyncClient) -> None:
    body = b'{"customer_id": "c", "title": "t", "owner": "o"}'
    for given in ("text/plain", "application/x-www-form-urlencoded"):  # curl -d without a type
        refused = await client.post(OPPORTUNITIES, content=body, headers={"Content-Type": given})
        assert refused.status_code == 415 and refused.json()["errors"][0]["field"] == "header.Content-Type"
    for accepted in ("application/json; charset=utf-8", "application/merge-patch+json"):
        created = await client.post(OPPORTUNITIES, content=body, headers={"Content-Type": accepted})
        assert created.status_code == 201, created.text


async def test_responses_carry_security_headers(client: httpx.AsyncClient) -> None:
    for response in (await client.get(OPPORTUNITIES), await client.get("/healthz"),
                     await client.get(OPPORTUNITIES, headers={"Authorization": ""})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers.get_list("cache-control") == ["no-store"]  # once, whatever the route set
        assert len(response.headers.get_list("x-request-id")) == 1
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_every_route_but_the_public_ones_requires_a_permission() -> None:
    from starlette.routing import Route

    from api.app import ROUTES
    from api.auth import PUBLIC_PATHS, SIGNED_PREFIX

    for route in ROUTES:
        assert isinstance(route, Route)
        scope = route.endpoint.openapi.scope  # type: ignore[attr-defined]
        public = route.path in PUBLIC_PATHS or route.path.startswith(SIGNED_PREFIX)
        assert (scope is None) == public, route.path


async def test_a_tenant_registered_from_the_cli_can_work(client: httpx.AsyncClient, service: Service) -> None:
    url = service.endpoints.database_url
    registered = await asyncio.to_thread(cli, url, "tenants", "register", "walk-in", "--name", "Walk In Ltd")
    assert "registered as 'Walk In Ltd'" in registered.output
    again = await asyncio.to_thread(cli, url, "tenants", "register", "walk-in", "--name", "Walk In Ltd")
    assert "already registered" in again.output
    response = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o"},
                                 headers=as_user("walk-in"))
    assert response.status_code == 201, response.text


async def test_a_credential_set_through_the_api_is_never_shown_or_logged(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    value = "kra-itax-password-Zx81!q"
    path = "/api/v1/integrations/credentials/kra.itax"
    put = await client.put(path, json={"value": value})
    assert put.status_code == 200, put.text
    assert put.json()["hint"] == "••••81!q" and value not in put.text
    listed = await client.get("/api/v1/integrations/credentials")
    assert [c["name"] for c in listed.json()["items"]] == ["kra.itax"] and value not in listed.text
    assert (await client.delete(path)).status_code == 204
    assert (await client.delete(path)).status_code == 404
    assert value not in capsys.readouterr().out


async def test_where_the_service_calls_out_is_not_for_tenants_to_set(client: httpx.AsyncClient) -> None:
    """A tenant could otherwise aim the service's requests at the platform's own network."""
    for name in ("peer.treasury.url", "peer.notifications.credential", "webhook-out.0b7d6f0e"):
        put = await client.put(f"/api/v1/integrations/credentials/{name}", json={"value": "http://10.0.0.7"})
        detail = put.json()["detail"]
        assert put.status_code == 403 and name in detail, put.text
        assert ("the platform's operators" if name.startswith("peer.") else "webhook endpoint") in detail
        assert (await client.delete(f"/api/v1/integrations/credentials/{name}")).status_code == 403
    assert (await client.get("/api/v1/integrations/credentials")).json()["items"] == []


async def test_without_the_auth_service_cached_keys_serve_for_a_while_then_none_do(jwks: Jwks) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwks.publish("ec-1", key)
    keys = JwksKeys(jwks.url, min_refresh_seconds=0.0, max_age_seconds=0.2, max_stale_seconds=3.0)
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)
    assert (await verifier.verify(signed(key, "ec-1"))).tenant_id == "tenant-a"
    jwks.server.shutdown()  # (waits up to 0.5 s for the server's poll)
    jwks.server.server_close()
    await asyncio.sleep(0.3)  # past max_age: the refresh fails, the cached key still serves
    assert (await verifier.verify(signed(key, "ec-1"))).tenant_id == "tenant-a"
    await asyncio.sleep(3.0)  # past max_stale: no key is trusted any more
    with pytest.raises(KeysUnavailable):
        await verifier.verify(signed(key, "ec-1"))


async def test_cached_keys_serve_no_longer_than_max_stale_even_between_refreshes(jwks: Jwks) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwks.publish("ec-1", key)
    keys = JwksKeys(jwks.url, min_refresh_seconds=0.0, max_age_seconds=600.0, max_stale_seconds=1.0)
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)
    assert (await verifier.verify(signed(key, "ec-1", sub="user-1"))).tenant_id == "tenant-a"
    jwks.server.shutdown()
    jwks.server.server_close()
    await asyncio.sleep(1.2)  # past max_stale, long before the next refresh is due (max_age)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(signed(key, "ec-1", sub="user-2"))


async def test_a_verified_token_is_remembered_but_never_past_its_expiry() -> None:
    pem = AUTH_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    verifier = TokenVerifier(StaticKey(pem), issuer=ISSUER, audience=AUDIENCE)
    nearly_expired = token(exp=int(time.time()) - LEEWAY_SECONDS + 2)  # valid for 1-2 s more
    first = await verifier.verify(nearly_expired)
    assert await verifier.verify(nearly_expired) is first  # remembered: not verified again
    await asyncio.sleep(2.1)
    with pytest.raises(Unauthenticated):
        await verifier.verify(nearly_expired)
    with pytest.raises(Unauthenticated):  # a remembered token does not vouch for a tampered one
        await verifier.verify(token()[:-4] + "AAAA")


async def test_an_unreachable_jwks_is_unavailable_not_unauthenticated() -> None:
    verifier = TokenVerifier(JwksKeys("http://127.0.0.1:9/jwks.json", timeout_seconds=1),
                             issuer=ISSUER, audience=AUDIENCE)
    for _ in range(2):  # also within the refetch interval
        with pytest.raises(KeysUnavailable):
            await verifier.verify(signed(AUTH_KEY, "k"))


async def test_keys_of_inbound_events_are_not_for_clients(client: httpx.AsyncClient) -> None:
    response = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o"},
                                 headers={"Idempotency-Key": "inbound:0b7d6f0e-1b1a-4c6e-9d1f-3f3c1a2b4c5d"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "header.Idempotency-Key"


async def test_tier_1_and_user_sync_are_not_for_tenant_admins_or_unknown_tenants(
    client: httpx.AsyncClient
) -> None:
    admin = as_user(roles=("erp.admin",))
    sync = await client.post("/api/v1/users/sync", json={"user_id": "u-1"}, headers=admin)
    assert sync.status_code == 403  # user references follow the auth service
    stranger = as_user("tenant-unknown")
    put = await client.put("/api/v1/integrations/credentials/kra.itax", json={"value": "x" * 20},
                           headers=stranger)
    assert put.status_code == 403 and "not registered" in put.json()["detail"]


async def test_a_database_outage_while_checking_a_key_is_503_not_500(
    client: httpx.AsyncClient, service: Service
) -> None:
    await service.read_pool.close()
    response = await client.get(OPPORTUNITIES, headers={"Authorization": "", "X-Tenant-ID": "tenant-a",
                                                        "X-API-Key": "erpk_0123456789ab_" + "A" * 43})
    assert (response.status_code, response.headers["retry-after"]) == (503, "5")
