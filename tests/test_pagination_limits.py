"""Every list is paginated, every ``nextToken`` is checked, and no page nears Lambda's 6 MB.

Tokens here are real ones issued by the service and then damaged, or re-signed with the
service's own key around content it would never issue, and they go through the raw
Lambda handler, so the answer checked is the one a caller sees: a 400, never a 500 or a
page of some other listing.

Size: the contract allows ``limit`` up to 1000 and a record of two 2048-byte keys and 2 KB
of metadata. Keys made of control characters grow sixfold when ``json.dumps`` escapes
them, so one record can take about 27 KB and a page of 1000 about 27 MB. Counting rows
cannot bound that; the service also stops a page at ``RESPONSE_BUDGET_BYTES`` of JSON.
"""
from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest

from connection_manager import service as service_module
from connection_manager.handler import lambda_handler
from connection_manager.schemas import MAX_KEY_BYTES, MAX_METADATA_BYTES, MAX_PAGE_SIZE
from connection_manager.service import new_connection_row
from connection_manager.tokens import Cursor
from models.connection import ConnectionModel, live_shards
from tests.support.fixtures import *  # noqa: F401,F403

LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return lambda_handler(event, None)


def seed(clock: Any, count: int, user_id: str = "u1", prefix: str = "c") -> None:
    with ConnectionModel.batch_write() as batch:
        for index in range(count):
            batch.save(new_connection_row(f"{prefix}{index:04d}", user_id, clock() - timedelta(seconds=index)))


def first_token(event: dict[str, Any]) -> str:
    response = invoke({**event, "limit": 2})
    assert response["statusCode"] == 200, response
    return response["body"]["nextToken"]


def assert_rejected(event: dict[str, Any], token: Any) -> None:
    response = invoke({**event, "nextToken": token})
    assert response["statusCode"] == 400, response
    assert response["body"]["error"] == "ValidationError"
    assert "Traceback" not in json.dumps(response)


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


ALL = {"action": "get_all_connections"}
USER = {"action": "get_user_connections", "userId": "u1"}


# Tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("listing", [ALL, USER], ids=["all", "user"])
def test_issued_token__continues_the_listing(listing, handler_service, clock):
    seed(clock, 5)
    seen: list[str] = []
    token = None
    while True:
        event = {**listing, "limit": 2, **({"nextToken": token} if token else {})}
        body = invoke(event)["body"]
        seen += [row["connectionId"] for row in body["connections"]]
        token = body.get("nextToken")
        if not token:
            break
    assert sorted(seen) == [f"c{index:04d}" for index in range(5)]


@pytest.mark.parametrize("listing", [ALL, USER], ids=["all", "user"])
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda t: t.split(".")[0] + "." + b64(b"\x00" * 16), id="forged-signature"),
        pytest.param(lambda t: t.split(".")[0] + "." + t.split(".")[1][::-1], id="reversed-signature"),
        pytest.param(lambda t: t[:-3], id="truncated"),
        pytest.param(lambda t: t.replace(".", ""), id="no-separator"),
        pytest.param(lambda t: t + ".x", id="extra-part"),
        pytest.param(lambda t: "!!" + t[2:], id="not-base64"),
        pytest.param(lambda t: "%%%." + t.split(".")[1], id="corrupted-body"),
        pytest.param(lambda t: b64(b'{"v":1,"scope":"all","shard":0,"key":null}') + "." + t.split(".")[1], id="body-swapped"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "A" * 5000, id="too-long"),
        pytest.param(lambda t: 12345, id="not-a-string"),
    ],
)
def test_damaged_token__400(listing, damage, handler_service, clock):
    seed(clock, 5)
    assert_rejected(listing, damage(first_token(listing)))


def test_token_of_one_listing__rejected_by_the_other(handler_service, clock):
    seed(clock, 5, user_id="u1")
    seed(clock, 5, user_id="u2", prefix="d")

    assert_rejected(ALL, first_token(USER))
    assert_rejected(USER, first_token(ALL))
    assert_rejected({**USER, "userId": "u2"}, first_token(USER))  # another user's listing


def test_token_signed_with_another_secret__rejected(handler_service, clock, monkeypatch):
    seed(clock, 5)
    token = first_token(ALL)
    monkeypatch.setenv("PAGINATION_TOKEN_SECRET", "another-deployment")
    from connection_manager.config import Settings
    from connection_manager.service import ConnectionService

    other = ConnectionService(Settings.from_env(), clock)
    assert_rejected(ALL, other._tokens.encode("all", Cursor(0, None)))
    # and the original still works with the original service
    assert invoke({**ALL, "nextToken": token})["statusCode"] == 200


GOOD_KEY = {"connectionId": {"S": "c0001"}, "activeShard": {"N": "0"}, "activeBucket": {"N": "1704067200"}}


