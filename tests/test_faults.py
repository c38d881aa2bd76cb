"""DynamoDB misbehaving on the wire: throttles, 5xx, dropped sockets, lost answers.

The service runs against a real ``moto_server`` behind the fault-injecting proxy, through
``lambda_handler``, exactly as deployed. The promise under test: every request either
succeeds or answers 503 (never 500, never an exception), and nothing acknowledged is lost.
Rows are checked straight on the moto server, past the proxy.
"""
from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pynamodb.exceptions import QueryError

from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from models.connection import LiveIndex, format_timestamp, live_shards
from tests.support.dynamo_proxy import DynamoProxy
from tests.support.events import FakeLambdaContext, websocket_event
from tests.support.moto_server import MotoServer
from tests.support.wire import direct_client, stored, stored_all, use_endpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def wired(dynamo_proxy: DynamoProxy, monkeypatch: pytest.MonkeyPatch) -> ConnectionService:
    """The handler's service on the proxy, with the table created while no fault is set."""
    service = use_endpoint(monkeypatch, dynamo_proxy.url)
    service.create_table()
    service.enable_ttl()
    dynamo_proxy.reset_counters()
    service.platform_attempts = 0  # type: ignore[attr-defined]

    def count_attempt(**_: Any) -> None:
        service.platform_attempts += 1  # type: ignore[attr-defined]

    client = service.platform.records._get_connection().connection.client
    client.meta.events.register("before-send.dynamodb.UpdateItem", count_attempt)
    return service


@pytest.fixture
def moto(moto_server: MotoServer) -> Any:
    return direct_client(moto_server.url)


def platform_writes(service: ConnectionService) -> int:
    """UpdateItem attempts the platform counters sent (see the ``wired`` fixture)."""
    return service.platform_attempts  # type: ignore[attr-defined,no-any-return]


def invoke(action: str, **params: Any) -> dict[str, Any]:
    return lambda_handler({"action": action, **params}, FakeLambdaContext())


def register(connection_id: str, user_id: str = "user-1") -> dict[str, Any]:
    return invoke("register_connection", connectionId=connection_id, userId=user_id)


# Each fault is retried ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "phase"),
    [("throttle", "before"), ("server_error", "before"), ("drop", "before"), ("drop", "after")],
)
def test_read__transient_faults__retried_until_success(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, mode: str, phase: str
) -> None:
    assert register("c1")["statusCode"] == 201
    dynamo_proxy.reset_counters()
    dynamo_proxy.inject(mode, count=2, operations={"GetItem"}, phase=phase)

    response = invoke("get_connection", connectionId="c1")

    assert response["statusCode"] == 200
    assert response["body"]["connection"]["connectionId"] == "c1"
    snapshot = dynamo_proxy.snapshot()
    assert snapshot["faults"] == {mode: 2}
    assert snapshot["by_operation"]["GetItem"] == 3  # two failures, then the retry that worked


@pytest.mark.parametrize("mode", ["drop", "server_error"])
def test_register__answer_lost_after_write__retry_answers_200_not_409(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any, mode: str
) -> None:
    # The put is applied, its answer lost; botocore resends it and the condition
    # "does not exist" now fails. That is our own earlier write, not a conflict.
    dynamo_proxy.inject(mode, count=1, operations={"PutItem"}, phase="after")

    response = register("c1", "user-1")

    assert response["statusCode"] == 200
    assert response["body"]["connection"]["userId"] == "user-1"
    assert dynamo_proxy.snapshot()["forwarded_by_operation"]["PutItem"] == 2
    assert stored(moto, "c1")["status"] == "CONNECTED"


def test_register__lost_answer_but_other_user__still_409(wired: ConnectionService, dynamo_proxy: DynamoProxy) -> None:
    assert register("c1", "user-1")["statusCode"] == 201
    dynamo_proxy.inject("drop", count=1, operations={"PutItem"}, phase="after")

    response = register("c1", "user-2")

    assert response["statusCode"] == 409
    assert response["body"]["error"] == "Conflict"


@pytest.mark.parametrize("mode", ["drop", "server_error"])
def test_disconnect__answer_lost_after_write__200_and_disconnected(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any, mode: str
) -> None:
    assert register("c1")["statusCode"] == 201
    dynamo_proxy.inject(mode, count=1, operations={"UpdateItem"}, phase="after")

    response = invoke("update_connection_status", connectionId="c1", status="DISCONNECTED")

    assert response["statusCode"] == 200
    assert response["body"]["connection"]["status"] == "DISCONNECTED"
    row = stored(moto, "c1")
    assert row["status"] == "DISCONNECTED" and "activeShard" not in row


