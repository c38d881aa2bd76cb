"""The Flask admin app: every endpoint and error, through Flask's test client, on an in-process DynamoDB.

Each test states what a caller sends and checks both the answer and what is stored in the
table afterwards. Requests as API Gateway delivers them are built with Zappa's own
environ builder, so the IAM principal and the stage prefix are read exactly where Zappa
puts them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import run_wsgi_app

import connection_manager.observability as observability
from connection_manager.api import API_ROUTES, PAGE_ROUTES
from connection_manager.app import create_app
from connection_manager.auth import authorize_change, bearer_token, iam_identity
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.errors import ForbiddenError, UnauthorizedError
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from tests.support.events import FakeLambdaContext, load_event
from tests.support.serve_process import ServeProcess
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import NOW, TABLE, iso, raw_item

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-admin-token"
OPERATOR_ARN = "arn:aws:iam::123456789012:user/operator"


# Fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def quiet_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The raw handler configures logging once per process; here that would drop caplog's handler."""
    monkeypatch.setattr(observability, "_configured", True)


@pytest.fixture
def app(service: ConnectionService) -> Flask:
    return create_app(service=service)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def token_client(dynamodb: Any, clock: FixedClock) -> FlaskClient:
    """An app whose settings carry an admin token, as with ``ADMIN_TOKEN`` set."""
    settings = Settings(table_name=TABLE, region="us-east-1", sweep_concurrency=4, admin_token=TOKEN)
    return create_app(service=ConnectionService(settings, clock)).test_client()


Audits = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def audits(caplog: pytest.LogCaptureFixture) -> Audits:
    """Returns the structured fields of every audit line written so far in the test."""
    caplog.set_level(logging.INFO, logger="connection_manager.audit")
    return lambda: [record.fields for record in caplog.records if record.name == "connection_manager.audit"]


def gateway_request(app: Flask, event: dict[str, Any], stage: str = "production") -> tuple[int, dict[str, str], bytes]:
    """Run ``event`` through the app the way Zappa's handler does for an API Gateway (REST) request."""
    from zappa.handler import LambdaHandler

    zappa_settings = SimpleNamespace(BINARY_SUPPORT=False, CONTEXT_HEADER_MAPPINGS={}, BASE_PATH=None)
    environ = LambdaHandler._create_lambda_wsgi_environ(
        SimpleNamespace(trailing_slash=True), event, FakeLambdaContext(), f"/{stage}", zappa_settings
    )
    body_iter, status, headers = run_wsgi_app(app.wsgi_app, environ)
    body = b"".join(body_iter)
    return int(status.split()[0]), dict(headers), body


