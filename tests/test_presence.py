"""Presence: stream records in Lambda's shape through the consumer, the real PutEvents
retry code, and the presence items in the table (moto in process).

The stream itself, end to end on DynamoDB Local, is tests/test_presence_stream.py.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from connection_manager.handler import lambda_handler
from connection_manager.presence import Presence
from connection_manager.presence_bus import EventBus
from connection_manager.presence_events import CLOSED, OFFLINE, ONLINE, OPENED, change_of
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import NOW, TABLE

ARN = f"arn:aws:dynamodb:ddblocal:000000000000:table/{TABLE}/stream/2026-12-06T00:00:00.000"


class FakeEvents:
    """PutEvents as EventBridge answers it; ``fail_next`` entries fail with throttling."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.calls = 0
        self.fail_next = 0
        #: Entries about these connections always fail.
        self.fail_for: set[str] = set()
        self.raise_code: str | None = None
        self.lock = threading.Lock()

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        import json

        import botocore.exceptions

        with self.lock:
            self.calls += 1
            if self.raise_code:
                raise botocore.exceptions.ClientError({"Error": {"Code": self.raise_code, "Message": "no"}}, "PutEvents")
            results = []
            for entry in Entries:
                if self.fail_next or json.loads(entry["Detail"]).get("connectionId") in self.fail_for:
                    self.fail_next = max(0, self.fail_next - 1)
                    results.append({"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"})
                else:
                    self.entries.append({**entry, "detail": json.loads(entry["Detail"])})
                    results.append({"EventId": str(len(self.entries))})
            return {"FailedEntryCount": sum(1 for r in results if "ErrorCode" in r), "Entries": results}

    def kinds(self) -> list[tuple[str, str]]:
        return [(entry["DetailType"], entry["detail"].get("connectionId", "")) for entry in self.entries]


