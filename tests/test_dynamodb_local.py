"""Tests of the DynamoDB Local runner, and of the proxy in front of DynamoDB Local.

The two-engine tests trust this runner to hand them an empty server that is really
DynamoDB Local, and to leave no JVM behind; these tests check exactly that.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

import tests.support.dynamodb_local as dynamodb_local_module
import tests.support.local_server as local_server_module
from tests.support.dynamo_proxy import DynamoProxy
from tests.support.dynamodb_local import DynamoDBLocal, DynamoDBLocalError, _listens_on, ensure_installed

pytestmark = [pytest.mark.integration, pytest.mark.dynamodb_local]

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10)


def client_for(url: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1", config=NO_RETRIES)


def create_table(client: Any, name: str) -> None:
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


@pytest.fixture
def local(dynamodb_local: DynamoDBLocal) -> DynamoDBLocal:
    dynamodb_local.reset()
    return dynamodb_local


def test_dynamodb_local__reset__deletes_every_table(local: DynamoDBLocal) -> None:
    client = client_for(local.url)
    for name in ("table-one", "table-two"):
        create_table(client, name)
    assert sorted(client.list_tables()["TableNames"]) == ["table-one", "table-two"]

    local.reset()

    assert client.list_tables()["TableNames"] == []
    assert local.table_names() == []


def test_dynamodb_local__shared_db__every_key_and_region_sees_one_database(local: DynamoDBLocal) -> None:
    create_table(client_for(local.url), "shared-table")

    other = boto3.client(
        "dynamodb", endpoint_url=local.url, region_name="eu-west-1",
        aws_access_key_id="someoneElse", aws_secret_access_key="x", config=NO_RETRIES,
    )

    assert other.list_tables()["TableNames"] == ["shared-table"]


def test_proxy__in_front_of_dynamodb_local__forwards_counts_and_injects(local: DynamoDBLocal) -> None:
    client = client_for(local.url)
    create_table(client, "proxied")
    with DynamoProxy(local.url) as proxy:
        through = client_for(proxy.url)
        through.put_item(TableName="proxied", Item={"pk": {"S": "a"}})
        found = through.get_item(TableName="proxied", Key={"pk": {"S": "a"}})
        proxy.inject("throttle", operations={"PutItem"})
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            through.put_item(TableName="proxied", Item={"pk": {"S": "b"}})
        snapshot = proxy.snapshot()

    assert found["Item"] == {"pk": {"S": "a"}}
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert snapshot["forwarded_by_operation"] == {"PutItem": 1, "GetItem": 1}
    assert snapshot["items_read"] == 1
    assert "Item" not in client.get_item(TableName="proxied", Key={"pk": {"S": "b"}})


def test_listens_on__only_the_process_holding_the_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert _listens_on(os.getpid(), port) is True
            assert _listens_on(child.pid, port) is False
        finally:
            child.kill()
            child.wait()
    assert _listens_on(os.getpid(), port) is False


def test_ensure_installed__override_without_jar__clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dynamodb_local_module.DIR_ENV, str(tmp_path))

    with pytest.raises(DynamoDBLocalError, match="DynamoDBLocal.jar"):
        ensure_installed()


@pytest.mark.slow
def test_dynamodb_local__first_port_taken__retries_then_stops_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a port that another process holds, offered first by the port picker
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        offered = [taken.getsockname()[1]]
        real_free_port = local_server_module.free_port
        monkeypatch.setattr(
            local_server_module, "free_port", lambda host: offered.pop() if offered else real_free_port(host)
        )
        server = DynamoDBLocal()
        pids: list[int] = []
        real_spawn = server._spawn

        def spawn(*args: Any) -> None:
            try:
                real_spawn(*args)
            finally:
                pids.append(server._process.pid if server._process else -1)

        monkeypatch.setattr(server, "_spawn", spawn)

        # When it starts
        server.start()
        try:
            # Then the first JVM, which could not bind, is gone, and the second one answers
            assert len(pids) == 2
            assert not Path(f"/proc/{pids[0]}").exists()
            assert server.port != taken.getsockname()[1]
            assert client_for(server.url).list_tables()["TableNames"] == []
            port = server.port
        finally:
            server.stop()

    # And stopping it kills the JVM and frees its port
    assert not server.running
    assert not Path(f"/proc/{pids[1]}").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