@pytest.mark.parametrize("mode", ["drop", "server_error"])
def test_disconnect_user__answers_lost_after_write__every_connection_counted(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any, mode: str
) -> None:
    # Given two live connections, and both disconnecting writes lose their answer once applied
    assert register("c1")["statusCode"] == 201
    assert register("c2")["statusCode"] == 201
    dynamo_proxy.inject(mode, count=2, operations={"UpdateItem"}, phase="after")

    # When the user is disconnected (botocore resends both; each resend fails its condition)
    response = invoke("disconnect_user", userId="user-1")

    # Then both count: the item DynamoDB returns with the failed condition is our own write
    assert response == {"statusCode": 200, "body": {"disconnectedCount": 2}}
    # Row writes and their retries; the live counters' own writes are counted apart.
    assert dynamo_proxy.snapshot()["forwarded_by_operation"]["UpdateItem"] == 4 + platform_writes(wired)
    assert dynamo_proxy.snapshot()["by_operation"].get("GetItem", 0) == 0  # and no extra read
    for connection_id in ("c1", "c2"):
        row = stored(moto, connection_id)
        assert row["status"] == "DISCONNECTED" and row["disconnectReason"] == "admin"


@pytest.mark.parametrize("mode", ["drop", "server_error"])
def test_sweep__answers_lost_after_write__cleaned_count_exact(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any, mode: str
) -> None:
    ids = _stale_rows(moto, 6)
    dynamo_proxy.inject(mode, count=3, operations={"UpdateItem"}, phase="after")

    response = invoke("cleanup_stale_connections")

    body = response["body"]
    assert response["statusCode"] == 200
    assert (body["cleanedCount"], body["skippedCount"], body["failedCount"]) == (6, 0, 0)
    # Row writes and their retries; the live counters' own writes are counted apart.
    assert dynamo_proxy.snapshot()["forwarded_by_operation"]["UpdateItem"] == 9 + platform_writes(wired)
    rows = stored_all(moto)
    assert all(rows[cid]["status"] == "DISCONNECTED" and rows[cid]["disconnectReason"] == "stale" for cid in ids)


def test_sweep__lost_answer_but_the_client_disconnected_first__not_counted(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any
) -> None:
    # A failed condition whose item was written by someone else stays a skip.
    [connection_id] = _stale_rows(moto, 1)
    original = wired._sweep_one

    def client_disconnects_first(cid: str, cutoff: Any, *rest: Any) -> str:
        assert lambda_handler(websocket_event("websocket_disconnect", cid), FakeLambdaContext())["statusCode"] == 200
        return original(cid, cutoff, *rest)

    wired._sweep_one = client_disconnects_first  # type: ignore[method-assign]
    dynamo_proxy.inject("drop", count=1, operations={"UpdateItem"}, phase="after")  # the client's write

    body = invoke("cleanup_stale_connections")["body"]

    assert (body["cleanedCount"], body["skippedCount"]) == (0, 1)
    assert stored(moto, connection_id)["disconnectReason"] == "client"


def test_retries_exhausted__503_with_a_clear_message(wired: ConnectionService, dynamo_proxy: DynamoProxy) -> None:
    assert register("c1")["statusCode"] == 201
    dynamo_proxy.reset_counters()
    dynamo_proxy.inject("server_error", count=4, operations={"GetItem"})

    response = invoke("get_connection", connectionId="c1")

    assert response["statusCode"] == 503
    assert response["body"]["error"] == "ServiceUnavailable"
    assert "after retries" in response["body"]["message"]
    assert dynamo_proxy.snapshot()["by_operation"]["GetItem"] == 4  # 1 + DYNAMODB_MAX_RETRIES (3)


