"""The message hot path on the wire: what it costs on DynamoDB Local, how it fails on moto.

* Cost: every request goes through the metering proxy, which bills as DynamoDB does (a
  failed condition 1 write unit). A message in a container that has not seen its
  connection costs one eventually consistent read (0.5 read units) inside the interval, and
  a fleet's hour of messages costs what the capacity model says it does.
* Failure: a throttled read or write on the message path answers API Gateway 200, is logged
  and counted in the ``ActivityWritesFailed`` metric, and changes nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

import connection_manager.observability as observability
import connection_manager.wiring as wiring
from connection_manager.capacity import model
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.handler import lambda_handler
from connection_manager.service import CHECKED, WRITTEN, ConnectionService
from tests.support.dynamo_proxy import DynamoProxy
from tests.support.dynamodb_local import DynamoDBLocal
from tests.support.events import FakeLambdaContext, websocket_event
from tests.support.fixtures import NOW
from tests.support.metering_proxy import MeteringProxy
from tests.support.moto_server import MotoServer
from tests.support.wire import direct_client, stored, use_endpoint

pytestmark = pytest.mark.integration

TABLE = "connections"
INTERVAL = 300


# Cost, on DynamoDB Local ------------------------------------------------------------------


@pytest.fixture
def metered(dynamodb_local: DynamoDBLocal, monkeypatch: pytest.MonkeyPatch) -> Iterator[MeteringProxy]:
    dynamodb_local.reset()
    with MeteringProxy(dynamodb_local.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", proxy.url)
        yield proxy


def container(clock: FixedClock, **settings: Any) -> ConnectionService:
    """A fresh process's service: its activity memory has never seen a connection."""
    return ConnectionService(Settings(table_name=TABLE, region="us-east-1", **settings), clock)


@pytest.mark.dynamodb_local
def test_message__container_that_has_not_seen_the_connection__one_eventually_consistent_read(metered):
    # Given a connection whose activity another container wrote a moment ago
    clock = FixedClock(NOW)
    first = container(clock)
    first.create_table()
    first.register_connection("c1", "u1")
    clock.advance(seconds=10)
    metered.reset_counters()

    # When eight containers that never saw it each get one of its messages, inside the interval
    outcomes = []
    for _ in range(8):
        clock.advance(seconds=30)
        outcomes.append(container(clock).record_activity("c1"))

    # Then each paid one eventually consistent read and nothing was written: 0.1 write-unit equivalents
    capacity = metered.capacity()
    assert outcomes == [CHECKED] * 8
    assert capacity["requests"] == {"GetItem": 8}
    assert (capacity["WRU"], capacity["RRU"]) == (0, 8 * 0.5)
    assert capacity["WUE"] / 8 == pytest.approx(0.1)


@pytest.mark.dynamodb_local
def test_message__after_the_interval__read_then_one_write_moves_last_active_at(metered):
    clock = FixedClock(NOW)
    first = container(clock)
    first.create_table()
    first.register_connection("c1", "u1")
    clock.advance(seconds=INTERVAL)
    metered.reset_counters()

    assert container(clock).record_activity("c1") == WRITTEN

    capacity = metered.capacity()
    assert capacity["requests"] == {"GetItem": 1, "UpdateItem": 1}
    assert capacity["RRU"] == 0.5
    assert capacity["failed_conditions"] == 0
    assert capacity["units"]["write LiveIndex"] >= 1  # the index copy of lastActiveAt
    assert first.get_connection("c1")["lastActiveAt"] == "2024-01-01T12:05:00Z"


