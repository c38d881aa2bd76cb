"""The operations of ``ConnectionService`` on an in-process DynamoDB (moto ``mock_aws``).

Each test checks the answer *and* the stored rows, read back with boto3, including the
sparse-index invariant: a row carries ``activeShard`` exactly while it is CONNECTED.
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from connection_manager.clock import FixedClock
from connection_manager.errors import ConflictError, NotFoundError, ValidationError
from connection_manager.service import ConnectionService
from models.connection import ConnectionModel, live_shards, shard_for
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, iso, put_raw, raw_item, raw_items

INTERNAL = {"activeShard", "expiresAt"}
TIMESTAMP_FIELDS = ("createdAt", "lastActiveAt", "updatedAt", "disconnectedAt")


def assert_record(record: dict[str, Any]) -> None:
    """The contract's record: no internal attributes, every timestamp ISO-8601 with Z."""
    assert not INTERNAL & set(record), record
    for name in TIMESTAMP_FIELDS:
        if name in record:
            assert record[name].endswith("Z"), (name, record[name])


def assert_index_invariant(item: dict[str, Any]) -> None:
    """``activeShard`` is present exactly while CONNECTED, and is the row's own shard."""
    if item["status"] == "CONNECTED":
        assert item.get("activeShard") == shard_for(item["connectionId"]), item
    else:
        assert "activeShard" not in item, item


def ids(records: list[dict[str, Any]]) -> set[str]:
    return {record["connectionId"] for record in records}


# get_connection ------------------------------------------------------------------------


def test_get_connection__returns_the_record_in_any_status(service, make_connection):
    make_connection("live", user_id="u1")
    make_connection("gone", user_id="u1", status="DISCONNECTED", reason="stale")

    live = service.get_connection("live")
    gone = service.get_connection("gone")

    assert live["status"] == "CONNECTED" and live["userId"] == "u1"
    assert gone["status"] == "DISCONNECTED" and gone["disconnectReason"] == "stale"
    assert_record(live)
    assert_record(gone)


def test_get_connection__missing_is_not_found(service):
    with pytest.raises(NotFoundError) as raised:
        service.get_connection("nope")
    assert raised.value.status == 404
    assert "nope" in raised.value.message


def test_get_connection__record_without_last_activity_reports_created_at(service, dynamodb):
    put_raw({"connectionId": "legacy", "userId": "u1", "status": "CONNECTED", "createdAt": "2024-01-01T10:00:00Z"})

    record = service.get_connection("legacy")

    assert record["lastActiveAt"] == "2024-01-01T10:00:00Z"
    assert_record(record)


def test_get_connection__reads_timestamps_other_writers_use(service, dynamodb):
    put_raw(
        {
            "connectionId": "other",
            "userId": "u1",
            "status": "CONNECTED",
            "createdAt": "2024-01-01T10:00:00.123456+00:00",
            "lastActiveAt": "2024-01-01T11:00:00",
        }
    )

    record = service.get_connection("other")

    assert record["createdAt"] == "2024-01-01T10:00:00Z"
    assert record["lastActiveAt"] == "2024-01-01T11:00:00Z"


# get_user_connections ------------------------------------------------------------------


def test_get_user_connections__only_that_users_connected_rows(service, make_connection):
    make_connection("a1", user_id="alice")
    make_connection("a2", user_id="alice")
    make_connection("a3", user_id="alice", status="DISCONNECTED")
    make_connection("b1", user_id="bob")

    page = service.get_user_connections("alice")
    body = page.to_body()

    assert ids(body["connections"]) == {"a1", "a2"}
    assert body["count"] == 2
    assert "nextToken" not in body
    for record in body["connections"]:
        assert record["status"] == "CONNECTED"
        assert_record(record)


def test_get_user_connections__unknown_user_is_empty(service, make_connection):
    make_connection("a1", user_id="alice")

    body = service.get_user_connections("nobody").to_body()

    assert body == {"connections": [], "count": 0}


def test_get_user_connections__empty_table(service):
    assert service.get_user_connections("alice").to_body() == {"connections": [], "count": 0}


def test_get_user_connections__pages_with_tokens(service, make_connection):
    for index in range(5):
        make_connection(f"a{index}", user_id="alice")
    make_connection("b0", user_id="bob")

    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = service.get_user_connections("alice", limit=2, next_token=token)
        assert len(page.connections) <= 2
        seen += [record["connectionId"] for record in page.connections]
        pages += 1
        token = page.next_token
        if not token:
            break
    assert sorted(seen) == [f"a{index}" for index in range(5)]
    assert pages == 3


