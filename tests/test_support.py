"""Tests of the test helpers themselves: the moto server runner and the DynamoDB proxy.

Other tests trust these helpers to measure reads and inject failures; if the proxy
miscounted, cost assertions elsewhere would pass or fail for the wrong reason.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.support.dynamo_proxy import DynamoProxy, items_in_response, operation_of
from tests.support.dynamodb_local import DynamoDBLocal
from tests.support.metering_proxy import MeteringProxy, write_unit_equivalents
from tests.support.moto_server import MotoServer, MotoServerError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]

TABLE = "support-test"
# botocore reads "max_attempts" as retries after the first try; "total_max_attempts"
# counts the first try too, so 1 means exactly one request.
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10)


def client_for(url: str) -> Any:
    """A DynamoDB client that never retries, so every call is exactly one request."""
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1", config=NO_RETRIES)


def create_table(client: Any) -> None:
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def put(client: Any, pk: str, sk: str, **extra: str) -> None:
    item = {"pk": {"S": pk}, "sk": {"S": sk}, **{k: {"S": v} for k, v in extra.items()}}
    client.put_item(TableName=TABLE, Item=item)


def stored(moto_server: MotoServer, pk: str, sk: str) -> dict[str, Any] | None:
    """Read straight from moto, bypassing the proxy and its faults."""
    answer = client_for(moto_server.url).get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": sk}})
    return answer.get("Item")


@pytest.fixture
def client(dynamo_proxy: DynamoProxy) -> Any:
    return client_for(dynamo_proxy.url)


@pytest.fixture
def table(client: Any, dynamo_proxy: DynamoProxy) -> str:
    create_table(client)
    dynamo_proxy.reset_counters()
    return TABLE


# --- the metering proxy, on DynamoDB Local (which reports what DynamoDB bills) -------


@pytest.mark.dynamodb_local
def test_metering_proxy__bills_reads_writes_and_failed_conditions(dynamodb_local: DynamoDBLocal) -> None:
    # Given a table with a global index behind the metering proxy, and a client that asks for no capacity
    dynamodb_local.reset()
    with MeteringProxy(dynamodb_local.url) as proxy:
        client = client_for(proxy.url)
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "g", "AttributeType": "S"}],
            GlobalSecondaryIndexes=[{"IndexName": "ByG", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                     "Projection": {"ProjectionType": "ALL"}}],
            BillingMode="PAY_PER_REQUEST",
        )
        proxy.reset_counters()

        # When it writes an indexed item, reads it twice, reads a missing one, and fails a condition
        client.put_item(TableName=TABLE, Item={"pk": {"S": "a"}, "g": {"S": "x"}})
        answer = client.get_item(TableName=TABLE, Key={"pk": {"S": "a"}})
        client.get_item(TableName=TABLE, Key={"pk": {"S": "a"}}, ConsistentRead=True)
        client.get_item(TableName=TABLE, Key={"pk": {"S": "missing"}})
        with pytest.raises(client.exceptions.ConditionalCheckFailedException):
            client.put_item(TableName=TABLE, Item={"pk": {"S": "a"}}, ConditionExpression="attribute_not_exists(pk)")

        # Then it bills as DynamoDB does: a put on table and index, 0.5 per eventually consistent
        # read (a miss too), 1 per strongly consistent one, 1 write unit for the failed condition
        capacity = proxy.capacity()
    assert answer["Item"]["g"] == {"S": "x"}
    assert capacity["units"] == {f"write {TABLE}": 1.0, "write ByG": 1.0, f"read {TABLE}": 2.0}
    assert (capacity["WRU"], capacity["RRU"], capacity["failed_conditions"]) == (3.0, 2.0, 1)
    assert capacity["WUE"] == write_unit_equivalents(3.0, 2.0) == 3.4
    assert capacity["requests"] == {"PutItem": 2, "GetItem": 3}


# --- forwarding and counting --------------------------------------------------------


def test_proxy__forwards_put_and_get(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    put(client, "user-1", "conn-1", status="CONNECTED")

    answer = client.get_item(TableName=table, Key={"pk": {"S": "user-1"}, "sk": {"S": "conn-1"}})
    missing = client.get_item(TableName=table, Key={"pk": {"S": "user-1"}, "sk": {"S": "nope"}})

    assert answer["Item"]["status"] == {"S": "CONNECTED"}
    assert "Item" not in missing
    snap = dynamo_proxy.snapshot()
    assert snap["by_operation"] == {"PutItem": 1, "GetItem": 2}
    assert snap["requests"] == 3
    assert snap["forwarded"] == 3
    assert snap["items_read"] == 1  # the miss reads nothing
    assert snap["faults_total"] == 0


def test_proxy__counts_scanned_items_of_a_query(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    for i in range(10):
        put(client, "user-1", f"conn-{i:02d}", status="CONNECTED" if i < 3 else "DISCONNECTED")
    put(client, "user-2", "conn-x", status="CONNECTED")
    dynamo_proxy.reset_counters()

    answer = client.query(
        TableName=table,
        KeyConditionExpression="pk = :u",
        FilterExpression="#s = :c",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":u": {"S": "user-1"}, ":c": {"S": "CONNECTED"}},
    )

    assert answer["Count"] == 3
    snap = dynamo_proxy.snapshot()
    # DynamoDB bills what it scanned, before the filter: all ten rows of user-1.
    assert snap["items_read"] == 10
    assert snap["items_read_by_operation"] == {"Query": 10}
    assert snap["items_returned"] == 3
    assert snap["by_operation"] == {"Query": 1}


def test_items_in_response__per_operation() -> None:
    assert items_in_response("Scan", {"Count": 2, "ScannedCount": 7}) == (7, 2)
    assert items_in_response("GetItem", {"Item": {"pk": {"S": "a"}}}) == (1, 1)
    assert items_in_response("GetItem", {}) == (0, 0)
    assert items_in_response("BatchGetItem", {"Responses": {"t": [{}, {}]}}) == (2, 2)
    assert items_in_response("UpdateItem", {"Attributes": {}}) == (0, 0)
    assert operation_of("DynamoDB_20120810.UpdateItem") == "UpdateItem"
    assert operation_of(None) is None


def test_proxy__reset_counters__zeroes_everything(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    put(client, "user-1", "conn-1")
    client.get_item(TableName=table, Key={"pk": {"S": "user-1"}, "sk": {"S": "conn-1"}})
    assert dynamo_proxy.snapshot()["requests"] == 2

    dynamo_proxy.reset_counters()

    snap = dynamo_proxy.snapshot()
    assert snap["requests"] == 0
    assert snap["items_read"] == 0
    assert snap["by_operation"] == {}
    assert snap["faults"] == {}
    assert snap["max_in_flight"] == 0


# --- latency and concurrency --------------------------------------------------------


def test_proxy__applies_latency(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    dynamo_proxy.latency_ms = 150

    started = time.perf_counter()
    client.describe_table(TableName=table)
    elapsed = time.perf_counter() - started

    assert elapsed >= 0.150
    assert dynamo_proxy.latency_ms == 150


def test_proxy__tracks_max_in_flight(dynamo_proxy: DynamoProxy, table: str) -> None:
    dynamo_proxy.latency_ms = 300
    workers = 6
    clients = [client_for(dynamo_proxy.url) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def call(c: Any) -> None:
        try:
            barrier.wait(timeout=10)
            c.describe_table(TableName=table)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=call, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    snap = dynamo_proxy.snapshot()
    assert snap["by_operation"] == {"DescribeTable": workers}
    # All six start together and each is held 300 ms, so they overlap (at least most of them).
    assert 3 <= snap["max_in_flight"] <= workers
    assert snap["in_flight"] == 0


def test_proxy__sequential_requests__one_in_flight(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    for _ in range(3):
        client.describe_table(TableName=table)

    assert dynamo_proxy.snapshot()["max_in_flight"] == 1


# --- faults -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [("throttle", 400, "ProvisionedThroughputExceededException"), ("server_error", 500, "InternalServerError")],
)
def test_proxy__error_fault__seen_by_boto3_and_not_applied(
    client: Any, dynamo_proxy: DynamoProxy, moto_server: MotoServer, table: str, mode: str, status: int, code: str
) -> None:
    dynamo_proxy.configure(fault_rate=1.0, fault_modes=[mode])

    with pytest.raises(botocore.exceptions.ClientError) as raised:
        put(client, "user-1", "conn-1")

    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert stored(moto_server, "user-1", "conn-1") is None
    snap = dynamo_proxy.snapshot()
    assert snap["faults"] == {mode: 1}
    assert snap["faults_by_operation"] == {"PutItem": 1}
    assert snap["forwarded"] == 0


def test_proxy__drop_before_forwarding__connection_closed_and_not_applied(
    client: Any, dynamo_proxy: DynamoProxy, moto_server: MotoServer, table: str
) -> None:
    dynamo_proxy.configure(fault_rate=1.0, fault_modes=["drop"], fault_phase="before")

    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, "user-1", "conn-1")

    assert stored(moto_server, "user-1", "conn-1") is None
    assert dynamo_proxy.snapshot()["faults"] == {"drop": 1}


def test_proxy__drop_after_forwarding__write_applied_answer_lost(
    client: Any, dynamo_proxy: DynamoProxy, moto_server: MotoServer, table: str
) -> None:
    dynamo_proxy.inject("drop", operations={"PutItem"}, phase="after")

    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, "user-1", "conn-1")
    put(client, "user-1", "conn-2")  # the injected fault is used up

    assert stored(moto_server, "user-1", "conn-1") is not None
    assert stored(moto_server, "user-1", "conn-2") is not None
    snap = dynamo_proxy.snapshot()
    assert snap["faults"] == {"drop": 1}
    assert snap["forwarded_by_operation"] == {"PutItem": 2}


def test_proxy__fault_operations__only_those_fail(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    put(client, "user-1", "conn-1")
    dynamo_proxy.configure(fault_rate=1.0, fault_modes=["throttle"], fault_operations={"UpdateItem"})

    found = client.get_item(TableName=table, Key={"pk": {"S": "user-1"}, "sk": {"S": "conn-1"}})
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        client.update_item(
            TableName=table,
            Key={"pk": {"S": "user-1"}, "sk": {"S": "conn-1"}},
            UpdateExpression="SET #s = :d",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":d": {"S": "DISCONNECTED"}},
        )

    assert "Item" in found
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert dynamo_proxy.snapshot()["faults_by_operation"] == {"UpdateItem": 1}


def test_proxy__fault_rate__seeded_and_reproducible(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    def outcomes() -> list[str]:
        seen = []
        for _ in range(30):
            try:
                client.describe_table(TableName=table)
                seen.append("ok")
            except botocore.exceptions.ClientError as error:
                seen.append(error.response["Error"]["Code"])
        return seen

    dynamo_proxy.configure(fault_rate=0.4, fault_modes=["throttle", "server_error"], seed=7)
    first = outcomes()
    dynamo_proxy.configure(seed=7)
    second = outcomes()

    assert first == second
    assert "ok" in first
    assert {"ProvisionedThroughputExceededException", "InternalServerError"} <= set(first)
    faults = dynamo_proxy.snapshot()["faults"]
    assert sum(faults.values()) == 2 * sum(1 for o in first if o != "ok")


def test_proxy__clear_faults__stops_failing(client: Any, dynamo_proxy: DynamoProxy, table: str) -> None:
    dynamo_proxy.configure(fault_rate=1.0)
    dynamo_proxy.inject("server_error", count=3)
    dynamo_proxy.clear_faults()

    client.describe_table(TableName=table)

    assert dynamo_proxy.snapshot()["faults_total"] == 0


def test_proxy__rejects_bad_settings(dynamo_proxy: DynamoProxy) -> None:
    with pytest.raises(ValueError):
        dynamo_proxy.fault_rate = 1.5
    with pytest.raises(ValueError):
        dynamo_proxy.configure(fault_modes=["explode"])
    with pytest.raises(ValueError):
        dynamo_proxy.inject("drop", phase="during")
    with pytest.raises(TypeError):
        dynamo_proxy.configure(latency=5)


# --- the moto server runner ---------------------------------------------------------


def test_moto_server__reset__wipes_tables(moto_server: MotoServer, client: Any, table: str) -> None:
    assert client.list_tables()["TableNames"] == [table]

    moto_server.reset()

    assert client.list_tables()["TableNames"] == []


def test_moto_server__context_manager__starts_and_stops() -> None:
    with MotoServer() as server:
        url = server.url
        assert client_for(url).list_tables()["TableNames"] == []
        port = server.port
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert url.startswith("http://127.0.0.1:")


def test_moto_server__port_taken__clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MotoServer(port=taken.getsockname()[1], startup_timeout=20)
        with pytest.raises(MotoServerError, match="exited with code"):
            server.start()
    assert not server.running


def test_moto_server__run_ends_without_stop__server_is_gone() -> None:
    # Given a Python run that starts a moto server and never stops it
    script = "from tests.support.moto_server import MotoServer; print(MotoServer().start()._process.pid)"

    # When that run ends
    finished = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)

    # Then the server ended with it
    assert finished.returncode == 0, finished.stderr
    pid = int(finished.stdout)
    left_behind = Path(f"/proc/{pid}").exists()
    if left_behind:
        os.kill(pid, signal.SIGKILL)
    assert not left_behind
