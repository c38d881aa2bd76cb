"""Service-level fixtures: an in-process DynamoDB, a fixed clock, the service, a row factory.

Test modules take them with ``from tests.support.fixtures import *``. Every row in the
table is written either through the service or through :func:`put_raw`, and read back
with :func:`raw_item` straight from DynamoDB, so assertions check what is really stored,
not what the service believes it stored.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import pynamodb.connection.base as pynamodb_base
import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from moto import mock_aws

import connection_manager.wiring as wiring
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.gateway import Gateway
from connection_manager.service import ConnectionService, new_connection_row
from models.platform import is_reserved
from models.connection import ConnectionModel, format_timestamp

__all__ = [
    "ENDPOINT",
    "NOW",
    "_mocked_service",
    "TABLE",
    "clock",
    "dynamodb",
    "fresh_handler_service",
    "gateway",
    "sleeps",
    "handler_service",
    "iso",
    "make_connection",
    "put_raw",
    "raw_item",
    "raw_items",
    "service",
    "settings",
]

TABLE = "connections"
#: Mid-morning, far from midnight and from any DST change, so no test depends on the date.
NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)

_deserializer = TypeDeserializer()
_serializer = TypeSerializer()


def iso(value: datetime) -> str:
    return format_timestamp(value)


_raw_client: Any = None


def _client() -> Any:
    """One boto3 client for raw reads; moto intercepts it whenever a mock is active."""
    global _raw_client
    if _raw_client is None:
        _raw_client = boto3.client("dynamodb", region_name="us-east-1")
    return _raw_client


def raw_item(connection_id: str, client: Any = None) -> dict[str, Any] | None:
    """The stored item as plain Python values (numbers as Decimal), or None."""
    response = (client or _client()).get_item(
        TableName=ConnectionModel.Meta.table_name, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True
    )
    item = response.get("Item")
    return None if item is None else {k: _deserializer.deserialize(v) for k, v in item.items()}


def raw_items(client: Any = None) -> list[dict[str, Any]]:
    """Every stored connection row (a full Scan; fine for a test table); the platform's own
    counters and history under reserved keys are left out (see :func:`platform_items`)."""
    return [item for item in _all_items(client) if not is_reserved(item["connectionId"])]


def platform_items(client: Any = None) -> dict[str, dict[str, Any]]:
    """The platform's counters, snapshot and sweep history, by key."""
    return {item["connectionId"]: item for item in _all_items(client) if is_reserved(item["connectionId"])}


def _all_items(client: Any = None) -> list[dict[str, Any]]:
    client = client or _client()
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": ConnectionModel.Meta.table_name, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        items.extend({k: _deserializer.deserialize(v) for k, v in item.items()} for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def put_raw(item: dict[str, Any], client: Any = None) -> None:
    """Write an item exactly as given, the way another tool sharing the table might."""
    (client or _client()).put_item(
        TableName=ConnectionModel.Meta.table_name, Item={k: _serializer.serialize(v) for k, v in item.items()}
    )


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


#: The connection lifetime of the shared fixture: a day, longer than the idle times (hours)
#: the stale-sweep tests give their rows, so those rows stay ``stale`` rather than
#: ``lifetime``. Tests of the lifetime itself set theirs (tests/test_lifetime.py).
FIXTURE_LIFETIME_SECONDS = 24 * 3600


@pytest.fixture
def settings() -> Settings:
    return Settings(
        table_name=TABLE, region="us-east-1", sweep_concurrency=4, max_connection_lifetime_seconds=FIXTURE_LIFETIME_SECONDS
    )


@pytest.fixture
def fresh_handler_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the process-wide service, so each test builds it from its own environment."""
    monkeypatch.setattr(wiring, "_service", None)


_loader = botocore.loaders.create_loader()


def _session_with_shared_loader() -> botocore.session.Session:
    """A botocore session that reuses already-parsed service models.

    Every service instance builds a new PynamoDB connection and so a new session, which
    re-reads DynamoDB's API description from disk (about 0.1 s); sharing the loader's
    cache keeps a test's setup in the tens of milliseconds. Behaviour is unchanged.
    """
    session = botocore.session.get_session()
    session.register_component("data_loader", _loader)
    return session


@pytest.fixture
def _mocked_service(
    settings: Settings, clock: FixedClock, fresh_handler_service: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConnectionService]:
    monkeypatch.setattr(pynamodb_base, "get_session", _session_with_shared_loader)
    with mock_aws():
        # Bound the way the composition root binds it, so the table helpers below read it.
        service = wiring.build_service(settings, clock)
        service.create_table()
        yield service


@pytest.fixture
def dynamodb(_mocked_service: ConnectionService) -> Any:
    """An in-process moto DynamoDB with the table created by the service; a boto3 client on it."""
    return _client()


@pytest.fixture
def service(_mocked_service: ConnectionService, dynamodb: Any) -> ConnectionService:
    """The service that created the table, on the fixed ``clock``."""
    return _mocked_service


@pytest.fixture
def handler_service(service: ConnectionService, monkeypatch: pytest.MonkeyPatch) -> ConnectionService:
    """Make ``lambda_handler`` use the test's service (and so its fixed clock)."""
    monkeypatch.setattr(wiring, "_service", service)
    return service


@pytest.fixture
def sleeps() -> list[float]:
    """Backoff waits the gateway asked for (recorded, never slept)."""
    return []


@pytest.fixture
def gateway(service: ConnectionService, settings: Settings, standin: Any, sleeps: list[float]) -> Any:
    """Point the service's gateway at the stand-in (returned), with backoff recorded instead of slept."""
    service.gateway = Gateway(replace(settings, gateway_endpoint_override=standin.url), sleep=sleeps.append)
    return standin


#: What ``$connect`` stores for the sample events' API: never called, the override wins.
ENDPOINT = "https://abcdef1234.execute-api.us-east-1.amazonaws.com/production"

MakeConnection = Callable[..., ConnectionModel]


@pytest.fixture
def make_connection(dynamodb: Any, clock: FixedClock) -> MakeConnection:
    """Write a row shaped like the service's own; ``idle`` moves its last activity back.

    ``make_connection("c1", user_id="u1", idle=timedelta(hours=2))`` is a stale CONNECTED
    row; ``status="DISCONNECTED"`` writes a history row (no ``activeShard``).
    """
    counter = iter(range(1_000_000))

    def make(
        connection_id: str | None = None,
        *,
        user_id: str = "user-1",
        status: str = "CONNECTED",
        idle: timedelta = timedelta(0),
        age: timedelta | None = None,
        reason: str = "client",
        metadata: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> ConnectionModel:
        connection_id = connection_id or f"conn-{next(counter):05d}"
        last_active = clock() - idle
        created = last_active - (age if age is not None else timedelta(minutes=1))
        row = new_connection_row(connection_id, user_id, created, metadata, endpoint=endpoint)
        row.last_active_at = last_active
        row.updated_at = last_active
        if status == "DISCONNECTED":
            row.status = "DISCONNECTED"
            row.disconnect_reason = reason
            row.disconnected_at = last_active
            row.active_shard = None
        row.save()
        return row

    return make

