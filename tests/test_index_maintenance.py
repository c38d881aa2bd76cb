"""The sparse ``LiveIndex`` holds exactly the CONNECTED rows, whoever changes a row.

The sweep and ``get_all_connections`` read only this index, so their cost depends on it
staying live-only: a row must leave it in the same write that disconnects it (sweep,
status update, ``disconnect_user``, the WebSocket ``$disconnect`` route) and come back
when it is set CONNECTED again. Every assertion reads the stored items and the index
itself with boto3, not through the service.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from connection_manager.handler import lambda_handler
from models.connection import ConnectionModel, live_shards, shard_for
from tests.support.events import FakeLambdaContext, websocket_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import raw_item, raw_items


def index_ids(client: Any) -> set[str]:
    """The connection ids DynamoDB holds in LiveIndex, every shard, every page."""
    found: set[str] = set()
    for shard in range(live_shards()):
        kwargs: dict[str, Any] = {
            "TableName": ConnectionModel.Meta.table_name,
            "IndexName": "LiveIndex",
            "KeyConditionExpression": "activeShard = :shard",
            "ExpressionAttributeValues": {":shard": {"N": str(shard)}},
        }
        while True:
            page = client.query(**kwargs)
            found.update(item["connectionId"]["S"] for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return found


def assert_index_matches_table(client: Any) -> None:
    """The invariant on every stored row, and the index as DynamoDB sees it."""
    items = raw_items(client)
    for item in items:
        if item["status"] == "CONNECTED":
            assert item.get("activeShard") == shard_for(item["connectionId"]), item
        else:
            assert "activeShard" not in item, item
    assert index_ids(client) == {item["connectionId"] for item in items if item["status"] == "CONNECTED"}


def test_index__holds_live_rows_only_from_the_first_write(service, dynamodb, make_connection):
    make_connection("live-1", user_id="u1")
    make_connection("live-2", user_id="u2")
    make_connection("old", user_id="u1", status="DISCONNECTED")
    service.register_connection("new", "u3")

    assert index_ids(dynamodb) == {"live-1", "live-2", "new"}
    assert_index_matches_table(dynamodb)


def test_sweep__stale_row_leaves_the_index_and_a_live_one_stays(service, dynamodb, make_connection):
    make_connection("stale", idle=timedelta(hours=3))
    make_connection("fresh", idle=timedelta(minutes=5))

    result = service.cleanup_stale_connections()

    assert result.cleaned == 1
    assert raw_item("stale")["disconnectReason"] == "stale"
    assert "activeShard" not in raw_item("stale")
    assert index_ids(dynamodb) == {"fresh"}
    assert_index_matches_table(dynamodb)


def test_sweep__dry_run_leaves_the_index_as_it_was(service, dynamodb, make_connection):
    make_connection("stale", idle=timedelta(hours=3))

    service.cleanup_stale_connections(dry_run=True)

    assert index_ids(dynamodb) == {"stale"}
    assert raw_item("stale")["activeShard"] == shard_for("stale")


def test_update__disconnected_leaves_and_connected_re_enters(service, dynamodb, make_connection):
    make_connection("c1")

    service.update_connection_status("c1", "DISCONNECTED")
    gone = raw_item("c1")
    assert gone["status"] == "DISCONNECTED" and "activeShard" not in gone
    assert "expiresAt" in gone  # DISCONNECTED rows age out; live ones never do
    assert index_ids(dynamodb) == set()

    service.update_connection_status("c1", "CONNECTED")
    back = raw_item("c1")
    assert back["status"] == "CONNECTED"
    assert back["activeShard"] == shard_for("c1")
    assert not {"disconnectedAt", "disconnectReason", "expiresAt"} & set(back)
    assert index_ids(dynamodb) == {"c1"}
    assert_index_matches_table(dynamodb)


def test_update__re_entered_row_is_listed_and_swept_again(service, dynamodb, make_connection, clock):
    make_connection("c1", idle=timedelta(hours=3))
    service.update_connection_status("c1", "DISCONNECTED")
    service.update_connection_status("c1", "CONNECTED")  # fresh lastActiveAt: not stale

    assert [row["connectionId"] for row in service.get_all_connections().connections] == ["c1"]
    assert service.cleanup_stale_connections().cleaned == 0

    clock.advance(hours=2)
    assert service.cleanup_stale_connections().cleaned == 1
    assert index_ids(dynamodb) == set()


def test_disconnect_user__every_row_of_that_user_leaves_others_stay(service, dynamodb, make_connection):
    for index in range(5):
        make_connection(f"a{index}", user_id="alice")
    make_connection("b0", user_id="bob")

    assert service.disconnect_user("alice") == 5

    assert index_ids(dynamodb) == {"b0"}
    assert all(raw_item(f"a{index}")["disconnectReason"] == "admin" for index in range(5))
    assert_index_matches_table(dynamodb)


def test_websocket__connect_enters_and_disconnect_leaves(handler_service, dynamodb):
    context = FakeLambdaContext()

    assert lambda_handler(websocket_event("websocket_connect", "ws-1", user_id="u1"), context)["statusCode"] == 200
    assert index_ids(dynamodb) == {"ws-1"}

    assert lambda_handler(websocket_event("websocket_disconnect", "ws-1"), context)["statusCode"] == 200
    item = raw_item("ws-1")
    assert item["status"] == "DISCONNECTED" and item["disconnectReason"] == "client"
    assert "activeShard" not in item
    assert index_ids(dynamodb) == set()


def test_websocket__message_after_disconnect_does_not_bring_the_row_back(handler_service, dynamodb, make_connection):
    make_connection("ws-1")
    context = FakeLambdaContext()
    lambda_handler(websocket_event("websocket_disconnect", "ws-1"), context)

    lambda_handler(websocket_event("websocket_message", "ws-1"), context)

    assert raw_item("ws-1")["status"] == "DISCONNECTED"
    assert index_ids(dynamodb) == set()


@pytest.mark.parametrize("route", ["sweep", "update", "disconnect_user", "$disconnect"])
def test_every_way_out__one_write_leaves_the_index(route, handler_service, dynamodb, make_connection):
    """Whichever door disconnects a row, the next listing and the next sweep no longer read it."""
    service = handler_service
    make_connection("target", user_id="u1", idle=timedelta(hours=3))
    make_connection("keep", user_id="u2")

    if route == "sweep":
        service.cleanup_stale_connections()
    elif route == "update":
        service.update_connection_status("target", "DISCONNECTED")
    elif route == "disconnect_user":
        service.disconnect_user("u1")
    else:
        lambda_handler(websocket_event("websocket_disconnect", "target"), FakeLambdaContext())

    assert index_ids(dynamodb) == {"keep"}
    assert [row["connectionId"] for row in service.get_all_connections().connections] == ["keep"]
    assert service.cleanup_stale_connections(dry_run=True).scanned == 0
    assert_index_matches_table(dynamodb)