def test_get_user_connections__token_of_another_user_is_rejected(service, make_connection):
    for index in range(3):
        make_connection(f"a{index}", user_id="alice")
        make_connection(f"b{index}", user_id="bob")
    token = service.get_user_connections("alice", limit=1).next_token
    assert token

    with pytest.raises(ValidationError):
        service.get_user_connections("bob", limit=1, next_token=token)


# get_all_connections -------------------------------------------------------------------


def _batch(service: ConnectionService, clock: FixedClock, count: int, prefix: str, connected: bool = True) -> set[str]:
    """Write ``count`` rows with varied activity times in one batch (fast on moto)."""
    from connection_manager.service import new_connection_row

    written = set()
    with ConnectionModel.batch_write() as batch:
        for index in range(count):
            connection_id = f"{prefix}-{index:04d}"
            row = new_connection_row(connection_id, f"user-{index % 17}", clock() - timedelta(seconds=index * 7))
            if not connected:
                row.status = "DISCONNECTED"
                row.disconnect_reason = "client"
                row.active_shard = None
            batch.save(row)
            written.add(connection_id)
    return written


def test_get_all_connections__empty_table(service):
    assert service.get_all_connections().to_body() == {"connections": [], "count": 0}


def test_get_all_connections__every_connected_row_exactly_once_across_pages_and_shards(service, clock):
    live = _batch(service, clock, 250, "live")
    _batch(service, clock, 60, "gone", connected=False)
    assert {shard_for(cid) for cid in live} == set(range(live_shards()))  # the listing really crosses shards

    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = service.get_all_connections(limit=7, next_token=token)
        body = page.to_body()
        assert body["count"] == len(body["connections"]) <= 7
        for record in body["connections"]:
            assert record["status"] == "CONNECTED"
            assert_record(record)
        seen += [record["connectionId"] for record in body["connections"]]
        pages += 1
        assert pages < 100, "pagination does not terminate"
        token = body.get("nextToken")
        if not token:
            break

    assert len(seen) == len(set(seen)), "a connection was listed twice"
    assert set(seen) == live
    assert pages >= 36  # 250 / 7, plus at most a few short pages at shard ends


def test_get_all_connections__default_page_size_from_settings(service, clock):
    _batch(service, clock, 120, "live")

    first = service.get_all_connections()
    second = service.get_all_connections(next_token=first.next_token)

    assert len(first.connections) == service.settings.default_page_size == 100
    assert first.next_token
    assert len(second.connections) == 20
    assert second.next_token is None
    assert ids(first.connections).isdisjoint(ids(second.connections))


def test_get_all_connections__limit_equal_to_row_count(service, clock):
    live = _batch(service, clock, 9, "live")

    seen: set[str] = set()
    token = None
    for _ in range(5):
        page = service.get_all_connections(limit=9, next_token=token)
        seen |= ids(page.connections)
        token = page.next_token
        if not token:
            break
    assert seen == live
    assert token is None


def test_get_all_connections__excludes_disconnected_history(service, make_connection):
    make_connection("live", user_id="u1")
    make_connection("gone", user_id="u1", status="DISCONNECTED")

    assert ids(service.get_all_connections().connections) == {"live"}


def test_get_all_connections__rejects_a_user_listing_token(service, make_connection):
    for index in range(3):
        make_connection(f"a{index}", user_id="alice")
    token = service.get_user_connections("alice", limit=1).next_token

    with pytest.raises(ValidationError):
        service.get_all_connections(next_token=token)


# update_connection_status --------------------------------------------------------------


def test_update_connection_status__connected_to_disconnected(service, make_connection, clock):
    make_connection("c1", user_id="u1", idle=timedelta(minutes=5))
    clock.advance(minutes=1)

    record = service.update_connection_status("c1", "DISCONNECTED")

    assert record["status"] == "DISCONNECTED"
    assert record["disconnectReason"] == "admin"
    assert record["disconnectedAt"] == iso(clock())
    assert_record(record)
    item = raw_item("c1")
    assert item["status"] == "DISCONNECTED"
    assert item["disconnectReason"] == "admin"
    assert item["expiresAt"] == Decimal(int((clock() + timedelta(seconds=service.settings.retention_seconds)).timestamp()))
    assert_index_invariant(item)


def test_update_connection_status__disconnected_to_connected(service, make_connection, clock):
    make_connection("c1", user_id="u1", status="DISCONNECTED", reason="stale", idle=timedelta(hours=3))

    service.update_connection_status("c1", "CONNECTED")

    item = raw_item("c1")

    assert item["status"] == "CONNECTED"
    assert item["lastActiveAt"] == iso(clock())
    for gone in ("disconnectedAt", "disconnectReason", "expiresAt"):
        assert gone not in item
    assert_index_invariant(item)
    assert "c1" in ids(service.get_all_connections().connections)


