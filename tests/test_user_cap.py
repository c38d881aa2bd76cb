"""The per-user cap: with MAX_CONNECTIONS_PER_USER = N a registration evicts the user's oldest beyond N.

Evicted rows are DISCONNECTED with reason ``evicted`` by conditional writes, and returned
(ids and stored endpoints) so the caller can close their sockets at the gateway. In-process
moto; concurrent registrations race for real in tests/test_lifecycle_dynamodb_local.py.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from connection_manager.config import Settings
from connection_manager.errors import UnavailableError
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService, Evicted
from tests.support.events import FakeLambdaContext, websocket_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import FIXTURE_LIFETIME_SECONDS, NOW, TABLE, iso, raw_item, raw_items

CAP = 2


@pytest.fixture
def settings() -> Settings:
    return Settings(
        table_name=TABLE, region="us-east-1", sweep_concurrency=4,
        max_connection_lifetime_seconds=FIXTURE_LIFETIME_SECONDS, max_connections_per_user=CAP,
    )


def connected_ids(user_id: str) -> set[str]:
    return {item["connectionId"] for item in raw_items() if item["userId"] == user_id and item["status"] == "CONNECTED"}


def connect(connection_id: str, user_id: str) -> dict[str, Any]:
    return lambda_handler(websocket_event("websocket_connect", connection_id, user_id=user_id), FakeLambdaContext())


def test_connect__beyond_the_cap__evicts_the_oldest_with_reason_evicted(service, clock):
    service.connect("c1", "u1")
    clock.advance(seconds=1)
    service.connect("c2", "u1")
    clock.advance(seconds=1)

    registration = service.connect("c3", "u1")

    assert registration.created is True
    assert registration.record["status"] == "CONNECTED"
    assert registration.evicted == (Evicted("c1", None),)
    item = raw_item("c1")
    assert item["status"] == "DISCONNECTED" and item["disconnectReason"] == "evicted"
    assert item["disconnectedAt"] == iso(NOW + timedelta(seconds=2))
    assert "activeShard" not in item
    assert connected_ids("u1") == {"c2", "c3"}


def test_connect__within_the_cap_or_without_one__evicts_nothing(service, clock):
    first = service.connect("c1", "u1")
    second = service.connect("c2", "u1")
    uncapped = ConnectionService(replace(service.settings, max_connections_per_user=0), clock, service.model)
    others = [uncapped.connect(f"x{index}", "u2") for index in range(5)]

    assert first.evicted == () and second.evicted == ()
    assert all(registration.evicted == () for registration in others)
    assert connected_ids("u1") == {"c1", "c2"} and len(connected_ids("u2")) == 5


def test_connect__other_users_rows__never_counted(service, make_connection):
    for index in range(3):
        make_connection(f"other-{index}", user_id="u2")

    registration = service.connect("mine", "u1")

    assert registration.evicted == ()
    assert len(connected_ids("u2")) == 3


def test_connect__several_beyond_the_cap__all_evicted_oldest_first(service, make_connection):
    # Rows from before the cap was set: four, created 40, 30, 20 and 10 minutes ago.
    for minutes in (40, 30, 20, 10):
        make_connection(f"old-{minutes}", user_id="u1", age=timedelta(minutes=minutes))

    registration = service.connect("new", "u1")

    assert {item.connection_id for item in registration.evicted} == {"old-40", "old-30", "old-20"}
    assert connected_ids("u1") == {"old-10", "new"}


def test_connect__index_not_caught_up_with_the_new_row__still_counts_it(service, make_connection, monkeypatch):
    make_connection("a", user_id="u1", age=timedelta(minutes=2))
    make_connection("b", user_id="u1", age=timedelta(minutes=1))
    index = service.model.user_index
    original = index.query

    def lagging_query(*args: Any, **kwargs: Any) -> Any:
        return (row for row in original(*args, **kwargs) if row.connection_id != "new")

    monkeypatch.setattr(index, "query", lagging_query)

    registration = service.connect("new", "u1")

    assert [item.connection_id for item in registration.evicted] == ["a"]
    assert connected_ids("u1") == {"b", "new"}


def test_connect__same_second_tie__the_smaller_id_is_the_older_even_when_it_registers_last(handler_service, clock):
    connect("b", "u1")
    connect("c", "u1")

    response = connect("a", "u1")  # same second: (createdAt, connectionId) puts "a" first, so it is the oldest

    assert response["statusCode"] == 409  # the handshake is refused: this socket never opens
    assert raw_item("a")["disconnectReason"] == "evicted"
    assert connected_ids("u1") == {"b", "c"}


def test_connect__a_retried_registration__still_applies_the_cap(service, make_connection, clock):
    make_connection("a", user_id="u1", age=timedelta(minutes=2))
    service.register_connection("new", "u1")  # the first attempt stopped before its cap ran
    make_connection("b", user_id="u1", age=timedelta(minutes=1))

    registration = service.connect("new", "u1")

    assert registration.created is False
    assert [item.connection_id for item in registration.evicted] == ["a"]


def test_connect__eviction_write_fails__registration_still_succeeds(service, make_connection, monkeypatch, caplog):
    make_connection("a", user_id="u1", age=timedelta(minutes=2))
    make_connection("b", user_id="u1", age=timedelta(minutes=1))

    def throttled(*_: Any) -> Any:
        raise UnavailableError("DynamoDB is throttling")

    monkeypatch.setattr(service, "_disconnect_if_connected", throttled)

    with caplog.at_level(logging.WARNING):
        registration = service.connect("new", "u1")

    assert registration.created is True and registration.evicted == ()
    assert raw_item("new")["status"] == "CONNECTED" and raw_item("a")["status"] == "CONNECTED"
    assert "could not evict a of user u1" in caplog.text


def test_websocket_connect__evicted_sockets_are_closed_at_the_gateway(handler_service, gateway, clock):
    # Given a user at the cap of 2, whose first socket is open at API Gateway
    gateway.open("c1", NOW)
    connect("c1", "u1")
    clock.advance(seconds=1)
    connect("c2", "u1")
    clock.advance(seconds=1)

    # When a third connection arrives
    response = connect("c3", "u1")

    # Then the oldest is evicted and its socket closed with DeleteConnection
    assert response == {"statusCode": 200}
    assert raw_item("c1")["disconnectReason"] == "evicted"
    assert [(c.method, c.connection_id) for c in gateway.calls] == [("DELETE", "c1")]
    assert not gateway.is_open("c1")


def test_register_connection_action__answers_the_evicted_ids_not_their_endpoints(handler_service, clock):
    for index in range(3):
        lambda_handler({"action": "register_connection", "connectionId": f"c{index}", "userId": "u1"}, FakeLambdaContext())
        clock.advance(seconds=1)

    response = lambda_handler({"action": "register_connection", "connectionId": "c3", "userId": "u1"}, FakeLambdaContext())

    assert response["statusCode"] == 201
    assert response["body"]["evictedConnectionIds"] == ["c1"]
    assert response["body"]["connection"]["connectionId"] == "c3"
    assert connected_ids("u1") == {"c2", "c3"}