def error_of(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/json", response.data[:200]
    body = response.get_json()
    assert set(body) == {"error", "message"}, body
    return body


# Factory --------------------------------------------------------------------------------


def test_factory__module_app_builds_no_service_on_import() -> None:
    code = (
        "import connection_manager.app as m, connection_manager.wiring as w;"
        "assert m.app.name == 'connection_manager.app';"
        "assert w._service is None, 'importing the app built the service'"
    )
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9", "CONNECTIONS_TABLE_NAME": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_factory__raw_handler_imports_no_flask() -> None:
    code = (
        "import sys, connection_manager.handler, connection_manager.operations, connection_manager.service;"
        "assert 'flask' not in sys.modules and 'werkzeug' not in sys.modules, 'the raw path imported Flask'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_factory__pages_need_no_service() -> None:
    def no_service() -> ConnectionService:
        raise AssertionError("a page built the service")

    client = create_app(service_factory=no_service).test_client()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


# Health and stats -------------------------------------------------------------------------


def test_health__table_reachable(client: FlaskClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "table": TABLE}


def test_health__table_missing_is_503(client: FlaskClient, dynamodb: Any) -> None:
    dynamodb.delete_table(TableName=TABLE)
    response = client.get("/health")
    assert response.status_code == 503
    assert error_of(response)["error"] == "ServiceUnavailable"


def test_stats__counts_live_connections_users_and_stale(
    client: FlaskClient, make_connection: Any, service: ConnectionService
) -> None:
    make_connection("c1", user_id="u1")
    make_connection("c2", user_id="u1", idle=timedelta(hours=2))
    make_connection("c3", user_id="u2")
    make_connection("c4", user_id="u3", status="DISCONNECTED")
    service.take_snapshot()  # rows written around the service: counted by the snapshot after a sweep
    response = client.get("/stats")
    assert response.status_code == 200
    assert response.get_json() == {
        "activeConnections": 3,
        "distinctUsers": 2,
        "staleConnections": 1,
        "staleAfterSeconds": 3600,
        "table": TABLE,
        "generatedAt": iso(NOW),
        "asOf": iso(NOW),
        "distinctUsersExact": True,
        "idle": [
            {"label": "< 5 min", "fromSeconds": 0, "count": 2},
            {"label": "5-15 min", "fromSeconds": 300, "count": 0},
            {"label": "15-30 min", "fromSeconds": 900, "count": 0},
            {"label": "30-60 min", "fromSeconds": 1800, "count": 0},
            {"label": "1-2 h", "fromSeconds": 3600, "count": 0},
            {"label": "> 2 h", "fromSeconds": 7200, "count": 1},
        ],
        "topUsers": [{"userId": "u1", "connections": 2}, {"userId": "u2", "connections": 1}],
        "snapshotAgeSeconds": 0,
        "snapshotPass": None,
    }


def test_stats__query_parameters_are_rejected(client: FlaskClient) -> None:
    response = client.get("/stats?verbose=1")
    assert response.status_code == 400
    assert "verbose" in error_of(response)["message"]


# Reads ----------------------------------------------------------------------------------


def test_get_all_connections__lists_connected_only(client: FlaskClient, make_connection: Any) -> None:
    make_connection("c1", user_id="u1")
    make_connection("c2", user_id="u2")
    make_connection("c3", user_id="u2", status="DISCONNECTED")
    response = client.get("/connections")
    assert response.status_code == 200
    body = response.get_json()
    assert body["count"] == 2
    assert sorted(c["connectionId"] for c in body["connections"]) == ["c1", "c2"]
    assert "nextToken" not in body
    assert all("activeShard" not in c and "expiresAt" not in c for c in body["connections"])


def test_get_all_connections__pages_follow_next_token(client: FlaskClient, make_connection: Any) -> None:
    for index in range(5):
        make_connection(f"c{index}", user_id=f"u{index}")
    seen: list[str] = []
    url = "/connections?limit=2"
    for _ in range(10):
        body = client.get(url).get_json()
        assert body["count"] == len(body["connections"]) <= 2
        seen += [c["connectionId"] for c in body["connections"]]
        if "nextToken" not in body:
            break
        url = "/connections?" + urllib.parse.urlencode({"limit": 2, "nextToken": body["nextToken"]})
    assert sorted(seen) == [f"c{index}" for index in range(5)]


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("nextToken=not-issued-here", "nextToken"),
        ("color=blue", "color"),
        ("limit=1&limit=2", "limit"),
    ],
)
def test_get_all_connections__invalid_query_is_400(client: FlaskClient, query: str, fragment: str) -> None:
    response = client.get(f"/connections?{query}")
    assert response.status_code == 400
    body = error_of(response)
    assert body["error"] == "ValidationError"
    assert fragment.lower() in body["message"].lower()


def test_get_connection__any_status(client: FlaskClient, make_connection: Any) -> None:
    make_connection("gone", user_id="u1", status="DISCONNECTED", reason="stale")
    response = client.get("/connections/gone")
    assert response.status_code == 200
    record = response.get_json()["connection"]
    assert record["status"] == "DISCONNECTED"
    assert record["disconnectReason"] == "stale"


def test_get_connection__missing_is_404(client: FlaskClient) -> None:
    response = client.get("/connections/nope")
    assert response.status_code == 404
    assert error_of(response) == {"error": "NotFound", "message": "Connection 'nope' does not exist"}


