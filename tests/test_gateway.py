"""The lifecycle at API Gateway: sockets closed for real, the sweep asks before it marks.

The table is moto in-process; API Gateway's ``@connections`` API is the stand-in
(``tests/support/gateway_standin.py``) on loopback, reached by the real boto3 client.
Backoff waits are recorded by the ``sleeps`` fixture, never slept.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from connection_manager.config import Settings
from connection_manager.errors import ConfigurationError
from connection_manager.gateway import GONE, UNREACHABLE, Alive, Gateway, management_endpoint
from connection_manager.handler import lambda_handler
from connection_manager.operations import run_action
from tests.support.events import load_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import ENDPOINT, FIXTURE_LIFETIME_SECONDS, NOW, iso, raw_item


def ok(service: Any, action: str, **payload: Any) -> dict[str, Any]:
    status, body = run_action(service, action, payload)
    assert status == 200, body
    return body


# --- where to reach the socket ------------------------------------------------------------


def test_connect__stores_the_management_endpoint_but_never_answers_it(handler_service):
    # Given API Gateway's $connect event for API abcdef1234, stage production
    event = load_event("websocket_connect")

    # When it reaches the handler
    assert lambda_handler(event)["statusCode"] == 200

    # Then the row holds https://{domainName}/{stage}, and no response shows it
    connection_id = event["requestContext"]["connectionId"]
    assert raw_item(connection_id)["gatewayEndpoint"] == ENDPOINT
    record = ok(handler_service, "get_connection", connectionId=connection_id)["connection"]
    assert "gatewayEndpoint" not in record and ENDPOINT not in str(record)
    listed = ok(handler_service, "get_all_connections")["connections"]
    assert ENDPOINT not in str(listed)


@pytest.mark.parametrize(
    ("domain", "stage", "expected"),
    [
        ("abc.execute-api.eu-west-1.amazonaws.com", "prod", "https://abc.execute-api.eu-west-1.amazonaws.com/prod"),
        ("localhost:3001", "local", "https://localhost:3001/local"),
        ("evil.example/path", "prod", None),
        ("abc.example", "../x", None),
        (None, "prod", None),
        ("abc.example", 7, None),
    ],
)
def test_management_endpoint__only_from_hostnames_and_stage_names(domain, stage, expected):
    assert management_endpoint(domain, stage) == expected


def test_register_connection__raw_action_cannot_set_an_endpoint(handler_service):
    # Given a raw registration naming an endpoint (only API Gateway's $connect may give one)
    status, body = lambda_handler(
        {"action": "register_connection", "connectionId": "c1", "userId": "u1", "endpoint": "https://x.example/p"}
    ).values()

    # Then it is refused and nothing is stored
    assert status == 400 and body["error"] == "ValidationError"
    assert raw_item("c1") is None


def test_settings__override_must_be_a_url():
    with pytest.raises(ConfigurationError, match="AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"):
        Settings.from_env({"AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": "not a url"})
    settings = Settings.from_env({"AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": "http://127.0.0.1:4510"})
    assert settings.gateway_endpoint_override == "http://127.0.0.1:4510"


def test_settings__built_in_code_follow_the_standard_variable(closed_gateway_url):
    # The autouse environment points the variable at a closed loopback port: a Settings built
    # without it follows it, as botocore does, so no test can reach a stored execute-api host.
    assert Settings().gateway_endpoint_override == closed_gateway_url


# --- admin disconnects close sockets ------------------------------------------------------


def test_update_connection_status__disconnected_closes_the_socket(service, make_connection, gateway, clock):
    # Given a live connection whose socket is open at API Gateway
    make_connection("c1", endpoint=ENDPOINT)
    gateway.open("c1", NOW)

    # When an admin sets it DISCONNECTED
    body = ok(service, "update_connection_status", connectionId="c1", status="DISCONNECTED")

    # Then the row is marked (reason admin) and the socket is closed with DeleteConnection
    assert body == {"connection": body["connection"]} and body["connection"]["disconnectReason"] == "admin"
    assert raw_item("c1")["status"] == "DISCONNECTED"
    assert [(c.method, c.stage, c.connection_id) for c in gateway.calls] == [("DELETE", "", "c1")]
    assert not gateway.is_open("c1")


def test_update_connection_status__gone_socket_counts_as_closed(service, make_connection, gateway):
    # Given a live row whose socket API Gateway no longer has (410)
    make_connection("c1", endpoint=ENDPOINT)

    # When an admin disconnects it
    body = ok(service, "update_connection_status", connectionId="c1", status="DISCONNECTED")

    # Then 410 is success: nothing is reported as left open
    assert "notClosedCount" not in body
    assert [c.status for c in gateway.calls] == [410]
    assert raw_item("c1")["disconnectReason"] == "admin"


def test_update_connection_status__gateway_unreachable_still_marks_and_reports(
    service, settings, make_connection, closed_gateway_url, sleeps
):
    # Given a live connection and an API Gateway that refuses every connection
    service.gateway = Gateway(replace(settings, gateway_endpoint_override=closed_gateway_url), sleep=sleeps.append)
    make_connection("c1", endpoint=ENDPOINT)

    # When an admin disconnects it
    body = ok(service, "update_connection_status", connectionId="c1", status="DISCONNECTED")

    # Then the row is marked all the same, the answer says one socket stayed open, after retries
    assert body["notClosedCount"] == 1 and body["connection"]["status"] == "DISCONNECTED"
    assert raw_item("c1")["disconnectReason"] == "admin"
    assert len(sleeps) == settings.gateway_max_attempts - 1


def test_update_connection_status__repeating_retries_the_close(service, settings, make_connection, gateway, sleeps):
    # Given a connection an admin disconnected while API Gateway was throttling every try
    make_connection("c1", endpoint=ENDPOINT)
    gateway.open("c1", NOW)
    gateway.throttle(settings.gateway_max_attempts)
    assert ok(service, "update_connection_status", connectionId="c1", status="DISCONNECTED")["notClosedCount"] == 1

    # When the admin repeats the request
    body = ok(service, "update_connection_status", connectionId="c1", status="DISCONNECTED")

    # Then the close is sent again and succeeds; the row is unchanged
    assert "notClosedCount" not in body
    assert not gateway.is_open("c1")
    assert raw_item("c1")["disconnectReason"] == "admin"


def test_update_connection_status__client_disconnected_row_sends_nothing(service, make_connection, gateway):
    # Given a row its client closed ($disconnect): the socket is known closed
    make_connection("c1", status="DISCONNECTED", reason="client", endpoint=ENDPOINT)

    # When an admin sets it DISCONNECTED
    ok(service, "update_connection_status", connectionId="c1", status="DISCONNECTED")

    # Then API Gateway is not called
    assert gateway.calls == []


def test_update_connection_status__row_without_endpoint_as_before(service, make_connection, gateway):
    # Given a live row another tool wrote (no endpoint)
    make_connection("c1")

    # When an admin disconnects it
    body = ok(service, "update_connection_status", connectionId="c1", status="DISCONNECTED")

    # Then it is marked and nothing is sent to API Gateway
    assert body["connection"]["status"] == "DISCONNECTED" and "notClosedCount" not in body
    assert gateway.calls == []


def test_disconnect_user__closes_every_socket_concurrently_and_bounded(service, settings, make_connection, gateway):
    # Given a user with 12 open sockets and an API Gateway 20 ms away
    for index in range(12):
        make_connection(f"c{index:02d}", user_id="alice", endpoint=ENDPOINT)
        gateway.open(f"c{index:02d}", NOW)
    make_connection("bob-1", user_id="bob", endpoint=ENDPOINT)
    gateway.open("bob-1", NOW)
    gateway.latency_ms = 20

    # When an admin disconnects the user
    body = ok(service, "disconnect_user", userId="alice")

    # Then all 12 rows are marked and closed, several at a time but never more than the bound
    assert body == {"disconnectedCount": 12}
    assert sorted(c.connection_id for c in gateway.calls_of("DELETE")) == [f"c{i:02d}" for i in range(12)]
    assert 1 < gateway.max_in_flight <= settings.sweep_concurrency
    assert all(raw_item(f"c{i:02d}")["disconnectReason"] == "admin" for i in range(12))
    assert gateway.is_open("bob-1") and raw_item("bob-1")["status"] == "CONNECTED"


def test_disconnect_user__unreachable_gateway_reports_sockets_not_closed(
    service, settings, make_connection, closed_gateway_url, sleeps
):
    # Given a user with 3 connections and an unreachable API Gateway
    service.gateway = Gateway(replace(settings, gateway_endpoint_override=closed_gateway_url), sleep=sleeps.append)
    for index in range(3):
        make_connection(f"c{index}", user_id="alice", endpoint=ENDPOINT)

    # When an admin disconnects the user
    body = ok(service, "disconnect_user", userId="alice")

    # Then every row is marked and the answer says 3 sockets could not be closed
    assert body == {"disconnectedCount": 3, "notClosedCount": 3}
    assert all(raw_item(f"c{i}")["status"] == "DISCONNECTED" for i in range(3))


# --- failures -----------------------------------------------------------------------------


def test_close__throttled_is_retried_with_backoff(service, settings, gateway, sleeps):
    # Given API Gateway throttles the first call (429 LimitExceededException)
    gateway.open("c1", NOW)
    gateway.throttle(1)

    # When the socket is closed
    closed = service.gateway.close(ENDPOINT, "c1")

    # Then the call was retried after one backoff wait, within the configured ceiling, and succeeded
    assert closed is True
    assert [c.status for c in gateway.calls] == [429, 204]
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= settings.gateway_backoff_base_ms / 1000


def test_close__forbidden_logs_the_missing_permission_once(service, gateway, caplog):
    # Given the function's role lacks execute-api:ManageConnections
    gateway.open("c1", NOW)
    gateway.forbid(2)

    # When two closes are refused
    with caplog.at_level(logging.ERROR, logger="connection_manager.gateway"):
        results = [service.gateway.close(ENDPOINT, "c1"), service.gateway.close(ENDPOINT, "c1")]

    # Then neither is retried, and one line names the permission and the resource
    assert results == [False, False]
    assert [c.status for c in gateway.calls] == [403, 403]
    lines = [r.getMessage() for r in caplog.records if "ForbiddenException" in r.getMessage()]
    assert len(lines) == 1
    assert "execute-api:ManageConnections" in lines[0]
    assert "arn:aws:execute-api:us-east-1:<account>:abcdef1234/production/DELETE/@connections/*" in lines[0]


def test_probe__reads_api_gateways_answer(service, gateway):
    gateway.open("c1", NOW - timedelta(minutes=5), NOW - timedelta(seconds=30))
    assert service.gateway.probe(ENDPOINT, "c1") == Alive(NOW - timedelta(minutes=5), NOW - timedelta(seconds=30))
    assert service.gateway.probe(ENDPOINT, "nope") == GONE


def test_probe__unreachable_never_raises(settings, closed_gateway_url, sleeps):
    gateway = Gateway(replace(settings, gateway_endpoint_override=closed_gateway_url), sleep=sleeps.append)
    assert gateway.probe(ENDPOINT, "c1") == UNREACHABLE


# --- the sweep asks before it marks -------------------------------------------------------


@pytest.fixture
def sweep_rows(make_connection, gateway, clock):
    """Five stale-looking rows (idle 2 h) and what API Gateway knows of each."""
    idle = timedelta(hours=2)
    make_connection("gone", idle=idle, endpoint=ENDPOINT)  # 410
    make_connection("receiver", idle=idle, endpoint=ENDPOINT)  # open, active a minute ago
    gateway.open("receiver", NOW - timedelta(hours=3), NOW - timedelta(minutes=1))
    make_connection("idle", idle=idle, endpoint=ENDPOINT)  # open, but idle at the gateway too
    gateway.open("idle", NOW - timedelta(hours=3), NOW - timedelta(hours=2))
    make_connection("foreign", idle=idle)  # no endpoint: as before
    make_connection("fresh", endpoint=ENDPOINT)  # not stale: never asked
    gateway.open("fresh", NOW, NOW)
    return gateway


def test_cleanup__asks_the_gateway_before_marking(service, sweep_rows):
    # When the sweep runs
    body = ok(service, "cleanup_stale_connections")

    # Then the gone socket is DISCONNECTED with reason gone
    assert raw_item("gone")["status"] == "DISCONNECTED" and raw_item("gone")["disconnectReason"] == "gone"
    # the receive-only client stays CONNECTED and takes the gateway's time
    receiver = raw_item("receiver")
    assert receiver["status"] == "CONNECTED" and receiver["lastActiveAt"] == iso(NOW - timedelta(minutes=1))
    assert "activeShard" in receiver
    # the socket idle at the gateway too, and the row without an endpoint, are stale as before
    assert raw_item("idle")["disconnectReason"] == "stale"
    assert raw_item("foreign")["disconnectReason"] == "stale"
    assert raw_item("fresh")["status"] == "CONNECTED"
    # and the body counts each outcome
    assert body["cleanedCount"] == 3 and body["goneCount"] == 1
    assert body["reconciledCount"] == 1 and body["unreconciledCount"] == 0
    assert body["skippedCount"] == 0 and body["complete"] is True
    # Only the stale rows with an endpoint were asked about, with GetConnection; the one open
    # but idle at the gateway too was then closed
    assert sorted((c.method, c.connection_id) for c in sweep_rows.calls) == [
        ("DELETE", "idle"), ("GET", "gone"), ("GET", "idle"), ("GET", "receiver")
    ]


def test_cleanup__reconciled_row_is_not_swept_next_run(service, sweep_rows, clock):
    ok(service, "cleanup_stale_connections")
    clock.advance(minutes=10)
    body = ok(service, "cleanup_stale_connections")
    assert body["cleanedCount"] == 0 and raw_item("receiver")["status"] == "CONNECTED"


def test_cleanup__unreachable_gateway_sweeps_as_before_and_counts(
    service, settings, make_connection, closed_gateway_url, sleeps
):
    # Given two stale rows with endpoints and an API Gateway out of reach
    service.gateway = Gateway(replace(settings, gateway_endpoint_override=closed_gateway_url), sleep=sleeps.append)
    make_connection("a", idle=timedelta(hours=2), endpoint=ENDPOINT)
    make_connection("b", idle=timedelta(hours=2), endpoint=ENDPOINT)

    # When the sweep runs
    status, body = run_action(service, "cleanup_stale_connections", {})

    # Then it succeeds, marks both stale and says they were not reconciled
    assert status == 200
    assert body["cleanedCount"] == 2 and body["unreconciledCount"] == 2 and body["goneCount"] == 0
    assert raw_item("a")["disconnectReason"] == "stale"


def test_cleanup__dry_run_asks_nothing(service, sweep_rows):
    body = ok(service, "cleanup_stale_connections", dryRun=True)
    assert body["cleanedCount"] == 4 and sweep_rows.calls == []
    assert raw_item("gone")["status"] == "CONNECTED"


def test_cleanup__gateway_calls_are_concurrent_and_bounded(service, settings, make_connection, gateway):
    # Given 12 stale rows whose sockets API Gateway (20 ms away) no longer has
    for index in range(12):
        make_connection(f"s{index:02d}", idle=timedelta(hours=2), endpoint=ENDPOINT)
    gateway.latency_ms = 20

    # When the sweep runs
    body = ok(service, "cleanup_stale_connections")

    # Then every row is gone, asked about several at a time but within the bound
    assert body["goneCount"] == 12
    assert 1 < gateway.max_in_flight <= settings.sweep_concurrency


def test_cleanup__open_but_idle_at_the_gateway__marked_stale_and_closed(service, sweep_rows):
    # When the sweep marks a row whose socket API Gateway still holds (idle there too)
    body = ok(service, "cleanup_stale_connections")

    # Then the socket is closed as well, so the row and API Gateway agree
    assert raw_item("idle")["disconnectReason"] == "stale"
    assert not sweep_rows.is_open("idle")
    assert sweep_rows.is_open("receiver") and sweep_rows.is_open("fresh")
    assert "notClosedCount" not in body


def test_cleanup__rows_past_their_lifetime__sockets_closed(service, make_connection, gateway):
    # Given rows past the lifetime (set shorter than API Gateway's own 2 hours, so a socket
    # can still be open), one of them already closed at the gateway, one without an endpoint
    old = timedelta(seconds=FIXTURE_LIFETIME_SECONDS + 60)
    make_connection("open", age=old, endpoint=ENDPOINT)
    gateway.open("open", NOW - old, NOW)
    make_connection("closed", age=old, endpoint=ENDPOINT)
    make_connection("foreign", age=old)
    make_connection("young", endpoint=ENDPOINT)
    gateway.open("young", NOW, NOW)

    # When the sweep runs
    body = ok(service, "cleanup_stale_connections")

    # Then all three are marked lifetime, and the two sockets it knows of are closed (410 counts
    # as closed); the young connection is left alone
    assert body["lifetimeCount"] == 3 and "notClosedCount" not in body
    assert {raw_item(cid)["disconnectReason"] for cid in ("open", "closed", "foreign")} == {"lifetime"}
    assert sorted((c.method, c.connection_id, c.status) for c in gateway.calls) == [
        ("DELETE", "closed", 410), ("DELETE", "open", 204)
    ]
    assert not gateway.is_open("open") and gateway.is_open("young")


def test_cleanup__lifetime_socket_not_closed__marked_and_reported(service, make_connection, gateway):
    # Given a row past its lifetime whose close API Gateway refuses (the role lacks the permission)
    old = timedelta(seconds=FIXTURE_LIFETIME_SECONDS + 60)
    make_connection("c1", age=old, endpoint=ENDPOINT)
    gateway.open("c1", NOW - old, NOW)
    gateway.forbid(1)

    # When the sweep runs
    body = ok(service, "cleanup_stale_connections")

    # Then the row is marked all the same and the answer says one socket stayed open
    assert body["lifetimeCount"] == 1 and body["notClosedCount"] == 1
    assert raw_item("c1")["disconnectReason"] == "lifetime"


def test_cleanup__dry_run__closes_nothing(service, make_connection, gateway):
    make_connection("c1", age=timedelta(seconds=FIXTURE_LIFETIME_SECONDS + 60), endpoint=ENDPOINT)
    gateway.open("c1", NOW, NOW)
    body = ok(service, "cleanup_stale_connections", dryRun=True)
    assert body["lifetimeCount"] == 1 and gateway.calls == [] and gateway.is_open("c1")


# --- the demo stays on loopback -----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [(None, False), ("https://abcdef1234.execute-api.us-east-1.amazonaws.com/production", False),
     ("http://127.0.0.1:4510", True)],
)
def test_serve_embedded__gateway_calls_stay_on_loopback(given, kept):
    import socket
    from urllib.parse import urlsplit

    from connection_manager.server import point_at

    # Given the environment the embedded demo starts from
    env = {} if given is None else {"AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": given}

    # When it is pointed at its embedded DynamoDB
    point_at("http://127.0.0.1:5000", env)

    # Then a loopback override is kept; anything else becomes a loopback port that refuses
    url = env["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"]
    if kept:
        assert url == given
        return
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    with pytest.raises(ConnectionRefusedError), socket.create_connection((parts.hostname, parts.port), timeout=2):
        pass


# --- IAM: the shipped policy grants exactly the calls made ---------------------------------


@pytest.mark.parametrize("stage", ["dev", "production"])
def test_policy__grants_exactly_the_gateway_calls_made(stage, service, gateway):
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    settings = json.loads((root / "zappa_settings.json").read_text())
    env = {**settings["dev"]["aws_environment_variables"], **settings[stage]["aws_environment_variables"]}
    policy_file = settings[stage].get("attach_policy", settings["dev"]["attach_policy"])
    policy = json.loads((root / policy_file).read_text())

    # Given every kind of gateway call the function makes
    gateway.open("c1", NOW)
    service.gateway.probe(ENDPOINT, "c1")
    service.gateway.close(ENDPOINT, "c1")
    made = {call.method for call in gateway.calls}

    # Then the policy grants ManageConnections on those methods of the configured API and stage, no more
    granted = {
        resource
        for statement in policy["Statement"]
        if "execute-api:ManageConnections" in statement["Action"]
        for resource in statement["Resource"]
    }
    prefix = f"arn:aws:execute-api:*:*:{env['WEBSOCKET_API_ID']}/{env['WEBSOCKET_STAGE']}/"
    assert granted == {f"{prefix}{method}/@connections/*" for method in made}
    assert made == {"GET", "DELETE"}
