"""Reading what a request carries: typed body and query, command context."""

from __future__ import annotations

import re
from typing import TypeVar
from uuid import UUID

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api.auth import principal
from api.problems import BadRequest, InvalidRequest
from api.responses import JSON
from erp.commands import CommandContext
from erp.eventstore import EventMetadata, Saved
from erp.idempotency import INBOUND_KEY_PREFIX, IdempotencyKey

M = TypeVar("M", bound=BaseModel)

_IF_MATCH = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')


async def body(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as error:
        raise InvalidRequest(error, "body") from None


def query(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as error:
        raise InvalidRequest(error, "query") from None


class CommandAccepted(BaseModel):
    id: UUID = Field(description="the aggregate the command changed or created")
    version: int = Field(description="its version after the command (the ETag)")
    log_position: int = Field(description="pass as min_position to read your write")


def accepted(saved: Saved, *, created_at: str | None = None) -> Response:
    """The answer to every command: 200, or 201 with Location for a created aggregate."""
    headers = {"ETag": f'"{saved.version}"'}
    if created_at is not None:
        headers["Location"] = f"{created_at}/{saved.aggregate_id}"
    return JSON(CommandAccepted(id=saved.aggregate_id, version=saved.version,
                                log_position=saved.position),
                status_code=201 if created_at else 200, headers=headers)


IDEMPOTENCY = ("Idempotency-Key", "repeat a command safely: the same key and body answer the "
               "first result; another body with it is refused (422)")
IF_MATCH = ("If-Match", 'the version the change is based on, e.g. "3": no retry on a clash (412)')


def tenant(request: Request) -> str:
    tenant_id: str = request.state.tenant_id
    return tenant_id


async def command_context(request: Request) -> CommandContext:
    expected: int | None = None
    if_match = request.headers.get("if-match")
    if if_match is not None:
        found = _IF_MATCH.match(if_match.strip())
        if not found:
            raise BadRequest('If-Match must be the version the change is based on, e.g. "3"',
                             field="header.If-Match")
        expected = int(found.group(1))
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters", field="header.Idempotency-Key")
    if key is not None and key.startswith(INBOUND_KEY_PREFIX):
        raise BadRequest(f"Idempotency-Key must not start with {INBOUND_KEY_PREFIX!r} (kept for "
                         "events from other services)", field="header.Idempotency-Key")
    return CommandContext(
        idempotency=None if key is None else IdempotencyKey.of(
            key, request.method, request.url.path, await request.body()),
        tenant_id=tenant(request),
        metadata=EventMetadata(
            tenant_id=tenant(request),
            correlation_id=request.state.correlation_id,
            causation_id=request.state.request_id,
            actor=principal(request).subject,
        ),
        expected_version=expected,
    )
