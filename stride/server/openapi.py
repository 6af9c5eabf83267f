"""The OpenAPI 3.1 document, generated from the `Operation` declarations and their models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from stride.server.models import ErrorBody
from stride.server.routing import Operation

REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    200: "OK", 400: "The request is invalid; `error` says how.",
    401: "Missing or wrong credentials.", 403: "A cross-site request from a browser.",
    404: "Not found.", 413: "The body is too large.", 503: "The store is unavailable.",
}


def openapi_document(operations: Sequence[Operation], *, title: str, version: str,
                     secured: bool) -> dict[str, Any]:
    """The document for `operations`; `secured=False` (dev mode) documents no auth."""
    schemas, defs = _schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas, defs, secured)
    components: dict[str, Any] = {"schemas": defs}
    if secured:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
            "session": {"type": "apiKey", "in": "cookie", "name": "stride_session"},
        }
    return {"openapi": "3.1.0", "info": {"title": title, "version": version},
            "paths": paths, "components": components}


def _models(operations: Sequence[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    pairs: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for op in operations:
        for model, mode in ((op.query, "validation"), (op.body, "validation"),
                            (op.response, "serialization")):
            if model is not None:
                pairs[(model, mode)] = None  # type: ignore[index]
    return list(pairs)


def _schemas(operations: Sequence[Operation]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    keyed, top = models_json_schema(_models(operations), ref_template=REF)
    return dict(keyed), dict(top.get("$defs", {}))


def _operation(op: Operation, schemas: dict[Any, dict[str, Any]], defs: dict[str, Any],
               secured: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.handler.__name__.strip("_"), "summary": op.summary, "tags": [op.tag],
        "parameters": _parameters(op, schemas, defs), "responses": _responses(op, schemas),
    }
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": schemas[(op.body, "validation")]}}}
    if op.auth == "api" and secured:
        doc["security"] = [{"bearer": []}, {"session": []}]
    return doc


def _parameters(op: Operation, schemas: dict[Any, dict[str, Any]],
                defs: dict[str, Any]) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}} for name in op.path_params]
    if op.query is None:
        return params
    model = op.query
    schema = schemas[(model, "validation")]
    target = defs[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
    required = set(target.get("required", []))
    for name, prop in target.get("properties", {}).items():
        description = model.model_fields[name].description
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _responses(op: Operation, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": _STATUS_TEXT[200]}
    if op.response is not None:
        ok["content"] = {op.media_type: {"schema": schemas[(op.response, "serialization")]}}
    else:
        ok["content"] = {op.media_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {"200": ok}
    for status in op.also:
        responses[str(status)] = {**ok, "description": _STATUS_TEXT[status]}
    error_schema = schemas[(ErrorBody, "serialization")]
    for status in op.statuses:
        responses[str(status)] = {"description": _STATUS_TEXT[status],
                                  "content": {"application/json": {"schema": error_schema}}}
    return responses
