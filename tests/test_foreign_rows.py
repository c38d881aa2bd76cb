"""Rows written by other tools sharing the table: read, never trusted.

The platform's other writers do not follow our conventions. A row may lack ``createdAt``
or hold it as an epoch number or an unreadable string; a DISCONNECTED row may still carry
the index attribute ``activeShard``. Every such row answers 200 (never 500), is never
listed or counted as active, and the sweep repairs what it can.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from connection_manager.handler import lambda_handler
from models.connection import activity_bucket, shard_for
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, iso, put_raw, raw_item

HOUR_AGO = iso(NOW - timedelta(hours=1))
TWO_HOURS_AGO = iso(NOW - timedelta(hours=2))


def invoke(action: str, **params: Any) -> dict[str, Any]:
    return lambda_handler({"action": action, **params})


def foreign_row(connection_id: str, **fields: Any) -> dict[str, Any]:
    """A CONNECTED row as another tool might write it: no index attribute unless given.

    Given ``activeShard``, the row also gets the live index's sort key (the bucket of its
    last activity, or of two hours ago when that is unreadable), so it sits in the index.
    """
    row = {"connectionId": connection_id, "userId": "u1", "status": "CONNECTED", "createdAt": HOUR_AGO}
    row.update(fields)
    if "activeShard" in row and "activeBucket" not in row:
        try:
            last = datetime.fromisoformat(str(row.get("lastActiveAt")).replace("Z", "+00:00"))
        except ValueError:
            last = NOW - timedelta(hours=2)
        row["activeBucket"] = Decimal(activity_bucket(last))
    return {key: value for key, value in row.items() if value is not None}


def disconnected_in_index(connection_id: str, last_active: str = TWO_HOURS_AGO) -> dict[str, Any]:
    """A DISCONNECTED row that still carries ``activeShard``, so it sits in the live index."""
    return foreign_row(
        connection_id,
        status="DISCONNECTED",
        disconnectReason="client",
        lastActiveAt=last_active,
        activeShard=shard_for(connection_id),
    )


# createdAt in other forms ---------------------------------------------------------------------

CREATED_AT_VARIANTS = [
    pytest.param(None, HOUR_AGO, id="missing-falls-back-to-lastActiveAt"),
    pytest.param(Decimal(int((NOW - timedelta(hours=3)).timestamp())), iso(NOW - timedelta(hours=3)), id="epoch-seconds"),
    pytest.param(
        Decimal(int((NOW - timedelta(hours=3)).timestamp()) * 1000), iso(NOW - timedelta(hours=3)), id="epoch-millis"
    ),
    pytest.param(str(int((NOW - timedelta(hours=3)).timestamp())), iso(NOW - timedelta(hours=3)), id="epoch-string"),
    pytest.param("2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00Z", id="iso-with-offset"),
    pytest.param("not a time", HOUR_AGO, id="unreadable-falls-back-to-lastActiveAt"),
    pytest.param(True, HOUR_AGO, id="wrong-type-falls-back-to-lastActiveAt"),
]


@pytest.mark.parametrize(("created_at", "expected"), CREATED_AT_VARIANTS)
def test_get_connection__created_at_written_by_another_tool__200(handler_service, created_at, expected):
    # Given a row whose createdAt is not in our format
    put_raw(foreign_row("theirs", createdAt=created_at, lastActiveAt=HOUR_AGO))
    before = raw_item("theirs")

    # When it is read
    response = invoke("get_connection", connectionId="theirs")

    # Then it answers 200 with a createdAt in the contract's format, and nothing was written
    assert response["statusCode"] == 200, response
    record = response["body"]["connection"]
    assert record["createdAt"] == expected
    assert record["lastActiveAt"] == HOUR_AGO
    assert raw_item("theirs") == before


def test_get_connection__no_readable_time_at_all__200_with_the_oldest_time(handler_service):
    put_raw(foreign_row("bare", createdAt="?", lastActiveAt=None))

    response = invoke("get_connection", connectionId="bare")

    assert response["statusCode"] == 200, response
    record = response["body"]["connection"]
    assert record["createdAt"] == record["lastActiveAt"] == "1970-01-01T00:00:00Z"
    assert raw_item("bare")["createdAt"] == "?"


@pytest.mark.parametrize(("created_at", "expected"), CREATED_AT_VARIANTS[:1] + CREATED_AT_VARIANTS[-2:])
def test_get_user_connections__one_unreadable_row__whole_listing_200(handler_service, created_at, expected):
    # Given one of the user's rows written by another tool beside one of ours
    handler_service.register_connection("ours", "u1")
    put_raw(foreign_row("theirs", createdAt=created_at, lastActiveAt=HOUR_AGO))

    # When the user's connections are listed
    response = invoke("get_user_connections", userId="u1")

    # Then both are listed
    assert response["statusCode"] == 200, response
    records = {record["connectionId"]: record for record in response["body"]["connections"]}
    assert set(records) == {"ours", "theirs"}
    assert records["theirs"]["createdAt"] == expected


def test_get_all_connections__unreadable_last_active_at__200(handler_service):
    put_raw(foreign_row("theirs", lastActiveAt="soon", activeShard=shard_for("theirs")))

    response = invoke("get_all_connections")

    assert response["statusCode"] == 200, response
    [record] = response["body"]["connections"]
    assert record["lastActiveAt"] == record["createdAt"] == HOUR_AGO
    assert raw_item("theirs")["lastActiveAt"] == "soon"


def test_get_connection__expires_at_written_as_a_string__200(handler_service):
    put_raw(foreign_row("theirs", status="DISCONNECTED", expiresAt="2030-01-01T00:00:00Z"))

    response = invoke("get_connection", connectionId="theirs")

    assert response["statusCode"] == 200, response
    assert "expiresAt" not in response["body"]["connection"]


# DISCONNECTED rows left in the live index -------------------------------------------------------


def test_get_all_connections__disconnected_row_with_active_shard__not_listed(handler_service):
    # Given a live row and a DISCONNECTED one that still sits in the live index
    handler_service.register_connection("live", "u1")
    put_raw(disconnected_in_index("ended", last_active=iso(NOW)))

    # When every active connection is listed
    response = invoke("get_all_connections")

    # Then only the live one is
    assert response["statusCode"] == 200
    assert [record["connectionId"] for record in response["body"]["connections"]] == ["live"]
    assert response["body"]["count"] == 1
    assert raw_item("ended")["activeShard"] == shard_for("ended")  # a read repairs nothing


def test_get_all_connections__disconnected_rows_between_pages__every_live_row_once(service):
    # Given live rows interleaved with DISCONNECTED rows in the live index, all on one shard
    live, ended = [], []
    for index in range(40):
        connection_id = f"c{index:02d}"
        if shard_for(connection_id) != 0:
            continue
        (ended if index % 3 == 0 else live).append(connection_id)
        fields = foreign_row(connection_id, lastActiveAt=iso(NOW - timedelta(seconds=index)), activeShard=0)
        if index % 3 == 0:
            fields["status"] = "DISCONNECTED"
        put_raw(fields)

    # When they are listed in small pages
    seen: list[str] = []
    token = None
    while True:
        page = service.get_all_connections(limit=3, next_token=token)
        assert len(page.connections) <= 3
        seen += [record["connectionId"] for record in page.connections]
        token = page.next_token
        if not token:
            break

    # Then every live row is listed exactly once and no DISCONNECTED row is
    assert sorted(seen) == sorted(live)
    assert ended


def test_stats__disconnected_row_with_active_shard__not_counted(service):
    service.register_connection("live", "u1")
    put_raw(disconnected_in_index("ended") | {"userId": "u2"})
    service.take_snapshot()

    stats = service.stats()

    assert (stats.active_connections, stats.distinct_users, stats.stale_connections) == (1, 1, 0)


def test_count_active__disconnected_row_with_active_shard__not_counted(service):
    service.register_connection("live", "u1")
    put_raw(disconnected_in_index("ended"))

    assert service.count_active() == 1


def test_sweep__disconnected_row_in_live_index__leaves_the_index_and_is_not_counted(service):
    # Given a stale live row and a DISCONNECTED row left in the live index by another tool
    put_raw(foreign_row("stale", lastActiveAt=TWO_HOURS_AGO, activeShard=shard_for("stale")))
    put_raw(disconnected_in_index("ended"))
    ended_before = raw_item("ended")

    # When the sweep runs
    result = service.cleanup_stale_connections()

    # Then it marks the stale row, and only removes the index attribute of the other
    assert (result.cleaned, result.repaired, result.skipped, result.failed) == (1, 1, 0, 0)
    body = result.to_body()
    assert (body["cleanedCount"], body["repairedCount"]) == (1, 1)
    assert raw_item("stale")["status"] == "DISCONNECTED"
    ended_before.pop("activeShard")
    assert raw_item("ended") == ended_before
    # And the next sweep no longer meets it
    again = service.cleanup_stale_connections()
    assert (again.scanned, again.cleaned, again.repaired) == (0, 0, 0)


def test_sweep__dry_run__does_not_count_disconnected_rows_as_stale(service):
    put_raw(foreign_row("stale", lastActiveAt=TWO_HOURS_AGO, activeShard=shard_for("stale")))
    put_raw(disconnected_in_index("ended"))

    result = service.cleanup_stale_connections(dry_run=True)

    assert result.cleaned == 1
    assert raw_item("ended")["activeShard"] == shard_for("ended")
    assert raw_item("stale")["status"] == "CONNECTED"


def test_sweep__row_revived_before_the_repair__keeps_its_index_attribute(service, monkeypatch):
    # Given a DISCONNECTED row in the index that an admin brings back just before the repair lands
    put_raw(disconnected_in_index("ended"))
    original = service._leave_index

    def revive_first(connection_id: str) -> str:
        service.update_connection_status(connection_id, "CONNECTED")
        return original(connection_id)

    monkeypatch.setattr(service, "_leave_index", revive_first)

    # When the sweep meets it
    result = service.cleanup_stale_connections()

    # Then the revived row stays live and in the index
    assert (result.cleaned, result.repaired, result.skipped) == (0, 0, 1)
    stored = raw_item("ended")
    assert stored["status"] == "CONNECTED" and stored["activeShard"] == shard_for("ended")


def test_sweep__row_with_epoch_timestamps__swept_not_500(handler_service):
    epoch = Decimal(int((NOW - timedelta(hours=3)).timestamp()))
    put_raw(foreign_row("theirs", createdAt=epoch, lastActiveAt=TWO_HOURS_AGO, activeShard=shard_for("theirs")))

    response = invoke("cleanup_stale_connections")

    assert response["statusCode"] == 200, response
    assert response["body"]["cleanedCount"] == 1
    stored = raw_item("theirs")
    assert stored["status"] == "DISCONNECTED" and "activeShard" not in stored
    assert stored["createdAt"] == epoch
