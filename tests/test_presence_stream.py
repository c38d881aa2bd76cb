"""Presence end to end on real parts: DynamoDB Local's stream, read with DescribeStream,
GetShardIterator and GetRecords and fed to ``lambda_handler`` in Lambda's event shape, and
a loopback ``PutEvents`` that boto3 reaches through ``AWS_ENDPOINT_URL_EVENTBRIDGE``.

DynamoDB Local's stream ARNs name its own region and account (``ddblocal``,
``000000000000``): the consumer matches its table by name, as it must in AWS too.
"""
from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any, Iterator

import pytest

import connection_manager.wiring as wiring
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.handler import lambda_handler
from connection_manager.presence_events import CLOSED, OFFLINE, ONLINE, OPENED
from connection_manager.service import ConnectionService
from models.connection import DisconnectReason
from tests.support.capacity_meter import CapacityMeter
from tests.support.engines import Engine
from tests.support.fixtures import NOW
from tests.support.putevents_standin import PutEventsStandIn
from tests.support.stream_reader import StreamReader

pytestmark = [pytest.mark.integration, pytest.mark.dynamodb_local]

TABLE = "connections"


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[PutEventsStandIn]:
    with PutEventsStandIn() as standin:
        monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", standin.url)
        yield standin


@pytest.fixture
def wired(engine: Engine, bus: PutEventsStandIn, monkeypatch: pytest.MonkeyPatch) -> ConnectionService:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", engine.url)
    settings = Settings(table_name=TABLE, region="us-east-1", sweep_concurrency=4, presence_event_bus="presence")
    service = wiring.build_service(settings, FixedClock(NOW))
    service.create_table()
    service.presence.bus._sleep = lambda _: None  # backoff without waiting
    monkeypatch.setattr(wiring, "_service", service)
    return service


def deliver(records: list[dict[str, Any]]) -> dict[str, Any]:
    return lambda_handler({"Records": records})


@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_stream__devices_connect_and_a_sweep_closes_them__one_online_one_offline(engine, wired, bus):
    stream = StreamReader(engine.url, TABLE)
    for device in range(10):
        wired.register_connection(f"d{device}", "u1")
    assert deliver(stream.read()) == {"batchItemFailures": []}
    assert Counter(kind for kind, _ in bus.kinds()) == {OPENED: 10, ONLINE: 1}

    # When the sweep closes all ten an hour and more later
    wired.clock.now = NOW + timedelta(hours=2)
    assert wired.cleanup_stale_connections().cleaned == 10
    assert deliver(stream.read()) == {"batchItemFailures": []}

    kinds = Counter(kind for kind, _ in bus.kinds())
    assert kinds == {OPENED: 10, ONLINE: 1, CLOSED: 10, OFFLINE: 1}
    offline = next(entry for entry in bus.entries if entry["DetailType"] == OFFLINE)
    assert offline["Source"] == "connection-manager" and offline["detail"]["reason"] == "stale"
    assert lambda_handler({"action": "get_user_presence", "userId": "u1"})["body"]["online"] is False


@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_stream__replayed_from_its_start__no_second_transition(engine, wired, bus):
    stream = StreamReader(engine.url, TABLE)
    wired.register_connection("a", "u1")
    wired.register_connection("b", "u2")
    wired.admin_disconnect_user("u1")
    deliver(stream.read())
    published = list(bus.entries)

    everything = stream.read(replay=True)
    assert deliver(everything) == {"batchItemFailures": []}
    assert deliver(everything[1:]) == {"batchItemFailures": []}

    assert bus.entries == published
    assert Counter(kind for kind, _ in bus.kinds()) == {OPENED: 2, ONLINE: 2, CLOSED: 1, OFFLINE: 1}


@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_stream__put_events_partly_failing__record_retried__each_event_once(engine, wired, bus):
    stream = StreamReader(engine.url, TABLE)
    wired.register_connection("a", "u1")
    wired.register_connection("b", "u2")
    records = [record for record in stream.read() if record["dynamodb"]["Keys"]["connectionId"]["S"] in ("a", "b")]
    assert len(records) == 2

    bus.fail_entries(4 * 4)  # every event of the batch, on every attempt
    answer = deliver(records)
    failed = answer["batchItemFailures"]
    assert failed == [{"itemIdentifier": records[0]["dynamodb"]["SequenceNumber"]}]
    assert bus.entries == []

    # Lambda retries from the failed record
    assert deliver(records) == {"batchItemFailures": []}
    assert sorted(bus.kinds()) == [(OPENED, "a"), (OPENED, "b"), (ONLINE, "a"), (ONLINE, "b")]
    assert len({entry["detail"]["eventId"] for entry in bus.entries}) == 4


