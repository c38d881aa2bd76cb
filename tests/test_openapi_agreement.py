"""What the OpenAPI document says and what the server does, one disagreement at a time.

Each test pins one thing schemathesis found: query integers, whole floats, the token's
shape and length, blank ids, the ``Allow`` header, security as configured, and the HTTP
server's own errors (JSON, never an HTML page).
"""
from __future__ import annotations

import http.client
import re
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from connection_manager.app import create_app
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.schemas import MAX_KEY_BYTES, MAX_TOKEN_CHARS, NOT_BLANK, TOKEN_PATTERN
from connection_manager.server import AccessLogHandler
from connection_manager.service import ConnectionService
from connection_manager.tokens import Cursor
from tests.support.events import load_event
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import ENDPOINT, FIXTURE_LIFETIME_SECONDS, NOW, TABLE, raw_item

TOKEN = "agreement-admin-token"


@pytest.fixture
def app(service: ConnectionService) -> Flask:
    return create_app(service=service)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token_app(clock: FixedClock) -> Flask:
    settings = Settings(table_name=TABLE, region="us-east-1", sweep_concurrency=4, admin_token=TOKEN)
    return create_app(service=ConnectionService(settings, clock))


# Query integers and whole floats --------------------------------------------------------------


@pytest.mark.parametrize("text", ["null", "true", "1.5", " 10", "10 ", "", "1e400", '"10"', "[10]"])
def test_get_all_connections__limit_that_is_not_an_integer__400(client: FlaskClient, make_connection: Any, text: str) -> None:
    # Given a live connection
    make_connection("c1", user_id="u1")
    # When the limit is text that is no JSON integer
    response = client.get("/connections?" + urllib.parse.urlencode({"limit": text}))
    # Then it is refused, as the document's `integer` says (before, `null` listed everything)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "ValidationError"
    assert "limit" in response.get_json()["message"]


@pytest.mark.parametrize("text", ["2", "2.0", "2e0"])
def test_get_all_connections__limit_whole_number__accepted(client: FlaskClient, make_connection: Any, text: str) -> None:
    for index in range(3):
        make_connection(f"c{index}", user_id="u1")
    response = client.get(f"/connections?limit={text}")
    assert response.status_code == 200
    assert response.get_json()["count"] == 2 and "nextToken" in response.get_json()


def test_cleanup_stale_connections__stale_after_as_whole_float__accepted(
    client: FlaskClient, make_connection: Any, clock: FixedClock
) -> None:
    # Given a connection idle for an hour
    from datetime import timedelta

    make_connection("idle", user_id="u1", idle=timedelta(hours=1))
    # When the threshold is written 2834.0, an integer for JSON Schema
    response = client.post("/connections/cleanup", json={"staleAfterSeconds": 2834.0})
    # Then it is the integer 2834 (before: 400 "got float")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["staleAfterSeconds"] == 2834
    assert response.get_json()["cleanedCount"] == 1
    assert raw_item("idle")["status"] == "DISCONNECTED"


# Allow -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, allowed",
    [
        ("/connections/cleanup", "POST, OPTIONS"),
        ("/connections/c1", "GET, PATCH, HEAD, OPTIONS"),
        ("/connections", "GET, HEAD, OPTIONS"),
        ("/users/u1/disconnect", "POST, OPTIONS"),
    ],
)
def test_options__allow_lists_the_documented_methods(client: FlaskClient, path: str, allowed: str) -> None:
    # When a path is asked what it allows, or sent a method it lacks
    options = client.options(path)
    refused = client.put(path)
    # Then both answers list the methods the document has there (before: /connections/cleanup
    # advertised the GET and PATCH of /connections/{connectionId})
    assert options.status_code == 200 and options.headers["Allow"] == allowed
    assert refused.status_code == 405 and refused.headers["Allow"] == allowed
    document = client.get("/openapi.json").get_json()
    template = "/connections/{connectionId}" if path == "/connections/c1" else path.replace("u1", "{userId}")
    assert {m.upper() for m in document["paths"][template]} == set(allowed.split(", ")) - {"HEAD", "OPTIONS"}


# Security as configured --------------------------------------------------------------------------


