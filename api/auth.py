"""Authentication (middleware) and the scope each route requires (declared with the route).

Every route but the public ones needs a bearer JWT from the auth service or a service
API key (`X-API-Key`). A refusal says only "missing or invalid credentials"; the reason
goes to the log. The principal's tenant scopes the request.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import psycopg
import structlog
from psycopg_pool import PoolClosed, PoolTimeout
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from aggregates.tenant_settings import valid_tenant_id
from api.problems import BadRequest, problem
from erp.api_keys import ApiKeys
from erp.bootstrap import Service
from erp.identity import Forbidden, KeysUnavailable, Principal, TokenVerifier, Unauthenticated, scopes_for

log = structlog.get_logger("erp.auth")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/asyncapi.json", "/metrics"})
SIGNED_PREFIX = "/api/v1/webhooks/"  # authenticated by the delivery's HMAC signature instead


class Authenticator:
    def __init__(self, tokens: TokenVerifier | None, service: Service) -> None:
        self._tokens = tokens
        self._api_keys = ApiKeys()
        self._service = service  # its read pool is open once the service has started

    async def principal(self, headers: Headers) -> Principal:
        authorization = headers.get("authorization", "")
        api_key = headers.get("x-api-key")
        tenant_header = headers.get("x-tenant-id")
        if tenant_header is not None and not valid_tenant_id(tenant_header):
            raise BadRequest("X-Tenant-ID is not a tenant id: 1-128 of letters, digits and . _ : -",
                             field="header.X-Tenant-ID")
        if api_key is not None:
            return await self._api_key(api_key, tenant_header)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("no bearer token or API key")
        if self._tokens is None:
            raise Unauthenticated("no JWT verification is configured")
        principal = await self._tokens.verify(token.strip())
        if tenant_header is not None and tenant_header != principal.tenant_id:
            raise Forbidden("the X-Tenant-ID header names another tenant than the token")
        return principal

    async def _api_key(self, presented: str, tenant_header: str | None) -> Principal:
        async with self._service.read_pool.connection() as conn:
            key = await self._api_keys.check(conn, presented)
        if key is None:
            raise Unauthenticated("unknown or revoked API key")
        if key.tenant_id is not None and tenant_header not in (None, key.tenant_id):
            raise Forbidden("this API key is pinned to another tenant")
        tenant_id = key.tenant_id or tenant_header
        if tenant_id is None:
            raise Unauthenticated(f"API key {key.prefix} acts for a tenant named in X-Tenant-ID")
        return Principal(subject=f"service:{key.owner}", tenant_id=tenant_id, roles=frozenset(),
                         scopes=scopes_for((), key.scopes), kind="service")


class Authentication:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(SIGNED_PREFIX):
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator = scope["app"].state.authenticator
        try:
            principal = await authenticator.principal(Headers(scope=scope))
        except Unauthenticated as refused:
            log.info("credentials refused", reason=str(refused))
            response = problem(401, "Unauthorized", "missing or invalid credentials",
                               headers={"WWW-Authenticate": 'Bearer realm="erp"'})
            await response(scope, receive, send)
            return
        except Forbidden as refused:
            await problem(403, "Forbidden", str(refused))(scope, receive, send)
            return
        except BadRequest as refused:  # no credential at fault: another token would not help
            await problem(400, "Bad request", refused.detail,
                          errors=[{"field": refused.field, "message": refused.detail}])(scope, receive, send)
            return
        except (KeysUnavailable, psycopg.OperationalError, PoolTimeout, PoolClosed) as error:
            log.warning("credentials cannot be checked", error=str(error))
            await problem(503, "Service unavailable", "credentials cannot be checked right now",
                          headers={"Retry-After": "5"})(scope, receive, send)
            return
        scope["state"].update(principal=principal, tenant_id=principal.tenant_id)
        structlog.contextvars.bind_contextvars(tenant_id=principal.tenant_id, subject=principal.subject)
        await self.app(scope, receive, send)


def principal(request: Request) -> Principal:
    """Who is asking: set by `Authentication` on every route but the public ones."""
    found: Principal = request.state.principal
    return found


Endpoint = Callable[[Request], Awaitable[Response]]


def requiring(scope: str, endpoint: Endpoint) -> Endpoint:
    """`endpoint`, refused with 403 unless the caller's roles or key grant `scope`."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        if not principal(request).may(scope):
            raise Forbidden(f"this needs the {scope!r} permission")
        return await endpoint(request)

    return guarded