def record(seq: int, connection: str, user: str | None, old: str | None, new: str | None,
           reason: str | None = None, arn: str = ARN) -> dict[str, Any]:
    """One stream record in Lambda's shape; ``old``/``new`` are the row's status before and after."""
    def image(status: str | None) -> dict[str, Any] | None:
        if status is None:
            return None
        item: dict[str, Any] = {"connectionId": {"S": connection}, "status": {"S": status},
                                "createdAt": {"S": "2026-12-06T10:00:00Z"}}
        if user is not None:
            item["userId"] = {"S": user}
        if status == "DISCONNECTED" and reason:
            item["disconnectReason"] = {"S": reason}
            item["disconnectedAt"] = {"S": f"2026-12-06T11:{seq % 60:02d}:00Z"}
        return item

    data: dict[str, Any] = {"Keys": {"connectionId": {"S": connection}}, "SequenceNumber": str(seq),
                            "StreamViewType": "NEW_AND_OLD_IMAGES", "ApproximateCreationDateTime": 1796558400.0}
    if image(old):
        data["OldImage"] = image(old)
    if image(new):
        data["NewImage"] = image(new)
    name = "INSERT" if old is None else "REMOVE" if new is None else "MODIFY"
    return {"eventID": f"e{seq}", "eventName": name, "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "ddblocal", "dynamodb": data, "eventSourceARN": arn}


def opened(seq: int, connection: str, user: str = "u1") -> dict[str, Any]:
    return record(seq, connection, user, None, "CONNECTED")


def closed(seq: int, connection: str, user: str = "u1", reason: str = "client") -> dict[str, Any]:
    return record(seq, connection, user, "CONNECTED", "DISCONNECTED", reason)


@pytest.fixture
def bus() -> FakeEvents:
    return FakeEvents()


@pytest.fixture
def presence(service: Any, bus: FakeEvents, clock: Any) -> Presence:
    return Presence(service.platform.records, TABLE, EventBus("presence", client=bus, sleep=lambda _: None), clock)


def test_first_connection_online__last_one_offline__one_event_each(presence, bus):
    done = presence.consume([opened(1, "a"), opened(2, "b"), closed(3, "a"), closed(4, "b", reason="stale")])

    assert done.failed is None and done.changes == 4
    assert bus.kinds() == [(OPENED, "a"), (ONLINE, "a"), (OPENED, "b"), (CLOSED, "a"), (CLOSED, "b"), (OFFLINE, "b")]
    offline = bus.entries[-1]
    assert offline["Source"] == "connection-manager" and offline["EventBusName"] == "presence"
    assert offline["detail"]["reason"] == "stale" and offline["detail"]["userId"] == "u1"
    assert len({entry["detail"]["eventId"] for entry in bus.entries}) == 6


def test_sweep_closing_ten_rows__one_user_offline(presence, bus):
    presence.consume([opened(n, f"c{n}") for n in range(1, 11)])
    bus.entries.clear()

    presence.consume([closed(100 + n, f"c{n}", reason="stale") for n in range(1, 11)])

    kinds = Counter(kind for kind, _ in bus.kinds())
    assert kinds == {CLOSED: 10, OFFLINE: 1}


def test_redelivered_batch_and_replay__no_second_transition(presence, bus):
    batch = [opened(1, "a"), opened(2, "b"), closed(3, "a"), closed(4, "b")]
    presence.consume(batch)
    published = list(bus.entries)

    again = presence.consume(batch)  # a Lambda retry, or the stream replayed from its start
    partly = presence.consume(batch[2:])  # a retry from the middle

    assert bus.entries == published
    assert again.duplicates == 4 and again.changes == 0 and partly.duplicates == 2


def test_partial_put_events_failure__record_given_back__retry_publishes_the_rest_once(presence, bus):
    # Given PutEvents failing every entry of the batch on every attempt
    bus.fail_next = 3 * 4  # a: Connection Opened + User Online, b: Connection Opened; four attempts
    first = presence.consume([opened(1, "a"), opened(2, "b")])

    # Then Lambda is told to retry from the first record whose events are not out
    assert first.failed == "1" and "ThrottlingException" in first.problem
    assert bus.entries == []

    # When Lambda retries from it, PutEvents answering again
    second = presence.consume([opened(1, "a"), opened(2, "b")])

    # Then each event went out once, with the ids the first try had made, and no change twice
    assert second.failed is None and second.duplicates == 2 and second.changes == 0
    assert sorted(bus.kinds()) == [(OPENED, "a"), (OPENED, "b"), (ONLINE, "a")]
    assert len({entry["detail"]["eventId"] for entry in bus.entries}) == 3
    third = presence.consume([opened(1, "a"), opened(2, "b")])
    assert third.published == 0 and len(bus.entries) == 3


def test_first_record_published_second_not__retry_from_the_second__its_events_once(presence, bus):
    first = presence.consume([opened(1, "a", user="u1")])
    bus.fail_for = {"b"}  # the second record's events fail on every attempt
    second = presence.consume([closed(2, "a", user="u1"), opened(3, "b", user="u2")])

    assert first.failed is None and second.failed == "3"
    assert Counter(kind for kind, _ in bus.kinds()) == {OPENED: 1, ONLINE: 1, CLOSED: 1, OFFLINE: 1}
    bus.fail_for = set()
    third = presence.consume([opened(3, "b", user="u2")])  # Lambda's retry from it
    assert third.duplicates == 1 and Counter(kind for kind, _ in bus.kinds())[ONLINE] == 2

def test_throttled_entries_retried_within_the_call(presence, bus):
    bus.fail_next = 1
    done = presence.consume([opened(1, "a")])

    assert done.failed is None and sorted(bus.kinds()) == [(OPENED, "a"), (ONLINE, "a")]  # EventBridge keeps no order
    assert bus.calls == 2


def test_unknown_bus__named_in_the_error_logged_once(presence, bus, caplog):
    bus.raise_code = "ResourceNotFoundException"
    first = presence.consume([opened(1, "a")])
    second = presence.consume([opened(1, "a")])

    assert first.failed == "1" and "bus 'presence'" in first.problem and "ResourceNotFoundException" in first.problem
    assert second.failed == "1"
    assert sum("presence events are not published" in line for line in caplog.messages) == 1


def test_shards_interleaved__per_user_order_still_one_transition_per_change(presence, bus):
    # Records of two connections of one user, from two shards, interleaved; per connection in order
    presence.consume([opened(5, "b")])
    presence.consume([opened(1, "a")])
    presence.consume([closed(6, "b")])
    presence.consume([closed(2, "a")])

    assert [kind for kind, _ in bus.kinds()].count(ONLINE) == 1
    assert [kind for kind, _ in bus.kinds()].count(OFFLINE) == 1
    assert bus.kinds()[-1] == (OFFLINE, "a")


def test_records_presence_cannot_use__skipped_never_fail_the_batch(presence, bus, caplog):
    batch = [
        record(1, "x", "u1", None, "CONNECTED", arn=ARN.replace(TABLE, "other-table")),
        record(2, "y", None, None, "CONNECTED"),
        {"eventSource": "aws:dynamodb"},
        record(3, "#cm#live#0", None, None, None),
        record(4, "z", "u1", "CONNECTED", "CONNECTED"),  # a heartbeat: no change
        opened(5, "a"),
    ]

    done = presence.consume(batch)

    assert done.failed is None and done.skipped == {"other_table": 1, "no_user": 1, "malformed": 1}
    assert bus.kinds() == [(OPENED, "a"), (ONLINE, "a")]
    assert sum("presence skipped" in line for line in caplog.messages) == 3


def test_row_deleted_while_connected__closed_as_gone(presence, bus):
    presence.consume([opened(1, "a"), record(2, "a", "u1", "CONNECTED", None)])

    assert bus.entries[-1]["DetailType"] == OFFLINE and bus.entries[-1]["detail"]["reason"] == "gone"


def test_change_of__event_time_from_the_row():
    change = change_of(closed(7, "a", reason="admin"), TABLE, NOW)

    assert change is not None and change.at == "2026-12-06T11:07:00Z" and change.reason == "admin"


def test_presence_off__nothing_published_nothing_written(service, bus, clock):
    off = Presence(service.platform.records, TABLE, None, clock)

    done = off.consume([opened(1, "a")])

    assert done.skipped == {"presence_off": 1} and bus.entries == []
    assert off.last_seen("u1") is None


def test_handler__own_table_stream_consumed__partial_batch_response(handler_service, bus, monkeypatch):
    handler_service.presence.bus = EventBus("presence", client=bus, sleep=lambda _: None)
    bus.fail_next = 3 * 4

    answer = lambda_handler({"Records": [opened(1, "a"), opened(2, "b")]})

    assert answer == {"batchItemFailures": [{"itemIdentifier": "1"}]}
    assert lambda_handler({"Records": [opened(1, "a"), opened(2, "b")]}) == {"batchItemFailures": []}


def test_handler__another_tables_stream__the_400_it_always_got(handler_service):
    other = record(1, "a", "u1", None, "CONNECTED", arn=ARN.replace(TABLE, "orders"))

    answer = lambda_handler({"Records": [other]})

    assert answer["statusCode"] == 400 and "DynamoDB Streams" in answer["body"]["message"]


def test_get_user_presence__from_the_users_rows(handler_service, make_connection):
    make_connection("c1", user_id="u9")
    make_connection("c2", user_id="u9")
    make_connection("c3", user_id="u9", status="DISCONNECTED")

    online = lambda_handler({"action": "get_user_presence", "userId": "u9"})
    nobody = lambda_handler({"action": "get_user_presence", "userId": "nobody"})
    bad = lambda_handler({"action": "get_user_presence"})

    assert online["statusCode"] == 200
    assert online["body"]["userId"] == "u9" and online["body"]["online"] is True
    assert online["body"]["connections"] == 2 and online["body"]["lastSeenAt"]
    assert nobody["body"] == {"userId": "nobody", "online": False, "connections": 0, "lastSeenAt": None}
    assert bad["statusCode"] == 400


def test_every_event_published__valid_against_the_shipped_schema(presence, bus):
    import json
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "presence-events.schema.json").read_text())
    presence.consume([opened(1, "a"), opened(2, "b"), closed(3, "a", reason="admin"), closed(4, "b", reason="lifetime")])

    assert len(bus.entries) == 6
    for entry in bus.entries:
        event = {"source": entry["Source"], "detail-type": entry["DetailType"], "detail": entry["detail"]}
        jsonschema.validate(event, schema, format_checker=jsonschema.FormatChecker())
    broken = {"source": "connection-manager", "detail-type": "User Offline", "detail": {"userId": "u1"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_migrate__table_without_a_stream__gets_one__then_it_is_present(service, dynamodb):
    import boto3

    from tests.test_lifetime import _old_layout_table

    client = _old_layout_table()  # made without a stream, as tables before presence were
    assert not client.describe_table(TableName=TABLE)["Table"].get("StreamSpecification")

    first, second = service.migrate(sleep=lambda _: None), service.migrate(sleep=lambda _: None)

    assert (first["stream"], second["stream"]) == ("enabled", "present")
    spec = boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName=TABLE)["Table"]["StreamSpecification"]
    assert spec == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_create_table__has_the_stream(service, dynamodb):
    spec = dynamodb.describe_table(TableName=TABLE)["Table"]["StreamSpecification"]
    assert spec == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}


