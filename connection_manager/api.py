"""The JSON admin API: one declarative route table, registered on a blueprint and documented from it.

Each :class:`Route` names the action of the dispatch table it runs (or a service read),
where its parameters come from (path, query string, JSON body) and which msgspec Structs
describe them. The blueprint is built by iterating over :data:`API_ROUTES`, and the
OpenAPI document (:mod:`connection_manager.openapi`) is generated from the same list, so a
route cannot exist undocumented or be documented without existing.

Views validate with the same schemas as the raw Lambda handler and call the service only
through :func:`~connection_manager.operations.run_action`, so both front doors answer a
request with the same body and status.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

import msgspec
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.routing import BaseConverter
from werkzeug.routing import ValidationError as NoMatch

from connection_manager import schemas as s
from connection_manager.auth import authorize_change, authorize_read, caller
from connection_manager.config import Settings
from connection_manager.errors import ConnectionManagerError, UnsupportedMediaTypeError, ValidationError
from connection_manager.observability import audit
from connection_manager.operations import OPERATIONS, Invocation, run_action
from connection_manager.service import ConnectionService

log = logging.getLogger(__name__)

#: The key of the app's ``extensions`` dict that holds the :class:`ServiceHolder`.
EXTENSION = "connection_manager"


class ServiceHolder:
    """Builds the service on first use, so creating the app never touches DynamoDB or the environment."""

    def __init__(self, service: ConnectionService | None, factory: Callable[[], ConnectionService]) -> None:
        self._service = service
        self._factory = factory

    @property
    def service(self) -> ConnectionService:
        if self._service is None:
            self._service = self._factory()
        return self._service

    def admin_token_set(self) -> bool:
        """Whether an admin token guards the API, without building the service.

        The pages (the OpenAPI document among them) must work before, and without, any
        DynamoDB access, so until the service exists this reads the same environment
        settings it will be built from.
        """
        settings = self._service.settings if self._service is not None else Settings.from_env()
        return bool(settings.admin_token)


def current_service() -> ConnectionService:
    return current_app.extensions[EXTENSION].service


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: values of a response (or of its request) that feed another operation.

    Clients and the stateful fuzzer follow them: ``nextToken`` comes only from a previous
    page, so a link is how a generated request gets a token this server issued.
    """

    name: str
    operation_id: str
    parameters: tuple[tuple[str, str], ...]  # (parameter name, runtime expression)


@dataclass(frozen=True)
class Route:
    """One documented HTTP endpoint."""

    method: str
    rule: str  # Flask syntax: /connections/<connectionId>
    endpoint: str
    summary: str
    tag: str
    action: str | None = None  # an OPERATIONS name; None for the service reads below
    #: A service read; takes the validated ``query`` Struct (None without one).
    read: Callable[[ConnectionService, Any], dict[str, Any]] | None = None
    query: type[s.Params] | None = None
    body: type[s.Params] | None = None
    body_required: bool = False
    response: type[msgspec.Struct] | None = None
    status: int = 200
    #: Statuses of this route's own; those every route can get, and 401/403 (which follow the
    #: server's access settings), are added by the document.
    errors: tuple[int, ...] = ()
    description: str = ""
    links: tuple[Link, ...] = ()
    #: Answers ``Accept: text/csv`` with the whole listing as CSV, streamed page by page.
    csv: bool = False
    #: Open to anyone who reaches the server, even with ADMIN_TOKEN set (a load balancer's health check).
    public: bool = False

    @property
    def mutates(self) -> bool:
        return self.method in ("PATCH", "POST", "PUT", "DELETE")

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"<(?:[a-z]+:)?([A-Za-z_]+)>", self.rule)

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", self.rule)

    @property
    def operation_id(self) -> str:
        return self.action or self.endpoint


