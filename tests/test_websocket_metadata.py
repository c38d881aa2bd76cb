"""$connect stores the client's source IP and user agent, cut to fit the metadata limit.

The metadata limit (``schemas.MAX_METADATA_BYTES``) is measured on the JSON the way
``json.dumps`` writes it, where a non-ASCII character takes six bytes (``\\u00e9``) or
twelve (a surrogate pair). A user agent cut to 512 *characters* could still be over the
limit, and the client's handshake was refused with 400.
"""
from __future__ import annotations

import json

import pytest

from connection_manager.handler import lambda_handler
from connection_manager.schemas import MAX_METADATA_BYTES, truncate_for_json
from tests.support.events import websocket_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import raw_item


def connect(connection_id: str, user_agent: str, source_ip: str = "203.0.113.10") -> dict:
    event = websocket_event("websocket_connect", connection_id, user_id="u1")
    event["requestContext"]["identity"] = {"userAgent": user_agent, "sourceIp": source_ip}
    return lambda_handler(event)


@pytest.mark.parametrize(
    "user_agent",
    [
        pytest.param("é" * 400, id="400-latin"),
        pytest.param("Ünïcödé-Browser/1.0 " * 60, id="1200-mixed"),
        pytest.param("😀" * 700, id="700-emoji"),
        pytest.param('"\\\x01' * 500, id="1500-escaped-ascii"),
    ],
)
def test_websocket_connect__long_non_ascii_user_agent__connects_with_a_prefix(handler_service, user_agent):
    # Given a client whose user agent escapes to far more than the metadata limit
    # When it connects
    response = connect("c1", user_agent, source_ip="2001:db8::" + "ä" * 600)

    # Then the handshake succeeds and the stored metadata fits the limit
    assert response == {"statusCode": 200}
    metadata = raw_item("c1")["metadata"]
    assert len(json.dumps(metadata, separators=(",", ":"))) <= MAX_METADATA_BYTES
    assert user_agent.startswith(metadata["userAgent"]) and metadata["userAgent"]
    assert metadata["sourceIp"].startswith("2001:db8::")


def test_websocket_connect__ordinary_user_agent__stored_whole(handler_service):
    agent = "Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0"

    assert connect("c1", agent) == {"statusCode": 200}

    assert raw_item("c1")["metadata"] == {"sourceIp": "203.0.113.10", "userAgent": agent}


@pytest.mark.parametrize("text", ["", "abc", "é" * 10, "😀" * 10, '"\\\n\x00' * 10, "a😀b"])
@pytest.mark.parametrize("limit", [0, 1, 5, 6, 11, 12, 13, 40])
def test_truncate_for_json__longest_prefix_within_the_limit(text, limit):
    cut = truncate_for_json(text, limit)

    assert text.startswith(cut)
    assert len(json.dumps(cut)) - 2 <= limit
    if cut != text:
        assert len(json.dumps(text[: len(cut) + 1])) - 2 > limit