def test_update_connection_status__revival_answers_the_new_record(service, make_connection, clock):
    make_connection("c1", user_id="u1", status="DISCONNECTED", idle=timedelta(hours=3))

    record = service.update_connection_status("c1", "CONNECTED")

    assert record["status"] == "CONNECTED"
    assert record["lastActiveAt"] == iso(clock())
    assert "disconnectReason" not in record and "disconnectedAt" not in record
    assert_record(record)


@pytest.mark.parametrize("status", ["CONNECTED", "DISCONNECTED"])
def test_update_connection_status__same_status_changes_nothing(service, make_connection, clock, status):
    make_connection("c1", user_id="u1", status=status, idle=timedelta(minutes=10))
    before = raw_item("c1")
    clock.advance(minutes=5)

    record = service.update_connection_status("c1", status)

    assert raw_item("c1") == before
    assert record["status"] == status
    assert record["updatedAt"] == before["updatedAt"]
    assert_index_invariant(before)


@pytest.mark.parametrize("status", ["CONNECTED", "DISCONNECTED"])
def test_update_connection_status__missing_is_404_and_creates_nothing(service, make_connection, status):
    make_connection("other", user_id="u1")

    with pytest.raises(NotFoundError):
        service.update_connection_status("missing", status)

    assert raw_item("missing") is None
    assert [item["connectionId"] for item in raw_items()] == ["other"]


# register_connection -------------------------------------------------------------------


def test_register_connection__creates_a_connected_row(service, clock):
    record, created = service.register_connection("c1", "u1", {"sourceIp": "203.0.113.9"})

    assert created is True
    assert record == {
        "connectionId": "c1",
        "userId": "u1",
        "status": "CONNECTED",
        "createdAt": iso(clock()),
        "lastActiveAt": iso(clock()),
        "updatedAt": iso(clock()),
        "metadata": {"sourceIp": "203.0.113.9"},
    }
    item = raw_item("c1")
    assert item["createdAt"] == item["lastActiveAt"] == "2024-01-01T12:00:00Z"
    assert "expiresAt" not in item
    assert_index_invariant(item)
    assert service.get_connection("c1") == record


def test_register_connection__same_registration_again_returns_the_stored_record(service, clock):
    first, _ = service.register_connection("c1", "u1")
    clock.advance(seconds=30)

    again, created = service.register_connection("c1", "u1")

    assert created is False
    assert again == first  # the stored record, not a new one with a later createdAt
    assert raw_item("c1")["createdAt"] == iso(NOW)


def test_register_connection__another_users_id_conflicts(service):
    service.register_connection("c1", "u1")
    before = raw_item("c1")

    with pytest.raises(ConflictError) as raised:
        service.register_connection("c1", "u2")

    assert raised.value.status == 409
    assert raw_item("c1") == before


def test_register_connection__disconnected_id_conflicts(service, make_connection):
    make_connection("c1", user_id="u1", status="DISCONNECTED")
    before = raw_item("c1")

    with pytest.raises(ConflictError):
        service.register_connection("c1", "u1")

    assert raw_item("c1") == before


def test_register_connection__nested_metadata_round_trips(service):
    metadata = {"sourceIp": "198.51.100.1", "tags": ["a", "b"], "client": {"version": 3, "beta": True, "ratio": 0.5}}

    record, _ = service.register_connection("c1", "u1", metadata)

    assert record["metadata"] == metadata
    assert service.get_connection("c1")["metadata"] == metadata


def test_register_connection__response_equals_what_a_read_returns(service):
    for index, metadata in enumerate([None, {}, {"k": "v"}]):
        record, _ = service.register_connection(f"c{index}", "u1", metadata)
        assert service.get_connection(f"c{index}") == record, metadata


def test_register_connection__key_of_2048_bytes_is_accepted(service):
    connection_id = "é" * 1024  # 2048 UTF-8 bytes: DynamoDB's limit, inclusive

    record, created = service.register_connection(connection_id, "u1")

    assert created and record["connectionId"] == connection_id
    assert raw_item(connection_id)["status"] == "CONNECTED"


# heartbeat ------------------------------------------------------------------------------