@pytest.mark.dynamodb_local
def test_message__a_fleet_for_an_hour__costs_what_the_capacity_model_says(metered):
    # Given two connections, each sending a message every 30 s for an hour, every message in a
    # container that has not seen it (no activity memory)
    clock = FixedClock(NOW)
    fleet = container(clock, activity_memory_size=0)
    fleet.create_table()
    for connection_id in ("c1", "c2"):
        fleet.register_connection(connection_id, "u1")
    metered.reset_counters()
    messages = 0
    for _ in range(3600 // 30):
        clock.advance(seconds=30)
        for connection_id in ("c1", "c2"):
            fleet.record_activity(connection_id)
            messages += 1

    # Then the measured cost per message is the model's (reads, writes, index, bucket moves)
    measured = metered.capacity()["WUE"] / messages
    assert measured == pytest.approx(model(1_000_000, 30, INTERVAL).wue_per_message, abs=0.01)
    assert metered.capacity()["failed_conditions"] == 0


# Failure, on moto_server behind the fault-injecting proxy ------------------------------------


@pytest.fixture
def wired(dynamo_proxy: DynamoProxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> DynamoProxy:
    """The handler's service on the proxy, its table made and one connection registered."""
    monkeypatch.setattr(observability, "_configured", True)
    caplog.set_level(logging.DEBUG, logger="connection_manager.metrics")
    service = use_endpoint(monkeypatch, dynamo_proxy.url, DYNAMODB_MAX_RETRIES="1")  # one retry: a short test
    service.create_table()
    service.register_connection("c1", "u1")
    monkeypatch.setattr(wiring, "_service", None)  # the next invocation lands in a fresh container
    dynamo_proxy.reset_counters()
    return dynamo_proxy


def message(connection_id: str) -> dict[str, Any]:
    return lambda_handler(websocket_event("websocket_message", connection_id), FakeLambdaContext())


def failures_counted(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ``ActivityWritesFailed`` metric records emitted (debug lines outside Lambda)."""
    return [r.getMessage() for r in caplog.records if r.name == "connection_manager.metrics" and "ActivityWritesFailed" in r.getMessage()]


def test_message__read_throttled_past_retries__200_logged_counted_nothing_written(wired, moto_server: MotoServer, caplog):
    before = stored(direct_client(moto_server.url), "c1")
    wired.inject("throttle", count=2, operations={"GetItem"})

    assert message("c1") == {"statusCode": 200}

    assert wired.snapshot()["by_operation"] == {"GetItem": 2}  # 1 + DYNAMODB_MAX_RETRIES, then given up
    assert "activity of c1 not recorded" in caplog.text
    assert len(failures_counted(caplog)) == 1 and "ServiceUnavailable" in failures_counted(caplog)[0]
    assert stored(direct_client(moto_server.url), "c1") == before


def test_message__write_throttled_past_retries__200_logged_counted_row_unchanged(wired, moto_server: MotoServer, caplog):
    # Given a row last active before the interval, so the message must write
    moto = direct_client(moto_server.url)
    old = (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    moto.update_item(TableName=TABLE, Key={"connectionId": {"S": "c1"}}, UpdateExpression="SET lastActiveAt = :t",
                     ExpressionAttributeValues={":t": {"S": old}})
    before = stored(moto, "c1")
    wired.inject("throttle", count=2, operations={"UpdateItem"})

    assert message("c1") == {"statusCode": 200}

    assert wired.snapshot()["by_operation"] == {"GetItem": 1, "UpdateItem": 2}
    assert "activity of c1 not recorded" in caplog.text
    assert len(failures_counted(caplog)) == 1
    assert stored(moto, "c1") == before


def test_message__write_answer_lost__retry_finds_its_own_write_and_nothing_is_counted(wired, moto_server: MotoServer, caplog):
    moto = direct_client(moto_server.url)
    old = (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    moto.update_item(TableName=TABLE, Key={"connectionId": {"S": "c1"}}, UpdateExpression="SET lastActiveAt = :t",
                     ExpressionAttributeValues={":t": {"S": old}})
    wired.inject("drop", count=1, operations={"UpdateItem"}, phase="after")

    assert message("c1") == {"statusCode": 200}

    assert stored(moto, "c1")["lastActiveAt"] > old
    assert failures_counted(caplog) == []
