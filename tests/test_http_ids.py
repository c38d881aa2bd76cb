"""Ids with ``/``, ``+`` and ``=`` over HTTP: percent-encoded in the path, they reach their own connection.

werkzeug (and Zappa, for API Gateway requests) decode the path before routing, so the
routes take everything up to their next fixed part as the id.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from connection_manager.app import create_app
from connection_manager.service import ConnectionService
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import raw_item

IDS = ["a/b", "L0SM9cOF+vHcC/hw=", "/lead", "trail/", "two//slashes", "a+b=c", "cleanup/x", "100%"]


@pytest.fixture
def client(service: ConnectionService) -> FlaskClient:
    return create_app(service=service).test_client()


@pytest.mark.parametrize("connection_id", IDS)
def test_get_connection__percent_encoded_id__found(client: FlaskClient, make_connection: Any, connection_id: str) -> None:
    # Given a connection whose id holds characters that are special in a path
    make_connection(connection_id, user_id="u1")
    make_connection("a", user_id="u1")  # a prefix of some ids: must not be the one found

    # When it is read with the id percent-encoded
    response = client.get("/connections/" + quote(connection_id, safe=""))

    # Then that very connection answers
    assert response.status_code == 200, response.json
    assert response.json["connection"]["connectionId"] == connection_id


@pytest.mark.parametrize("connection_id", IDS)
def test_update_connection_status__percent_encoded_id__changes_only_it(
    client: FlaskClient, make_connection: Any, connection_id: str
) -> None:
    make_connection(connection_id, user_id="u1")
    make_connection("a", user_id="u1")

    response = client.patch("/connections/" + quote(connection_id, safe=""), json={"status": "DISCONNECTED"})

    assert response.status_code == 200, response.json
    assert raw_item(connection_id)["status"] == "DISCONNECTED"
    assert raw_item("a")["status"] == "CONNECTED"


@pytest.mark.parametrize("user_id", ["u/1", "u+1=", "/u", "u/connections"])
def test_user_routes__percent_encoded_user_id__reach_that_user(
    client: FlaskClient, make_connection: Any, user_id: str
) -> None:
    make_connection("c1", user_id=user_id)
    make_connection("c2", user_id="u")

    listing = client.get(f"/users/{quote(user_id, safe='')}/connections")
    disconnected = client.post(f"/users/{quote(user_id, safe='')}/disconnect")

    assert listing.status_code == 200 and [c["connectionId"] for c in listing.json["connections"]] == ["c1"]
    assert disconnected.status_code == 200 and disconnected.json == {"disconnectedCount": 1}
    assert raw_item("c1")["status"] == "DISCONNECTED" and raw_item("c2")["status"] == "CONNECTED"


def test_cleanup_path__other_methods__405_allowing_post(client: FlaskClient, make_connection: Any) -> None:
    # /connections/cleanup is the sweep, never a connection id (a fixed path wins, as in OpenAPI)
    make_connection("cleanup", user_id="u1")

    response = client.get("/connections/cleanup")

    assert response.status_code == 405
    assert "POST" in response.headers["Allow"] and "GET" not in response.headers["Allow"]
    assert raw_item("cleanup")["status"] == "CONNECTED"