def test_get_connection__key_longer_than_dynamodb_allows_is_400(client: FlaskClient) -> None:
    response = client.get("/connections/" + "x" * 2049)
    assert response.status_code == 400
    assert error_of(response)["error"] == "ValidationError"


def test_get_user_connections__only_the_users_connected_ones(client: FlaskClient, make_connection: Any) -> None:
    make_connection("a1", user_id="alice")
    make_connection("a2", user_id="alice", status="DISCONNECTED")
    make_connection("b1", user_id="bob")
    response = client.get("/users/alice/connections")
    assert response.status_code == 200
    body = response.get_json()
    assert [c["connectionId"] for c in body["connections"]] == ["a1"]
    assert body["count"] == 1


def test_get_user_connections__path_parameter_cannot_be_overridden_by_query(client: FlaskClient) -> None:
    response = client.get("/users/alice/connections?userId=bob")
    assert response.status_code == 400
    assert "userId" in error_of(response)["message"]


@pytest.mark.parametrize(
    "path, event",
    [
        ("/connections", {"action": "get_all_connections"}),
        ("/connections?limit=1", {"action": "get_all_connections", "limit": 1}),
        ("/connections/c1", {"action": "get_connection", "connectionId": "c1"}),
        ("/connections/missing", {"action": "get_connection", "connectionId": "missing"}),
        ("/users/u1/connections", {"action": "get_user_connections", "userId": "u1"}),
    ],
)
def test_reads__same_body_and_status_as_the_raw_action(
    client: FlaskClient, handler_service: ConnectionService, make_connection: Any, path: str, event: dict[str, Any]
) -> None:
    make_connection("c1", user_id="u1")
    make_connection("c2", user_id="u1")
    raw = lambda_handler(event, None)
    response = client.get(path)
    assert (response.status_code, response.get_json()) == (raw["statusCode"], raw["body"])


# Status changes ---------------------------------------------------------------------------