def test_openapi__loopback_without_token__declares_no_security(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert all(op["security"] == [] for op in operations)
    assert not any("401" in op["responses"] for op in operations)
    # a change a browser sends from another site is still refused
    assert "403" in document["paths"]["/connections/cleanup"]["post"]["responses"]
    assert "403" not in document["paths"]["/connections"]["get"]["responses"]


def test_openapi__with_admin_token__every_api_route_but_health_needs_it(dynamodb: Any, clock: FixedClock) -> None:
    client = token_app(clock).test_client()
    document = client.get("/openapi.json").get_json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            guarded = path not in ("/health", "/", "/docs", "/openapi.json")
            assert operation["security"] == ([{"adminToken": []}] if guarded else []), (method, path)
            assert ("401" in operation["responses"]) == guarded, (method, path)
            # and the server does as it says
            if guarded and method == "get":
                assert client.get(path.replace("{connectionId}", "c1").replace("{userId}", "u1")).status_code == 401
    assert set(document["components"]["securitySchemes"]) == {"adminToken"}


def test_openapi__behind_api_gateway__declares_sigv4(app: Flask) -> None:
    from zappa.middleware import ZappaWSGIMiddleware  # noqa: F401  (Zappa builds the environ below)
    from zappa.wsgi import create_wsgi_request

    event = load_event("apigateway_rest_request")
    event["path"], event["httpMethod"], event["body"] = "/openapi.json", "GET", None
    environ = create_wsgi_request(event, script_name="/dev")
    environ["lambda.event"] = event
    with app.request_context(environ):
        document = app.full_dispatch_request().get_json()
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert all(op["security"] == [{"iamSigV4": []}] for op in operations)
    assert set(document["components"]["securitySchemes"]) == {"iamSigV4"}


# Shapes: ids and tokens --------------------------------------------------------------------------


def _parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    return next(p for p in document["paths"][path][method]["parameters"] if p["name"] == name)


def test_openapi__ids_and_tokens_have_their_real_shape(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    user = _parameter(document, "/users/{userId}/connections", "get", "userId")["schema"]
    token = _parameter(document, "/users/{userId}/connections", "get", "nextToken")["schema"]
    assert (user["pattern"], user["maxLength"]) == (NOT_BLANK, MAX_KEY_BYTES)
    assert (token["pattern"], token["maxLength"]) == (TOKEN_PATTERN, MAX_TOKEN_CHARS)
    links = document["paths"]["/connections"]["get"]["responses"]["200"]["links"]
    assert links["nextPage"]["parameters"] == {"nextToken": "$response.body#/nextToken"}


@pytest.mark.parametrize("user_id", ["\x1c", "\u3000\u2028", "\x85"])
def test_get_user_connections__blank_id_as_the_pattern_says__400(client: FlaskClient, user_id: str) -> None:
    assert not re.search(NOT_BLANK, user_id)
    response = client.get("/users/" + urllib.parse.quote(user_id, safe="") + "/connections")
    assert response.status_code == 400 and "blank" in response.get_json()["message"]


@pytest.mark.parametrize("token", ["abc", "a.b", "A" * 10 + "." + "B" * 21, "A" * 10 + "!." + "B" * 22])
def test_get_all_connections__token_not_of_the_documented_shape__400(client: FlaskClient, token: str) -> None:
    assert not re.search(TOKEN_PATTERN, token)
    response = client.get("/connections?" + urllib.parse.urlencode({"nextToken": token}))
    assert response.status_code == 400 and "nextToken" in response.get_json()["message"]


def worst_case_user_token(service: ConnectionService) -> tuple[str, str]:
    """The longest token the service can issue: a user listing whose ids are 2048 control characters."""
    user_id = "\x01" * MAX_KEY_BYTES
    key = {"connectionId": {"S": user_id}, "userId": {"S": user_id}, "status": {"S": "DISCONNECTED"}}
    return user_id, service._tokens.encode(f"user:{user_id}", Cursor(0, key))


def test_tokens__the_longest_issued_token_is_within_the_documented_shape(service: ConnectionService) -> None:
    _, token = worst_case_user_token(service)
    assert re.search(TOKEN_PATTERN, token)
    assert len(token) <= MAX_TOKEN_CHARS


# The HTTP server's own errors --------------------------------------------------------------------


@pytest.fixture
def served(app: Flask) -> Iterator[int]:
    """The app on werkzeug's server with the handler `serve` uses, on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=AccessLogHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def get(port: int, target: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def test_serve__request_line_over_64_kib__json_414(served: int) -> None:
    # When the request line is longer than the server reads (before: an HTML page)
    status, content_type, body = get(served, "/connections?nextToken=" + "A" * 70_000)
    # Then the answer is the API's JSON error, with the status the document lists
    assert status == 414
    assert content_type == "application/json"
    assert b'"error": "UriTooLong"' in body


def test_serve__worst_case_path_and_a_token_one_too_long__json_400_not_414(served: int, service: ConnectionService) -> None:
    # Given the longest id a path can carry (2048 bytes, each percent-encoded to three characters)
    user_id, issued = worst_case_user_token(service)
    path = "/users/" + urllib.parse.quote(user_id, safe="") + "/connections"
    # When the token is one character longer than the document allows
    too_long = issued + "A" * (MAX_TOKEN_CHARS + 1 - len(issued))
    status, content_type, body = get(served, f"{path}?limit=1000&nextToken={too_long}")
    # Then the request line still fits and the app refuses the token itself, as the document says
    assert (status, content_type) == (400, "application/json"), body[:200]
    assert b"nextToken" in body


# Every field a response holds is documented ----------------------------------------------------


def undocumented(value: Any, schema: dict[str, Any], components: dict[str, Any], at: str = "$") -> list[str]:
    """Paths in ``value`` that ``schema`` does not describe (schemathesis cannot see these:
    the document does not forbid additional properties, so an undocumented field passes)."""
    if "$ref" in schema:
        return undocumented(value, components[schema["$ref"].rsplit("/", 1)[1]], components, at)
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return min((undocumented(value, branch, components, at) for branch in schema[union]), key=len)
    if isinstance(value, dict) and "properties" in schema:
        known = schema["properties"]
        problems = [f"{at}.{key}" for key in value if key not in known]
        for key in known.keys() & value.keys():
            problems += undocumented(value[key], known[key], components, f"{at}.{key}")
        return problems
    if isinstance(value, list) and "items" in schema:
        items = schema["items"]
        return [problem for i, item in enumerate(value) for problem in undocumented(item, items, components, f"{at}[{i}]")]
    return []


def test_responses__every_field_returned_is_documented(client: FlaskClient, make_connection: Any, gateway: Any) -> None:
    # Given live, stale, expired and historical rows (one expired socket the gateway refuses to close)
    make_connection("live", user_id="u1", metadata={"room": "lobby"})
    make_connection("stale", user_id="u1", idle=timedelta(hours=2))
    make_connection("expired", user_id="u2", age=timedelta(seconds=FIXTURE_LIFETIME_SECONDS + 60), endpoint=ENDPOINT)
    make_connection("old", user_id="u1", status="DISCONNECTED")
    gateway.open("expired", NOW - timedelta(days=2), NOW)
    gateway.forbid(1)
    document = client.get("/openapi.json").get_json()
    components = document["components"]["schemas"]

    # When every documented route answers (the cleanup as a dry run, then for real)
    requests = [  # (method, URL, the document's path, body)
        ("GET", "/health", "/health", None),
        ("GET", "/stats", "/stats", None),
        ("GET", "/connections?limit=1", "/connections", None),
        ("POST", "/connections/cleanup", "/connections/cleanup", {"dryRun": True}),
        ("POST", "/connections/cleanup", "/connections/cleanup", {}),
        ("GET", "/stats/history", "/stats/history", None),
        ("GET", "/connections/live", "/connections/{connectionId}", None),
        ("PATCH", "/connections/live", "/connections/{connectionId}", {"status": "DISCONNECTED"}),
        ("GET", "/users/u1/connections?status=DISCONNECTED", "/users/{userId}/connections", None),
        ("POST", "/users/u1/disconnect", "/users/{userId}/disconnect", None),
    ]
    problems, answers = [], []
    for method, url, path, body in requests:
        response = client.open(url, method=method, json=body)
        assert response.status_code == 200, (method, url, response.get_json())
        answers.append(response.get_json())
        schema = document["paths"][path][method.lower()]["responses"]["200"]["content"]["application/json"]["schema"]
        problems += [f"{method} {url}: {field}" for field in undocumented(response.get_json(), schema, components)]

    # Then the document describes every field they hold, the sweep's own included
    assert problems == []
    assert answers[4]["lifetimeCount"] == 1 and answers[4]["notClosedCount"] == 1 and "activeConnections" in answers[4]
