"""The connection lifetime: the sweep DISCONNECTs rows older than MAX_CONNECTION_LIFETIME_SECONDS.

API Gateway closes every connection after 2 hours, so a CONNECTED row older than the
lifetime (by ``createdAt``) is gone whatever its activity. The sweep finds those rows on
the sparse, keys-only ``LifetimeIndex`` and marks them with reason ``lifetime``; ``migrate``
adds that index to a table created before it existed. In-process moto; what a message
costs the index is measured on DynamoDB Local in tests/test_lifecycle_dynamodb_local.py.
"""
from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest

from connection_manager import cli
from connection_manager.config import Settings
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from models.connection import ConnectionModel, DisconnectReason, epoch_seconds
from tests.support.events import FakeLambdaContext
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, TABLE, iso, put_raw, raw_item

LIFETIME = 7200


@pytest.fixture
def settings() -> Settings:
    """The contract's default lifetime (the shared fixture sets a day, for the stale tests)."""
    return Settings(table_name=TABLE, region="us-east-1", sweep_concurrency=4)


def lifetime_index_ids(service: ConnectionService) -> set[str]:
    return {
        row.connection_id
        for shard in range(service.model.Meta.live_shards)  # type: ignore[attr-defined]
        for row in service.model.lifetime_index.query(shard)
    }


# Registration and disconnection keep the index live-only -------------------------------------


def test_register__row_carries_live_since_and_enters_the_lifetime_index(service):
    service.register_connection("c1", "u1")

    item = raw_item("c1")
    assert item["liveSince"] == epoch_seconds(NOW)
    assert item["createdAt"] == iso(NOW)
    assert lifetime_index_ids(service) == {"c1"}
    assert "liveSince" not in service.get_connection("c1")  # internal


def test_disconnect__row_leaves_the_lifetime_index(service):
    service.register_connection("c1", "u1")

    service.update_connection_status("c1", "DISCONNECTED")

    item = raw_item("c1")
    assert item["status"] == "DISCONNECTED" and "activeShard" not in item
    assert lifetime_index_ids(service) == set()


# The sweep ------------------------------------------------------------------------------------


@pytest.fixture
def aged_rows(make_connection: Any) -> None:
    """Rows around the 2 h lifetime and the 1 h stale cutoff."""
    make_connection("old-active", age=timedelta(seconds=LIFETIME + 1))  # active now, created 2 h 1 s ago
    make_connection("old-idle", idle=timedelta(hours=3))  # past both: lifetime wins
    make_connection("edge", age=timedelta(seconds=LIFETIME))  # exactly 2 h old: not older than the limit
    make_connection("young-idle", idle=timedelta(minutes=70), age=timedelta(minutes=20))  # stale only
    make_connection("young", age=timedelta(minutes=30))


def test_cleanup__rows_past_their_lifetime__disconnected_with_reason_lifetime_whatever_their_activity(
    service, aged_rows
):
    result = service.cleanup_stale_connections()
    body = result.to_body()

    assert body["lifetimeCount"] == 2 and body["cleanedCount"] == 3  # cleaned: every row marked
    assert body["lifetimeCutoff"] == iso(NOW - timedelta(seconds=LIFETIME))
    assert body["complete"] is True and body["failedCount"] == 0
    for connection_id in ("old-active", "old-idle"):
        item = raw_item(connection_id)
        assert item["status"] == "DISCONNECTED" and item["disconnectReason"] == "lifetime", item
        assert item["disconnectedAt"] == iso(NOW)
        assert "activeShard" not in item and "activeBucket" not in item
    assert raw_item("young-idle")["disconnectReason"] == "stale"
    assert raw_item("edge")["status"] == "CONNECTED"
    assert raw_item("young")["status"] == "CONNECTED"
    assert lifetime_index_ids(service) == {"edge", "young"}


def test_cleanup__lifetime_pass__reads_only_the_expired_rows(service, make_connection, monkeypatch):
    for index in range(30):
        make_connection(f"young-{index:02d}", age=timedelta(minutes=index))
    make_connection("old-1", age=timedelta(hours=3))
    make_connection("old-2", age=timedelta(hours=2, minutes=1))
    index = service.model.lifetime_index
    returned: list[str] = []
    original = index.query

    def counting_query(*args: Any, **kwargs: Any) -> Any:
        for row in original(*args, **kwargs):
            returned.append(row.connection_id)
            yield row

    monkeypatch.setattr(index, "query", counting_query)

    result = service.cleanup_stale_connections()

    assert sorted(returned) == ["old-1", "old-2"]  # a range query: the 30 young rows are never read
    assert result.lifetime == 2 and result.cleaned == 2


def test_cleanup__dry_run__counts_lifetime_rows_and_writes_nothing(service, aged_rows):
    before = {cid: raw_item(cid) for cid in ("old-active", "old-idle", "young-idle")}

    body = service.cleanup_stale_connections(dry_run=True).to_body()

    assert body["lifetimeCount"] == 2 and body["cleanedCount"] == 3  # old-idle counted once, as lifetime
    assert {cid: raw_item(cid) for cid in before} == before


def test_cleanup__a_row_disconnected_between_read_and_write__keeps_its_own_reason(
    service, make_connection, monkeypatch
):
    make_connection("c1", age=timedelta(hours=3))
    original = service._expire_one

    def client_disconnects_first(connection_id: str, born_before: int, *rest: Any) -> str:
        service.disconnect(connection_id, DisconnectReason.CLIENT)
        return original(connection_id, born_before, *rest)

    monkeypatch.setattr(service, "_expire_one", client_disconnects_first)

    result = service.cleanup_stale_connections()

    assert result.lifetime == 0 and result.skipped == 1
    assert raw_item("c1")["disconnectReason"] == "client"