def test_update_connection_status__disconnects_with_reason_admin(
    client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    make_connection("c1", user_id="u1")
    response = client.patch("/connections/c1", json={"status": "DISCONNECTED"})
    assert response.status_code == 200
    record = response.get_json()["connection"]
    assert (record["status"], record["disconnectReason"], record["disconnectedAt"]) == ("DISCONNECTED", "admin", iso(NOW))
    stored = raw_item("c1")
    assert stored["status"] == "DISCONNECTED" and stored["disconnectReason"] == "admin"
    assert "activeShard" not in stored
    assert [(a["principal"], a["action"], a["target"], a["outcome"]) for a in audits()] == [
        ("local:operator", "update_connection_status", "connectionId=c1", "ok:200")
    ]


def test_update_connection_status__reconnects(client: FlaskClient, make_connection: Any) -> None:
    make_connection("c1", user_id="u1", status="DISCONNECTED")
    response = client.patch("/connections/c1", json={"status": "CONNECTED"})
    assert response.status_code == 200
    assert response.get_json()["connection"]["status"] == "CONNECTED"
    stored = raw_item("c1")
    assert stored["status"] == "CONNECTED" and "disconnectReason" not in stored


def test_update_connection_status__same_body_as_the_raw_action(
    client: FlaskClient, handler_service: ConnectionService, make_connection: Any
) -> None:
    make_connection("c1", user_id="u1")
    make_connection("c2", user_id="u1")
    raw = lambda_handler({"action": "update_connection_status", "connectionId": "c1", "status": "DISCONNECTED"}, None)
    response = client.patch("/connections/c2", json={"status": "DISCONNECTED"})
    http_record = {**response.get_json()["connection"], "connectionId": "c1"}
    assert (response.status_code, http_record) == (raw["statusCode"], raw["body"]["connection"])


def test_update_connection_status__missing_is_404_and_creates_nothing(
    client: FlaskClient, dynamodb: Any, audits: Audits
) -> None:
    response = client.patch("/connections/ghost", json={"status": "DISCONNECTED"})
    assert response.status_code == 404
    assert error_of(response)["error"] == "NotFound"
    assert raw_item("ghost") is None
    assert [a["outcome"] for a in audits()] == ["error:NotFound"]


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"json": {"status": "ASLEEP"}}, 400, "ValidationError"),
        ({"json": {"status": "DISCONNECTED", "connectionId": "other"}}, 400, "ValidationError"),
        ({"json": {}}, 400, "ValidationError"),
        ({"json": ["DISCONNECTED"]}, 400, "ValidationError"),
        ({"data": "{not json", "content_type": "application/json"}, 400, "ValidationError"),
        ({"data": "", "content_type": "application/json"}, 400, "ValidationError"),
        ({"data": "status=DISCONNECTED", "content_type": "application/x-www-form-urlencoded"}, 415, "UnsupportedMediaType"),
        ({"data": '{"status": "DISCONNECTED"}', "content_type": "text/plain"}, 415, "UnsupportedMediaType"),
    ],
    ids=["unknown-status", "body-sets-id", "no-status", "array", "malformed", "empty", "form", "text"],
)
def test_update_connection_status__invalid_request_changes_nothing(
    client: FlaskClient,
    make_connection: Any,
    audits: Audits,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    make_connection("c1", user_id="u1")
    response = client.patch("/connections/c1", **kwargs)
    assert response.status_code == status
    assert error_of(response)["error"] == code
    assert raw_item("c1")["status"] == "CONNECTED"
    assert [a["outcome"] for a in audits()] == [f"error:{code}"]


def test_update_connection_status__body_too_large_is_413(client: FlaskClient, make_connection: Any) -> None:
    make_connection("c1", user_id="u1")
    response = client.patch("/connections/c1", json={"status": "DISCONNECTED", "pad": "x" * 70_000})
    assert response.status_code == 413
    assert error_of(response)["error"] == "PayloadTooLarge"
    assert raw_item("c1")["status"] == "CONNECTED"


def test_disconnect_user__disconnects_every_live_connection(
    client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    make_connection("a1", user_id="alice")
    make_connection("a2", user_id="alice")
    make_connection("b1", user_id="bob")
    response = client.post("/users/alice/disconnect")
    assert response.status_code == 200
    assert response.get_json() == {"disconnectedCount": 2}
    assert [raw_item(c)["status"] for c in ("a1", "a2", "b1")] == ["DISCONNECTED", "DISCONNECTED", "CONNECTED"]
    assert raw_item("a1")["disconnectReason"] == "admin"
    assert [(a["action"], a["target"], a["outcome"], a["disconnectedCount"]) for a in audits()] == [
        ("disconnect_user", "userId=alice", "ok:200", 2)
    ]


def test_disconnect_user__empty_json_object_is_accepted(client: FlaskClient, make_connection: Any) -> None:
    make_connection("a1", user_id="alice")
    response = client.post("/users/alice/disconnect", json={})
    assert response.status_code == 200
    assert response.get_json() == {"disconnectedCount": 1}


def test_disconnect_user__body_with_fields_is_400(client: FlaskClient, make_connection: Any) -> None:
    make_connection("a1", user_id="alice")
    response = client.post("/users/alice/disconnect", json={"userId": "bob"})
    assert response.status_code == 400
    assert raw_item("a1")["status"] == "CONNECTED"


def test_cleanup_stale_connections__empty_body_uses_the_defaults(
    client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    make_connection("fresh", user_id="u1", idle=timedelta(minutes=10))
    make_connection("stale", user_id="u2", idle=timedelta(hours=2))
    response = client.post("/connections/cleanup")
    assert response.status_code == 200
    body = response.get_json()
    assert body["message"] == "Stale connections cleaned up"
    assert (body["cleanedCount"], body["dryRun"], body["staleAfterSeconds"]) == (1, False, 3600)
    assert raw_item("stale")["status"] == "DISCONNECTED" and raw_item("stale")["disconnectReason"] == "stale"
    assert raw_item("fresh")["status"] == "CONNECTED"
    assert [(a["action"], a["outcome"], a["cleanedCount"], a["dryRun"]) for a in audits()] == [
        ("cleanup_stale_connections", "ok:200", 1, False)
    ]


def test_cleanup_stale_connections__dry_run_changes_nothing(client: FlaskClient, make_connection: Any) -> None:
    make_connection("stale", user_id="u2", idle=timedelta(hours=2))
    response = client.post("/connections/cleanup", json={"dryRun": True})
    assert response.status_code == 200
    assert (response.get_json()["cleanedCount"], response.get_json()["dryRun"]) == (1, True)
    assert raw_item("stale")["status"] == "CONNECTED"


def test_cleanup_stale_connections__threshold_from_the_body(client: FlaskClient, make_connection: Any) -> None:
    make_connection("ten-minutes", user_id="u1", idle=timedelta(minutes=10))
    response = client.post("/connections/cleanup", json={"staleAfterSeconds": 300})
    assert response.status_code == 200
    assert response.get_json()["cleanedCount"] == 1
    assert raw_item("ten-minutes")["status"] == "DISCONNECTED"


@pytest.mark.parametrize("body", [{"staleAfterSeconds": "300"}, {"dryRun": "yes"}, {"staleAfterSeconds": 0}, {"force": True}])
def test_cleanup_stale_connections__invalid_body_is_400(client: FlaskClient, make_connection: Any, body: Any) -> None:
    make_connection("stale", user_id="u2", idle=timedelta(hours=2))
    response = client.post("/connections/cleanup", json=body)
    assert response.status_code == 400
    assert error_of(response)["error"] == "ValidationError"
    assert raw_item("stale")["status"] == "CONNECTED"


# Routing and errors ---------------------------------------------------------------------


def test_routing__unknown_path_is_json_404(client: FlaskClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert error_of(response) == {"error": "NotFound", "message": "No such path: /nowhere"}


def test_routing__wrong_method_is_json_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/connections/c1")
    assert response.status_code == 405
    assert error_of(response)["error"] == "MethodNotAllowed"
    assert {"GET", "PATCH"} <= set(response.headers["Allow"].replace(" ", "").split(","))


def test_routing__get_on_cleanup__405_not_a_sweep(client: FlaskClient, make_connection: Any) -> None:
    # The fixed path wins over /connections/{connectionId}, as OpenAPI matches paths
    make_connection("stale", user_id="u2", idle=timedelta(hours=2))
    response = client.get("/connections/cleanup")
    assert response.status_code == 405 and "POST" in response.headers["Allow"] and "GET" not in response.headers["Allow"]
    assert raw_item("stale")["status"] == "CONNECTED"


def test_errors__unexpected_exception_is_a_generic_500(
    client: FlaskClient, service: ConnectionService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("secret detail AKIAEXAMPLE")

    monkeypatch.setattr(service, "stats", broken)
    response = client.get("/stats")
    assert response.status_code == 500
    body = error_of(response)
    assert body["error"] == "InternalError"
    assert "secret" not in body["message"] and "Traceback" not in response.get_data(as_text=True)
    assert any("unhandled error" in r.getMessage() and r.exc_info for r in caplog.records)


def test_errors__unexpected_exception_in_a_change_is_audited(
    client: FlaskClient, service: ConnectionService, monkeypatch: pytest.MonkeyPatch, audits: Audits
) -> None:
    monkeypatch.setattr(service, "admin_disconnect_user", lambda user_id: 1 / 0)
    response = client.post("/users/alice/disconnect")
    assert response.status_code == 500
    assert [a["outcome"] for a in audits()] == ["error:InternalError"]


# Access ---------------------------------------------------------------------------------


def test_auth__missing_token_is_401_and_audited(
    token_client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    make_connection("c1", user_id="u1")
    response = token_client.patch("/connections/c1", json={"status": "DISCONNECTED"})
    assert response.status_code == 401
    assert error_of(response)["error"] == "Unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert raw_item("c1")["status"] == "CONNECTED"
    assert [(a["principal"], a["action"], a["target"], a["outcome"]) for a in audits()] == [
        ("local:anonymous", "update_connection_status", "connectionId=c1", "denied:Unauthorized")
    ]


def test_auth__wrong_token_is_403_and_audited(
    token_client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    make_connection("stale", user_id="u1", idle=timedelta(hours=2))
    response = token_client.post("/connections/cleanup", headers={"Authorization": "Bearer guess"})
    assert response.status_code == 403
    assert error_of(response)["error"] == "Forbidden"
    assert raw_item("stale")["status"] == "CONNECTED"
    assert [a["outcome"] for a in audits()] == ["denied:Forbidden"]


def test_auth__right_token_changes_state_as_token_holder(
    token_client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    make_connection("a1", user_id="alice")
    response = token_client.post("/users/alice/disconnect", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert raw_item("a1")["status"] == "DISCONNECTED"
    assert [(a["principal"], a["outcome"]) for a in audits()] == [("local:token-holder", "ok:200")]


def test_auth__cross_site_browser_request_is_refused(
    client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    make_connection("a1", user_id="alice")
    response = client.post("/users/alice/disconnect", headers={"Origin": "http://attacker.example"})
    assert response.status_code == 403
    assert raw_item("a1")["status"] == "CONNECTED"
    assert [a["outcome"] for a in audits()] == ["denied:Forbidden"]
    same_origin = client.post("/users/alice/disconnect", headers={"Origin": "http://localhost"})
    assert same_origin.status_code == 200


def test_auth__iam_principal_from_the_api_gateway_event(
    app: Flask, make_connection: Any, audits: Audits
) -> None:
    make_connection("conn-1", user_id="u1")
    status, headers, body = gateway_request(app, load_event("apigateway_admin_patch"))
    assert status == 200, body
    assert json.loads(body)["connection"]["status"] == "DISCONNECTED"
    assert raw_item("conn-1")["status"] == "DISCONNECTED"
    assert [(a["principal"], a["action"], a["target"], a["outcome"]) for a in audits()] == [
        (f"iam:{OPERATOR_ARN}", "update_connection_status", "connectionId=conn-1", "ok:200")
    ]


def test_auth__iam_request_needs_no_bearer_token(
    token_client: FlaskClient, make_connection: Any, audits: Audits
) -> None:
    # With SigV4 the Authorization header holds the signature; API Gateway has checked it.
    make_connection("conn-1", user_id="u1")
    status, _, body = gateway_request(token_client.application, load_event("apigateway_admin_patch"))
    assert status == 200, body
    assert [a["principal"] for a in audits()] == [f"iam:{OPERATOR_ARN}"]


def test_auth__api_gateway_request_without_identity_is_refused(
    app: Flask, make_connection: Any, audits: Audits
) -> None:
    make_connection("conn-1", user_id="u1")
    event = load_event("apigateway_admin_patch")
    event["requestContext"]["identity"] = {"sourceIp": "198.51.100.7", "userArn": None, "caller": None}
    status, _, body = gateway_request(app, event)
    assert status == 403
    assert json.loads(body)["error"] == "Forbidden"
    assert raw_item("conn-1")["status"] == "CONNECTED"
    assert [(a["principal"], a["outcome"]) for a in audits()] == [("iam:unknown", "denied:Forbidden")]


def test_auth__http_api_v2_iam_identity() -> None:
    event = {"version": "2.0", "requestContext": {"authorizer": {"iam": {"userArn": OPERATOR_ARN}}}}
    assert iam_identity(event) == OPERATOR_ARN
    assert authorize_change({"lambda.event": event}, None, None) == f"iam:{OPERATOR_ARN}"
    assert authorize_change({"serverless.event": event}, None, None) == f"iam:{OPERATOR_ARN}"


@pytest.mark.parametrize(
    "header, expected",
    [(None, None), ("", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None)],
)
def test_auth__bearer_token_parsing(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


def test_auth__token_checks_locally() -> None:
    assert authorize_change({}, None, None) == "local:operator"
    with pytest.raises(UnauthorizedError):
        authorize_change({}, None, TOKEN)
    with pytest.raises(ForbiddenError):
        authorize_change({}, f"Bearer {TOKEN}x", TOKEN)
    assert authorize_change({}, f"Bearer {TOKEN}", TOKEN) == "local:token-holder"


# Pages ----------------------------------------------------------------------------------


def test_dashboard__served_with_its_assets(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "Connection Manager" in html
    for asset in ("dashboard.css", "charts.js", "dashboard.js"):
        assert asset in html
        assert client.get(f"/static/{asset}").status_code == 200


def test_dashboard__links_follow_the_api_gateway_stage(app: Flask) -> None:
    event = load_event("apigateway_rest_request")
    event["path"] = "/"
    event["requestContext"]["path"] = "/production/"
    status, headers, body = gateway_request(app, event)
    assert status == 200
    html = body.decode()
    assert 'content="/production"' in html
    assert "/production/static/dashboard.js" in html


def test_docs__self_contained_page(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'data-spec-url="/openapi.json"' in html
    # Nothing is loaded from another host: no CDN scripts, styles or fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html


def test_openapi__documents_every_registered_route(app: Flask, client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    registered = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
        registered |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == registered
    assert len(API_ROUTES) + len(PAGE_ROUTES) == len(registered)


def test_openapi__components_come_from_the_schemas(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    components = document["components"]["schemas"]
    assert {"ConnectionRecord", "ConnectionList", "CleanupResult", "Stats", "Health", "ErrorBody"} <= set(components)
    assert components["StatusChange"]["properties"]["status"]["enum"] == ["CONNECTED", "DISCONNECTED"]
    limit = next(p for p in document["paths"]["/connections"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["in"], limit["schema"]["type"], limit["schema"]["maximum"]) == ("query", "integer", 1000)
    # The app under test has no admin token and runs on loopback: nothing asks for credentials.
    patch = document["paths"]["/connections/{connectionId}"]["patch"]
    assert patch["security"] == []
    assert "401" not in patch["responses"]
    assert document["components"]["securitySchemes"] == {}


def test_openapi__servers_follow_the_api_gateway_stage(app: Flask) -> None:
    event = load_event("apigateway_rest_request")
    event["path"] = "/openapi.json"
    status, _, body = gateway_request(app, event, stage="dev")
    assert status == 200
    assert json.loads(body)["servers"][0]["url"] == "/dev"


# Server ---------------------------------------------------------------------------------


def test_serve__embedded_without_moto_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from connection_manager.server import serve

    monkeypatch.setitem(sys.modules, "moto.server", None)  # makes `from moto.server import ...` fail
    assert serve(port=0, embedded=True) == 2
    assert "pip install -e '.[dev]'" in capsys.readouterr().err


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background-job"])
def test_serve__embedded_demo_on_a_free_port_stops_cleanly_on_ctrl_c(sigint_ignored: bool) -> None:
    # A shell starts a background job (`scripts/test &`, a CI runner) with SIGINT ignored, and
    # the child inherits that; the server must still stop on SIGINT instead of hanging.
    with ServeProcess(sigint_ignored=sigint_ignored) as server:
        url = server.start()
        with urllib.request.urlopen(url + "stats", timeout=10) as response:
            stats = json.load(response)
        assert (stats["activeConnections"], stats["staleConnections"]) == (75, 15)
        # A name that is not this machine (DNS rebinding) is refused on a loopback bind.
        rebound = urllib.request.Request(url + "stats", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=10)
        assert refused.value.code == 400
        assert json.load(refused.value)["error"] == "ValidationError"

        assert server.stop() == 0
        assert "stopped" in server.output