def test_heartbeat__refreshes_last_active_at(service, make_connection, clock):
    make_connection("c1", user_id="u1", idle=timedelta(minutes=50))
    created_before = raw_item("c1")["createdAt"]
    clock.advance(seconds=42)

    record = service.heartbeat("c1")

    assert record["lastActiveAt"] == iso(clock()) == "2024-01-01T12:00:42Z"
    assert record["createdAt"] == created_before
    assert record["status"] == "CONNECTED"
    assert_record(record)
    item = raw_item("c1")
    assert item["lastActiveAt"] == iso(clock())
    assert_index_invariant(item)


def test_heartbeat__disconnected_is_409_and_row_unchanged(service, make_connection, clock):
    make_connection("c1", user_id="u1", status="DISCONNECTED", idle=timedelta(hours=2))
    before = raw_item("c1")
    clock.advance(minutes=1)

    with pytest.raises(ConflictError):
        service.heartbeat("c1")

    assert raw_item("c1") == before


def test_heartbeat__missing_is_404_and_creates_nothing(service):
    with pytest.raises(NotFoundError):
        service.heartbeat("ghost")
    assert raw_items() == []


def test_heartbeat__puts_a_row_written_without_index_attribute_back_in_the_index(service, dynamodb):
    put_raw(
        {
            "connectionId": "legacy",
            "userId": "u1",
            "status": "CONNECTED",
            "createdAt": "2024-01-01T11:00:00Z",
            "lastActiveAt": "2024-01-01T11:00:00Z",
        }
    )

    service.heartbeat("legacy")

    assert_index_invariant(raw_item("legacy"))
    assert "legacy" in ids(service.get_all_connections().connections)


# disconnect_user --------------------------------------------------------------------------


def test_disconnect_user__disconnects_every_live_connection_of_that_user(service, make_connection, clock):
    for index in range(5):
        make_connection(f"a{index}", user_id="alice")
    make_connection("a-old", user_id="alice", status="DISCONNECTED", reason="client", idle=timedelta(days=1))
    make_connection("b1", user_id="bob")
    old_before = raw_item("a-old")
    bob_before = raw_item("b1")
    clock.advance(minutes=1)

    count = service.disconnect_user("alice")

    assert count == 5
    for index in range(5):
        item = raw_item(f"a{index}")
        assert item["status"] == "DISCONNECTED"
        assert item["disconnectReason"] == "admin"
        assert item["disconnectedAt"] == iso(clock())
        assert_index_invariant(item)
    assert raw_item("a-old") == old_before
    assert raw_item("b1") == bob_before
    assert service.get_user_connections("alice").to_body()["count"] == 0


def test_disconnect_user__unknown_user_is_zero(service, make_connection):
    make_connection("b1", user_id="bob")
    before = raw_items()

    assert service.disconnect_user("nobody") == 0
    assert raw_items() == before


def test_disconnect_user__twice_counts_only_the_first_time(service, make_connection):
    make_connection("a1", user_id="alice")

    assert service.disconnect_user("alice") == 1
    assert service.disconnect_user("alice") == 0


# cleanup_stale_connections ----------------------------------------------------------------


@pytest.fixture
def mixed_rows(make_connection):
    """Rows on both sides of the default cutoff (3600 s before NOW)."""
    make_connection("stale-2h", user_id="u1", idle=timedelta(hours=2))
    make_connection("stale-3601", user_id="u2", idle=timedelta(seconds=3601))
    make_connection("edge-3600", user_id="u2", idle=timedelta(seconds=3600))  # not *older* than the cutoff
    make_connection("fresh-30m", user_id="u3", idle=timedelta(minutes=30))
    make_connection("fresh-now", user_id="u3")
    make_connection("history", user_id="u1", status="DISCONNECTED", idle=timedelta(days=2))


def test_cleanup__default_marks_only_stale_rows(service, mixed_rows, clock):
    untouched = {cid: raw_item(cid) for cid in ("edge-3600", "fresh-30m", "fresh-now", "history")}

    result = service.cleanup_stale_connections()
    body = result.to_body()

    assert body["message"] == "Stale connections cleaned up"
    assert body["cleanedCount"] == 2
    assert body["complete"] is True
    assert body["staleAfterSeconds"] == 3600
    assert body["cutoff"] == "2024-01-01T11:00:00Z"
    for cid in ("stale-2h", "stale-3601"):
        item = raw_item(cid)
        assert item["status"] == "DISCONNECTED"
        assert item["disconnectReason"] == "stale"
        assert item["disconnectedAt"] == iso(clock())
        assert "expiresAt" in item
        assert_index_invariant(item)
    for cid, before in untouched.items():
        assert raw_item(cid) == before


def test_cleanup__stale_after_seconds_overrides_the_setting(service, mixed_rows):
    result = service.cleanup_stale_connections(stale_after_seconds=600)

    assert result.cleaned == 4
    assert raw_item("fresh-30m")["disconnectReason"] == "stale"
    assert raw_item("fresh-now")["status"] == "CONNECTED"


