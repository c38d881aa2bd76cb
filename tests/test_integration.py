"""Raw events and the console script against a real DynamoDB endpoint over HTTP.

The in-process mock never touches the wire; these tests go through botocore's endpoint
resolution (``AWS_ENDPOINT_URL_DYNAMODB``), HTTP, and the server's own request parsing, as
a deployed function would against DynamoDB. Each runs on moto_server and on Amazon
DynamoDB Local, whose validation is DynamoDB's own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

import connection_manager.wiring as wiring
import connection_manager.observability as observability
from connection_manager.handler import lambda_handler
from connection_manager.wiring import get_service
from models.connection import activity_bucket, format_timestamp, shard_for
from tests.support.engines import Engine
from tests.support.events import FakeLambdaContext, load_event, websocket_event
from models.platform import is_reserved

pytestmark = pytest.mark.integration

TABLE = "connections-it"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def endpoint(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty server that the service (and any child process) reaches over HTTP."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", engine.url)
    monkeypatch.setenv("CONNECTIONS_TABLE_NAME", TABLE)
    monkeypatch.setattr(wiring, "_service", None)
    monkeypatch.setattr(observability, "_configured", True)
    return engine.url


@pytest.fixture
def table(endpoint: str) -> Any:
    """The table, created by the service over HTTP; a boto3 client for raw reads."""
    assert get_service().create_table() is True
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")


def raw(client: Any, connection_id: str) -> dict[str, Any] | None:
    item = client.get_item(TableName=TABLE, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True).get("Item")
    return None if item is None else {k: TypeDeserializer().deserialize(v) for k, v in item.items()}


def put(client: Any, item: dict[str, Any]) -> None:
    client.put_item(TableName=TABLE, Item={k: TypeSerializer().serialize(v) for k, v in item.items()})


def call(event: Any) -> dict[str, Any]:
    response = lambda_handler(event, FakeLambdaContext())
    json.dumps(response)
    return response


def test_raw_actions__full_lifecycle_over_http(table):
    register = {"action": "register_connection", "connectionId": "c1", "userId": "u1", "metadata": {"sourceIp": "192.0.2.5"}}

    created = call(register)
    repeated = call(register)
    conflict = call({"action": "register_connection", "connectionId": "c1", "userId": "u2"})
    beat = call({"action": "heartbeat", "connectionId": "c1"})
    listed = call({"action": "get_user_connections", "userId": "u1"})
    everyone = call({"action": "get_all_connections", "limit": 10})
    updated = call({"action": "update_connection_status", "connectionId": "c1", "status": "DISCONNECTED"})
    missing = call({"action": "update_connection_status", "connectionId": "nope", "status": "DISCONNECTED"})
    late_beat = call({"action": "heartbeat", "connectionId": "c1"})

    assert created["statusCode"] == 201 and created["body"]["connection"]["status"] == "CONNECTED"
    assert repeated == {"statusCode": 200, "body": created["body"]}
    assert conflict["statusCode"] == 409 and conflict["body"]["error"] == "Conflict"
    assert beat["statusCode"] == 200 and beat["body"]["connection"]["lastActiveAt"].endswith("Z")
    assert listed["body"]["count"] == 1 and everyone["body"]["count"] == 1
    assert updated["statusCode"] == 200 and updated["body"]["connection"]["disconnectReason"] == "admin"
    assert missing["statusCode"] == 404
    assert late_beat["statusCode"] == 409
    item = raw(table, "c1")
    assert item["status"] == "DISCONNECTED" and "activeShard" not in item
    assert raw(table, "nope") is None


def test_get_all_connections__pagination_over_http(table):
    service = get_service()
    for index in range(30):
        service.register_connection(f"c{index:02d}", f"u{index % 4}")
    service.update_connection_status("c00", "DISCONNECTED")

    seen: list[str] = []
    event: dict[str, Any] = {"action": "get_all_connections", "limit": 4}
    for _ in range(30):
        body = call(event)["body"]
        seen += [record["connectionId"] for record in body["connections"]]
        if "nextToken" not in body:
            break
        event["nextToken"] = body["nextToken"]
    assert sorted(seen) == [f"c{index:02d}" for index in range(1, 30)]


def test_scheduled_cleanup__over_http(table):
    now = datetime.now(timezone.utc)
    old = format_timestamp(now - timedelta(hours=3))
    put(table, {"connectionId": "stale", "userId": "u1", "status": "CONNECTED", "createdAt": old,
                "lastActiveAt": old, "activeShard": shard_for("stale"),
                "activeBucket": activity_bucket(now - timedelta(hours=3))})
    get_service().register_connection("fresh", "u1")

    response = call(load_event("scheduled_event"))

    assert response["statusCode"] == 200
    assert response["body"]["message"] == "Stale connections cleaned up"
    assert response["body"]["cleanedCount"] == 1
    assert raw(table, "stale")["disconnectReason"] == "stale"
    assert raw(table, "fresh")["status"] == "CONNECTED"


def test_websocket_routes__over_http(table):
    connect = websocket_event("websocket_connect", "ws-1", user_id="u7")

    assert call(connect) == {"statusCode": 200}
    assert call(connect) == {"statusCode": 200}
    assert call(websocket_event("websocket_message", "ws-1")) == {"statusCode": 200}
    assert call(websocket_event("websocket_disconnect", "ws-1")) == {"statusCode": 200}
    assert call(websocket_event("websocket_disconnect", "ws-1")) == {"statusCode": 200}

    item = raw(table, "ws-1")
    assert (item["userId"], item["status"], item["disconnectReason"]) == ("u7", "DISCONNECTED", "client")
    assert item["metadata"]["sourceIp"] == "203.0.113.10"
    items = table.scan(TableName=TABLE)["Items"]
    assert [item["connectionId"]["S"] for item in items if not is_reserved(item["connectionId"]["S"])] == ["ws-1"]


def test_missing_table__503_naming_the_fix(endpoint):
    response = call({"action": "get_all_connections"})

    assert response["statusCode"] == 503
    assert response["body"]["error"] == "ServiceUnavailable"
    assert "create-table" in response["body"]["message"]


# The console script as a real process ---------------------------------------------------------


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "connection-manager"
    return [str(script)] if script.exists() else [sys.executable, "-m", "connection_manager.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    # The console script imports whichever checkout the virtualenv was installed from;
    # put this checkout first so the process runs the code these tests import.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*cli_command(), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_cli__create_table_then_invoke_over_http(endpoint):
    created = run_cli("create-table")
    assert created.returncode == 0, created.stderr
    assert f"table '{TABLE}' created" in created.stdout
    assert "TTL enabled" in created.stdout and "warning" not in created.stderr

    get_service().register_connection("cli-1", "u1")
    get_service().register_connection("cli-2", "u2")

    listed = run_cli("invoke", '{"action": "get_all_connections"}')
    assert listed.returncode == 0, listed.stderr
    response = json.loads(listed.stdout)  # stdout is the response and nothing else
    assert response["statusCode"] == 200
    assert response["body"]["count"] == 2
    assert {record["connectionId"] for record in response["body"]["connections"]} == {"cli-1", "cli-2"}


def test_cli__create_table_twice__second_run_reports_ttl_enabled(endpoint):
    # Given a table that create-table made, TTL included
    assert run_cli("create-table").returncode == 0

    # When create-table runs again (DynamoDB refuses to enable TTL a second time)
    again = run_cli("create-table")

    # Then it says the table exists and TTL is on, without a false warning
    assert again.returncode == 0, again.stderr
    assert f"table '{TABLE}' already exists" in again.stdout
    assert "TTL enabled" in again.stdout and "warning" not in again.stderr
    ttl = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1").describe_time_to_live(TableName=TABLE)
    assert ttl["TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}