def test_retries__bounded_by_setting(dynamo_proxy: DynamoProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    service = use_endpoint(monkeypatch, dynamo_proxy.url, DYNAMODB_MAX_RETRIES="1")
    service.create_table()
    assert register("c1")["statusCode"] == 201
    dynamo_proxy.reset_counters()
    dynamo_proxy.inject("drop", count=2, operations={"GetItem"})

    response = invoke("get_connection", connectionId="c1")

    assert response["statusCode"] == 503
    assert dynamo_proxy.snapshot()["by_operation"]["GetItem"] == 2


def test_sustained_outage__fails_fast_then_recovers(wired: ConnectionService, dynamo_proxy: DynamoProxy) -> None:
    """botocore's retry quota stops retrying during an outage, so a dead table costs one
    request per call instead of a retry storm; answers stay 503 and recover with the table."""
    assert register("c1")["statusCode"] == 201
    dynamo_proxy.configure(fault_rate=1.0, fault_modes=("server_error",), fault_operations={"GetItem"})
    attempts: list[int] = []
    for _ in range(40):
        dynamo_proxy.reset_counters()
        response = invoke("get_connection", connectionId="c1")
        assert response["statusCode"] == 503
        attempts.append(dynamo_proxy.snapshot()["requests"])
    assert attempts[0] == 4
    assert attempts[-1] == 1, attempts  # quota spent: no more retries while it lasts

    dynamo_proxy.clear_faults()
    assert invoke("get_connection", connectionId="c1")["statusCode"] == 200


# Idempotency of what API Gateway may deliver twice -------------------------------------


def test_websocket_connect_and_disconnect_twice__harmless(wired: ConnectionService, moto: Any) -> None:
    connect = websocket_event("websocket_connect", "ws-1", user_id="user-9")
    disconnect = websocket_event("websocket_disconnect", "ws-1")

    assert lambda_handler(connect, FakeLambdaContext())["statusCode"] == 200
    assert lambda_handler(connect, FakeLambdaContext())["statusCode"] == 200
    assert stored(moto, "ws-1")["status"] == "CONNECTED"
    assert lambda_handler(disconnect, FakeLambdaContext())["statusCode"] == 200
    first = stored(moto, "ws-1")
    assert lambda_handler(disconnect, FakeLambdaContext())["statusCode"] == 200

    second = stored(moto, "ws-1")
    assert second == first  # the second delivery changed nothing
    assert second["status"] == "DISCONNECTED" and second["disconnectReason"] == "client"


def test_heartbeat__disconnected__409_and_not_revived(wired: ConnectionService, moto: Any) -> None:
    assert register("c1")["statusCode"] == 201
    assert invoke("update_connection_status", connectionId="c1", status="DISCONNECTED")["statusCode"] == 200
    before = stored(moto, "c1")

    response = invoke("heartbeat", connectionId="c1")

    assert response["statusCode"] == 409
    assert response["body"]["error"] == "Conflict"
    assert stored(moto, "c1") == before


# Retention ----------------------------------------------------------------------------------


def test_disconnected_rows__carry_expires_at(wired: ConnectionService, moto: Any) -> None:
    assert register("c1")["statusCode"] == 201
    assert "expiresAt" not in stored(moto, "c1")  # live rows never expire
    before = int(datetime.now(timezone.utc).timestamp())

    assert invoke("update_connection_status", connectionId="c1", status="DISCONNECTED")["statusCode"] == 200

    expires = int(stored(moto, "c1")["expiresAt"])
    week = 7 * 24 * 3600
    assert before + week <= expires <= before + week + 5


def test_create_table__enables_ttl(wired: ConnectionService, moto: Any) -> None:
    ttl = moto.describe_time_to_live(TableName="connections")["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}


def test_create_table__server_without_ttl__warns_and_carries_on(
    dynamo_proxy: DynamoProxy, moto: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from connection_manager.cli import main

    use_endpoint(monkeypatch, dynamo_proxy.url)
    dynamo_proxy.configure(fault_rate=1.0, fault_modes=("server_error",), fault_operations={"UpdateTimeToLive"})

    code = main(["create-table"])

    captured = capsys.readouterr()
    assert code == 0
    assert "does not support TTL" in captured.err
    assert moto.describe_table(TableName="connections")["Table"]["TableStatus"] == "ACTIVE"
    assert moto.describe_time_to_live(TableName="connections")["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"
    assert dynamo_proxy.snapshot()["faults_by_operation"]["UpdateTimeToLive"] >= 4  # retried, then given up


# The sweep under faults -----------------------------------------------------------------------


def _stale_rows(moto: Any, count: int) -> list[str]:
    """CONNECTED rows idle for two hours, written straight to the server."""
    idle = format_timestamp(datetime.now(timezone.utc) - timedelta(hours=2))
    ids = [f"stale-{n:03d}" for n in range(count)]
    for connection_id in ids:
        from models.connection import activity_bucket, parse_timestamp, shard_for

        moto.put_item(
            TableName="connections",
            Item={
                "connectionId": {"S": connection_id},
                "userId": {"S": "user-s"},
                "status": {"S": "CONNECTED"},
                "createdAt": {"S": idle},
                "lastActiveAt": {"S": idle},
                "activeShard": {"N": str(shard_for(connection_id))},
                "activeBucket": {"N": str(activity_bucket(parse_timestamp(idle)))},
            },
        )
    return ids


def test_sweep__writes_fail_after_retries__failed_count_then_next_run_completes(
    dynamo_proxy: DynamoProxy, moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One write at a time, so eight faults in a row exhaust exactly two writes' four attempts.
    use_endpoint(monkeypatch, dynamo_proxy.url, SWEEP_CONCURRENCY="1").create_table()
    ids = _stale_rows(moto, 20)
    dynamo_proxy.inject("server_error", count=8, operations={"UpdateItem"})

    first = invoke("cleanup_stale_connections")

    assert first["statusCode"] == 200
    body = first["body"]
    assert (body["cleanedCount"], body["failedCount"], body["complete"]) == (18, 2, False)
    second = invoke("cleanup_stale_connections")["body"]
    assert second["cleanedCount"] == 2
    assert second["failedCount"] == 0 and second["complete"] is True
    rows = stored_all(moto)
    assert all(rows[cid]["status"] == "DISCONNECTED" and rows[cid]["disconnectReason"] == "stale" for cid in ids)


def test_sweep__query_fails_mid_sweep__partial_progress_then_next_run_completes(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _stale_rows(moto, 24)
    original = LiveIndex.query

    def query_with_outage_on_shard_2(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        if hash_key == 2:  # the third shard's Query fails after every retry
            # Raised here rather than injected at the proxy: shards are read concurrently,
            # so a fault queued at the proxy could land on another shard's request.
            error = ClientError({"Error": {"Code": "InternalServerError", "Message": "outage"}}, "Query")
            raise QueryError("Failed to query items", error)
        return original(self, hash_key, *args, **kwargs)

    monkeypatch.setattr(LiveIndex, "query", query_with_outage_on_shard_2)
    first = invoke("cleanup_stale_connections")
    monkeypatch.setattr(LiveIndex, "query", original)

    assert first["statusCode"] == 200
    body = first["body"]
    assert body["complete"] is False
    assert 0 < body["cleanedCount"] < 24  # shards 0 and 1 were done and are reported
    second = invoke("cleanup_stale_connections")["body"]
    assert second["complete"] is True
    assert body["cleanedCount"] + second["cleanedCount"] == 24
    assert all(row["status"] == "DISCONNECTED" for row in stored_all(moto).values() if row["connectionId"] in ids)


def test_sweep__first_query_fails__503_nothing_lost(wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any) -> None:
    _stale_rows(moto, 4)
    # Shards are read concurrently: every shard's Query fails all four attempts, in both
    # passes (the lifetime index's, then the live index's).
    dynamo_proxy.inject("throttle", count=2 * 4 * live_shards(), operations={"Query"})

    response = invoke("cleanup_stale_connections")

    assert response["statusCode"] == 503
    assert "cleanup_stale_connections" in response["body"]["message"]
    assert invoke("cleanup_stale_connections")["body"]["cleanedCount"] == 4


# A mixed workload under random faults --------------------------------------------------------


@dataclass
class Ledger:
    """What the service acknowledged, to compare with the table afterwards."""

    registered: dict[str, str] = field(default_factory=dict)  # connection id -> user
    disconnected: set[str] = field(default_factory=set)
    heartbeats: dict[str, str] = field(default_factory=dict)  # connection id -> earliest acked time
    users_disconnected: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, response: dict[str, Any], allowed: set[int]) -> int:
        status = response["statusCode"]
        with self.lock:
            self.statuses[status] += 1
        assert status in allowed | {503}, response
        if status == 503:
            assert response["body"]["error"] == "ServiceUnavailable" and response["body"]["message"]
        return status


def _lane(lane: int, ledger: Ledger) -> None:
    """One client's sequence of operations on its own user and connections."""
    user = f"user-{lane}"
    ids = [f"c-{lane}-{n}" for n in range(4)]
    acked: list[str] = []
    for connection_id in ids:
        if ledger.answer(register(connection_id, user), {200, 201}) in (200, 201):
            acked.append(connection_id)
            with ledger.lock:
                ledger.registered[connection_id] = user
    for connection_id in acked:
        sent = format_timestamp(datetime.now(timezone.utc).replace(microsecond=0))
        if ledger.answer(invoke("heartbeat", connectionId=connection_id), {200}) == 200:
            with ledger.lock:
                ledger.heartbeats[connection_id] = sent
        ledger.answer(invoke("get_connection", connectionId=connection_id), {200})
    if acked:
        target = acked[0]
        response = invoke("update_connection_status", connectionId=target, status="DISCONNECTED")
        if ledger.answer(response, {200}) == 200:
            with ledger.lock:
                ledger.disconnected.add(target)
            ledger.answer(invoke("heartbeat", connectionId=target), {409})
    socket_id = f"ws-{lane}"
    if ledger.answer(lambda_handler(websocket_event("websocket_connect", socket_id, user_id=user), None), {200}) == 200:
        with ledger.lock:
            ledger.registered[socket_id] = user
        if ledger.answer(lambda_handler(websocket_event("websocket_disconnect", socket_id), None), {200}) == 200:
            with ledger.lock:
                ledger.disconnected.add(socket_id)
    ledger.answer(invoke("get_user_connections", userId=user), {200})
    ledger.answer(invoke("get_all_connections", limit=5), {200})
    if lane % 3 == 0 and ledger.answer(invoke("disconnect_user", userId=user), {200}) == 200:
        with ledger.lock:
            ledger.users_disconnected.add(user)


@pytest.mark.parametrize("phase", ["before", "after"])
def test_mixed_workload__random_faults__succeeds_or_503_and_loses_nothing(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any, phase: str
) -> None:
    # Throttles are retried after up to a second or more (botocore's throttling backoff),
    # so they are a smaller share than the cheap-to-retry 5xx and dropped sockets.
    dynamo_proxy.configure(
        fault_rate=0.2,
        fault_modes=("server_error", "server_error", "drop", "drop", "throttle"),
        fault_phase=phase,
        seed=random.Random(phase).randint(0, 10**6),
    )
    ledger = Ledger()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(_lane, lane, ledger) for lane in range(16)]:
            future.result()  # re-raises a lane's failed assertion
    faults = dynamo_proxy.snapshot()
    dynamo_proxy.clear_faults()

    rows = stored_all(moto)
    for connection_id, user in ledger.registered.items():
        assert connection_id in rows and rows[connection_id]["userId"] == user
    for connection_id in ledger.disconnected:
        assert rows[connection_id]["status"] == "DISCONNECTED" and "activeShard" not in rows[connection_id]
    for connection_id, sent in ledger.heartbeats.items():
        assert rows[connection_id]["lastActiveAt"] >= sent
    for row in rows.values():
        if row["userId"] in ledger.users_disconnected:
            assert row["status"] == "DISCONNECTED"
        # The sparse index never holds a DISCONNECTED row, whatever was retried.
        assert ("activeShard" in row) == (row["status"] == "CONNECTED")
    assert ledger.statuses[500] == 0
    survived = sum(count for status, count in ledger.statuses.items() if status != 503)
    print(
        f"\nfaults injected ({phase} forwarding): {faults['faults_total']} {faults['faults']} "
        f"over {faults['requests']} DynamoDB requests; responses {dict(ledger.statuses)}; "
        f"{survived} answered normally, {ledger.statuses[503]} answered 503"
    )
    assert faults["faults_total"] >= 20
    # Three retries absorb nearly every fault at this rate: 503 must stay the exception.
    assert ledger.statuses[503] <= 0.05 * sum(ledger.statuses.values())


# Least privilege ------------------------------------------------------------------------------


def test_iam_policy__allows_every_dynamodb_action_the_function_calls(
    wired: ConnectionService, dynamo_proxy: DynamoProxy, moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every event shape the function serves, seen on the wire, against the shipped policy."""
    import json
    from pathlib import Path

    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "connection-manager-production")  # the gauge's count too
    _stale_rows(moto, 2)
    context = FakeLambdaContext()
    for event in [
        {"action": "register_connection", "connectionId": "c1", "userId": "u1"},
        {"action": "register_connection", "connectionId": "c1", "userId": "u1"},
        {"action": "heartbeat", "connectionId": "c1"},
        {"action": "get_connection", "connectionId": "c1"},
        {"action": "get_user_connections", "userId": "u1"},
        {"action": "get_all_connections", "limit": 1},
        {"action": "update_connection_status", "connectionId": "c1", "status": "DISCONNECTED"},
        {"action": "update_connection_status", "connectionId": "c1", "status": "CONNECTED"},
        {"action": "disconnect_user", "userId": "u1"},
        {"action": "cleanup_stale_connections", "dryRun": True},
        {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}},
        websocket_event("websocket_connect", "ws-1", user_id="u2"),
        websocket_event("websocket_message", "ws-1"),
        websocket_event("websocket_disconnect", "ws-1"),
    ]:
        assert lambda_handler(event, context)["statusCode"] in (200, 201)
    wired.health()

    called = set(dynamo_proxy.snapshot()["iam_actions"])
    policy = json.loads((Path(__file__).resolve().parent.parent / "deploy" / "iam-policy.json").read_text())
    allowed = {
        action
        for statement in policy["Statement"]
        if statement["Effect"] == "Allow"
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    print(f"\nDynamoDB actions the function calls: {sorted(called)}")
    assert called <= allowed, called - allowed
    assert called == {
        "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query",
        "dynamodb:DescribeTable",
    }
