"""The message hot path: activity coalescing, its staleness guarantee, its failure mode.

A WebSocket message moves ``lastActiveAt`` at most once per activity interval per
connection; the ``heartbeat`` action always writes. Time comes from the fixed clock.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

import connection_manager.handler as handler_module
import connection_manager.observability as observability
from connection_manager.activity import ActivityMemory
from connection_manager.config import Settings
from connection_manager.errors import UnavailableError
from connection_manager.handler import lambda_handler
import connection_manager.lifecycle as activity_path
from connection_manager.service import CHECKED, CURRENT, NOT_CONNECTED, REMEMBERED, WRITTEN, ConnectionService
from models.connection import activity_bucket, parse_timestamp
from tests.support.events import FakeLambdaContext, websocket_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, iso, raw_item

INTERVAL = 300


def requests_of(service: ConnectionService) -> Counter[str]:
    """The DynamoDB operations ``service`` sends from now on, by name."""
    sent: Counter[str] = Counter()
    client = service.model._get_connection().connection.client
    client.meta.events.register("before-call.dynamodb", lambda model, **_: sent.update([model.name]))
    return sent


def message(connection_id: str) -> dict[str, Any]:
    return lambda_handler(websocket_event("websocket_message", connection_id), FakeLambdaContext())


@pytest.fixture(autouse=True)
def _quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_configured", True)


def test_record_activity__within_the_interval__nothing_written(service, make_connection, clock):
    make_connection("c1", idle=timedelta(minutes=30))
    clock.advance(seconds=1)
    assert service.record_activity("c1") == WRITTEN
    written = raw_item("c1")

    clock.advance(seconds=INTERVAL - 1)
    assert service.record_activity("c1") == REMEMBERED

    assert raw_item("c1") == written
    assert written["lastActiveAt"] == iso(NOW + timedelta(seconds=1))


def test_record_activity__once_the_interval_has_passed__moves_last_active_at(service, make_connection, clock):
    make_connection("c1", idle=timedelta(minutes=30))
    service.record_activity("c1")

    clock.advance(seconds=INTERVAL)
    assert service.record_activity("c1") == WRITTEN

    item = raw_item("c1")
    assert item["lastActiveAt"] == iso(NOW + timedelta(seconds=INTERVAL))
    assert item["activeBucket"] == activity_bucket(NOW + timedelta(seconds=INTERVAL))
    assert "updatedAt" not in item or item["updatedAt"] == iso(NOW - timedelta(minutes=30))  # activity is not a change


def test_record_activity__another_container_wrote_recently__one_read_no_write_and_the_time_is_learned(
    service, settings, clock, make_connection
):
    # Given a second process (no shared memory) that wrote the activity a moment ago
    make_connection("c1", idle=timedelta(minutes=30))
    other = ConnectionService(settings, clock)
    assert other.record_activity("c1") == WRITTEN
    stored = raw_item("c1")
    clock.advance(seconds=10)
    sent = requests_of(service)

    # When this process sees a message, then a second one
    first = service.record_activity("c1")
    second = service.record_activity("c1")

    # Then one read answered the first (no write, no failed condition) and the second cost nothing
    assert (first, second) == (CHECKED, REMEMBERED)
    assert sent == {"GetItem": 1}
    assert service.activity.get("c1") == parse_timestamp(stored["lastActiveAt"])
    assert raw_item("c1") == stored


def test_record_activity__read_behind_a_recent_write__the_condition_refuses_and_the_time_is_learned(
    service, settings, clock, make_connection, monkeypatch
):
    # Given a recent write that an eventually consistent read has not caught up with yet
    make_connection("c1", idle=timedelta(minutes=30))
    assert ConnectionService(settings, clock).record_activity("c1") == WRITTEN
    stored = raw_item("c1")
    clock.advance(seconds=10)
    monkeypatch.setattr(activity_path, "read_activity", lambda model, cid: (True, NOW - timedelta(minutes=30)))

    # When this process sees a message
    outcome = service.record_activity("c1")

    # Then the conditional write still decides: refused (1 write unit), the stored time learned
    assert outcome == CURRENT
    assert raw_item("c1") == stored
    assert service.activity.get("c1") == parse_timestamp(stored["lastActiveAt"])


def test_record_activity__remembered_time_older_than_the_interval__reads_before_writing(
    service, settings, clock, make_connection
):
    # Given this process wrote long ago, and another container wrote since, after the interval
    make_connection("c1", idle=timedelta(minutes=30))
    assert service.record_activity("c1") == WRITTEN
    clock.advance(seconds=INTERVAL)
    assert ConnectionService(settings, clock).record_activity("c1") == WRITTEN
    stored = raw_item("c1")
    clock.advance(seconds=5)
    sent = requests_of(service)

    # When this process sees the next message, its memory too old to answer
    assert service.record_activity("c1") == CHECKED

    # Then a read, not a refused write, told it the stored time
    assert sent == {"GetItem": 1}
    assert raw_item("c1") == stored


@pytest.mark.parametrize("after", [INTERVAL, INTERVAL + 1, 3 * INTERVAL])
def test_record_activity__interval_passed__one_message_in_any_container_moves_last_active_at(
    service, settings, clock, make_connection, after
):
    make_connection("c1", idle=timedelta(minutes=30))
    assert service.record_activity("c1") == WRITTEN
    clock.advance(seconds=after)

    assert ConnectionService(settings, clock).record_activity("c1") == WRITTEN

    assert raw_item("c1")["lastActiveAt"] == iso(clock())
    assert service.record_activity("c1") == CHECKED  # and the first container learns it by a read


def test_record_activity__interval_zero__every_message_writes(settings, clock, make_connection, dynamodb):
    service = ConnectionService(Settings(**{**settings.__dict__, "activity_write_interval_seconds": 0}), clock)
    make_connection("c1")
    for step in range(3):
        clock.advance(seconds=1)
        assert service.record_activity("c1") == WRITTEN
        assert raw_item("c1")["lastActiveAt"] == iso(NOW + timedelta(seconds=step + 1))


def test_record_activity__disconnected_or_missing__nothing_changes(service, make_connection, clock):
    make_connection("gone", status="DISCONNECTED")
    before = raw_item("gone")
    clock.advance(hours=1)

    sent = requests_of(service)

    assert service.record_activity("gone") == NOT_CONNECTED
    assert service.record_activity("never-seen") == NOT_CONNECTED

    assert sent == {"GetItem": 2}  # the reads said so: no write was tried
    assert raw_item("gone") == before
    assert raw_item("never-seen") is None


def test_heartbeat__within_the_interval__still_writes(service, make_connection, clock):
    make_connection("c1")
    service.record_activity("c1")
    clock.advance(seconds=5)

    record = service.heartbeat("c1")

    assert record["lastActiveAt"] == iso(NOW + timedelta(seconds=5))
    assert raw_item("c1")["lastActiveAt"] == iso(NOW + timedelta(seconds=5))


@pytest.mark.parametrize("quiet_for", [0, 1, 299, 300, 301, 900, 3299])
def test_cleanup__connection_with_a_message_in_the_last_stale_minus_interval_seconds__never_swept(
    service, make_connection, clock, quiet_for
):
    # Given a connection that sends a message every 7 s for an hour, then falls quiet
    make_connection("chatty", idle=timedelta(minutes=30))
    for _ in range(3600 // 7):
        clock.advance(seconds=7)
        service.record_activity("chatty")
    last_message = clock()

    # When the sweep runs while its last message is still within staleAfter - interval
    clock.advance(seconds=quiet_for)
    assert (clock() - last_message).total_seconds() <= service.settings.stale_after_seconds - INTERVAL
    result = service.cleanup_stale_connections()

    # Then it is never swept
    assert result.cleaned == 0
    assert raw_item("chatty")["status"] == "CONNECTED"


@pytest.mark.parametrize("quiet_for", [0, 299, 300, 3299])
def test_cleanup__fleet__message_in_the_last_stale_minus_interval_seconds__never_swept(
    settings, make_connection, clock, quiet_for
):
    # Given a connection whose every message lands in a container that has not seen it
    fleet = ConnectionService(replace(settings, activity_memory_size=0), clock)
    make_connection("chatty", idle=timedelta(minutes=30))
    sent = requests_of(fleet)
    for _ in range(3600 // 7):
        clock.advance(seconds=7)
        fleet.record_activity("chatty")
    last_message = clock()

    # When the sweep runs while its last message is still within staleAfter - interval
    clock.advance(seconds=quiet_for)
    result = fleet.cleanup_stale_connections()

    # Then it is never swept, and the fleet read once per message and wrote once per interval
    assert result.cleaned == 0
    assert raw_item("chatty")["status"] == "CONNECTED"
    assert sent["GetItem"] == 3600 // 7
    assert sent["UpdateItem"] == pytest.approx(3600 / INTERVAL, abs=1)
    assert (clock() - last_message).total_seconds() <= fleet.settings.stale_after_seconds - INTERVAL


def test_cleanup__message_from_a_fresh_container_between_sweep_read_and_write__message_wins(
    service, settings, make_connection, clock, monkeypatch
):
    # Given two idle rows, and a message on one of them arriving, in another container, while
    # the sweep holds both as stale-looking candidates
    make_connection("saved", idle=timedelta(seconds=settings.stale_after_seconds + 1))
    make_connection("idle", idle=timedelta(seconds=settings.stale_after_seconds + 1))
    elsewhere = ConnectionService(settings, clock)
    answers: dict[str, str] = {}
    original = service._sweep_one

    def sweep_one(connection_id: str, cutoff: Any, *rest: Any) -> str:
        if connection_id == "saved":
            answers[connection_id] = elsewhere.record_activity(connection_id)
        return original(connection_id, cutoff, *rest)

    monkeypatch.setattr(service, "_sweep_one", sweep_one)

    result = service.cleanup_stale_connections()

    # Then the message wrote, and the sweep's conditional write left that row CONNECTED
    assert answers == {"saved": WRITTEN}
    assert (result.cleaned, result.skipped) == (1, 1)
    assert raw_item("saved")["status"] == "CONNECTED"
    assert raw_item("idle")["status"] == "DISCONNECTED"


def test_cleanup__quiet_past_the_stale_period__swept_within_the_same_bucket(service, make_connection, clock):
    # Rows idle a little more and a little less than the stale period share the cutoff's bucket.
    clock.advance(minutes=7)  # the cutoff mid-bucket
    cutoff = clock() - timedelta(seconds=service.settings.stale_after_seconds)
    assert activity_bucket(cutoff - timedelta(seconds=1)) == activity_bucket(cutoff + timedelta(seconds=1))
    make_connection("just-stale", idle=timedelta(seconds=service.settings.stale_after_seconds + 1))
    make_connection("not-yet", idle=timedelta(seconds=service.settings.stale_after_seconds - 1))

    result = service.cleanup_stale_connections()

    assert (result.cleaned, result.scanned) == (1, 1)  # the filter dropped "not-yet" before any write
    assert raw_item("just-stale")["status"] == "DISCONNECTED"
    assert raw_item("not-yet")["status"] == "CONNECTED"


def test_websocket_message__activity_write_fails__200_logged_and_counted(
    handler_service, make_connection, monkeypatch, caplog
):
    make_connection("c1", idle=timedelta(minutes=30))
    counted: list[str] = []
    monkeypatch.setattr(handler_module, "record_activity_failure", counted.append)

    def throttled(connection_id: str) -> str:
        raise UnavailableError("DynamoDB is throttling")

    monkeypatch.setattr(handler_service, "record_activity", throttled)
    before = raw_item("c1")

    assert message("c1") == {"statusCode": 200}

    assert counted == ["ServiceUnavailable"]
    assert "activity of c1 not recorded" in caplog.text
    assert raw_item("c1") == before


def test_websocket_message__second_message_in_the_interval__no_request(handler_service, make_connection, clock):
    make_connection("c1", idle=timedelta(minutes=30))
    assert message("c1") == {"statusCode": 200}
    written = raw_item("c1")
    clock.advance(seconds=30)

    assert message("c1") == {"statusCode": 200}

    assert raw_item("c1") == written
    assert handler_service.activity.get("c1") == NOW


def test_activity_memory__bounded_least_recently_used_first_out():
    memory = ActivityMemory(2)
    memory.remember("a", NOW)
    memory.remember("b", NOW)
    memory.get("a")
    memory.remember("c", NOW)

    assert (memory.get("a"), memory.get("b"), memory.get("c")) == (NOW, None, NOW)
    memory.remember("a", NOW - timedelta(seconds=5))  # never moves an entry back
    assert memory.get("a") == NOW
