"""Every error the API answers, as RFC 9457 problem+json, mapped in this one place."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import structlog
from eventsourcing.persistence import InterfaceError, OperationalError
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from aggregates.errors import DomainError, InvalidValue
from api.responses import ProblemJSON
from erp.commands import NotFound, StaleVersion
from erp.eventstore import CommitterStopped, VersionConflict
from erp.idempotency import IdempotencyKeyReused
from erp.identity import Forbidden
from projections.positions import NotCaughtUp

log = structlog.get_logger("erp.api")


class InvalidRequest(Exception):
    """A body, query or path that failed its model; `where` says which."""

    def __init__(self, error: ValidationError, where: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.where = where


class BadRequest(Exception):
    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


class UnsupportedMediaType(Exception):
    def __init__(self, given: str) -> None:
        super().__init__(f"the body must be JSON (Content-Type: application/json), not {given!r}")


def _slug(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def problem(
    status: int, title: str, detail: str, *, kind: str = "about:blank",
    headers: dict[str, str] | None = None, **extra: Any,
) -> Response:
    body = {"type": kind, "title": title, "status": status, "detail": detail, **extra}
    return ProblemJSON(body, status_code=status, headers=headers)


def _field(loc: tuple[int | str, ...], prefix: str) -> str:
    path = ".".join(str(part) for part in loc)
    return f"{prefix}.{path}" if prefix and path else (path or prefix)


def validation_problem(error: ValidationError, where: str) -> Response:
    """422 naming each field: `where` is "body", "query" or "path"."""
    errors = [
        {"field": _field(e["loc"], where) if e["type"] != "json_invalid" else where,
         "message": e["msg"]}
        for e in error.errors(include_url=False)
    ]
    names = ", ".join(sorted({e["field"] for e in errors}))
    return problem(422, "Invalid request", f"invalid {names}", kind="urn:erp:problem:validation",
                   errors=errors)


async def on_invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    return validation_problem(exc.error, exc.where)


async def on_bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    if exc.field is None:
        return problem(400, "Bad request", exc.detail)
    return problem(400, "Bad request", exc.detail,
                   errors=[{"field": exc.field, "message": exc.detail}])


async def on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    status = 422 if isinstance(exc, InvalidValue) else 409
    extra: dict[str, Any] = {"rule": exc.rule}
    if exc.field:
        extra["errors"] = [{"field": f"body.{exc.field}", "message": exc.message}]
    return problem(status, "Refused by a business rule", exc.message,
                   kind=f"urn:erp:problem:{_slug(exc.rule)}", **extra)


async def on_key_reused(request: Request, exc: Exception) -> Response:
    return problem(422, "Idempotency key reused", str(exc), kind="urn:erp:problem:idempotency-key-reused",
                   errors=[{"field": "header.Idempotency-Key", "message": str(exc)}])


async def on_too_large(request: Request, exc: Exception) -> Response:
    return problem(413, "Content too large", str(exc))


async def on_unsupported_media_type(request: Request, exc: Exception) -> Response:
    return problem(415, "Unsupported media type", str(exc),
                   errors=[{"field": "header.Content-Type", "message": str(exc)}])


async def on_forbidden(request: Request, exc: Exception) -> Response:
    return problem(403, "Forbidden", str(exc))


async def on_not_found(request: Request, exc: Exception) -> Response:
    return problem(404, "Not found", str(exc))


async def on_version_conflict(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StaleVersion):
        return problem(412, "Precondition failed", str(exc), kind="urn:erp:problem:stale-version")
    return problem(409, "Conflict", f"{exc}; it was retried and still clashed, try again",
                   kind="urn:erp:problem:version-conflict")


async def on_not_caught_up(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotCaughtUp)
    return problem(503, "Read model behind", str(exc), kind="urn:erp:problem:read-model-behind",
                   headers={"Retry-After": "1"}, reached_position=exc.reached)


async def on_database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", error=str(exc))
    return problem(503, "Service unavailable", "the database is unavailable; try again shortly",
                   headers={"Retry-After": "2"})


async def on_stopping(request: Request, exc: Exception) -> Response:
    return problem(503, "Service unavailable", str(exc), headers={"Retry-After": "1"})


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the methods of the first route of the path only
        allowed = {m for route in request.app.routes if isinstance(route, Route)
                   and route.matches(request.scope)[0] is Match.PARTIAL for m in route.methods or ()}
        headers["Allow"] = ", ".join(sorted(allowed))
    return problem(exc.status_code, exc.detail, f"{request.method} {request.url.path}: {exc.detail}",
                   headers=headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return problem(500, "Internal error", "an unexpected error happened; it has been logged")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    InvalidRequest: on_invalid_request,
    BadRequest: on_bad_request,
    DomainError: on_domain_error,
    NotFound: on_not_found,
    Forbidden: on_forbidden,
    BodyTooLarge: on_too_large,
    UnsupportedMediaType: on_unsupported_media_type,
    IdempotencyKeyReused: on_key_reused,
    VersionConflict: on_version_conflict,
    NotCaughtUp: on_not_caught_up,
    OperationalError: on_database_unavailable,
    InterfaceError: on_database_unavailable,
    psycopg.OperationalError: on_database_unavailable,
    PoolTimeout: on_database_unavailable,
    CommitterStopped: on_stopping,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
