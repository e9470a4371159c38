"""The admin API's OpenAPI 3.1 document, made from the route table (``swell.web.admin.ROUTES``)
that makes the routes: an endpoint cannot be served undocumented, nor documented unserved.

``check`` holds a request's body to its schema here too (the few keywords the bodies use), so
what the document says a body must be is what the server accepts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from swell.web.admin_base import Op
from swell.web.admin_schemas import SCHEMAS, ref

__all__ = ["check", "document", "inline"]

_REASONS = {200: "OK", 400: "A bad parameter or body", 401: "No bearer token, or not this one",
            404: "No such function, queue or saga", 409: "The state refuses the change"}


def document(ops: Sequence[Op], *, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        responses: dict[str, Any] = {"200": {
            "description": _REASONS[200],
            "content": {"application/json": {"schema": op.response}}}}
        checked = op.body is not None or any(  # (a 400 is only for what can be wrong)
            p.where == "query" and p.schema.get("type") != "string" for p in op.params)
        codes = {*op.errors} | ({400} if checked else set()) | ({401} if op.changes else set())
        for code in sorted(codes):
            responses[str(code)] = {"description": _REASONS[code],
                                    "content": {"application/json": {"schema": ref("Error")}}}
        operation: dict[str, Any] = {
            "operationId": op.op_id, "summary": op.summary, "tags": [op.tag],
            "parameters": [{"name": p.name, "in": p.where, "required": p.required,
                            "description": p.doc, "schema": p.schema} for p in op.params],
            "responses": responses,
            "security": [{"bearer": []}] if op.changes else [],
        }
        if op.body is not None:
            operation["requestBody"] = {
                "required": bool(_resolve(op.body).get("required")),
                "content": {"application/json": {"schema": op.body}}}
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "swell admin API", "version": version,
                 "description": "Reads need no token (the server binds 127.0.0.1 unless told); "
                                "every POST needs `Authorization: Bearer <token>` "
                                "(SWELL_ADMIN_TOKEN, or the one `swell run` prints at start)."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    name = schema.get("$ref")
    return SCHEMAS[name.rsplit("/", 1)[-1]] if isinstance(name, str) else schema


def inline(schema: Any) -> Any:
    """``schema`` with every ``$ref`` to the components replaced by what it names."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return inline(_resolve(schema))
        return {k: inline(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [inline(v) for v in schema]
    return schema


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool,
                          "null": type(None), "number": (int, float), "integer": int}


def check(schema: dict[str, Any], value: Any, where: str = "body") -> str | None:
    """What is wrong with ``value`` for ``schema`` (``None``: nothing), for the keywords the
    request bodies use: type, required, properties, items, min/maxLength, maxItems, minimum."""
    s = _resolve(schema)
    types = s.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if (isinstance(value, bool) and "boolean" not in names) or not any(
                isinstance(value, _TYPES[t]) for t in names):
            return f"{where} must be {' or '.join(names)}"
    if isinstance(value, dict):
        return _object(s, value, where)
    if isinstance(value, list):
        if len(value) > s.get("maxItems", len(value)):
            return f"{where} takes at most {s['maxItems']} items"
        return next((why for i, item in enumerate(value) if "items" in s
                     and (why := check(s["items"], item, f"{where}[{i}]"))), None)
    if isinstance(value, str):
        if len(value.strip()) < s.get("minLength", 0):
            return f"{where} must not be empty"
        if len(value) > s.get("maxLength", len(value)):
            return f"{where} takes at most {s['maxLength']} characters"
    if (isinstance(value, int | float) and not isinstance(value, bool)
            and not value >= s.get("minimum", -math.inf)):
        return f"{where} must be at least {s.get('minimum', '-inf')}"
    return None


def _object(s: dict[str, Any], value: dict[str, Any], where: str) -> str | None:
    for key in s.get("required", ()):
        if key not in value:
            return f"{where} needs {key!r}"
    return next((why for key, sub in s.get("properties", {}).items()
                 if key in value and (why := check(sub, value[key], f"{where}.{key}"))), None)
