"""The OpenAPI 3.1 document, generated from the route table and the msgspec Structs.

Nothing here is written by hand that the code already knows: paths and methods come from
:data:`~connection_manager.api.API_ROUTES`, parameter and body schemas from the request
Structs the views validate with, response schemas from the response Structs, and the
component schemas from ``msgspec.json.schema_components``. A new route or field shows up
in the document without anyone remembering to update it.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import msgspec

from connection_manager import schemas as s
from connection_manager.api import API_ROUTES, PAGE_ROUTES, RESERVED_CONNECTION_IDS, PageRoute, Route
from connection_manager.operations import OPERATIONS

REF = "#/components/schemas/{name}"
VERSION = "0.1.0"

_ERRORS = {
    400: "Invalid request: malformed JSON, a missing, unknown or ill-typed parameter, an unknown status.",
    401: "No `Authorization: Bearer <admin token>` header, and the server requires one.",
    403: "The admin token is wrong, or the request carries no IAM identity behind API Gateway.",
    404: "No such connection, or no such path.",
    405: "The path exists but not with this method.",
    413: "A request body larger than 64 KiB.",
    415: "A request body that is not application/json.",
    500: "A bug; the details are in the server's logs only.",
    503: "DynamoDB is unreachable, throttling or failing after retries.",
}

_DESCRIPTION = """\
Query, correct and sweep the WebSocket connection records kept in DynamoDB.

Every body is JSON and is the same as the `body` of the matching raw Lambda action, with
the same status code. Every error is `{"error": "<Code>", "message": "<what was wrong>"}`.

**Access.** Deployed behind API Gateway, the API is IAM-authorized: sign requests with
AWS Signature Version 4 (`execute-api`); the caller's IAM ARN is recorded as the principal.
Run elsewhere, the server listens on loopback by default; when `ADMIN_TOKEN` is set, every
API request but `/health`, reads included, needs `Authorization: Bearer <token>` (401 when
missing, 403 when wrong); the pages (dashboard, docs, this document) hold no data and stay
open. Every state-changing request writes one audit log line: principal, action, target
and outcome.
"""

_SECURITY_SCHEMES = {
    "iamSigV4": {
        "type": "apiKey",
        "name": "Authorization",
        "in": "header",
        "description": "Deployed: API Gateway IAM authorization. Sign with AWS SigV4 for the `execute-api` "
        "service; API Gateway checks the signature before the function runs.",
        "x-amazon-apigateway-authtype": "awsSigv4",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "Local: the value of `ADMIN_TOKEN`, required on every API request but `/health` "
        "when the setting is present.",
    },
}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``T | None = None`` fields are optional, and omitted rather than null, in query strings and responses."""
    branches = schema.get("anyOf")
    if not branches:
        return schema
    kept = [branch for branch in branches if branch != {"type": "null"}]
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    if len(kept) == 1:
        return {**rest, **kept[0]}
    return {**rest, "anyOf": kept}


def _components(routes: Iterable[Route]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Component schemas of every body and response, plus each action schema's properties."""
    structs: list[type[msgspec.Struct]] = [s.ErrorBody]
    for route in routes:
        for struct in (route.body, route.response):
            if struct is not None and struct not in structs:
                structs.append(struct)
    _, components = msgspec.json.schema_components(structs, ref_template=REF)
    # Responses are encoded with omit_defaults: an absent field is omitted, never null.
    for name, schema in components.items():
        if schema.get("additionalProperties") is not False and "properties" in schema:
            schema["properties"] = {key: _without_null(value) for key, value in schema["properties"].items()}
    # Parameter schemas come from the structs the views validate with (not put in components).
    params: dict[str, Any] = {}
    parameter_structs = {OPERATIONS[r.action].schema for r in routes if r.action} | {r.query for r in routes if r.query}
    _, inline = msgspec.json.schema_components(sorted(parameter_structs, key=lambda t: t.__name__), ref_template=REF)
    for name, schema in inline.items():
        params[name] = schema.get("properties", {})
    return components, params


def _parameters(route: Route, params: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    action_fields = params.get(OPERATIONS[route.action].schema.__name__, {}) if route.action else {}
    for name in route.path_params:
        schema = _without_null(copy.deepcopy(action_fields.get(name, {"type": "string", "minLength": 1})))
        if name == "connectionId" and RESERVED_CONNECTION_IDS:
            # A fixed path such as /connections/cleanup wins over the template (OpenAPI's rule too).
            schema["not"] = {"enum": sorted(RESERVED_CONNECTION_IDS)}
        out.append({"name": name, "in": "path", "required": True, "schema": schema,
                    "description": schema.pop("description", f"The {name}.")})
    if route.query is not None:
        for name, field_schema in params.get(route.query.__name__, {}).items():
            schema = _without_null(copy.deepcopy(field_schema))
            out.append({"name": name, "in": "query", "required": False, "schema": schema,
                        "description": schema.pop("description", "")})
    return out


def _json(ref_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(name=ref_name)}}}


def _operation(route: Route, params: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        operation["description"] = route.description
    parameters = _parameters(route, params)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None and route.body is not s.NoParams:
        operation["requestBody"] = {"required": route.body_required, "content": _json(route.body.__name__)}
    success: dict[str, Any] = {"description": "Success."}
    if route.response is not None:
        success["content"] = _json(route.response.__name__)
    responses: dict[str, Any] = {str(route.status): success}
    always = {405, 500} | ({413} if route.body is not None else set()) | (set() if route.public else {401, 403})
    for code in sorted({*route.errors, *always}):
        responses[str(code)] = {"description": _ERRORS[code], "content": _json("ErrorBody")}
    operation["responses"] = responses
    # Reads are open locally ({} = no credentials needed); changes need IAM or the admin token.
    operation["security"] = (
        [{"iamSigV4": []}, {"adminToken": []}] if route.mutates else [{"iamSigV4": []}, {}]
    )
    return operation


def _page_operation(page: PageRoute) -> dict[str, Any]:
    content: dict[str, Any] = {page.media_type: {"schema": {"type": "object"} if "json" in page.media_type
                                                  else {"type": "string"}}}
    return {
        "operationId": page.endpoint,
        "summary": page.summary,
        "tags": ["pages"],
        "responses": {"200": {"description": "Success.", "content": content}},
        "security": [{"iamSigV4": []}, {}],
    }


def build_document(routes: Iterable[Route] = API_ROUTES, pages: Iterable[PageRoute] = PAGE_ROUTES) -> dict[str, Any]:
    """The whole document, without ``servers`` (those depend on where the app is mounted)."""
    routes = tuple(routes)
    components, params = _components(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route, params)
    for page in pages:
        paths.setdefault(page.rule, {})["get"] = _page_operation(page)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Connection Manager admin API", "version": VERSION, "description": _DESCRIPTION},
        "tags": [
            {"name": "connections", "description": "Single connections and the list of live ones."},
            {"name": "users", "description": "A user's connections."},
            {"name": "maintenance", "description": "The stale-connection sweep."},
            {"name": "monitoring", "description": "Health and counts."},
            {"name": "pages", "description": "Pages for people, and this document."},
        ],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }


def document_for(base_url: str, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document with ``servers`` pointing at ``base_url`` (the stage prefix behind API Gateway)."""
    document = dict(cached if cached is not None else build_document())
    document["servers"] = [{"url": base_url or "/", "description": "This server."}]
    return document