API_ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/health", "health", "Is the table reachable?", "monitoring",
        read=lambda svc, _: svc.health(), response=s.Health, errors=(503,), public=True,
        description="200 when DescribeTable succeeds; 503 with an error body otherwise.",
    ),
    Route(
        "GET", "/stats", "stats", "Counts for the dashboard: active connections, distinct users, stale now.",
        "monitoring", read=lambda svc, _: svc.stats().to_body(), response=s.Stats, errors=(503,),
    ),
    Route(
        "GET", "/connections", "get_all_connections", OPERATIONS["get_all_connections"].summary, "connections",
        action="get_all_connections", query=s.GetAllConnections, csv=True, response=s.ConnectionList, errors=(503,),
        description="Pass the `nextToken` of a page to get the next one; the last page has none. "
        "`idleMoreThan` reads about what it returns; `userId` reads that user's live rows (their history is "
        "`GET /users/{userId}/connections?status=DISCONNECTED`). `sourceIp` and `userAgent` read rows they do not return, so a page stops after "
        "reading 1,000 items and may hold fewer rows than `limit`, even none, with a `nextToken`: follow it. "
        "With `Accept: text/csv` the whole filtered listing streams as CSV, page by page.",
        links=(
            Link("nextPage", "get_all_connections", (("nextToken", "$response.body#/nextToken"),)),
            Link("firstConnection", "get_connection", (("connectionId", "$response.body#/connections/0/connectionId"),)),
        ),
    ),
    Route(
        "GET", "/stats/history", "stats_history", "Each sweep of the last hours: active, cleaned, gone, ...",
        "monitoring", read=lambda svc, q: _history(svc, q), query=s.HistoryQuery, response=s.StatsHistory, errors=(503,),
        description="The sweeps of the last `hours` (1 to 720, default 48), oldest first, at most `limit` "
        "(1 to 1000, default 500: the newest). Records expire after 30 days.",
    ),
    Route(
        "POST", "/connections/cleanup", "cleanup_stale_connections",
        OPERATIONS["cleanup_stale_connections"].summary, "maintenance",
        action="cleanup_stale_connections", body=s.CleanupStaleConnections, response=s.CleanupResult,
        errors=(415, 503),
        description="An empty body means the defaults (`dryRun` false, `staleAfterSeconds` from the settings). "
        "`complete` is false when the run stopped early to stay within its time budget.",
    ),
    Route(
        "GET", "/connections/<connectionkey:connectionId>", "get_connection", OPERATIONS["get_connection"].summary,
        "connections", action="get_connection", response=s.ConnectionEnvelope, errors=(404, 503),
        links=(
            Link("updateStatus", "update_connection_status", (("connectionId", "$response.body#/connection/connectionId"),)),
            Link("userConnections", "get_user_connections", (("userId", "$response.body#/connection/userId"),)),
        ),
    ),
    Route(
        "PATCH", "/connections/<connectionkey:connectionId>", "update_connection_status",
        OPERATIONS["update_connection_status"].summary, "connections",
        action="update_connection_status", body=s.StatusChange, body_required=True,
        response=s.StatusChangeResult, errors=(404, 415, 503),
        description="DISCONNECTED records reason `admin` and closes the socket at API Gateway. Setting the status a "
        "connection already has changes nothing.",
    ),
    Route(
        "GET", "/users/<key:userId>/connections", "get_user_connections",
        OPERATIONS["get_user_connections"].summary, "users",
        action="get_user_connections", query=s.UserPage, response=s.ConnectionList, errors=(503,),
        links=(
            Link("nextPage", "get_user_connections",
                 (("userId", "$request.path.userId"), ("nextToken", "$response.body#/nextToken"))),
            Link("disconnectUser", "disconnect_user", (("userId", "$request.path.userId"),)),
        ),
    ),
    Route(
        "GET", "/users/<key:userId>/presence", "get_user_presence", OPERATIONS["get_user_presence"].summary, "users",
        action="get_user_presence", response=s.UserPresence, errors=(503,),
        description="Reads the user's CONNECTED rows, as `GET /users/{userId}/connections` does, and their presence "
        "item; `online` holds whether or not presence events are published (`PRESENCE_EVENT_BUS`).",
    ),
    Route(
        "POST", "/users/<key:userId>/disconnect", "disconnect_user", OPERATIONS["disconnect_user"].summary, "users",
        action="disconnect_user", body=s.NoParams, response=s.DisconnectResult,
        errors=(415, 503),
        description="Takes no body (an empty JSON object is accepted too).",
    ),
)