class FakeLambda:
    def __init__(self, mappings: list[dict[str, Any]]) -> None:
        self.mappings, self.calls = mappings, []

    def list_event_source_mappings(self, FunctionName: str) -> dict[str, Any]:  # noqa: N803
        return {"EventSourceMappings": self.mappings}

    def __getattr__(self, name: str) -> Any:
        return lambda **kwargs: self.calls.append((name, kwargs))


class FakeDynamo:
    def __init__(self, stream: str | None) -> None:
        self.stream = stream

    def describe_table(self, TableName: str) -> dict[str, Any]:  # noqa: N803
        return {"Table": {"LatestStreamArn": self.stream} if self.stream else {}}


def test_stream_source__presence_on__mapping_created_with_what_lambda_needs():
    from connection_manager.stream_source import wire_stream

    lam = FakeLambda([])
    said = wire_stream(FakeDynamo(ARN), lam, {"CONNECTIONS_TABLE_NAME": TABLE, "PRESENCE_EVENT_BUS": "b"}, "fn")

    assert "wired" in said
    [(name, call)] = lam.calls
    assert name == "create_event_source_mapping" and call["EventSourceArn"] == ARN and call["FunctionName"] == "fn"
    assert call["StartingPosition"] == "TRIM_HORIZON" and call["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_stream_source__presence_off__own_mapping_removed_others_kept():
    from connection_manager.stream_source import wire_stream

    lam = FakeLambda([{"UUID": "ours", "EventSourceArn": ARN},
                      {"UUID": "theirs", "EventSourceArn": ARN.replace(TABLE, "orders")}])
    wire_stream(FakeDynamo(ARN), lam, {"CONNECTIONS_TABLE_NAME": TABLE}, "fn")

    assert lam.calls == [("delete_event_source_mapping", {"UUID": "ours"})]


def test_stream_source__table_without_stream__says_to_migrate():
    from connection_manager.stream_source import wire_stream

    lam = FakeLambda([])
    said = wire_stream(FakeDynamo(None), lam, {"CONNECTIONS_TABLE_NAME": TABLE, "PRESENCE_EVENT_BUS": "b"}, "fn")

    assert "migrate" in said and lam.calls == []


def test_zappa_settings__post_callback_wires_the_stream():
    import importlib
    import json
    from pathlib import Path

    settings = json.loads((Path(__file__).resolve().parent.parent / "zappa_settings.json").read_text())
    module, _, name = settings["dev"]["callbacks"]["post"].rpartition(".")
    from connection_manager.stream_source import wire

    assert getattr(importlib.import_module(module), name) is wire
    assert settings["production"]["extends"] == "dev"


def test_closed_mark_not_written__record_retried__no_second_transition(presence, bus, monkeypatch):
    # Given a user's only connection closing, its mark's write failing once
    from pynamodb.exceptions import PutError

    presence.consume([opened(1, "a")])
    real = Presence._mark_closed
    failures = iter([PutError("throttled")])

    def mark_closed(self: Presence, change: Any, now: Any) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real(self, change, now)

    monkeypatch.setattr(Presence, "_mark_closed", mark_closed)
    first = presence.consume([closed(2, "a"), opened(3, "b", user="u2")])
    assert first.failed == "2"  # Lambda retries from the close

    # When Lambda retries from it, then the stream is replayed from its start
    retried = presence.consume([closed(2, "a"), opened(3, "b", user="u2")])
    replayed = presence.consume([opened(1, "a"), closed(2, "a"), opened(3, "b", user="u2")])

    # Then the user went offline once, and the replay found the mark
    assert retried.failed is None and replayed.failed is None and replayed.changes == 0
    assert Counter(kind for kind, _ in bus.kinds()) == {OPENED: 2, ONLINE: 2, CLOSED: 1, OFFLINE: 1}


def test_presence_item__holds_only_open_connections(presence, service):
    presence.consume([opened(n, f"c{n}") for n in range(1, 6)] + [closed(10 + n, f"c{n}") for n in range(1, 5)])

    import json

    from models.platform import presence_key

    body = json.loads(service.platform.records.get(presence_key("u1"), consistent_read=True).body)
    assert body["members"] == ["c5"] and body["sequences"] == {"c5": 5}
