"""The validation layer on its own: strict JSON, lenient text, and the errors it explains.

Both front doors (the raw handler, the HTTP API) rely on these shapes, so each rule of
the contract's 400 list is pinned here once, independent of DynamoDB.
"""
from __future__ import annotations

import math
import re
import sys

import msgspec
import pytest

from connection_manager import schemas as s
from connection_manager.errors import ValidationError
from connection_manager.operations import OPERATIONS


def test_every_action_of_the_contract_has_an_operation():
    assert set(OPERATIONS) == {
        "get_user_connections",
        "get_all_connections",
        "update_connection_status",
        "cleanup_stale_connections",
        "register_connection",
        "heartbeat",
        "get_connection",
        "disconnect_user",
        "get_user_presence",
    }
    mutating = {name for name, operation in OPERATIONS.items() if operation.mutates}
    assert mutating == {
        "update_connection_status",
        "cleanup_stale_connections",
        "register_connection",
        "heartbeat",
        "disconnect_user",
    }


def test_parse__valid_payload():
    params = s.parse(s.RegisterConnection, {"connectionId": "c1", "userId": "u1", "metadata": {"a": [1, {"b": None}]}})
    assert (params.connectionId, params.userId, params.metadata) == ("c1", "u1", {"a": [1, {"b": None}]})


def test_parse__defaults():
    params = s.parse(s.CleanupStaleConnections, {})
    assert (params.staleAfterSeconds, params.dryRun) == (None, False)
    page = s.parse(s.GetAllConnections, {})
    assert (page.limit, page.nextToken) == (None, None)


@pytest.mark.parametrize("data", [None, [], "x", 1, 1.5, True])
def test_parse__not_an_object(data):
    with pytest.raises(ValidationError) as raised:
        s.parse(s.GetAllConnections, data)
    assert "JSON object" in raised.value.message


@pytest.mark.parametrize(
    "schema, data",
    [
        (s.GetAllConnections, {"limit": "10"}),
        (s.GetAllConnections, {"limit": True}),
        (s.GetAllConnections, {"limit": 10.5}),
        (s.CleanupStaleConnections, {"staleAfterSeconds": float("inf")}),
        (s.CleanupStaleConnections, {"dryRun": "false"}),
        (s.CleanupStaleConnections, {"dryRun": 1}),
        (s.GetConnection, {"connectionId": 5}),
    ],
)
def test_parse__strict_json_does_not_coerce(schema, data):
    with pytest.raises(ValidationError):
        s.parse(schema, data)


@pytest.mark.parametrize(
    "schema, data, field, expected",
    [
        (s.GetAllConnections, {"limit": 10.0}, "limit", 10),
        (s.CleanupStaleConnections, {"staleAfterSeconds": 2834.0}, "staleAfterSeconds", 2834),
        (s.CleanupStaleConnections, {"staleAfterSeconds": 6e1}, "staleAfterSeconds", 60),
    ],
)
def test_parse__a_whole_float_is_the_integer_as_in_json_schema(schema, data, field, expected):
    # Given a whole number written as a float, which JSON Schema's `integer` (the document's type) accepts
    # When it is parsed strictly, as a JSON body or event is
    value = getattr(s.parse(schema, data), field)
    # Then it is that integer, typed int for the service
    assert value == expected and type(value) is int


@pytest.mark.parametrize(
    "schema, data, field, expected",
    [
        (s.Page, {"limit": "10"}, "limit", 10),
        (s.CleanupStaleConnections, {"dryRun": "true"}, "dryRun", True),
        (s.CleanupStaleConnections, {"dryRun": "false"}, "dryRun", False),
        (s.CleanupStaleConnections, {"staleAfterSeconds": "60"}, "staleAfterSeconds", 60),
    ],
)
def test_parse__text_is_converted_when_not_strict(schema, data, field, expected):
    assert getattr(s.parse(schema, data, strict=False), field) == expected


@pytest.mark.parametrize("data", [{"limit": "ten"}, {"limit": "0"}, {"limit": "1001"}, {"limit": ""}])
def test_parse__bad_text_is_still_rejected_when_not_strict(data):
    with pytest.raises(ValidationError):
        s.parse(s.Page, data, strict=False)


def test_parse__message_names_the_field_without_internal_path_syntax():
    with pytest.raises(ValidationError) as raised:
        s.parse(s.GetAllConnections, {"limit": 0})
    message = raised.value.message
    assert "`limit`" in message
    assert "$." not in message


def test_parse__unknown_field_is_named():
    with pytest.raises(ValidationError) as raised:
        s.parse(s.DisconnectUser, {"userId": "u", "force": True})
    assert "force" in raised.value.message


@pytest.mark.parametrize("value", ["a" * 2048, "é" * 1024, "€" * 682 + "ab"])
def test_key__up_to_2048_utf8_bytes_is_accepted(value):
    assert len(value.encode()) <= 2048
    assert s.parse(s.GetConnection, {"connectionId": value}).connectionId == value


@pytest.mark.parametrize("value", ["a" * 2049, "é" * 1025, "€" * 683, "😀" * 513])
def test_key__longer_than_2048_utf8_bytes_is_rejected(value):
    with pytest.raises(ValidationError) as raised:
        s.parse(s.GetConnection, {"connectionId": value})
    assert "connectionId" in raised.value.message