def test_cleanup__dry_run_counts_and_writes_nothing(service, mixed_rows):
    before = sorted(raw_items(), key=lambda item: item["connectionId"])

    body = service.cleanup_stale_connections(dry_run=True).to_body()

    assert body["cleanedCount"] == 2
    assert body["dryRun"] is True
    assert sorted(raw_items(), key=lambda item: item["connectionId"]) == before


def test_cleanup__second_run_finds_nothing(service, mixed_rows):
    assert service.cleanup_stale_connections().cleaned == 2
    assert service.cleanup_stale_connections().cleaned == 0


def test_cleanup__empty_table(service):
    result = service.cleanup_stale_connections()
    assert (result.cleaned, result.scanned, result.complete) == (0, 0, True)


def test_cleanup__a_heartbeat_before_the_sweep_saves_the_row(service, make_connection, clock):
    make_connection("c1", user_id="u1", idle=timedelta(hours=2))
    service.heartbeat("c1")

    assert service.cleanup_stale_connections().cleaned == 0
    assert raw_item("c1")["status"] == "CONNECTED"


def _legacy_rows() -> None:
    """Rows as another writer of the table stores them: no index attribute, maybe no activity."""
    put_raw({"connectionId": "old", "userId": "u1", "status": "CONNECTED", "createdAt": "2024-01-01T09:00:00Z"})
    put_raw({"connectionId": "young", "userId": "u2", "status": "CONNECTED", "createdAt": "2024-01-01T11:30:00Z"})
    put_raw({"connectionId": "active", "userId": "u2", "status": "CONNECTED", "createdAt": "2024-01-01T08:00:00Z",
             "lastActiveAt": "2024-01-01T11:59:00Z"})
    put_raw({"connectionId": "ended", "userId": "u1", "status": "DISCONNECTED", "createdAt": "2024-01-01T08:00:00Z"})


def test_reindex__puts_rows_of_other_writers_in_the_index(service, dynamodb):
    _legacy_rows()
    ended = raw_item("ended")

    outcome = service.reindex()

    assert (outcome.applied, outcome.failed) == (3, 0)
    assert ids(service.get_all_connections().connections) == {"old", "young", "active"}
    assert raw_item("old")["lastActiveAt"] == "2024-01-01T09:00:00Z"  # active since createdAt
    assert raw_item("active")["lastActiveAt"] == "2024-01-01T11:59:00Z"  # real activity kept
    assert raw_item("ended") == ended
    for item in raw_items():
        assert_index_invariant(item)


def test_reindex__then_the_sweep_counts_idle_rows_from_created_at(service, dynamodb):
    _legacy_rows()
    service.reindex()

    result = service.cleanup_stale_connections()

    assert result.cleaned == 1
    assert raw_item("old")["disconnectReason"] == "stale"
    assert raw_item("young")["status"] == "CONNECTED"
    assert raw_item("active")["status"] == "CONNECTED"


def test_reindex__second_run_has_nothing_to_do(service, dynamodb, make_connection):
    _legacy_rows()
    make_connection("ours", user_id="u3")
    assert service.reindex().applied == 3
    before = raw_items()

    assert service.reindex().applied == 0
    assert raw_items() == before


def test_cleanup__stops_before_time_runs_out_and_reports_incomplete(service, clock):
    from connection_manager.service import new_connection_row

    with ConnectionModel.batch_write() as batch:
        for index in range(10):
            row = new_connection_row(f"s{index}", "u1", clock() - timedelta(hours=2, seconds=index))
            batch.save(row)
    calls = {"n": 0}

    def time_left() -> int:
        calls["n"] += 1
        return 60_000 if calls["n"] <= 3 else service.settings.sweep_time_margin_ms - 1

    first = service.cleanup_stale_connections(time_left_ms=time_left)
    second = service.cleanup_stale_connections()

    assert (first.cleaned, first.complete) == (3, False)
    assert first.to_body()["complete"] is False
    assert (second.cleaned, second.complete) == (7, True)
    assert all(item["status"] == "DISCONNECTED" for item in raw_items())


# stats -------------------------------------------------------------------------------------


def test_stats__counts_live_rows_users_and_stale(service, mixed_rows):
    service.take_snapshot()  # rows written around the service are counted by the next snapshot

    body = service.stats().to_body()

    assert body["activeConnections"] == 5
    assert body["distinctUsers"] == 3
    assert body["staleConnections"] == 2
    assert body["generatedAt"] == "2024-01-01T12:00:00Z"
