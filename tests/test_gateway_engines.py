"""The gateway lifecycle over the wire, on moto_server and on DynamoDB Local.

API Gateway's events go through ``lambda_handler``; the table is a real server reached
over HTTP; the ``@connections`` API is the stand-in. What DynamoDB Local adds over moto:
its conditional writes are atomic and strict, so the sweep's "take the gateway's time,
never move it back" write is checked by AWS's own engine.
"""
from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

import connection_manager.wiring as wiring
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.handler import lambda_handler
from connection_manager.operations import run_action
from connection_manager.service import ConnectionService
from tests.support.dynamo_proxy import DynamoProxy
from tests.support.engines import Engine
from tests.support.events import load_event
from tests.support.fixtures import NOW, iso
from tests.support.gateway_standin import GatewayStandIn


@pytest.fixture
def wired(engine: Engine, engine_proxy: DynamoProxy, standin: GatewayStandIn, monkeypatch: pytest.MonkeyPatch):
    engine_proxy.serialize_upstream = not engine.atomic_conditional_writes
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", engine_proxy.url)
    settings = Settings(
        table_name="connections-gateway", region="us-east-1", sweep_concurrency=4,
        gateway_endpoint_override=standin.url,
    )
    clock = FixedClock(NOW)
    service = wiring.build_service(settings, clock)
    service.create_table()
    monkeypatch.setattr(wiring, "_service", service)
    return service, clock


def connect(connection_id: str, user_id: str) -> None:
    event = copy.deepcopy(load_event("websocket_connect"))
    event["requestContext"]["connectionId"] = connection_id
    event["queryStringParameters"] = {"userId": user_id}
    assert lambda_handler(event)["statusCode"] == 200


def stored(service: ConnectionService, connection_id: str) -> Any:
    return service.model.get(connection_id, consistent_read=True)


def test_lifecycle__sweep_reconciles_and_admin_closes(wired, standin):
    service, clock = wired
    # Given three sockets opened through $connect, then two hours without a message to us
    for connection_id, user in (("gone", "u1"), ("receiver", "u2"), ("idle", "u3")):
        standin.open(connection_id, NOW)
        connect(connection_id, user)
    clock.advance(hours=2)
    standin.drop("gone")  # closed without a $disconnect reaching us
    standin.touch("receiver", clock() - timedelta(seconds=30))  # only receives: its socket is in use

    # When the hourly schedule runs the sweep
    response = lambda_handler(load_event("scheduled_event"))

    # Then the gateway's answers decide
    body = response["body"]
    assert response["statusCode"] == 200
    assert (body["cleanedCount"], body["goneCount"], body["reconciledCount"], body["unreconciledCount"]) == (2, 1, 1, 0)
    assert stored(service, "gone").disconnect_reason == "gone"
    assert stored(service, "idle").disconnect_reason == "stale"
    receiver = stored(service, "receiver")
    assert receiver.status == "CONNECTED" and iso(receiver.last_active_at) == iso(clock() - timedelta(seconds=30))
    assert [r["connectionId"] for r in service.get_all_connections().connections] == ["receiver"]

    # And an admin disconnect of the receiver's user closes its socket for real
    status, answer = run_action(service, "disconnect_user", {"userId": "u2"})
    assert (status, answer) == (200, {"disconnectedCount": 1})
    assert not standin.is_open("receiver")
    assert stored(service, "receiver").disconnect_reason == "admin"


def test_cleanup__gateway_time_never_moves_activity_back(wired, standin):
    service, clock = wired
    # Given a stale-looking row whose socket the gateway saw in use five minutes ago
    standin.open("c1", NOW)
    connect("c1", "u1")
    clock.advance(hours=2)
    standin.touch("c1", clock() - timedelta(minutes=5))
    # and a heartbeat that lands while the sweep is asking the gateway
    standin.on_request = lambda method, connection_id: service.heartbeat(connection_id)

    # When the sweep runs
    body = service.cleanup_stale_connections().to_body()

    # Then the row stays CONNECTED with the heartbeat's newer time, not the gateway's older one
    assert body["cleanedCount"] == 0 and body["reconciledCount"] == 0
    row = stored(service, "c1")
    assert row.status == "CONNECTED" and iso(row.last_active_at) == iso(clock())
