"""Manufacturing routes: bills of materials (per product, in versions) and work orders."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal, TypeVar
from urllib.parse import quote
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aggregates.bom import BillOfMaterials
from api import reads
from api import requests as rq
from api.openapi import operation
from api.problems import InvalidRequest
from api.reads import PageQuery, ReadQuery
from api.requests import IDEMPOTENCY, IF_MATCH, CommandAccepted, accepted
from api.responses import JSON
from erp.commands import NotFound
from erp.commands import manufacturing as commands

M = TypeVar("M", bound=BaseModel)

BOMS = "/api/v1/manufacturing/boms"
WORK_ORDERS = "/api/v1/manufacturing/work-orders"
BOMS_PROJECTION = "boms"
WORK_ORDERS_PROJECTION = "work_orders"
COMMAND_ERRORS = (400, 404, 409, 412, 422, 503)


# Quantities are kept to 3 places (quantity per unit in a bill: 6), money to cents.
Quantity = Field(gt=0, max_digits=18, decimal_places=3)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class BomItemLine(Body):
    item_id: str = Field(min_length=1, max_length=200)
    quantity_per_unit: Decimal = Field(gt=0, max_digits=18, decimal_places=6,
                                       description="per unit of the product")
    unit: str = Field(min_length=1, max_length=32, description="unit of measure, e.g. kg")


class PublishBomVersion(Body):
    items: list[BomItemLine] = Field(min_length=1, max_length=500)
    process_loss_percent: Decimal = Field(default=Decimal(0), ge=0, lt=100, max_digits=5,
                                          decimal_places=2,
                                          description="expected loss, percent of planned")
    labour_cost_per_unit: Decimal | None = Field(
        default=None, ge=0, max_digits=18, decimal_places=2,
        description="standard labour cost, used while no actual labour is recorded",
    )
    overhead_percent: Decimal = Field(default=Decimal(0), ge=0, max_digits=7, decimal_places=2,
                                      description="of materials + labour")


class CreateWorkOrder(Body):
    product_id: str = Field(min_length=1, max_length=200)
    planned_quantity: Decimal = Quantity
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$",
                                 description="ISO 4217; default: the tenant's currency (its business terms)")


class ReleaseWorkOrder(Body):
    bom_version: int | None = Field(default=None, ge=1,
                                    description="the version to pin; default: the latest")


class RecordConsumption(Body):
    item_id: str = Field(min_length=1, max_length=200)
    quantity: Decimal = Quantity
    unit_cost: Decimal = Field(ge=0, max_digits=18, decimal_places=4,
                               description="per unit of the item, in the work order's currency")


class RecordProduction(Body):
    quantity: Decimal = Field(ge=0, max_digits=18, decimal_places=3, description="good units")
    scrap_quantity: Decimal = Field(default=Decimal(0), ge=0, max_digits=18, decimal_places=3)


class RecordLabour(Body):
    hours: Decimal = Field(gt=0, max_digits=8, decimal_places=2)
    rate: Decimal = Field(ge=0, max_digits=18, decimal_places=2, description="per hour")


class GiveReason(Body):
    reason: str | None = Field(default=None, max_length=500)


class NoFields(Body):
    """The body of a command without fields: empty or {}."""


class ProductPath(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)  # as the bodies naming a product are
    product_id: str = Field(min_length=1, max_length=200)


class BomListQuery(PageQuery):
    item_id: str | None = Field(default=None, description="only bills whose latest version uses it")


class WorkOrderListQuery(PageQuery):
    status: Literal["draft", "released", "in_progress", "stopped", "completed", "cancelled",
                    "closed"] | None = None
    product_id: str | None = None


class BomView(BaseModel):
    bom_id: UUID
    tenant_id: str
    product_id: str
    latest_version: int
    version: int
    log_position: int
    created_at: datetime
    updated_at: datetime


class BomItemView(BaseModel):
    item_id: str
    quantity_per_unit: Decimal
    unit: str


class BomVersionView(BaseModel):
    bom_version: int
    process_loss_percent: Decimal
    labour_cost_per_unit: Decimal | None
    overhead_percent: Decimal
    published_at: datetime
    items: list[BomItemView]


class BomDetail(BomView):
    versions: list[BomVersionView] = Field(description="oldest first")


class BomPage(BaseModel):
    items: list[BomView]
    next_cursor: str | None
    log_position: int = Field(description="the read model's position when it was read")


class WorkOrderView(BaseModel):
    work_order_id: UUID
    tenant_id: str
    product_id: str
    status: str
    planned_quantity: Decimal
    produced_quantity: Decimal
    scrap_quantity: Decimal
    production_yield: Decimal = Field(description="produced / planned, 4 places")
    currency: str
    bom_id: UUID | None
    bom_version: int | None
    process_loss_percent: Decimal | None
    labour_cost_per_unit: Decimal | None
    overhead_percent: Decimal | None
    labour_hours: Decimal
    materials_cost: Decimal
    labour_cost: Decimal
    overhead_cost: Decimal
    total_cost: Decimal
    unit_cost: Decimal | None = Field(description="total cost per produced unit; final on completion")
    stop_reason: str | None
    cancel_reason: str | None
    version: int
    log_position: int
    created_at: datetime
    released_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    closed_at: datetime | None
    updated_at: datetime


class MaterialView(BaseModel):
    item_id: str
    unit: str
    quantity_per_unit: Decimal
    required_quantity: Decimal
    consumed_quantity: Decimal
    remaining_quantity: Decimal = Field(description="required less consumed, not below zero")
    consumed_cost: Decimal


class WorkOrderDetail(WorkOrderView):
    materials: list[MaterialView] = Field(description="the pinned version's items, in its order")


class WorkOrderPage(BaseModel):
    items: list[WorkOrderView]
    next_cursor: str | None
    log_position: int = Field(description="the read model's position when it was read")


_BOM_COLUMNS = ", ".join(BomView.model_fields)
_WORK_ORDER_COLUMNS = ", ".join(WorkOrderView.model_fields)


def _product_id(request: Request) -> str:
    try:
        return ProductPath.model_validate(request.path_params).product_id
    except ValidationError as error:
        raise InvalidRequest(error, "path") from None


def _work_order_id(request: Request) -> UUID:
    work_order_id: UUID = request.path_params["work_order_id"]
    return work_order_id


async def _optional_body(request: Request, model: type[M]) -> M:
    """A body whose fields are all optional may also be left empty."""
    if not (await request.body()).strip():
        return model()
    return await rq.body(request, model)


# Bills of materials.


@operation(scope="manufacturing:write",
           summary="Publish the next version of a product's bill of materials (creates the bill "
                   "on first use)", body=PublishBomVersion, response=CommandAccepted, status=201,
           errors=(400, 409, 412, 422, 503), headers=(IF_MATCH, IDEMPOTENCY))
async def publish_bom_version(request: Request) -> Response:
    product_id = _product_id(request)
    cmd = await rq.body(request, PublishBomVersion)
    saved = await commands.publish_bom_version(
        reads.service(request).runner, await rq.command_context(request), product_id,
        items=[(i.item_id, i.quantity_per_unit, i.unit) for i in cmd.items],
        process_loss_percent=cmd.process_loss_percent,
        labour_cost_per_unit=cmd.labour_cost_per_unit, overhead_percent=cmd.overhead_percent,
    )
    # A new version is created; the bill, with all its versions, lives at the product's URL.
    response = accepted(saved)
    response.status_code = 201
    response.headers["Location"] = f"{BOMS}/{quote(product_id, safe='')}"
    return response


@operation(scope="manufacturing:read",
           summary="List bills of materials, newest first", query=BomListQuery, response=BomPage,
           errors=(400, 422, 503))
async def list_boms(request: Request) -> Response:
    params = rq.query(request, BomListQuery)
    position = await reads.caught_up(request, BOMS_PROJECTION, params)
    where, args = reads.filters(request, params, ())
    if params.item_id is not None:
        where.append("EXISTS (SELECT 1 FROM bom_version_items i WHERE i.bom_id = boms.bom_id "
                     "AND i.bom_version = boms.latest_version AND i.item_id = %s)")
        args.append(params.item_id)
    rows, cursor = await reads.page(request, params, table="boms", columns=_BOM_COLUMNS,
                                    where=where, args=args)
    return JSON({
        "items": [{k: r[k] for k in BomView.model_fields} for r in rows],
        "next_cursor": cursor,
        "log_position": position,
    })


@operation(scope="manufacturing:read",
           summary="A product's bill of materials with every published version",
           query=ReadQuery, response=BomDetail, errors=(400, 404, 422, 503))
async def get_bom(request: Request) -> Response:
    product_id = _product_id(request)
    await reads.caught_up(request, BOMS_PROJECTION, rq.query(request, ReadQuery))
    tenant = rq.tenant(request)
    bom_id = BillOfMaterials.create_id(tenant, product_id)
    found, versions, items = await reads.rows_of_each(
        request,
        (f"SELECT {_BOM_COLUMNS} FROM boms WHERE bom_id = %s AND tenant_id = %s", (bom_id, tenant)),
        ("SELECT bom_version, process_loss_percent, labour_cost_per_unit, overhead_percent, "
         "published_at FROM bom_versions WHERE bom_id = %s AND tenant_id = %s ORDER BY bom_version",
         (bom_id, tenant)),
        ("SELECT bom_version, item_id, quantity_per_unit, unit FROM bom_version_items "
         "WHERE bom_id = %s AND tenant_id = %s ORDER BY bom_version, line", (bom_id, tenant)),
    )
    if not found:
        raise NotFound("bill of materials", bom_id)
    for version in versions:
        version["items"] = [{k: i[k] for k in BomItemView.model_fields}
                            for i in items if i["bom_version"] == version["bom_version"]]
    return JSON({**found[0], "versions": versions}, headers={"ETag": f'"{found[0]["version"]}"'})


# Work orders.


@operation(scope="manufacturing:write",
           summary="Create a draft work order for a planned quantity of a product",
           body=CreateWorkOrder, response=CommandAccepted, status=201, errors=(400, 409, 422, 503),
           headers=(IDEMPOTENCY,))
async def create_work_order(request: Request) -> Response:
    cmd = await rq.body(request, CreateWorkOrder)
    saved = await commands.create_work_order(
        reads.service(request).runner, await rq.command_context(request), product_id=cmd.product_id,
        planned_quantity=cmd.planned_quantity, currency=cmd.currency,
    )
    return accepted(saved, created_at=WORK_ORDERS)


@operation(scope="manufacturing:write",
           summary="Release a draft: pin a bill-of-materials version and explode its materials",
           body=ReleaseWorkOrder, response=CommandAccepted, errors=COMMAND_ERRORS,
           headers=(IF_MATCH, IDEMPOTENCY))
async def release(request: Request) -> Response:
    cmd = await _optional_body(request, ReleaseWorkOrder)
    saved = await commands.release(reads.service(request).runner, await rq.command_context(request),
                                   _work_order_id(request), cmd.bom_version)
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Start a released work order (publishes erp.work_order.started with the "
                   "materials to consume)", response=CommandAccepted, errors=COMMAND_ERRORS,
           headers=(IF_MATCH, IDEMPOTENCY))
async def start(request: Request) -> Response:
    await _optional_body(request, NoFields)
    saved = await commands.start(reads.service(request).runner, await rq.command_context(request),
                                 _work_order_id(request))
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Record material consumed (within the tenant's over-consumption allowance)",
           body=RecordConsumption, response=CommandAccepted, errors=COMMAND_ERRORS,
           headers=(IF_MATCH, IDEMPOTENCY))
async def consume(request: Request) -> Response:
    cmd = await rq.body(request, RecordConsumption)
    saved = await commands.record_consumption(
        reads.service(request).runner, await rq.command_context(request), _work_order_id(request),
        item_id=cmd.item_id, quantity=cmd.quantity, unit_cost=cmd.unit_cost,
    )
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Record good units produced and scrap (within the over-production allowance)",
           body=RecordProduction, response=CommandAccepted, errors=COMMAND_ERRORS,
           headers=(IF_MATCH, IDEMPOTENCY))
async def produce(request: Request) -> Response:
    cmd = await rq.body(request, RecordProduction)
    saved = await commands.record_production(
        reads.service(request).runner, await rq.command_context(request), _work_order_id(request),
        quantity=cmd.quantity, scrap_quantity=cmd.scrap_quantity,
    )
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Record labour hours at an hourly rate", body=RecordLabour,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def record_labour(request: Request) -> Response:
    cmd = await rq.body(request, RecordLabour)
    saved = await commands.record_labour(
        reads.service(request).runner, await rq.command_context(request), _work_order_id(request),
        hours=cmd.hours, rate=cmd.rate,
    )
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Stop a work order in progress", body=GiveReason, response=CommandAccepted,
           errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def stop(request: Request) -> Response:
    cmd = await _optional_body(request, GiveReason)
    saved = await commands.stop(reads.service(request).runner, await rq.command_context(request),
                                _work_order_id(request), cmd.reason)
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Resume a stopped work order", response=CommandAccepted, errors=COMMAND_ERRORS,
           headers=(IF_MATCH, IDEMPOTENCY))
async def resume(request: Request) -> Response:
    await _optional_body(request, NoFields)
    saved = await commands.resume(reads.service(request).runner, await rq.command_context(request),
                                  _work_order_id(request))
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Complete a work order (publishes erp.work_order.completed with produced and "
                   "scrap quantities and costs)", response=CommandAccepted, errors=COMMAND_ERRORS,
           headers=(IF_MATCH, IDEMPOTENCY))
async def complete(request: Request) -> Response:
    await _optional_body(request, NoFields)
    saved = await commands.complete(reads.service(request).runner, await rq.command_context(request),
                                    _work_order_id(request))
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Cancel a work order for which nothing was consumed or produced yet", body=GiveReason,
           response=CommandAccepted, errors=COMMAND_ERRORS, headers=(IF_MATCH, IDEMPOTENCY))
async def cancel(request: Request) -> Response:
    cmd = await _optional_body(request, GiveReason)
    saved = await commands.cancel(reads.service(request).runner, await rq.command_context(request),
                                  _work_order_id(request), cmd.reason)
    return accepted(saved)


@operation(scope="manufacturing:write",
           summary="Close a completed work order, or close one in progress or stopped short (completed "
                   "first with what was produced: erp.work_order.completed, then .closed)",
           response=CommandAccepted, errors=COMMAND_ERRORS,
           headers=(IF_MATCH, IDEMPOTENCY))
async def close(request: Request) -> Response:
    await _optional_body(request, NoFields)
    saved = await commands.close(reads.service(request).runner, await rq.command_context(request),
                                 _work_order_id(request))
    return accepted(saved)


@operation(scope="manufacturing:read",
           summary="List work orders, newest first", query=WorkOrderListQuery,
           response=WorkOrderPage, errors=(400, 422, 503))
async def list_work_orders(request: Request) -> Response:
    params = rq.query(request, WorkOrderListQuery)
    position = await reads.caught_up(request, WORK_ORDERS_PROJECTION, params)
    where, args = reads.filters(request, params, ("status", "product_id"))
    rows, cursor = await reads.page(request, params, table="work_orders",
                                    columns=_WORK_ORDER_COLUMNS, where=where, args=args)
    return JSON({
        "items": [{k: r[k] for k in WorkOrderView.model_fields} for r in rows],
        "next_cursor": cursor,
        "log_position": position,
    })


@operation(scope="manufacturing:read",
           summary="One work order with required vs consumed materials, yield and costs",
           query=ReadQuery, response=WorkOrderDetail, errors=(400, 404, 422, 503))
async def get_work_order(request: Request) -> Response:
    await reads.caught_up(request, WORK_ORDERS_PROJECTION, rq.query(request, ReadQuery))
    work_order_id, tenant = _work_order_id(request), rq.tenant(request)
    found, materials = await reads.rows_of_each(
        request,
        (f"SELECT {_WORK_ORDER_COLUMNS} FROM work_orders WHERE work_order_id = %s AND tenant_id = %s",
         (work_order_id, tenant)),
        ("SELECT item_id, unit, quantity_per_unit, required_quantity, consumed_quantity, "
         "greatest(required_quantity - consumed_quantity, 0) AS remaining_quantity, consumed_cost "
         "FROM work_order_materials WHERE work_order_id = %s AND tenant_id = %s ORDER BY line",
         (work_order_id, tenant)),
    )
    if not found:
        raise NotFound("work order", work_order_id)
    return JSON({**found[0], "materials": materials}, headers={"ETag": f'"{found[0]["version"]}"'})


_ONE_BOM = BOMS + "/{product_id}"
_ONE = WORK_ORDERS + "/{work_order_id:uuid}"
ROUTES = [
    Route(BOMS, list_boms, methods=["GET"]),
    Route(_ONE_BOM, get_bom, methods=["GET"]),
    Route(_ONE_BOM + "/versions", publish_bom_version, methods=["POST"]),
    Route(WORK_ORDERS, create_work_order, methods=["POST"]),
    Route(WORK_ORDERS, list_work_orders, methods=["GET"]),
    Route(_ONE, get_work_order, methods=["GET"]),
    Route(_ONE + "/release", release, methods=["POST"]),
    Route(_ONE + "/start", start, methods=["POST"]),
    Route(_ONE + "/consume", consume, methods=["POST"]),
    Route(_ONE + "/produce", produce, methods=["POST"]),
    Route(_ONE + "/labour", record_labour, methods=["POST"]),
    Route(_ONE + "/stop", stop, methods=["POST"]),
    Route(_ONE + "/resume", resume, methods=["POST"]),
    Route(_ONE + "/complete", complete, methods=["POST"]),
    Route(_ONE + "/cancel", cancel, methods=["POST"]),
    Route(_ONE + "/close", close, methods=["POST"]),
]