@pytest.mark.parametrize(
    "shard,key",
    [
        pytest.param("past-the-end", None, id="shard-past-the-end"),
        pytest.param(-1, None, id="negative-shard"),
        pytest.param(10**9, GOOD_KEY, id="huge-shard"),
        pytest.param(0, {"connectionId": {"S": "c"}, "userId": {"S": "u1"}, "status": {"S": "CONNECTED"}}, id="user-index-key-names"),
        pytest.param(0, {"connectionId": {"S": "c"}}, id="missing-key-names"),
        pytest.param(0, {**GOOD_KEY, "userId": {"S": "u1"}}, id="extra-key-name"),
        pytest.param(0, {**GOOD_KEY, "activeShard": {"B": "AAAA"}}, id="binary-value"),
        pytest.param(0, {**GOOD_KEY, "connectionId": {"S": ""}}, id="empty-value"),
        pytest.param(0, {**GOOD_KEY, "connectionId": {"S": "c", "N": "1"}}, id="two-types"),
        pytest.param(0, {**GOOD_KEY, "connectionId": "c0001"}, id="untyped-value"),
        pytest.param(0, ["connectionId"], id="key-not-an-object"),
    ],
)
def test_signed_token_with_content_never_issued__400(shard, key, handler_service, clock):
    """Re-signed with the service's own key: only the content checks stand in the way."""
    seed(clock, 3)
    shard = live_shards() if shard == "past-the-end" else shard
    token = handler_service._tokens.encode("all", Cursor(shard, key))  # type: ignore[arg-type]
    assert_rejected(ALL, token)


def test_signed_token_with_shard_of_wrong_type__400(handler_service, clock):
    codec = handler_service._tokens
    for shard in ("1", True, 1.5, None):
        payload = json.dumps({"key": None, "scope": "all", "shard": shard, "v": 1}, separators=(",", ":"), sort_keys=True).encode()
        assert_rejected(ALL, b64(payload) + "." + b64(codec._sign(payload)))


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, "10", 1.5, True])
def test_limit_out_of_range_or_type__400(limit, handler_service):
    response = invoke({**ALL, "limit": limit})
    assert response["statusCode"] == 400, response


# Response size ----------------------------------------------------------------------------


def worst_case_row(index: int, user_id: str, clock: Any) -> ConnectionModel:
    """The largest record the contract lets through, and the most expensive to escape."""
    suffix = f"-{index:05d}"
    connection_id = "\x01" * (MAX_KEY_BYTES - len(suffix)) + suffix
    filler = MAX_METADATA_BYTES - len(json.dumps({"sourceIp": "203.0.113.9", "userAgent": ""}, separators=(",", ":")))
    metadata = {"sourceIp": "203.0.113.9", "userAgent": "x" * filler}
    assert len(json.dumps(metadata, separators=(",", ":"))) == MAX_METADATA_BYTES
    row = new_connection_row(connection_id, user_id, clock() - timedelta(seconds=index), metadata)
    row.disconnect_reason = None
    return row


def test_worst_case_arithmetic__the_count_alone_would_not_keep_a_page_under_6_mb(handler_service, clock):
    from connection_manager.records import to_record

    record = to_record(worst_case_row(0, "\x01" * MAX_KEY_BYTES, clock))
    worst = len(json.dumps(record))
    assert 20_000 < worst < 30_000
    assert worst * MAX_PAGE_SIZE > LAMBDA_RESPONSE_LIMIT  # why the byte budget exists
    # With the budget a page is at most the budget plus one record: a sixth of the limit.
    assert service_module.RESPONSE_BUDGET_BYTES + worst < LAMBDA_RESPONSE_LIMIT / 5


@pytest.mark.parametrize("listing", [ALL, USER], ids=["all", "user"])
def test_worst_case_records__pages_stay_far_below_6_mb_and_lose_nothing(listing, handler_service, clock):
    user_id = "\x01" * (MAX_KEY_BYTES - 2) + "u1"
    listing = {**listing, "userId": user_id} if "userId" in listing else listing
    count = 90  # ~2.4 MB of worst-case records: more than two budgets' worth
    with ConnectionModel.batch_write() as batch:
        for index in range(count):
            batch.save(worst_case_row(index, user_id, clock))

    seen: list[str] = []
    sizes: list[int] = []
    token = None
    while True:
        event = {**listing, "limit": MAX_PAGE_SIZE, **({"nextToken": token} if token else {})}
        response = invoke(event)
        assert response["statusCode"] == 200, response["body"]
        sizes.append(len(json.dumps(response)))
        seen += [row["connectionId"] for row in response["body"]["connections"]]
        token = response["body"].get("nextToken")
        if not token:
            break

    assert len(seen) == count and len(set(seen)) == count  # every row once, none skipped
    assert len(sizes) >= 3  # the byte budget, not the count, ended the pages
    assert max(sizes) < 1.1 * service_module.RESPONSE_BUDGET_BYTES
    assert max(sizes) < LAMBDA_RESPONSE_LIMIT / 5


def test_ordinary_records__the_budget_never_shortens_a_page_of_1000(handler_service, clock):
    """Records as API Gateway makes them (short ids, IP and user agent) fit 1000 to a page."""
    with ConnectionModel.batch_write() as batch:
        for index in range(200):
            metadata = {"sourceIp": "203.0.113.9", "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)" * 4}
            row = new_connection_row(f"Zx9kQdW2oAMCJ{index:03d}=", f"user-{index:06d}", clock(), metadata)
            batch.save(row)

    response = invoke({**ALL, "limit": MAX_PAGE_SIZE})

    assert response["body"]["count"] == 200
    assert "nextToken" not in response["body"]
    per_record = len(json.dumps(response["body"]["connections"])) / 200
    assert per_record * MAX_PAGE_SIZE < service_module.RESPONSE_BUDGET_BYTES / 2
