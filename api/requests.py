"""Reading what a request carries: typed body and query, command context."""

from __future__ import annotations

import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from api.problems import BadRequest, InvalidRequest
from erp.eventstore import EventMetadata
from erp.handlers import CommandContext

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


def tenant(request: Request) -> str:
    tenant_id: str = request.state.tenant_id
    return tenant_id


def command_context(request: Request) -> CommandContext:
    expected: int | None = None
    if_match = request.headers.get("if-match")
    if if_match is not None:
        found = _IF_MATCH.match(if_match.strip())
        if not found:
            raise BadRequest('If-Match must be the version the change is based on, e.g. "3"',
                             field="header.If-Match")
        expected = int(found.group(1))
    return CommandContext(
        tenant_id=tenant(request),
        metadata=EventMetadata(
            tenant_id=tenant(request),
            correlation_id=request.state.correlation_id,
            causation_id=request.state.request_id,
        ),
        expected_version=expected,
    )
