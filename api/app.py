"""The Starlette application: its routes, middleware and error handlers, listed here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from api import crm, health, hrm, manufacturing, procurement, settings
from api.middleware import RequestContext
from api.openapi import document
from api.problems import EXCEPTION_HANDLERS
from erp.bootstrap import Service

ROUTES = [*health.ROUTES, *settings.ROUTES, *crm.ROUTES, *manufacturing.ROUTES, *hrm.ROUTES,
          *procurement.ROUTES]


def create_app(service: Service) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(RequestContext)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.openapi = document(ROUTES, "ERP service", "0.1.0")
    return app
