"""The OpenAPI document, generated from the routes' request and response models."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from api.auth import requiring

F = TypeVar("F", bound=Callable[..., Any])

_CONVERTOR = re.compile(r"{(\w+):\w+}")
_PATH_SCHEMAS = {"UUIDConvertor": {"type": "string", "format": "uuid"},
                 "IntegerConvertor": {"type": "integer"}}
_PROBLEM = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "rule": {"type": "string", "description": "the business rule that refused it"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "required": ["type", "title", "status", "detail"],
}


@dataclass(frozen=True)
class Operation:
    summary: str
    response: type[BaseModel] | None = None
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # (name, description) of request headers
    scope: str | None = None  # the permission the caller needs; None only for public routes


def operation(**spec: Any) -> Callable[[F], F]:
    """Describes an endpoint for the OpenAPI document and enforces its `scope`."""

    def describe(endpoint: F) -> F:
        described = Operation(**spec)
        guarded: Any = endpoint if described.scope is None else requiring(described.scope, endpoint)
        guarded.openapi = described
        return guarded  # type: ignore[no-any-return]

    return describe


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document(routes: Sequence[BaseRoute], title: str, version: str) -> dict[str, Any]:
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        spec: Operation | None = getattr(route.endpoint, "openapi", None)
        if spec is None:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op: dict[str, Any] = {"summary": spec.summary, "operationId": route.name,
                                  "parameters": [], "responses": {}}
            for name, convertor in route.param_convertors.items():
                schema = _PATH_SCHEMAS.get(type(convertor).__name__, {"type": "string"})
                op["parameters"].append({"name": name, "in": "path", "required": True,
                                         "schema": schema})
            for header, description in spec.headers:
                op["parameters"].append({"name": header, "in": "header", "required": False,
                                         "description": description,
                                         "schema": {"type": "string"}})
            if spec.scope is not None:
                op["security"] = [{"bearer": [spec.scope]}, {"apiKey": [spec.scope]}]
                op["description"] = f"Requires the `{spec.scope}` permission."
                op["parameters"].append({
                    "name": "X-Tenant-ID", "in": "header", "required": False,
                    "description": "with a platform API key: the tenant to act for",
                    "schema": {"type": "string"}})
            if spec.query is not None:
                for name, field in spec.query.model_fields.items():
                    schema = spec.query.model_json_schema()["properties"][name]
                    op["parameters"].append({"name": name, "in": "query",
                                             "required": field.is_required(),
                                             "description": field.description or "",
                                             "schema": schema})
            if spec.body is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _schema_ref(spec.body, components)}}}
            ok: dict[str, Any] = {"description": "OK"}
            if spec.response is not None:
                ok["content"] = {"application/json": {
                    "schema": _schema_ref(spec.response, components)}}
            op["responses"][str(spec.status)] = ok
            for status in (*spec.errors, *((401, 403) if spec.scope else ()),
                           *((413, 415) if spec.body is not None else ())):
                op["responses"][str(status)] = {
                    "description": "problem", "content": {"application/problem+json": {
                        "schema": _PROBLEM}}}
            paths.setdefault(_CONVERTOR.sub(r"{\1}", route.path), {})[method.lower()] = op
    return {"openapi": "3.1.0", "info": {"title": title, "version": version},
            "paths": paths, "components": {"schemas": components, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "issued by the auth service; tenant_id and roles claims"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "service-to-service key (erp api-keys create)"}}}}
