"""/stats at a constant cost: live counters kept by the writes, a snapshot after each sweep,
and the sweep history; none of these records ever shows up as a connection."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import connection_manager.wiring as wiring
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.errors import ValidationError
from connection_manager.operations import run_action
from connection_manager.service import ConnectionService, new_connection_row
from connection_manager.sketch import DistinctCounter, TopCounter
from models.platform import SNAPSHOT_KEY, counter_key, is_reserved
from models.connection import DisconnectReason, shard_for
from tests.support.capacity_meter import CapacityMeter
from tests.support.dynamodb_local import DynamoDBLocal
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, platform_items, raw_items


def live_counters(service: ConnectionService) -> int:
    return sum(int(item.get("live", 0)) for key, item in platform_items().items() if "#live#" in key)


# Counters ---------------------------------------------------------------------------------


def test_stats__connects_and_disconnects__counted_without_reading_rows(service):
    # Given three registrations, one client disconnect and one admin disconnect
    for index in range(3):
        service.register_connection(f"c{index}", f"u{index % 2}")
    service.register_connection("c0", "u0")  # a retry whose answer was lost: counted once
    service.disconnect("c1", DisconnectReason.CLIENT)
    service.disconnect("c1", DisconnectReason.CLIENT)  # repeated: nothing
    service.update_connection_status("c2", "DISCONNECTED")

    # When /stats is read
    stats = service.stats()

    # Then the counters say one live connection, kept on the shard of each id
    assert stats.active_connections == 1
    assert live_counters(service) == 1
    assert platform_items()[counter_key(shard_for("c0", service.model))]["live"] >= 1
    assert stats.as_of is None  # no snapshot yet


def test_take_snapshot__rows_written_around_the_service__repairs_the_counters(service, make_connection):
    # Given rows another tool wrote (the counters never saw them) and one the service registered
    for index in range(4):
        make_connection(f"foreign-{index}", user_id=f"u{index % 2}", idle=timedelta(minutes=10 * index))
    service.register_connection("own", "u9")
    assert service.stats().active_connections == 1

    # When a snapshot is taken
    body = service.take_snapshot()

    # Then it counted every live row, and /stats now agrees exactly
    assert (body["activeConnections"], body["distinctUsers"], body["distinctUsersExact"]) == (5, 3, True)
    stats = service.stats()
    assert (stats.active_connections, stats.distinct_users, stats.as_of) == (5, 3, "2024-01-01T12:00:00Z")
    assert live_counters(service) == 5
    assert sum(item["count"] for item in stats.idle) == 5
    assert stats.top_users[:2] == [{"userId": "u0", "connections": 2}, {"userId": "u1", "connections": 2}]


def test_register_connection__reserved_key__400_and_nothing_written(service):
    with pytest.raises(ValidationError, match="reserved"):
        run_action(service, "register_connection", {"connectionId": SNAPSHOT_KEY, "userId": "u"})

    assert raw_items() == []
    with pytest.raises(ValidationError, match="reserved"):
        run_action(service, "get_connection", {"connectionId": counter_key(0)})


# History ----------------------------------------------------------------------------------


def test_cleanup__real_run__keeps_a_history_record_that_expires_in_30_days(service, make_connection, clock):
    # Given two stale rows and three live ones
    for index in range(2):
        make_connection(f"stale-{index}", idle=timedelta(hours=2))
    for index in range(3):
        make_connection(f"live-{index}", user_id=f"u{index}")

    # When the sweep runs through the dispatch table (as the schedule and the API run it)
    status, body = run_action(service, "cleanup_stale_connections", {})

    # Then its result, with the snapshot's counts, is one record in the history
    assert (status, body["cleanedCount"], body["activeConnections"]) == (200, 2, 3)
    history = service.stats_history(hours=48, limit=100)
    assert history == [
        {
            "at": "2024-01-01T12:00:00Z", "activeConnections": 3, "distinctUsers": 3, "staleFound": 2,
            "cleaned": 2, "gone": 0, "lifetime": 0, "evicted": 0, "durationMs": body["durationMs"],
        }
    ]
    stored = [item for key, item in platform_items().items() if "#sweep#" in key]
    assert int(stored[0]["expiresAt"]) == int((clock() + timedelta(days=30)).timestamp())
    # And a dry run keeps nothing
    run_action(service, "cleanup_stale_connections", {"dryRun": True})
    assert len(service.stats_history(hours=48, limit=100)) == 1


def test_stats_history__older_than_the_window__left_out_newest_kept_within_limit(service, clock):
    for hours_ago in (50, 3, 2, 1):
        clock.now = NOW - timedelta(hours=hours_ago)
        service.record_sweep({"cleanedCount": hours_ago}, None)
    clock.now = NOW

    assert [entry["cleaned"] for entry in service.stats_history(hours=48, limit=100)] == [3, 2, 1]
    assert [entry["cleaned"] for entry in service.stats_history(hours=48, limit=2)] == [2, 1]


def test_stats_history__two_sweeps_in_the_same_second__both_kept(service, clock):
    # Given two sweeps recorded within one second (an operator's run right after the schedule's)
    service.record_sweep({"cleanedCount": 15}, None)
    service.record_sweep({"cleanedCount": 5}, None)

    # Then the history holds both: the second does not overwrite the first
    assert sorted(entry["cleaned"] for entry in service.stats_history(hours=48, limit=100)) == [5, 15]


def test_platform_records__never_listed_nor_swept(service, make_connection, clock):
    # Given counters, a snapshot and history records in the table
    service.register_connection("c1", "u1")
    make_connection("stale-1", idle=timedelta(hours=3))
    run_action(service, "cleanup_stale_connections", {})
    assert len(platform_items()) >= 3

    # When every listing runs, and another sweep long after
    listed = service.get_all_connections(limit=1000).to_body()["connections"]
    clock.now = NOW + timedelta(days=2)
    second = service.cleanup_stale_connections()

    # Then only connections are listed, and the sweep only swept the connection
    assert [record["connectionId"] for record in listed] == ["c1"]
    assert second.cleaned == 1  # two days on, its lifetime has passed too (lifetime == 1)
    assert not any(is_reserved(item["connectionId"]) for item in raw_items())


# Sketches ---------------------------------------------------------------------------------


def test_distinct_counter__past_the_exact_limit__estimate_within_5_percent():
    counter = DistinctCounter(exact_up_to=100)
    for index in range(20_000):
        counter.add(f"user-{index % 10_000}")

    assert counter.exact is False
    assert abs(counter.count() - 10_000) < 500


def test_top_counter__past_capacity__heavy_users_still_first():
    counter = TopCounter(capacity=20)
    for index in range(10_000):
        counter.add("heavy" if index % 10 == 0 else f"user-{index}")

    assert counter.exact is False
    assert counter.top(1)[0][0] == "heavy"


@pytest.mark.parametrize("exact_up_to", [100, 10_000])
def test_sketches__added_page_by_page__same_state_as_one_by_one(exact_up_to):
    keys = [f"user-{(index * 7919) % 3_000}" for index in range(12_000)] + ["heavy"] * 500
    pages = [keys[start:start + 1_000] for start in range(0, len(keys), 1_000)]
    one, many = DistinctCounter(exact_up_to=exact_up_to), DistinctCounter(exact_up_to=exact_up_to)
    top_one, top_many = TopCounter(capacity=exact_up_to), TopCounter(capacity=exact_up_to)
    for key in keys:
        one.add(key)
        top_one.add(key)
    for page in pages:
        many.add_many(page)
        top_many.add_many(page)

    assert many.to_state() == one.to_state() and (many.count(), many.exact) == (one.count(), one.exact)
    assert top_many.top(5) == top_one.top(5) and top_many.exact == top_one.exact
    assert top_many.top(1)[0][0] == "heavy"


# Cost, measured on DynamoDB Local ----------------------------------------------------------


@pytest.mark.dynamodb_local
def test_stats__100_and_2000_live_connections__same_read_units(dynamodb_local: DynamoDBLocal, monkeypatch):
    # Given the service on DynamoDB Local, its reads metered
    dynamodb_local.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local.url)
    monkeypatch.setattr(wiring, "_service", None)
    service = wiring.build_service(Settings(table_name="stats-cost", region="us-east-1"), FixedClock(NOW))
    service.create_table()
    meter = CapacityMeter()
    meter.attach(service.model._get_connection().connection.client)
    meter.attach(service.platform.records._get_connection().connection.client)

    def seed(start: int, count: int) -> None:
        with service.model.batch_write() as batch:
            for index in range(start, start + count):
                batch.save(new_connection_row(f"conn-{index:05d}", f"user-{index % 300}", NOW, None, service.model))
        meter.reads.clear()
        service.take_snapshot()
        print(f"snapshot at {start + count} live connections: {dict(meter.reads)} read units")

    def stats_units() -> tuple[int, float]:
        meter.reads.clear()
        stats = service.stats()
        return stats.active_connections, sum(meter.reads.values())

    # When /stats is read at 100 live connections, then at 2,000
    seed(0, 100)
    small = stats_units()
    seed(100, 1900)
    large = stats_units()

    # Then it counted both exactly, and read the same units both times
    assert (small[0], large[0]) == (100, 2000)
    assert small[1] == large[1] > 0
    print(f"/stats read units: {small[1]} at 100 live connections, {large[1]} at 2,000 ({dict(meter.reads)})")
