"""``lambda_handler`` with raw action payloads, the EventBridge schedule and WebSocket events.

Events go in exactly as AWS (or ``aws lambda invoke``) delivers them; each test checks the
whole response shape and the rows left in the table.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest

import connection_manager.observability as observability
from connection_manager.config import Settings
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from connection_manager.tokens import Cursor
from models.connection import shard_for
from tests.support.events import FakeLambdaContext, load_event, websocket_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import iso, raw_item, raw_items

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, handler_service: ConnectionService) -> None:
    """Every test runs the handler on the test's service, with a recognisable secret key.

    Logging setup is skipped: it replaces the root handlers, which would hide the audit
    lines from ``caplog``.
    """
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setattr(observability, "_configured", True)


def invoke(event: Any, context: Any = None) -> dict[str, Any]:
    response = lambda_handler(event, context or FakeLambdaContext())
    assert isinstance(response, dict)
    json.dumps(response)  # what Lambda will have to serialize
    return response


def ok(event: Any, status: int = 200) -> dict[str, Any]:
    response = invoke(event)
    assert set(response) == {"statusCode", "body"}, response
    assert response["statusCode"] == status, response
    assert isinstance(response["body"], dict)
    return response["body"]


def error(event: Any, status: int, code: str, *fragments: str) -> dict[str, Any]:
    response = invoke(event)
    assert response["statusCode"] == status, response
    body = response["body"]
    assert isinstance(body, dict)
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    text = json.dumps(body)
    assert "Traceback" not in text and 'File "' not in text
    assert SECRET not in text
    return body


def assert_record(record: dict[str, Any]) -> None:
    assert not {"activeShard", "expiresAt"} & set(record), record
    for name in ("createdAt", "lastActiveAt", "updatedAt", "disconnectedAt"):
        if name in record:
            assert record[name].endswith("Z"), record


def assert_index_invariant(item: dict[str, Any]) -> None:
    if item["status"] == "CONNECTED":
        assert item.get("activeShard") == shard_for(item["connectionId"]), item
    else:
        assert "activeShard" not in item, item


# Success ----------------------------------------------------------------------------------


def test_get_user_connections__answers_the_users_connected_rows(make_connection):
    make_connection("a1", user_id="alice")
    make_connection("a2", user_id="alice", status="DISCONNECTED")
    make_connection("b1", user_id="bob")

    body = ok({"action": "get_user_connections", "userId": "alice"})

    assert body["count"] == 1
    assert [record["connectionId"] for record in body["connections"]] == ["a1"]
    assert_record(body["connections"][0])
    assert set(body) == {"connections", "count"}


def test_get_user_connections__unknown_user_is_an_empty_list(make_connection):
    make_connection("a1", user_id="alice")
    assert ok({"action": "get_user_connections", "userId": "nobody"}) == {"connections": [], "count": 0}


def test_get_all_connections__empty_table():
    assert ok({"action": "get_all_connections"}) == {"connections": [], "count": 0}


def test_get_all_connections__pages_with_limit_and_next_token(make_connection):
    live = {make_connection(f"c{index:02d}", user_id=f"u{index % 3}").connection_id for index in range(23)}
    make_connection("gone", user_id="u0", status="DISCONNECTED")

    seen: list[str] = []
    event: dict[str, Any] = {"action": "get_all_connections", "limit": 7}
    for _ in range(20):
        body = ok(event)
        assert body["count"] == len(body["connections"]) <= 7
        seen += [record["connectionId"] for record in body["connections"]]
        if "nextToken" not in body:
            break
        assert isinstance(body["nextToken"], str)
        event = {"action": "get_all_connections", "limit": 7, "nextToken": body["nextToken"]}
    assert sorted(seen) == sorted(live)


def test_get_connection__any_status(make_connection):
    make_connection("gone", user_id="u1", status="DISCONNECTED", reason="client")

    body = ok({"action": "get_connection", "connectionId": "gone"})

    assert set(body) == {"connection"}
    assert body["connection"]["status"] == "DISCONNECTED"
    assert body["connection"]["disconnectReason"] == "client"
    assert_record(body["connection"])


def test_get_connection__missing_is_404():
    error({"action": "get_connection", "connectionId": "nope"}, 404, "NotFound", "nope")


def test_update_connection_status__disconnects(make_connection, clock):
    make_connection("c1", user_id="u1")
    clock.advance(seconds=5)

    body = ok({"action": "update_connection_status", "connectionId": "c1", "status": "DISCONNECTED"})

    assert body["connection"]["status"] == "DISCONNECTED"
    assert body["connection"]["disconnectedAt"] == iso(clock())
    assert_record(body["connection"])
    item = raw_item("c1")
    assert (item["status"], item["disconnectReason"]) == ("DISCONNECTED", "admin")
    assert_index_invariant(item)


def test_update_connection_status__reconnects(make_connection, clock):
    make_connection("c1", user_id="u1", status="DISCONNECTED", idle=timedelta(hours=1))

    body = ok({"action": "update_connection_status", "connectionId": "c1", "status": "CONNECTED"})

    assert body["connection"]["status"] == "CONNECTED"
    assert body["connection"]["lastActiveAt"] == iso(clock())
    item = raw_item("c1")
    assert item["status"] == "CONNECTED" and "disconnectReason" not in item and "expiresAt" not in item
    assert_index_invariant(item)


def test_update_connection_status__same_status_is_unchanged(make_connection, clock):
    make_connection("c1", user_id="u1")
    before = raw_item("c1")
    clock.advance(minutes=1)

    body = ok({"action": "update_connection_status", "connectionId": "c1", "status": "CONNECTED"})

    assert body["connection"]["lastActiveAt"] == before["lastActiveAt"]
    assert raw_item("c1") == before


@pytest.mark.parametrize("status", ["CONNECTED", "DISCONNECTED"])
def test_update_connection_status__missing_is_404_and_nothing_is_created(status):
    error({"action": "update_connection_status", "connectionId": "ghost", "status": status}, 404, "NotFound", "ghost")
    assert raw_items() == []


def test_cleanup__default_answer_and_rows(make_connection, clock):
    make_connection("stale", user_id="u1", idle=timedelta(hours=2))
    make_connection("fresh", user_id="u1", idle=timedelta(minutes=2))

    body = ok({"action": "cleanup_stale_connections"})

    assert body["message"] == "Stale connections cleaned up"
    assert body["cleanedCount"] == 1
    assert body["cutoff"].endswith("Z")
    stale = raw_item("stale")
    assert (stale["status"], stale["disconnectReason"]) == ("DISCONNECTED", "stale")
    assert_index_invariant(stale)
    assert raw_item("fresh")["status"] == "CONNECTED"


def test_cleanup__stale_after_seconds(make_connection):
    make_connection("idle-5m", user_id="u1", idle=timedelta(minutes=5))
    make_connection("idle-30s", user_id="u1", idle=timedelta(seconds=30))

    body = ok({"action": "cleanup_stale_connections", "staleAfterSeconds": 60})

    assert body["cleanedCount"] == 1
    assert body["staleAfterSeconds"] == 60
    assert raw_item("idle-5m")["status"] == "DISCONNECTED"
    assert raw_item("idle-30s")["status"] == "CONNECTED"


def test_cleanup__dry_run_writes_nothing(make_connection):
    make_connection("stale", user_id="u1", idle=timedelta(hours=2))
    before = raw_items()

    body = ok({"action": "cleanup_stale_connections", "dryRun": True})

    assert body["cleanedCount"] == 1
    assert body["dryRun"] is True
    assert raw_items() == before


def test_cleanup__empty_table():
    body = ok({"action": "cleanup_stale_connections"})
    assert body["cleanedCount"] == 0
    assert body["message"] == "Stale connections cleaned up"


def test_register_connection__201_then_200_with_the_stored_record(clock):
    event = {"action": "register_connection", "connectionId": "c1", "userId": "u1", "metadata": {"sourceIp": "192.0.2.1"}}

    first = ok(event, 201)
    clock.advance(seconds=10)
    again = ok(event, 200)

    assert set(first) == {"connection"}
    assert first["connection"]["createdAt"] == "2024-01-01T12:00:00Z"
    assert again == first
    assert_record(first["connection"])
    assert len(raw_items()) == 1
    assert_index_invariant(raw_item("c1"))


def test_register_connection__other_user_is_409_and_row_unchanged():
    ok({"action": "register_connection", "connectionId": "c1", "userId": "u1"}, 201)
    before = raw_item("c1")

    error({"action": "register_connection", "connectionId": "c1", "userId": "u2"}, 409, "Conflict", "c1")

    assert raw_item("c1") == before


def test_register_connection__disconnected_id_is_409(make_connection):
    make_connection("c1", user_id="u1", status="DISCONNECTED")
    before = raw_item("c1")

    error({"action": "register_connection", "connectionId": "c1", "userId": "u1"}, 409, "Conflict")

    assert raw_item("c1") == before


def test_heartbeat__fresh_last_active_at(make_connection, clock):
    make_connection("c1", user_id="u1", idle=timedelta(minutes=20))
    clock.advance(seconds=1)

    body = ok({"action": "heartbeat", "connectionId": "c1"})

    assert body["connection"]["lastActiveAt"] == "2024-01-01T12:00:01Z"
    assert raw_item("c1")["lastActiveAt"] == "2024-01-01T12:00:01Z"
    assert_record(body["connection"])


def test_heartbeat__disconnected_is_409_and_unchanged(make_connection, clock):
    make_connection("c1", user_id="u1", status="DISCONNECTED")
    before = raw_item("c1")
    clock.advance(seconds=1)

    error({"action": "heartbeat", "connectionId": "c1"}, 409, "Conflict")

    assert raw_item("c1") == before


def test_heartbeat__missing_is_404_and_nothing_created():
    error({"action": "heartbeat", "connectionId": "ghost"}, 404, "NotFound")
    assert raw_items() == []


def test_disconnect_user__count_and_reason(make_connection):
    make_connection("a1", user_id="alice")
    make_connection("a2", user_id="alice")
    make_connection("b1", user_id="bob")
    bob = raw_item("b1")

    body = ok({"action": "disconnect_user", "userId": "alice"})

    assert body == {"disconnectedCount": 2}
    for cid in ("a1", "a2"):
        item = raw_item(cid)
        assert (item["status"], item["disconnectReason"]) == ("DISCONNECTED", "admin")
        assert_index_invariant(item)
    assert raw_item("b1") == bob


def test_disconnect_user__unknown_user_is_zero():
    assert ok({"action": "disconnect_user", "userId": "nobody"}) == {"disconnectedCount": 0}


def test_state_change__writes_one_audit_line_naming_the_invoker(caplog):
    caplog.set_level(logging.INFO, logger="connection_manager.audit")

    ok({"action": "register_connection", "connectionId": "c1", "userId": "u1"}, 201)

    lines = [record for record in caplog.records if record.name == "connection_manager.audit"]
    assert len(lines) == 1
    fields = lines[0].fields
    assert fields["principal"] == "lambda-invoke:" + FakeLambdaContext().invoked_function_arn
    assert fields["action"] == "register_connection"
    assert fields["target"] == "connectionId=c1"
    assert fields["outcome"] == "ok:201"


def test_reads__write_no_audit_line(caplog):
    caplog.set_level(logging.INFO, logger="connection_manager.audit")
    ok({"action": "get_all_connections"})
    assert not [record for record in caplog.records if record.name == "connection_manager.audit"]


# 400: the request itself is wrong ---------------------------------------------------------


@pytest.mark.parametrize("event", [[], ["action"], "get_all_connections", 42, None, True])
def test_not_a_json_object__400(event):
    error(event, 400, "ValidationError", "JSON object")


@pytest.mark.parametrize("event", [{}, {"userId": "u1"}, {"action": None}])
def test_missing_action__400(event):
    error(event, 400, "ValidationError", "action")


@pytest.mark.parametrize("action", ["drop_table", "", "GET_ALL_CONNECTIONS", "x" * 5000])
def test_unknown_action__400(action):
    body = error({"action": action}, 400, "ValidationError", "action")
    assert len(body["message"]) < 1000  # a huge action name is not echoed back whole


@pytest.mark.parametrize("action", [5, ["get_all_connections"], {"name": "x"}])
def test_action_of_wrong_type__400(action):
    error({"action": action}, 400, "ValidationError", "action")


MUTATING_BAD_EVENTS = [
    # missing parameters
    pytest.param({"action": "register_connection", "connectionId": "c1"}, "userId", id="register-no-user"),
    pytest.param({"action": "register_connection", "userId": "u1"}, "connectionId", id="register-no-id"),
    pytest.param({"action": "update_connection_status", "connectionId": "c1"}, "status", id="update-no-status"),
    pytest.param({"action": "update_connection_status", "status": "CONNECTED"}, "connectionId", id="update-no-id"),
    pytest.param({"action": "heartbeat"}, "connectionId", id="heartbeat-no-id"),
    pytest.param({"action": "disconnect_user"}, "userId", id="disconnect-no-user"),
    # empty or blank
    pytest.param({"action": "register_connection", "connectionId": "", "userId": "u1"}, "connectionId", id="empty-id"),
    pytest.param({"action": "register_connection", "connectionId": "c1", "userId": ""}, "userId", id="empty-user"),
    pytest.param({"action": "register_connection", "connectionId": "   ", "userId": "u1"}, "connectionId", id="blank-id"),
    pytest.param({"action": "disconnect_user", "userId": ""}, "userId", id="disconnect-empty-user"),
    # wrong types
    pytest.param({"action": "register_connection", "connectionId": 7, "userId": "u1"}, "connectionId", id="int-id"),
    pytest.param({"action": "register_connection", "connectionId": "c1", "userId": None}, "userId", id="null-user"),
    pytest.param({"action": "register_connection", "connectionId": "c1", "userId": "u1", "metadata": "x"}, "metadata",
                 id="metadata-string"),
    pytest.param({"action": "update_connection_status", "connectionId": "c1", "status": 1}, "status", id="int-status"),
    pytest.param({"action": "cleanup_stale_connections", "dryRun": "true"}, "dryRun", id="dryrun-string"),
    pytest.param({"action": "cleanup_stale_connections", "dryRun": 0}, "dryRun", id="dryrun-int"),
    pytest.param({"action": "cleanup_stale_connections", "staleAfterSeconds": "60"}, "staleAfterSeconds",
                 id="stale-string"),
    pytest.param({"action": "cleanup_stale_connections", "staleAfterSeconds": True}, "staleAfterSeconds",
                 id="stale-bool"),
    pytest.param({"action": "cleanup_stale_connections", "staleAfterSeconds": 60.5}, "staleAfterSeconds",
                 id="stale-float"),
    pytest.param({"action": "cleanup_stale_connections", "staleAfterSeconds": 0}, "staleAfterSeconds", id="stale-0"),
    pytest.param({"action": "cleanup_stale_connections", "staleAfterSeconds": -1}, "staleAfterSeconds",
                 id="stale-negative"),
    pytest.param({"action": "cleanup_stale_connections", "staleAfterSeconds": 10**12}, "staleAfterSeconds",
                 id="stale-huge"),
    # unknown status
    pytest.param({"action": "update_connection_status", "connectionId": "c1", "status": "ACTIVE"}, "status",
                 id="status-active"),
    pytest.param({"action": "update_connection_status", "connectionId": "c1", "status": "connected"}, "status",
                 id="status-lowercase"),
    # keys longer than DynamoDB allows
    pytest.param({"action": "register_connection", "connectionId": "x" * 2049, "userId": "u1"}, "connectionId",
                 id="id-2049-bytes"),
    pytest.param({"action": "register_connection", "connectionId": "c1", "userId": "é" * 1025}, "userId",
                 id="user-2050-bytes-1025-chars"),
    pytest.param({"action": "heartbeat", "connectionId": "€" * 683}, "connectionId", id="id-2049-bytes-3-byte-chars"),
    # unknown fields
    pytest.param({"action": "disconnect_user", "userId": "u1", "reason": "x"}, "reason", id="unknown-field"),
]


@pytest.mark.parametrize("event, field", MUTATING_BAD_EVENTS)
def test_invalid_parameters_of_state_changing_actions__400_and_nothing_written(make_connection, event, field):
    make_connection("c1", user_id="u1", idle=timedelta(hours=5))
    before = raw_items()

    error(event, 400, "ValidationError", field)

    assert raw_items() == before


READ_BAD_EVENTS = [
    pytest.param({"action": "get_user_connections"}, "userId", id="no-user"),
    pytest.param({"action": "get_user_connections", "userId": ""}, "userId", id="empty-user"),
    pytest.param({"action": "get_user_connections", "userId": 123}, "userId", id="int-user"),
    pytest.param({"action": "get_user_connections", "userId": "x" * 2049}, "userId", id="long-user"),
    pytest.param({"action": "get_connection"}, "connectionId", id="no-id"),
    pytest.param({"action": "get_connection", "connectionId": ["c1"]}, "connectionId", id="list-id"),
    pytest.param({"action": "get_all_connections", "limit": "7"}, "limit", id="limit-string"),
    pytest.param({"action": "get_all_connections", "limit": True}, "limit", id="limit-bool"),
    pytest.param({"action": "get_all_connections", "limit": 7.5}, "limit", id="limit-float"),
    pytest.param({"action": "get_all_connections", "limit": 0}, "limit", id="limit-0"),
    pytest.param({"action": "get_all_connections", "limit": -3}, "limit", id="limit-negative"),
    pytest.param({"action": "get_all_connections", "limit": 1001}, "limit", id="limit-1001"),
    pytest.param({"action": "get_all_connections", "nextToken": ""}, "nextToken", id="token-empty"),
    pytest.param({"action": "get_all_connections", "nextToken": 5}, "nextToken", id="token-int"),
    pytest.param({"action": "get_all_connections", "cursor": "x"}, "cursor", id="unknown-field"),
]


@pytest.mark.parametrize("event, field", READ_BAD_EVENTS)
def test_invalid_parameters_of_reads__400(event, field):
    error(event, 400, "ValidationError", field)


def test_limit_bounds__1_and_1000_are_accepted(make_connection):
    make_connection("c1", user_id="u1")
    make_connection("c2", user_id="u1")

    assert ok({"action": "get_all_connections", "limit": 1})["count"] == 1
    assert ok({"action": "get_all_connections", "limit": 1000})["count"] == 2


def test_next_token__forged_is_400():
    for token in ("abc", "abc.def", "eyJ2IjoxfQ.AAAA", "." * 10, "x" * 4096):
        error({"action": "get_all_connections", "nextToken": token}, 400, "ValidationError", "nextToken")


def test_next_token__corrupted_is_400(make_connection):
    for index in range(5):
        make_connection(f"c{index}", user_id="u1")
    token = ok({"action": "get_all_connections", "limit": 2})["nextToken"]
    body, signature = token.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]

    for bad in (flipped + "." + signature, body + "." + signature[::-1], token[:-1], token + "x"):
        error({"action": "get_all_connections", "limit": 2, "nextToken": bad}, 400, "ValidationError", "nextToken")


def test_next_token__from_another_listing_is_400(make_connection):
    for index in range(4):
        make_connection(f"a{index}", user_id="alice")
        make_connection(f"b{index}", user_id="bob")
    all_token = ok({"action": "get_all_connections", "limit": 1})["nextToken"]
    alice_token = ok({"action": "get_user_connections", "userId": "alice", "limit": 1})["nextToken"]

    error({"action": "get_user_connections", "userId": "alice", "nextToken": all_token}, 400, "ValidationError")
    error({"action": "get_user_connections", "userId": "bob", "nextToken": alice_token}, 400, "ValidationError")
    error({"action": "get_all_connections", "nextToken": alice_token}, 400, "ValidationError")


def test_next_token__issued_for_another_table_is_400(make_connection, clock):
    for index in range(3):
        make_connection(f"c{index}", user_id="u1")
    other = ConnectionService(Settings(table_name="other-table", region="us-east-1"), clock)
    foreign = other._tokens.encode("all", Cursor(1, None))

    error({"action": "get_all_connections", "nextToken": foreign}, 400, "ValidationError", "nextToken")


@pytest.mark.parametrize(
    "event_of",
    [
        # A user listing's key that belongs to another user's partition.
        lambda sign: {"action": "get_user_connections", "userId": "alice", "nextToken": sign(
            "user:alice", Cursor(0, {"connectionId": {"S": "b0"}, "userId": {"S": "bob"}, "status": {"S": "CONNECTED"}})
        )},
        # ... or to the DISCONNECTED half of it.
        lambda sign: {"action": "get_user_connections", "userId": "alice", "nextToken": sign(
            "user:alice",
            Cursor(0, {"connectionId": {"S": "a0"}, "userId": {"S": "alice"}, "status": {"S": "DISCONNECTED"}}),
        )},
        # A key in another shard than the cursor's.
        lambda sign: {"action": "get_all_connections", "nextToken": sign("all", Cursor(1, {
            "connectionId": {"S": "a0"}, "activeShard": {"N": "3"}, "activeBucket": {"N": "1704109500"}
        }))},
        # A shard that is not a number at all.
        lambda sign: {"action": "get_all_connections", "nextToken": sign("all", Cursor(1, {
            "connectionId": {"S": "a0"}, "activeShard": {"N": "one"}, "activeBucket": {"N": "1704109500"}
        }))},
    ],
    ids=["other-user", "other-status", "other-shard", "shard-not-a-number"],
)
def test_next_token__signed_but_outside_its_listing_is_400(make_connection, handler_service, event_of):
    # Whoever holds the signing secret can sign any payload; the key must still lie inside
    # the listing it continues, or DynamoDB rejects the ExclusiveStartKey (a 500).
    for index in range(3):
        make_connection(f"a{index}", user_id="alice")
        make_connection(f"b{index}", user_id="bob")

    error(event_of(handler_service._tokens.encode), 400, "ValidationError", "nextToken")


# Scheduled cleanup ---------------------------------------------------------------------------


def test_scheduled_event__runs_the_stale_cleanup(make_connection):
    make_connection("stale", user_id="u1", idle=timedelta(hours=3))
    make_connection("fresh", user_id="u1")

    body = ok(load_event("scheduled_event"))

    assert body["message"] == "Stale connections cleaned up"
    assert body["cleanedCount"] == 1
    assert raw_item("stale")["disconnectReason"] == "stale"
    assert raw_item("fresh")["status"] == "CONNECTED"


def test_scheduled_event__stops_when_lambda_time_runs_low(make_connection, service):
    for index in range(3):
        make_connection(f"s{index}", user_id="u1", idle=timedelta(hours=3))
    context = FakeLambdaContext(time_left_ms=service.settings.sweep_time_margin_ms - 1)

    response = invoke(load_event("scheduled_event"), context)

    assert response["statusCode"] == 200
    assert response["body"]["cleanedCount"] == 0
    assert response["body"]["complete"] is False
    assert all(item["status"] == "CONNECTED" for item in raw_items())


# WebSocket -------------------------------------------------------------------------------------


def test_websocket_connect__user_from_authorizer_principal():
    event = load_event("websocket_connect_authorized")
    connection_id = event["requestContext"]["connectionId"]

    assert invoke(event) == {"statusCode": 200}

    item = raw_item(connection_id)
    assert item["userId"] == "user-auth"  # the authorizer wins over the query string
    assert item["status"] == "CONNECTED"
    assert item["metadata"] == {"sourceIp": "198.51.100.7", "userAgent": "okhttp/4.12.0"}
    assert_index_invariant(item)


def test_websocket_connect__user_from_query_string():
    event = load_event("websocket_connect")

    assert invoke(event) == {"statusCode": 200}

    item = raw_item(event["requestContext"]["connectionId"])
    assert item["userId"] == "user-from-query"
    assert item["createdAt"] == item["lastActiveAt"] == "2024-01-01T12:00:00Z"


def test_websocket_connect__without_any_user_is_refused_and_nothing_stored():
    event = websocket_event("websocket_connect", "anon-1", user_id=None, principal=None)

    response = invoke(event)

    assert response["statusCode"] == 400
    assert "principalId" in response["body"]["message"] and "userId" in response["body"]["message"]
    assert raw_items() == []


def test_websocket_connect__empty_query_user_is_refused():
    response = invoke(websocket_event("websocket_connect", "anon-2", user_id="", principal=None))
    assert response["statusCode"] == 400
    assert raw_items() == []


def test_websocket_connect__delivered_twice_is_one_row(clock):
    event = websocket_event("websocket_connect", "dup-1", user_id="u1")

    assert invoke(event) == {"statusCode": 200}
    clock.advance(seconds=2)
    assert invoke(event) == {"statusCode": 200}

    items = raw_items()
    assert [item["connectionId"] for item in items] == ["dup-1"]
    assert items[0]["createdAt"] == "2024-01-01T12:00:00Z"


def test_websocket_connect__id_of_another_user_is_refused(make_connection):
    make_connection("taken", user_id="owner")
    before = raw_item("taken")

    response = invoke(websocket_event("websocket_connect", "taken", user_id="intruder"))

    assert response["statusCode"] == 409
    assert raw_item("taken") == before


def test_websocket_disconnect__marks_client_reason_and_repeats_harmlessly(make_connection, clock):
    make_connection("c1", user_id="u1")
    event = websocket_event("websocket_disconnect", "c1")
    clock.advance(seconds=3)

    assert invoke(event) == {"statusCode": 200}
    first = raw_item("c1")
    clock.advance(seconds=3)
    assert invoke(event) == {"statusCode": 200}

    assert first["status"] == "DISCONNECTED"
    assert first["disconnectReason"] == "client"
    assert first["disconnectedAt"] == "2024-01-01T12:00:03Z"
    assert_index_invariant(first)
    assert raw_item("c1") == first


def test_websocket_disconnect__unknown_connection_is_200_and_creates_nothing():
    assert invoke(websocket_event("websocket_disconnect", "never-seen")) == {"statusCode": 200}
    assert raw_items() == []


def test_websocket_disconnect__id_longer_than_dynamodb_allows__200_and_never_sent(handler_service, monkeypatch):
    # Given a $disconnect whose connection id is longer than a DynamoDB key may be
    # (DynamoDB itself would answer a ValidationException, a 500 here)
    event = websocket_event("websocket_disconnect", "x" * 2049)
    monkeypatch.setattr(handler_service, "disconnect", _never_called)

    # When it arrives
    response = invoke(event)

    # Then it is validated like every other event and ignored with a 200, before any write
    assert response == {"statusCode": 200}
    assert raw_items() == []


def _never_called(*args, **kwargs):
    raise AssertionError("an invalid id reached the service")


def test_websocket_message__refreshes_last_active_at(make_connection, clock):
    make_connection("c1", user_id="u1", idle=timedelta(minutes=30))
    clock.advance(seconds=9)

    assert invoke(websocket_event("websocket_message", "c1")) == {"statusCode": 200}

    item = raw_item("c1")
    assert item["lastActiveAt"] == "2024-01-01T12:00:09Z"
    assert item["status"] == "CONNECTED"


def test_websocket_message__on_a_disconnected_connection_changes_nothing(make_connection, clock):
    make_connection("c1", user_id="u1", status="DISCONNECTED")
    before = raw_item("c1")
    clock.advance(seconds=9)

    assert invoke(websocket_event("websocket_message", "c1")) == {"statusCode": 200}

    assert raw_item("c1") == before


def test_websocket_message__unknown_connection_creates_nothing():
    assert invoke(websocket_event("websocket_message", "never-seen")) == {"statusCode": 200}
    assert raw_items() == []


def test_websocket_lifecycle__connect_message_disconnect_then_listed_nowhere(clock, handler_service):
    assert invoke(websocket_event("websocket_connect", "life-1", user_id="u9")) == {"statusCode": 200}
    assert ok({"action": "get_user_connections", "userId": "u9"})["count"] == 1
    clock.advance(seconds=handler_service.settings.activity_write_interval_seconds)  # one interval later
    assert invoke(websocket_event("websocket_message", "life-1")) == {"statusCode": 200}
    assert invoke(websocket_event("websocket_disconnect", "life-1")) == {"statusCode": 200}

    assert ok({"action": "get_user_connections", "userId": "u9"})["count"] == 0
    assert ok({"action": "get_all_connections"})["count"] == 0
    record = ok({"action": "get_connection", "connectionId": "life-1"})["connection"]
    assert record["lastActiveAt"] == "2024-01-01T12:05:00Z"
    assert record["disconnectReason"] == "client"