@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_stream__what_presence_costs__write_and_read_units(engine, wired, bus, capsys):
    """Presence's writes per connect and per disconnect, in DynamoDB Local's own units."""
    stream = StreamReader(engine.url, TABLE)
    wired.register_connection("a", "u1")
    wired.register_connection("b", "u1")
    wired.admin_disconnect_user("u1")
    records = stream.read()
    client = wired.platform.records._get_connection().connection.client
    meter = CapacityMeter(client)
    units = meter.during(lambda: deliver(records))

    changes = 4  # two connects, two disconnects
    read_units = sum(meter.reads.values())
    print(f"\npresence per change: {units['table'] / changes:.2f} write units, {read_units / changes:.2f} read "
          f"units, {meter.items_asked / changes:.2f} items read; {len(records)} stream records read")
    # each change is one write, and a disconnect one more, the closed connection's mark; what
    # the batch owed a user is cleared in one more write per user
    assert units["table"] == pytest.approx(1.0 * changes + 2 + 1)
    # a consistent read of the user's item per change; a connect also asks for the closed
    # mark of its connection, in the same request: 2 + 2 + 1 + 1 items, each under 4 KB
    assert meter.items_asked == 2 + 2 + 1 + 1
    # DynamoDB Local bills only the items a BatchGetItem finds: neither for the first connect
    # (no item yet, a new connection), the user's item for the second. DynamoDB bills the
    # items asked, found or not.
    assert read_units == pytest.approx(0 + 1 + 1 + 1)
    assert set(units) == {"table"}  # presence items reach no index


@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_stream__two_devices_racing__one_user_online(engine, wired, bus):
    # Given two devices of one user connecting, their records consumed at once by two consumers
    # (two shards' invocations), racing on the user's presence item
    from connection_manager.presence import Presence
    from connection_manager.presence_bus import EventBus

    stream = StreamReader(engine.url, TABLE)
    for device in ("phone", "laptop"):
        wired.register_connection(device, "u1")
    records = [record for record in stream.read() if record["dynamodb"]["Keys"]["connectionId"]["S"] in
               ("phone", "laptop")]
    consumers = [Presence(wired.platform.records, TABLE, EventBus("presence", "us-east-1"), wired.clock)
                 for _ in records]
    start = threading.Barrier(len(records))
    answers: list[Any] = [None] * len(records)

    def consume(index: int) -> None:
        start.wait()
        answers[index] = consumers[index].consume([records[index]])

    threads = [threading.Thread(target=consume, args=(index,)) for index in range(len(records))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then both connections opened and the user came online once
    assert all(answer.failed is None for answer in answers)
    assert Counter(kind for kind, _ in bus.kinds()) == {OPENED: 2, ONLINE: 1}


def of(records: list[dict[str, Any]], connection_id: str) -> list[dict[str, Any]]:
    """The records of one connection, in their shard's order."""
    return [record for record in records if record["dynamodb"]["Keys"]["connectionId"]["S"] == connection_id]


@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_stream__shards_interleaved__each_user_one_online_one_offline_in_order(engine, wired, bus):
    # Given two users with two devices each, every device opened, then every device closed
    stream = StreamReader(engine.url, TABLE)
    for connection_id, user_id in (("phone", "u1"), ("laptop", "u1"), ("tv", "u2"), ("watch", "u2")):
        wired.register_connection(connection_id, user_id)
    for connection_id in ("phone", "laptop", "tv", "watch"):
        wired.disconnect(connection_id, DisconnectReason.CLIENT)
    records = stream.read()

    # When each connection's records come from its own shard, and the shards' invocations
    # interleave: per connection in order, across connections not
    phone, laptop, tv, watch = (of(records, name) for name in ("phone", "laptop", "tv", "watch"))
    for invocation in ([laptop[0], watch[0]], [phone[0], tv[0]], phone[1:] + watch[1:], laptop[1:] + tv[1:]):
        assert deliver(invocation) == {"batchItemFailures": []}

    # Then each user came online once and went offline once, the offline last
    for user_id, last in (("u1", "laptop"), ("u2", "tv")):
        mine = [(entry["DetailType"], entry["detail"]["connectionId"]) for entry in bus.entries
                if entry["detail"]["userId"] == user_id]
        assert Counter(kind for kind, _ in mine) == {OPENED: 2, ONLINE: 1, CLOSED: 2, OFFLINE: 1}
        assert mine[-1] == (OFFLINE, last)


@pytest.mark.parametrize("engine", ["dynamodb-local"], indirect=True)
def test_stream__a_user_who_reconnected_all_day__a_change_still_costs_one_write(engine, wired, bus):
    # Given a user whose client reconnected 200 times today, every connection consumed
    stream = StreamReader(engine.url, TABLE)
    for attempt in range(200):
        wired.register_connection(f"flap-{attempt:03d}", "u1")
        wired.disconnect(f"flap-{attempt:03d}", DisconnectReason.CLIENT)
    assert deliver(stream.read()) == {"batchItemFailures": []}

    # When one more connection opens, and closes
    wired.register_connection("again", "u1")
    opening = stream.read()
    wired.disconnect("again", DisconnectReason.CLIENT)
    closing = stream.read()
    meter = CapacityMeter(wired.platform.records._get_connection().connection.client)

    # Then each change writes a small item, not the user's day of connections
    assert meter.during(lambda: deliver(opening))["table"] == pytest.approx(2.0)  # the change, then its events cleared
    assert meter.during(lambda: deliver(closing))["table"] == pytest.approx(3.0)  # and the closed connection's mark
    assert Counter(kind for kind, _ in bus.kinds()) == {OPENED: 201, CLOSED: 201, ONLINE: 201, OFFLINE: 201}

    # And a replay of the whole day from the stream's start publishes nothing again
    published = len(bus.entries)
    assert deliver(stream.read(replay=True)) == {"batchItemFailures": []}
    assert len(bus.entries) == published