#: Last segments of the fixed paths under /connections/: as in OpenAPI, a fixed path wins over
#: `/connections/{connectionId}`, so these are never read as connection ids over HTTP.
RESERVED_CONNECTION_IDS = frozenset(
    route.rule.rsplit("/", 1)[1] for route in API_ROUTES if route.rule.startswith("/connections/") and "<" not in route.rule
)


class KeyConverter(BaseConverter):
    """A path parameter holding any characters, ``/`` included.

    Ids arrive percent-encoded (API Gateway's are base64: ``/``, ``+``, ``=``), but both
    werkzeug and Zappa decode the path before routing, so ``a%2Fb`` is ``a/b`` by then.
    The parameter therefore takes everything up to the rule's next fixed part.
    """

    regex = ".+?"
    part_isolating = False
    weight = 200


class ConnectionKeyConverter(KeyConverter):
    """A connection id; the fixed paths beside it (``cleanup``) are not ids."""

    def to_python(self, value: str) -> str:
        if value in RESERVED_CONNECTION_IDS:
            raise NoMatch()
        return value


#: Registered on the app's URL map (blueprints cannot register converters).
CONVERTERS: dict[str, type[BaseConverter]] = {"key": KeyConverter, "connectionkey": ConnectionKeyConverter}


@dataclass(frozen=True)
class PageRoute:
    """A documented non-API endpoint (the dashboard, the docs, this document); views live in ``app``."""

    rule: str
    endpoint: str
    summary: str
    media_type: str


PAGE_ROUTES: tuple[PageRoute, ...] = (
    PageRoute("/", "dashboard", "The admin dashboard: an HTML page that calls this API.", "text/html"),
    PageRoute("/openapi.json", "openapi", "This OpenAPI document.", "application/json"),
    PageRoute("/docs", "docs", "This document, rendered for people.", "text/html"),
)


def _target(path: dict[str, str]) -> str:
    for name in ("connectionId", "userId"):
        if path.get(name):
            return f"{name}={path[name]}"
    return "*"


def _query() -> dict[str, str]:
    """The query string as a flat dict; a parameter given twice is ambiguous, so it is an error."""
    values: dict[str, str] = {}
    for name, items in request.args.lists():
        if len(items) > 1:
            raise ValidationError(f"Query parameter `{name}` is given {len(items)} times; give it once")
        values[name] = items[0]
    return values


def _json_body() -> Any:
    """The decoded JSON body; an empty body is ``{}`` (all defaults)."""
    data = request.get_data(cache=True)
    if not data.strip():
        return {}
    if not request.is_json:
        raise UnsupportedMediaTypeError(
            f"Send the request body as application/json (got {request.mimetype or 'no content type'})"
        )
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"The request body is not valid JSON: {exc}") from None


def _typed_query(struct: type[s.Params], query: dict[str, str]) -> dict[str, Any]:
    """The query string's text as the JSON values the document describes.

    A parameter typed ``integer`` takes the text of a JSON number with a whole value
    (``10``, ``10.0``); anything else (``null``, ``true``, ``1.5``, `` 10``) is a 400, as the
    document says. Other parameters stay text. The values are then validated strictly, like
    a JSON body, so ``null`` never passes for an absent ``limit``.
    """
    integers = s.integer_fields(struct)
    return {name: _query_integer(name, text) if name in integers else text for name, text in query.items()}


def _query_integer(name: str, text: str) -> Any:
    refused = ValidationError(f"Query parameter `{name}` must be an integer, got {text[:40]!r}")
    if text != text.strip():
        raise refused
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        raise refused from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refused
    if isinstance(value, float) and not value.is_integer():
        raise refused
    return int(value)


