"""The OpenAPI 3.1 document, generated from the route table and the msgspec Structs.

Nothing here is written by hand that the code already knows: paths and methods come from
:data:`~connection_manager.api.API_ROUTES`, parameter and body schemas from the request
Structs the views validate with, response schemas from the response Structs, and the
component schemas from ``msgspec.json.schema_components``. A new route or field shows up
in the document without anyone remembering to update it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
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
    414: "A request line longer than the server takes (64 KiB when run locally; behind API Gateway, "
    "its own limit applies).",
    415: "A request body that is not application/json.",
    431: "Request headers larger than the server takes.",
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

**This document describes the server that serves it.** Each operation's `security`, and
its 401 and 403 answers, say what this server, as configured, asks for: nothing on
loopback without `ADMIN_TOKEN` (changes a browser sends from another site are still
refused with 403), the bearer token when `ADMIN_TOKEN` is set, SigV4 behind API Gateway.
Every path also answers `OPTIONS` (its `Allow` header lists the methods documented here,
plus `HEAD` where there is `GET`, and `OPTIONS`).
"""


@dataclass(frozen=True)
class Access:
    """How the serving app admits callers: what the document's ``security`` must say."""

    #: Behind API Gateway (IAM-authorized): every request is SigV4-signed before it arrives.
    gateway: bool = False
    #: ``ADMIN_TOKEN`` is set: outside API Gateway, every API route but the public ones needs it.
    admin_token: bool = False

    def security(self, *, api: bool, public: bool, mutates: bool) -> list[dict[str, list[str]]]:
        """The operation's security requirements; ``[]`` means open."""
        if self.gateway:
            return [{"iamSigV4": []}]
        if api and not public and self.admin_token:
            return [{"adminToken": []}]
        return []

    def statuses(self, *, api: bool, public: bool, mutates: bool) -> set[int]:
        """The access statuses the operation can answer, as configured."""
        if self.gateway:
            # API Gateway refuses a bad signature (403); a change without a caller identity is 403,
            # or 401/403 when a token is configured as the fallback.
            return {403} | ({401} if mutates and self.admin_token else set())
        codes: set[int] = {403} if mutates else set()  # a cross-site Origin is refused, token or not
        if api and not public and self.admin_token:
            codes |= {401, 403}
        return codes


#: Statuses any request can get: a foreign Host or a malformed request (400), a method the
#: path does not have (405), a request line or headers too long for the server (414, 431), a bug (500).
_ALWAYS = frozenset({400, 405, 414, 431, 500})

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
    # Shapes encoded with omit_defaults leave an absent field out, never null; the others
    # (Stats, whose asOf is null before the first sweep) keep the null their document says.
    for name, schema in components.items():
        struct = getattr(s, name, None)
        omits = struct is None or struct.__struct_config__.omit_defaults
        if omits and schema.get("additionalProperties") is not False and "properties" in schema:
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


def _error_responses(codes: Iterable[int]) -> dict[str, Any]:
    return {str(code): {"description": _ERRORS[code], "content": _json("ErrorBody")} for code in sorted(codes)}


def _links(route: Route) -> dict[str, Any]:
    return {
        link.name: {"operationId": link.operation_id, "parameters": dict(link.parameters)} for link in route.links
    }


def _operation(route: Route, params: dict[str, Any], access: Access) -> dict[str, Any]:
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
    if route.links:
        success["links"] = _links(route)
    kind = {"api": True, "public": route.public, "mutates": route.mutates}
    codes = {*route.errors, *_ALWAYS, *access.statuses(**kind)} | ({413} if route.body is not None else set())
    operation["responses"] = {str(route.status): success, **_error_responses(codes)}
    operation["security"] = access.security(**kind)
    return operation


def _page_operation(page: PageRoute, access: Access) -> dict[str, Any]:
    content: dict[str, Any] = {page.media_type: {"schema": {"type": "object"} if "json" in page.media_type
                                                  else {"type": "string"}}}
    kind = {"api": False, "public": True, "mutates": False}
    return {
        "operationId": page.endpoint,
        "summary": page.summary,
        "tags": ["pages"],
        "responses": {"200": {"description": "Success.", "content": content},
                      **_error_responses({*_ALWAYS, *access.statuses(**kind)})},
        "security": access.security(**kind),
    }


def build_document(
    routes: Iterable[Route] = API_ROUTES, pages: Iterable[PageRoute] = PAGE_ROUTES, access: Access = Access()
) -> dict[str, Any]:
    """The whole document for a server admitting callers as ``access`` says, without ``servers``
    (those depend on where the app is mounted)."""
    routes = tuple(routes)
    components, params = _components(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route, params, access)
    for page in pages:
        paths.setdefault(page.rule, {})["get"] = _page_operation(page, access)
    used = {name for item in paths.values() for op in item.values() for req in op["security"] for name in req}
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
        "components": {
            "schemas": components,
            "securitySchemes": {name: scheme for name, scheme in _SECURITY_SCHEMES.items() if name in used},
        },
    }


def document_for(base_url: str, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document with ``servers`` pointing at ``base_url`` (the stage prefix behind API Gateway)."""
    document = dict(cached if cached is not None else build_document())
    document["servers"] = [{"url": base_url or "/", "description": "This server."}]
    return document
