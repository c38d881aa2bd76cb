"""Who may reach the admin API outside Lambda: the admin token on every read, loopback names only.

With ``ADMIN_TOKEN`` set, connection ids, source IPs and user agents are read only by the
token holder; ``/health`` stays open for load balancers, and the pages (which hold no
data) stay open so a browser can load the dashboard and send the token from it.
"""
from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from connection_manager.app import create_app
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.server import build_app
from connection_manager.service import ConnectionService
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import TABLE, raw_item

TOKEN = "s3cret-admin-token"
READS = ["/connections", "/connections/c1", "/users/u1/connections", "/stats"]


@pytest.fixture
def token_client(dynamodb: Any, clock: FixedClock) -> FlaskClient:
    """The app with ``ADMIN_TOKEN`` set, and one live connection."""
    settings = Settings(table_name=TABLE, region="us-east-1", sweep_concurrency=4, admin_token=TOKEN)
    return create_app(service=ConnectionService(settings, clock)).test_client()


@pytest.mark.parametrize("path", READS)
def test_reads__token_configured_and_none_sent__401(token_client: FlaskClient, make_connection: Any, path: str) -> None:
    # Given a live connection and a server with an admin token
    make_connection("c1", user_id="u1")

    # When a read arrives without the token
    response = token_client.get(path)

    # Then it is refused, says how to authenticate, and leaks no connection data
    assert response.status_code == 401, response.json
    assert response.json["error"] == "Unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "c1" not in response.get_data(as_text=True)
    assert raw_item("c1")["status"] == "CONNECTED"


@pytest.mark.parametrize("path", READS)
def test_reads__wrong_token__403(token_client: FlaskClient, make_connection: Any, path: str) -> None:
    make_connection("c1", user_id="u1")

    response = token_client.get(path, headers={"Authorization": "Bearer guess"})

    assert response.status_code == 403 and response.json["error"] == "Forbidden"


@pytest.mark.parametrize("path", READS)
def test_reads__right_token__200(token_client: FlaskClient, make_connection: Any, path: str) -> None:
    make_connection("c1", user_id="u1")

    response = token_client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 200, response.json


@pytest.mark.parametrize("path", ["/health", "/", "/docs", "/openapi.json"])
def test_pages_and_health__token_configured__open(token_client: FlaskClient, path: str) -> None:
    # The pages hold no data: the dashboard is where a browser enters the token
    response = token_client.get(path)

    assert response.status_code == 200


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1", "localhost"])
@pytest.mark.parametrize("host_header", ["attacker.example", "attacker.example:8080", "[::2]:8080", "", "[::1"])
def test_serve__loopback_bind_foreign_host__400(dynamodb: Any, bind: str, host_header: str) -> None:
    # Given the app as served on a loopback address (DNS rebinding: another site's name, resolved to us)
    app = build_app(bind, Settings(table_name=TABLE, region="us-east-1"))

    # When a request names another host
    response = app.test_client().get("/health", headers={"Host": host_header})

    # Then it is refused before any view runs
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"] == "ValidationError"


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("host_header", ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "[::1]"])
def test_serve__loopback_bind_loopback_host__served(
    dynamodb: Any, monkeypatch: pytest.MonkeyPatch, bind: str, host_header: str
) -> None:
    monkeypatch.setenv("CONNECTIONS_TABLE_NAME", TABLE)
    app = build_app(bind, Settings(table_name=TABLE, region="us-east-1"))

    response = app.test_client().get("/openapi.json", headers={"Host": host_header})

    assert response.status_code == 200
