"""Reading what a request carries: typed body and query, command context."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TypeVar
from uuid import UUID

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from api.auth import principal
from api.problems import BadRequest, InvalidRequest, UnsupportedMediaType
from api.responses import JSON
from erp.commands import CommandContext
from erp.eventstore import EventMetadata, Saved
from erp.idempotency import INBOUND_KEY_PREFIX, IdempotencyKey

M = TypeVar("M", bound=BaseModel)

_IF_MATCH = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')


def _json_media_type(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def body(request: Request, model: type[M]) -> M:
    """The JSON body as `model`. A body said to be something else is refused (415); one sent
    without a Content-Type is read as JSON."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _json_media_type(content_type):
        raise UnsupportedMediaType(content_type)
    raw = await request.body()
    try:
        found = model.model_validate_json(raw)
    except ValidationError as error:
        raise InvalidRequest(error, "body") from None
    if b"\\u0000" in raw:  # JSON carries a NUL character only escaped
        _refuse_nul(found.model_dump(), "body", model.__name__)
    return found


def query(request: Request, model: type[M]) -> M:
    params = dict(request.query_params)
    _refuse_nul(params, "query", model.__name__)
    try:
        return model.model_validate(params)
    except ValidationError as error:
        raise InvalidRequest(error, "query") from None


def _refuse_nul(value: object, where: str, title: str) -> None:
    """Text with a NUL character is refused like any invalid value: PostgreSQL cannot store
    it, so an event holding it would stop every read model that keeps the text."""
    found = list(_nul_locations(value, ()))
    if found:
        error = PydanticCustomError("nul_character", "must not contain a NUL character")
        raise InvalidRequest(ValidationError.from_exception_data(title, [
            InitErrorDetails(type=error, loc=loc, input="\x00") for loc in found]), where)


def _nul_locations(value: object, loc: tuple[int | str, ...]) -> Iterator[tuple[int | str, ...]]:
    if isinstance(value, str):
        if "\x00" in value:
            yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_locations(item, (*loc, key))
    elif isinstance(value, list | tuple | set):
        for i, item in enumerate(value):
            yield from _nul_locations(item, (*loc, i))


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
