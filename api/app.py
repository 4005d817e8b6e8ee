"""The Starlette application: its routes, middleware and error handlers, listed here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from api import (
    credentials,
    crm,
    health,
    hrm,
    manufacturing,
    metrics,
    procurement,
    settings,
    users,
    webhook_endpoints,
    webhooks,
)
from api.auth import Authentication, Authenticator
from api.middleware import BodyLimit, RequestContext
from api.openapi import document
from api.problems import EXCEPTION_HANDLERS
from erp.bootstrap import Service
from erp.identity import token_verifier
from streams.asyncapi import document as event_catalogue

ROUTES = [*health.ROUTES, *metrics.ROUTES, *settings.ROUTES, *crm.ROUTES, *manufacturing.ROUTES, *hrm.ROUTES,
          *procurement.ROUTES, *credentials.ROUTES, *users.ROUTES, *webhooks.ROUTES,
          *webhook_endpoints.ROUTES]


def create_app(service: Service, *, embedded: bool = False,
               started: Callable[[], None] | None = None) -> Starlette:
    """The app over `service`; `embedded`: its servers are the embedded ones, so without
    JWT settings the development key is trusted; `started` is called once it has started."""
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        if started is not None:
            started()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(RequestContext), Middleware(BodyLimit, service.settings.max_body_bytes),
                    Middleware(Authentication)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.authenticator = Authenticator(token_verifier(service.settings, embedded=embedded), service)
    app.state.openapi = document(ROUTES, "ERP service", "0.1.0")
    app.state.asyncapi = event_catalogue()
    return app