def _payload(route: Route, path: dict[str, str]) -> dict[str, Any]:
    """Collect and validate the action's parameters."""
    query = _query()
    if route.query is None and query:
        raise ValidationError("Unknown query parameter(s): " + ", ".join(f"`{name}`" for name in query))
    payload: dict[str, Any] = dict(path)
    if route.query is not None:
        typed = _typed_query(route.query, query)
        s.parse(route.query, typed)
        payload.update(typed)
    if route.body is not None:
        body = _json_body()
        # The body's own schema first: it rejects a body that tries to set a path parameter.
        s.parse(route.body, body)
        payload.update(body)
    if route.action is not None:
        s.parse(OPERATIONS[route.action].schema, payload)
    return payload


def _make_view(route: Route) -> Callable[..., Response | tuple[Response, int]]:
    def view(**path: str) -> Response | tuple[Response, int]:
        if not route.mutates and not route.public:
            authorize_read(request.environ, request.headers.get("Authorization"), current_service().settings.admin_token)
        if route.read is not None:
            if route.query is None and request.args:
                raise ValidationError("Unknown query parameter(s): " + ", ".join(f"`{n}`" for n in request.args))
            params = s.parse(route.query, _typed_query(route.query, _query())) if route.query is not None else None
            return jsonify(route.read(current_service(), params))
        assert route.action is not None
        if not route.mutates:
            payload = _payload(route, path)
            if route.csv and _wants_csv():
                return _csv(route.action, payload)
            status, body = run_action(current_service(), route.action, payload)
            return jsonify(body), status
        return _change(route, path)

    view.__name__ = route.endpoint
    view.__doc__ = route.summary
    return view


def _history(service: ConnectionService, query: s.HistoryQuery) -> dict[str, Any]:
    sweeps = service.stats_history(query.hours, query.limit)
    return {"sweeps": sweeps, "count": len(sweeps)}


def _wants_csv() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv" and request.accept_mimetypes["text/csv"] > request.accept_mimetypes["application/json"]


def _csv(action: str, payload: dict[str, Any]) -> Response:
    """The listing as CSV: the first page is read before the answer starts (a bad token is
    still a 400), the next ones while it streams. Lambda buffers a whole response (6 MB):
    there, export a filtered listing or page with ``nextToken``."""
    from flask import stream_with_context

    from connection_manager.export import csv_pages

    service = current_service()
    _, first = run_action(service, action, payload)

    def next_page(token: str) -> dict[str, Any]:
        return run_action(service, action, {**payload, "nextToken": token})[1]

    response = Response(stream_with_context(csv_pages(first, next_page)), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="connections.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _change(route: Route, path: dict[str, str]) -> tuple[Response, int]:
    """Authorize, validate and run a state change; exactly one audit line whatever happens."""
    assert route.action is not None
    target = _target(path)
    service = current_service()
    try:
        principal = authorize_change(
            request.environ,
            request.headers.get("Authorization"),
            service.settings.admin_token,
            origin=request.headers.get("Origin"),
            host=request.headers.get("Host"),
        )
    except ConnectionManagerError as exc:
        audit(caller(request.environ), route.action, target, f"denied:{exc.code}")
        raise
    try:
        payload = _payload(route, path)
    except ConnectionManagerError as exc:
        audit(principal, route.action, target, f"error:{exc.code}")
        raise
    invocation = Invocation(principal=principal, time_left_ms=_time_left())
    try:
        # run_action writes the audit line for its own outcome (success or a project error).
        status, body = run_action(service, route.action, payload, invocation=invocation)
    except ConnectionManagerError:
        raise
    except Exception:
        audit(principal, route.action, target, "error:InternalError")
        raise
    return jsonify(body), status


def _time_left() -> Callable[[], int] | None:
    """In Lambda, the sweep stops before the function's deadline; locally there is none."""
    context = request.environ.get("lambda.context")
    return getattr(context, "get_remaining_time_in_millis", None)


def create_blueprint() -> Blueprint:
    """A blueprint with every route of :data:`API_ROUTES`."""
    blueprint = Blueprint("api", __name__)
    for route in API_ROUTES:
        # An id may start with or hold "//": merging slashes would redirect to another id.
        blueprint.add_url_rule(
            route.rule, route.endpoint, _make_view(route), methods=[route.method], merge_slashes=False
        )
    return blueprint