def test_cleanup__disconnected_row_left_in_the_lifetime_index_by_another_tool__is_repaired(service):
    put_raw(
        {
            "connectionId": "foreign", "userId": "u1", "status": "DISCONNECTED", "createdAt": iso(NOW - timedelta(hours=5)),
            "activeShard": Decimal(0), "liveSince": Decimal(epoch_seconds(NOW - timedelta(hours=5))),
        }
    )

    result = service.cleanup_stale_connections()

    assert result.repaired == 1 and result.lifetime == 0
    item = raw_item("foreign")
    assert "activeShard" not in item and item["status"] == "DISCONNECTED" and "disconnectReason" not in item


def test_cleanup__lifetime_setting__is_read_from_the_environment(monkeypatch, fresh_handler_service, dynamodb, clock):
    monkeypatch.setenv("MAX_CONNECTION_LIFETIME_SECONDS", "600")
    from connection_manager import wiring

    monkeypatch.setattr(wiring, "_service", wiring.build_service(Settings.from_env(), clock))
    wiring._service.register_connection("c1", "u1")
    clock.advance(seconds=601)

    response = lambda_handler({"action": "cleanup_stale_connections"}, FakeLambdaContext())

    assert response["statusCode"] == 200
    assert response["body"]["lifetimeCount"] == 1 and response["body"]["cleanedCount"] == 1
    assert raw_item("c1")["disconnectReason"] == "lifetime"


# Rows of other tools and tables of earlier versions ------------------------------------------------


def test_reindex__foreign_row__gets_live_since_from_created_at_and_is_swept_by_lifetime(service):
    put_raw({"connectionId": "foreign", "userId": "u1", "status": "CONNECTED", "createdAt": iso(NOW - timedelta(hours=3)),
             "lastActiveAt": iso(NOW)})

    outcome = service.reindex()
    result = service.cleanup_stale_connections()

    assert outcome.applied == 1
    assert result.lifetime == 1
    item = raw_item("foreign")
    assert item["liveSince"] == epoch_seconds(NOW - timedelta(hours=3))
    assert item["disconnectReason"] == "lifetime"


def _old_layout_table() -> Any:
    """The table as the previous version created it: UserIdIndex and LiveIndex, no LifetimeIndex."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.delete_table(TableName=TABLE)
    schema = ConnectionModel._get_schema()
    indexes = [index for index in schema["global_secondary_indexes"] if index["index_name"] != "LifetimeIndex"]
    client.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=schema["key_schema"],
        AttributeDefinitions=[d for d in schema["attribute_definitions"] if d["AttributeName"] != "liveSince"],
        GlobalSecondaryIndexes=[
            {"IndexName": i["index_name"], "KeySchema": i["key_schema"], "Projection": i["projection"]} for i in indexes
        ],
    )
    return client


def test_migrate__old_table__adds_the_lifetime_index_and_reindexes_its_rows(service, dynamodb):
    client = _old_layout_table()
    put_raw({"connectionId": "old", "userId": "u1", "status": "CONNECTED", "createdAt": iso(NOW - timedelta(hours=3)),
             "lastActiveAt": iso(NOW), "activeShard": Decimal(0), "activeBucket": Decimal(0)})
    sleeps: list[float] = []

    report = service.migrate(sleep=sleeps.append)
    again = service.migrate(sleep=sleeps.append)

    assert report["createdIndexes"] == ["LifetimeIndex"]
    assert report["reindexed"] == 1 and report["failed"] == 0
    assert again["createdIndexes"] == [] and "LifetimeIndex" in again["presentIndexes"] and again["reindexed"] == 0
    names = {i["IndexName"] for i in client.describe_table(TableName=TABLE)["Table"]["GlobalSecondaryIndexes"]}
    assert names == {"UserIdIndex", "LiveIndex", "LifetimeIndex"}
    assert raw_item("old")["liveSince"] == epoch_seconds(NOW - timedelta(hours=3))
    assert service.cleanup_stale_connections().lifetime == 1


def test_migrate__index_with_another_projection__reported_and_left_alone(service, dynamodb):
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.delete_table(TableName=TABLE)
    schema = ConnectionModel._get_schema()
    client.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=schema["key_schema"],
        AttributeDefinitions=[d for d in schema["attribute_definitions"] if d["AttributeName"] in ("connectionId", "userId", "status")],
        GlobalSecondaryIndexes=[
            {"IndexName": "UserIdIndex", "KeySchema": [{"AttributeName": "userId", "KeyType": "HASH"},
                                                      {"AttributeName": "status", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "ALL"}}
        ],
    )

    report = service.migrate(sleep=lambda _: None)

    assert report["differingIndexes"] == ["UserIdIndex"]
    assert sorted(report["createdIndexes"]) == ["LifetimeIndex", "LiveIndex"]
    user_index = next(
        i for i in client.describe_table(TableName=TABLE)["Table"]["GlobalSecondaryIndexes"] if i["IndexName"] == "UserIdIndex"
    )
    assert user_index["Projection"] == {"ProjectionType": "ALL"}


def test_cli_migrate__prints_what_it_did(capsys, handler_service, dynamodb):
    _old_layout_table()

    code = cli.main(["migrate"])
    out = capsys.readouterr().out

    assert code == 0
    assert json.loads(out)["createdIndexes"] == ["LifetimeIndex"]
