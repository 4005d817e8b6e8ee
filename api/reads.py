"""What every query route shares: the service, waiting for a read model, fetching rows."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from api.problems import BadRequest
from api.requests import tenant
from erp.bootstrap import Service
from projections.positions import NotCaughtUp
from projections.tenancy import tenant_queries


class ReadQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_position: int | None = Field(
        default=None, ge=0, description="wait until the read model has applied this log position"
    )
    timeout: float = Field(default=2.0, gt=0, le=30, description="seconds to wait at most")


class PageQuery(ReadQuery):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")


def service(request: Request) -> Service:
    running: Service = request.app.state.service
    return running


async def caught_up(request: Request, projection: str, params: ReadQuery) -> int:
    """Waits (bounded) until `projection` has applied `params.min_position`; answers its position."""
    running = service(request)
    if params.min_position is not None:
        timeout = min(params.timeout, running.settings.read_wait_max_seconds)
        try:
            await running.positions.wait(projection, params.min_position, timeout)
        except NotCaughtUp:
            head = await asyncio.to_thread(running.store.recorder.max_notification_id) or 0
            if params.min_position > head:  # no command answered it: waiting again cannot help
                raise BadRequest(f"min_position {params.min_position} is beyond the event store's last "
                                 f"position ({head})", field="query.min_position") from None
            raise
    return running.positions.position(projection)


async def rows(request: Request, sql: str, args: Any) -> list[dict[str, Any]]:
    """Rows of a read-model query; the database shows it only the request's tenant's rows."""
    (found,) = await rows_of_each(request, (sql, args))
    return found


async def rows_of_each(request: Request, *queries: tuple[str, Any]) -> list[list[dict[str, Any]]]:
    """The rows of each query (sql, args), all asked in one round trip, as `rows`."""
    results = await tenant_queries(service(request).read_pool, tenant(request), list(queries))
    return [[dict(zip(names, row, strict=True)) for row in found] for names, found in results]


def filters(request: Request, params: BaseModel, names: tuple[str, ...]) -> tuple[list[str], list[Any]]:
    """WHERE clauses and arguments: the request's tenant, and each named query parameter given."""
    where, args = ["tenant_id = %s"], [tenant(request)]
    for name in names:
        value = getattr(params, name)
        if value is not None:
            where.append(f"{name} = %s")
            args.append(value)
    return where, args


async def page(
    request: Request, params: PageQuery, *, table: str, columns: str, where: list[str],
    args: list[Any], order_by: str = "created_position",
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of rows, newest first by the log position (`order_by`) of the event that
    created each row, and the cursor of the next page."""
    if params.cursor is not None:
        # ASCII digits ("²".isdigit(), yet no int) of a bigint
        if not (params.cursor.isascii() and params.cursor.isdigit() and len(params.cursor) <= 19):
            raise BadRequest("cursor must be a next_cursor from a previous page", field="query.cursor")
        where = [*where, f"{order_by} < %s"]
        args = [*args, int(params.cursor)]
    found = await rows(
        request,
        f"SELECT {columns}, {order_by} FROM {table} WHERE {' AND '.join(where)} "
        f"ORDER BY {order_by} DESC LIMIT %s",
        [*args, params.limit + 1],
    )
    more = len(found) > params.limit
    found = found[: params.limit]
    return found, str(found[-1][order_by]) if more else None
