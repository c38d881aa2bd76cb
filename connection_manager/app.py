"""The Flask admin app: an application factory that wires blueprints, pages and JSON errors.

Logic lives in the service; this module only connects HTTP to it. ``app`` at module level
is what Zappa's ``app_function`` points at. Creating it touches neither DynamoDB nor the
environment: the service is built on the first request that needs it (and is the same
process-wide service the raw Lambda handler uses, built by ``connection_manager.wiring``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from connection_manager.api import API_ROUTES, CONVERTERS, EXTENSION, PAGE_ROUTES, ServiceHolder, create_blueprint
from connection_manager.auth import gateway_event, refuse_foreign_host
from connection_manager.errors import ConnectionManagerError, InternalError
from connection_manager.observability import record_error
from connection_manager.openapi import Access, build_document, document_for
from connection_manager.service import ConnectionService
from connection_manager.wiring import get_service

log = logging.getLogger(__name__)

#: Larger bodies are never legitimate here (the biggest is a status change); refuse them early.
MAX_BODY_BYTES = 64 * 1024

#: Error codes for the HTTP-level failures werkzeug raises before a view runs.
_HTTP_CODES = {
    400: "ValidationError",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    414: "UriTooLong",
    415: "UnsupportedMediaType",
    431: "RequestHeaderFieldsTooLarge",
}

def http_error_code(status: int, phrase: str) -> str:
    """The ``error`` code of an HTTP-level failure: ours where we name it, else the reason phrase."""
    return _HTTP_CODES.get(status, phrase.replace(" ", "").replace("-", ""))


#: The methods the route table serves; anything else on a known path is a 405.
_METHODS = tuple(sorted({route.method for route in API_ROUTES} | {"GET"}))


class AdminApp(Flask):
    """Flask, with ``OPTIONS`` answered from the route table rather than from werkzeug's rule scan.

    Werkzeug lists every rule whose pattern matches the path, before converters run, so
    ``/connections/cleanup`` would advertise the GET and PATCH of ``/connections/{connectionId}``,
    which its converter refuses. :func:`allowed_methods` asks the router, method by method.
    """

    def make_default_options_response(self) -> Response:
        response = self.response_class()
        response.allow.update(allowed_methods())
        return response


def allowed_methods() -> list[str]:
    """The methods the current request's path really dispatches, plus HEAD (with GET) and OPTIONS."""
    adapter = current_app.create_url_adapter(request)
    methods: list[str] = []
    for method in _METHODS:
        try:
            adapter.match(method=method)  # type: ignore[union-attr]
        except HTTPException:
            continue
        methods.append(method)
    if "GET" in methods:
        methods.append("HEAD")
    return [*methods, "OPTIONS"] if methods else []


def create_app(
    service: ConnectionService | None = None,
    *,
    service_factory: Callable[[], ConnectionService] | None = None,
    config: dict[str, Any] | None = None,
) -> Flask:
    """Build the admin app.

    ``service`` is used as is (tests pass one with a fixed clock); otherwise
    ``service_factory`` (default: the process-wide service of ``connection_manager.wiring``)
    runs on first use.
    """
    app = AdminApp(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    if config:
        app.config.update(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the contract's field order
    app.extensions[EXTENSION] = ServiceHolder(service, service_factory or get_service)
    app.extensions["openapi"] = {}  # Access -> document, built on first request (see openapi())
    app.url_map.converters.update(CONVERTERS)
    app.register_blueprint(create_blueprint())
    app.register_blueprint(_pages_blueprint())
    _register_error_handlers(app)
    app.before_request(_check_host)
    app.after_request(_headers)
    return app


def _check_host() -> None:
    """``ALLOWED_HOSTS`` (set by the server on a loopback bind): the only Host names served."""
    allowed = current_app.config.get("ALLOWED_HOSTS")
    if allowed:
        refuse_foreign_host(request.headers.get("Host"), tuple(allowed))


# Pages -----------------------------------------------------------------------------------


def _api_base() -> str:
    """The prefix the app is mounted under (``/dev`` behind an API Gateway stage, else empty)."""
    return request.script_root.rstrip("/")


def dashboard() -> str:
    """The admin dashboard; its script calls the JSON API under ``api_base``."""
    return render_template("dashboard.html", api_base=_api_base())


def openapi() -> Response:
    """The OpenAPI 3.1 document of this API, as this server is configured."""
    access = Access(
        gateway=gateway_event(request.environ) is not None,
        admin_token=current_app.extensions[EXTENSION].admin_token_set(),
    )
    documents: dict[Access, dict[str, Any]] = current_app.extensions["openapi"]
    if access not in documents:
        documents[access] = build_document(access=access)
    return jsonify(document_for(_api_base() or "/", documents[access]))


def docs() -> str:
    """The OpenAPI document rendered for people, by a small script in the page itself."""
    return render_template("docs.html", spec_url=_api_base() + "/openapi.json", api_base=_api_base())


_PAGE_VIEWS: dict[str, Callable[[], Any]] = {"dashboard": dashboard, "openapi": openapi, "docs": docs}


def _pages_blueprint() -> Blueprint:
    blueprint = Blueprint("pages", __name__)
    for page in PAGE_ROUTES:
        blueprint.add_url_rule(page.rule, page.endpoint, _PAGE_VIEWS[page.endpoint], methods=["GET"])
    return blueprint


# Errors: always JSON, never a stack trace --------------------------------------------------


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": code, "message": message}), status


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ConnectionManagerError)
    def project_error(exc: ConnectionManagerError) -> tuple[Response, int]:
        if exc.status >= 500:
            record_error(exc.code)
            log.warning("%s %s failed: %s", request.method, request.path, exc.message)
        response = jsonify(exc.to_body())
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="connection-manager"'
        return response, exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if exc.code is None or exc.code < 400:
            return exc  # a redirect werkzeug's router decided on
        if isinstance(exc, NotFound):
            message = f"No such path: {request.path}"
        elif isinstance(exc, MethodNotAllowed):
            allowed = [method for method in allowed_methods() if method not in ("HEAD", "OPTIONS")]
            message = f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}"
        else:
            message = exc.description or exc.name
        code = http_error_code(exc.code, exc.name)
        response, status = _error(exc.code, code, message)
        if isinstance(exc, MethodNotAllowed):
            response.headers["Allow"] = ", ".join(allowed_methods())
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error in %s %s", request.method, request.path)
        record_error(InternalError.code)
        where = "the function's logs" if gateway_event(request.environ) is not None else "the server's log"
        return _error(500, InternalError.code, f"Internal error; see {where}")


def _headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "application/json":
        # Connection lists change by the second; never serve one from a cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


#: The instance Zappa's ``app_function`` names. Cheap to create: no I/O, no settings read.
app = create_app()
