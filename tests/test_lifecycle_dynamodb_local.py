"""The lifetime index's write cost and the per-user cap's convergence, on a real engine.

* Cost: DynamoDB Local reports ``ConsumedCapacity`` per index
  (``ReturnConsumedCapacity=INDEXES``), as DynamoDB bills it. ``LifetimeIndex`` must be
  written at connect and disconnect only: an activity write (``lastActiveAt``,
  ``activeShard``, ``activeBucket``), even one that moves the activity bucket, costs it nothing.
* Convergence: threads register connections of one user at once over HTTP. DynamoDB Local
  applies each conditional write atomically, so the evictions race for real; moto gets the
  same guarantee from the proxy forwarding one request at a time (tests/test_races.py).
"""
from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest

import connection_manager.wiring as wiring
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.service import ConnectionService
from tests.support.capacity_meter import CapacityMeter
from tests.support.dynamo_proxy import DynamoProxy
from tests.support.engines import Engine
from tests.support.fixtures import NOW
from tests.support.threads import start_together
from tests.support.wire import direct_client, stored_all

pytestmark = pytest.mark.integration

TABLE = "connections"


@pytest.fixture
def wire(engine: Engine, engine_proxy: DynamoProxy, monkeypatch: pytest.MonkeyPatch) -> Settings:
    engine_proxy.serialize_upstream = not engine.atomic_conditional_writes
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", engine_proxy.url)
    monkeypatch.setattr(wiring, "_service", None)
    settings = Settings(table_name=TABLE, region="us-east-1", sweep_concurrency=8, activity_write_interval_seconds=0)
    wiring.build_service(settings, FixedClock(NOW)).create_table()
    return settings


@pytest.mark.dynamodb_local
@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_lifetime_index__write_cost__paid_at_connect_and_disconnect_never_on_a_message(wire):
    # Given a service whose every write reports what it consumed, per index
    clock = FixedClock(NOW)
    service = ConnectionService(wire, clock, wiring.get_service().model)
    meter = CapacityMeter(service.model._get_connection().connection.client)

    # When a connection registers, sends messages (the bucket moving once), heartbeats, disconnects
    connect = meter.during(lambda: service.register_connection("c1", "u1"))
    messages = Counter[str]()
    for seconds in (1, 60, 900, 1800):  # 900 and 1800 move the activity bucket
        clock.now = NOW + timedelta(seconds=seconds)
        messages += meter.during(lambda: service.record_activity("c1"))
    heartbeat = meter.during(lambda: service.heartbeat("c1"))
    disconnect = meter.during(lambda: service.update_connection_status("c1", "DISCONNECTED"))

    # Then the lifetime index is written once on the way in and once on the way out, and never between
    assert connect["LifetimeIndex"] == 1.0
    assert messages["LiveIndex"] >= 4.0 and messages["table"] == 4.0  # the messages really wrote
    assert messages["LifetimeIndex"] == 0.0 and heartbeat["LifetimeIndex"] == 0.0
    assert disconnect["LifetimeIndex"] == 1.0
    # And what is stored: the row is out of both sparse indexes, its liveSince kept
    row = stored_all(direct_client(wire_url()))["c1"]
    assert row["status"] == "DISCONNECTED" and "activeShard" not in row and "liveSince" in row


def wire_url() -> str:
    import os

    return os.environ["AWS_ENDPOINT_URL_DYNAMODB"]


class ThreadClock:
    """Each thread's own instant: connection ``k`` is created at ``NOW + k`` seconds whichever thread runs it.

    Threads that set none (the pool writing evictions) read a minute past every creation.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def set(self, value: datetime) -> None:
        self._local.now = value

    def __call__(self) -> datetime:
        return getattr(self._local, "now", NOW + timedelta(minutes=1))


@pytest.mark.parametrize("cap", [1, 3])
def test_connect__concurrent_registrations_of_one_user__converge_to_the_cap_newest(wire, cap):
    clock = ThreadClock()
    settings = Settings(**{**wire.__dict__, "max_connections_per_user": cap})
    service = ConnectionService(settings, clock, wiring.get_service().model)
    for trial in range(3):
        # Given 16 connections of one user, created one second apart, registered by 4 threads in random order
        user = f"user-{cap}-{trial}"
        created = {f"t{trial}-{k:02d}": NOW + timedelta(seconds=k) for k in range(16)}
        order = list(created)
        random.Random(trial).shuffle(order)
        reported: list[str] = []
        lock = threading.Lock()

        def register(batch: list[str]) -> None:
            for connection_id in batch:
                clock.set(created[connection_id])
                registration = service.connect(connection_id, user)
                with lock:
                    reported.extend(item.connection_id for item in registration.evicted)

        # When they all connect at once
        start_together(*[lambda batch=order[i::4]: register(batch) for i in range(4)])

        # Then, once they settle, the user has exactly `cap` CONNECTED rows: the newest ones
        rows = {cid: row for cid, row in stored_all(direct_client(wire_url())).items() if row["userId"] == user}
        newest = sorted(created, key=lambda cid: (created[cid], cid))[-cap:]
        connected = {cid for cid, row in rows.items() if row["status"] == "CONNECTED"}
        assert connected == set(newest), (sorted(connected), newest)
        # And every other row was evicted once, by exactly one registration, which reported it
        evicted = {cid for cid, row in rows.items() if row.get("disconnectReason") == "evicted"}
        assert evicted == set(created) - set(newest)
        assert sorted(reported) == sorted(evicted)
        assert all("activeShard" not in rows[cid] for cid in evicted)