@pytest.mark.parametrize("value", ["", " ", "\t\n", "\x1c", "\x85\u3000", "\u2028 \u202f"])
def test_key__empty_or_blank_is_rejected(value):
    with pytest.raises(ValidationError) as raised:
        s.parse(s.DisconnectUser, {"userId": value})
    assert "userId" in raised.value.message


def test_key__blank_means_exactly_the_documented_class_which_is_what_str_isspace_means():
    # Given every code point, and the class the OpenAPI document's `pattern` spells out
    pattern = re.compile(s.NOT_BLANK)
    # Then a character is "blank" for the schema exactly when Python calls it whitespace
    # (JSON Schema's \s would differ: it holds U+FEFF but not U+001C-U+001F or U+0085)
    assert all(bool(pattern.search(chr(c))) != chr(c).isspace() for c in range(sys.maxunicode + 1))
    # And the server accepts an id holding a non-whitespace character anywhere, as the pattern (a search) does
    for value in ["\ufeff", " x ", "\x1c\x01", "\u200b"]:
        assert s.parse(s.DisconnectUser, {"userId": value}).userId == value


@pytest.mark.parametrize(
    ("schema", "data", "expected"),
    [
        (s.GetAllConnections, {"nextToken": "abc"}, "Expected a token from a previous page's `nextToken` - at `nextToken`"),
        (s.GetAllConnections, {"userAgent": " \u3000"}, "Expected text that is not blank - at `userAgent`"),
    ],
)
def test_pattern_errors__say_what_is_expected_in_words_not_as_a_regex(schema, data, expected):
    with pytest.raises(ValidationError) as raised:
        s.parse(schema, data, strict=False)
    assert raised.value.message == expected
    assert "regex" not in raised.value.message


def test_key__the_document_carries_the_same_pattern():
    schema = msgspec.json.schema(s.DisconnectUser)["$defs"]["DisconnectUser"]["properties"]["userId"]
    assert schema["pattern"] == s.NOT_BLANK
    assert schema["maxLength"] == s.MAX_KEY_BYTES


@pytest.mark.parametrize("status", ["CONNECTED", "DISCONNECTED"])
def test_status__known_values(status):
    assert s.parse(s.UpdateConnectionStatus, {"connectionId": "c", "status": status}).status == status


@pytest.mark.parametrize("status", ["", "connected", "STALE", "ACTIVE", None])
def test_status__anything_else_is_rejected(status):
    with pytest.raises(ValidationError) as raised:
        s.parse(s.UpdateConnectionStatus, {"connectionId": "c", "status": status})
    assert "status" in raised.value.message


@pytest.mark.parametrize("limit, ok", [(0, False), (1, True), (1000, True), (1001, False)])
def test_limit__range(limit, ok):
    if ok:
        assert s.parse(s.GetAllConnections, {"limit": limit}).limit == limit
    else:
        with pytest.raises(ValidationError):
            s.parse(s.GetAllConnections, {"limit": limit})


@pytest.mark.parametrize("seconds, ok", [(0, False), (1, True), (365 * 24 * 3600, True), (365 * 24 * 3600 + 1, False)])
def test_stale_after_seconds__range(seconds, ok):
    if ok:
        assert s.parse(s.CleanupStaleConnections, {"staleAfterSeconds": seconds}).staleAfterSeconds == seconds
    else:
        with pytest.raises(ValidationError):
            s.parse(s.CleanupStaleConnections, {"staleAfterSeconds": seconds})


def test_metadata__too_deep_is_rejected():
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    with pytest.raises(ValidationError) as raised:
        s.parse(s.RegisterConnection, {"connectionId": "c", "userId": "u", "metadata": deep})
    assert "metadata" in raised.value.message


def test_metadata__too_large_is_rejected():
    with pytest.raises(ValidationError) as raised:
        s.parse(s.RegisterConnection, {"connectionId": "c", "userId": "u", "metadata": {"blob": "x" * 3000}})
    assert "metadata" in raised.value.message


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_metadata__non_finite_numbers_are_rejected(number):
    with pytest.raises(ValidationError):
        s.parse(s.RegisterConnection, {"connectionId": "c", "userId": "u", "metadata": {"n": number}})


def test_metadata__must_be_an_object():
    with pytest.raises(ValidationError):
        s.parse(s.RegisterConnection, {"connectionId": "c", "userId": "u", "metadata": ["a"]})


def test_response_structs__produce_json_schema_components():
    _, components = msgspec.json.schema_components(
        [s.ConnectionRecord, s.ConnectionList, s.CleanupResult, s.DisconnectResult, s.ErrorBody]
    )
    record = components["ConnectionRecord"]
    assert set(record["required"]) == {"connectionId", "userId", "status", "createdAt"}
    assert "activeShard" not in record["properties"] and "expiresAt" not in record["properties"]
    assert record["properties"]["status"]["enum"] == ["CONNECTED", "DISCONNECTED"]


def test_record__round_trips_through_the_response_struct():
    record = {
        "connectionId": "c1",
        "userId": "u1",
        "status": "CONNECTED",
        "createdAt": "2024-01-01T00:00:00Z",
        "lastActiveAt": "2024-01-01T00:05:00Z",
    }
    assert msgspec.to_builtins(msgspec.convert(record, s.ConnectionRecord)) == record
