"""The composition root, and services on more than one table in one process.

``connection_manager.wiring`` builds the one process-wide service and every front door
(the Lambda handler, the Flask app, the CLI) uses it; a second service on another table
gets a model class of its own instead of rebinding the shared one under the first.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import connection_manager.cli as cli
import connection_manager.wiring as wiring
from connection_manager.app import create_app
from connection_manager.config import Settings
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from models.connection import ConnectionModel, model_for
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import TABLE, raw_items
from models.platform import is_reserved

OTHER_TABLE = "connections-other"


def _ids_in(client: Any, table: str) -> set[str]:
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {item["connectionId"]["S"] for item in items if not is_reserved(item["connectionId"]["S"])}


def test_two_services__on_two_tables__each_sees_its_own_table(service, settings, clock, dynamodb):
    # Given the test's service and, built after it, a second one on another table
    other = ConnectionService(replace(settings, table_name=OTHER_TABLE), clock)
    other.create_table()

    # When each registers a connection
    service.register_connection("first-1", "u1")
    other.register_connection("other-1", "u2")

    # Then each answers from its own table
    assert [row["connectionId"] for row in service.get_all_connections().connections] == ["first-1"]
    assert [row["connectionId"] for row in other.get_all_connections().connections] == ["other-1"]
    assert service.get_connection("first-1")["userId"] == "u1"
    # And each row is stored in its own table only
    assert _ids_in(dynamodb, TABLE) == {"first-1"}
    assert _ids_in(dynamodb, OTHER_TABLE) == {"other-1"}


def test_model_for__other_table__leaves_the_shared_model_bound(service, settings):
    # Given the shared model, bound to the test's table by the composition root
    assert ConnectionModel.Meta.table_name == TABLE

    # When a model is made for another table
    other = model_for(replace(settings, table_name=OTHER_TABLE))

    # Then it is a ConnectionModel on that table, with indexes of its own, and the shared one is untouched
    assert issubclass(other, ConnectionModel) and other.Meta.table_name == OTHER_TABLE
    assert other.live_index._model is other and other.user_index._model is other
    assert ConnectionModel.Meta.table_name == TABLE
    assert ConnectionModel.live_index._model is ConnectionModel


def test_get_service__built_once_from_the_environment(monkeypatch, fresh_handler_service, dynamodb):
    # Given an environment naming a stale threshold
    monkeypatch.setenv("CONNECTIONS_TABLE_NAME", TABLE)
    monkeypatch.setenv("STALE_AFTER_SECONDS", "120")

    # When the process-wide service is asked for twice
    first, second = wiring.get_service(), wiring.get_service()

    # Then it was built once, from those settings, on the shared model
    assert first is second
    assert first.settings == Settings.from_env()
    assert first.settings.stale_after_seconds == 120
    assert first.model is ConnectionModel


def test_front_doors__handler_app_and_cli__use_the_wired_service(handler_service, make_connection, capsys):
    # Given the composition root's service, holding one connection
    make_connection("c1", user_id="u1")

    # When each front door is asked for it without being handed a service
    raw = lambda_handler({"action": "get_connection", "connectionId": "c1"}, None)
    http = create_app().test_client().get("/connections/c1")
    code = cli.main(["invoke", '{"action": "get_connection", "connectionId": "c1"}'])

    # Then all three answered from that service
    assert raw["statusCode"] == 200 and raw["body"]["connection"]["userId"] == "u1"
    assert http.status_code == 200 and http.get_json()["connection"]["userId"] == "u1"
    assert code == 0 and '"userId": "u1"' in capsys.readouterr().out
    assert cli._service() is handler_service
    assert [item["connectionId"] for item in raw_items()] == ["c1"]


def test_handler__builds_no_service_of_its_own():
    # Given the Lambda entry point's module
    import connection_manager.handler as handler

    # When its globals are read
    # Then it holds no service and no builder: it only adapts events to the wired service
    assert not hasattr(handler, "_service")
    assert handler.get_service is wiring.get_service
