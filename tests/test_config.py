"""Settings from the environment, and what each front door does when they are wrong.

The contract: invalid configuration fails with one clear message, never a stack trace in
the middle of a request.
"""
from __future__ import annotations

import json
import os

import pytest

import connection_manager.wiring as wiring
import connection_manager.observability as observability
from connection_manager import cli
from connection_manager.config import Settings
from connection_manager.errors import ConfigurationError
from connection_manager.handler import lambda_handler
from tests.support.events import FakeLambdaContext, load_event, websocket_event
from tests.support.fixtures import *  # noqa: F401,F403


def test_from_env__defaults_outside_lambda():
    settings = Settings.from_env({})

    assert settings.table_name == "connections"
    assert settings.stale_after_seconds == 3600
    assert settings.in_lambda is False
    assert settings.admin_token is None


def test_from_env__reads_the_documented_variables():
    settings = Settings.from_env(
        {
            "CONNECTIONS_TABLE_NAME": "prod-connections",
            "STALE_AFTER_SECONDS": " 120 ",
            "AWS_REGION": "eu-west-1",
            "ADMIN_TOKEN": "t0ken",
        }
    )

    assert settings.table_name == "prod-connections"
    assert settings.stale_after_seconds == 120
    assert settings.region == "eu-west-1"
    assert settings.admin_token == "t0ken"


def test_from_env__region_falls_back_to_aws_default_region():
    assert Settings.from_env({"AWS_DEFAULT_REGION": "ap-south-1"}).region == "ap-south-1"


def test_from_env__local_endpoint_without_region_gets_one():
    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:8000"})
    assert settings.region


def test_from_env__secrets_stay_out_of_repr():
    settings = Settings.from_env({"ADMIN_TOKEN": "hunter2-admin", "PAGINATION_TOKEN_SECRET": "hunter2-pages-signing-secret"})
    assert "hunter2" not in repr(settings)


def test_settings__are_frozen():
    with pytest.raises(AttributeError):
        Settings().table_name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("value", ["abc", "1h", "3.5", "1e3", "--1"])
def test_from_env__non_numeric_stale_after_seconds(value):
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"STALE_AFTER_SECONDS": value})

    message = raised.value.message
    assert "STALE_AFTER_SECONDS" in message
    assert repr(value) in message or value in message
    assert "whole number" in message


@pytest.mark.parametrize("value", ["0", "-5", str(366 * 24 * 3600)])
def test_from_env__stale_after_seconds_out_of_range(value):
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"STALE_AFTER_SECONDS": value})
    assert "STALE_AFTER_SECONDS" in raised.value.message
    assert "between" in raised.value.message


@pytest.mark.parametrize("value", ["", "   "])
def test_from_env__empty_stale_after_seconds_means_default(value):
    assert Settings.from_env({"STALE_AFTER_SECONDS": value}).stale_after_seconds == 3600


def test_from_env__table_name_required_in_lambda():
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "connection-manager-prod"})
    assert "CONNECTIONS_TABLE_NAME" in raised.value.message
    assert "Lambda" in raised.value.message


def test_from_env__blank_table_name_in_lambda_is_missing():
    with pytest.raises(ConfigurationError):
        Settings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "fn", "CONNECTIONS_TABLE_NAME": "  "})


def test_from_env__table_name_given_in_lambda():
    settings = Settings.from_env(
        {"AWS_LAMBDA_FUNCTION_NAME": "fn", "CONNECTIONS_TABLE_NAME": "t", "PAGINATION_TOKEN_SECRET": LAMBDA_SECRET}
    )
    assert (settings.table_name, settings.in_lambda, settings.token_secret) == ("t", True, LAMBDA_SECRET)


LAMBDA_SECRET = "per-stage-random-secret-0123456789"


def test_from_env__no_pagination_secret_in_lambda__settings_still_load():
    # Given a deployed function with neither an explicit secret nor its key parameter
    settings = Settings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "fn", "CONNECTIONS_TABLE_NAME": "t"})

    # Then the settings load (only paging needs the key; it fails there, see test_signing_key.py)
    assert (settings.token_secret, settings.token_key_parameter, settings.in_lambda) == (None, None, True)


def test_from_env__short_pagination_secret__settings_load_and_paging_names_it():
    from connection_manager.errors import UnavailableError
    from connection_manager.signing_key import SigningKeys

    settings = Settings.from_env({"PAGINATION_TOKEN_SECRET": "short"})
    with pytest.raises(UnavailableError) as raised:
        SigningKeys(settings).keys()
    assert "at least 16 characters" in raised.value.message


def test_tokens__default_secret_outside_lambda__not_derivable_from_the_table_name(service):
    # Given a service without PAGINATION_TOKEN_SECRET (a laptop, the CLI)
    from connection_manager.tokens import Cursor, TokenCodec

    assert service.settings.token_secret is None
    cursor = Cursor(0, {"connectionId": {"S": "a0"}})

    # When someone signs a token with what the table name gives away
    forged = TokenCodec(f"connection-manager/{service.settings.table_name}").encode("all", cursor)

    # Then this process does not accept it; its own tokens still work
    assert forged != service._tokens.encode("all", cursor)
    with pytest.raises(Exception) as refused:
        service._tokens.decode(forged, "all", shards=1, key_names=frozenset({"connectionId"}))
    assert getattr(refused.value, "status", None) == 400


def test_from_env__every_problem_in_one_message():
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "fn", "STALE_AFTER_SECONDS": "soon"})
    message = raised.value.message
    assert "CONNECTIONS_TABLE_NAME" in message and "STALE_AFTER_SECONDS" in message
    assert message.startswith("Invalid configuration")


# What a bad configuration looks like from outside ----------------------------------------------


@pytest.fixture
def broken_env(monkeypatch: pytest.MonkeyPatch, fresh_handler_service: None) -> None:
    monkeypatch.setenv("STALE_AFTER_SECONDS", "sixty")
    monkeypatch.setattr(observability, "_configured", True)


def _assert_configuration_error(response: dict) -> None:
    assert response["statusCode"] == 500
    body = response["body"]
    assert body["error"] == "ConfigurationError"
    assert "STALE_AFTER_SECONDS" in body["message"] and "sixty" in body["message"]
    assert "Traceback" not in json.dumps(body)


def test_lambda_handler__bad_configuration_answers_500_with_the_reason(broken_env):
    _assert_configuration_error(lambda_handler({"action": "get_all_connections"}, FakeLambdaContext()))


def test_lambda_handler__bad_configuration_on_schedule(broken_env):
    _assert_configuration_error(lambda_handler(load_event("scheduled_event"), FakeLambdaContext()))


def test_lambda_handler__bad_configuration_on_websocket_connect(broken_env):
    _assert_configuration_error(lambda_handler(websocket_event("websocket_connect", "c1", user_id="u"), None))


def test_lambda_handler__missing_table_name_in_lambda(monkeypatch, fresh_handler_service):
    monkeypatch.setattr(observability, "_configured", True)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "connection-manager-prod")
    monkeypatch.delenv("CONNECTIONS_TABLE_NAME", raising=False)
    # In Lambda, metrics are printed to stdout; this test only looks at the answer.
    monkeypatch.setattr("connection_manager.handler.record_error", lambda code: None)

    response = lambda_handler({"action": "get_all_connections"}, FakeLambdaContext())

    assert response["statusCode"] == 500
    assert response["body"]["error"] == "ConfigurationError"
    assert "CONNECTIONS_TABLE_NAME" in response["body"]["message"]


def test_lambda_handler__configuration_fixed_later_is_picked_up(broken_env, monkeypatch, dynamodb):
    assert lambda_handler({"action": "get_all_connections"}, None)["statusCode"] == 500

    monkeypatch.setenv("STALE_AFTER_SECONDS", "60")

    response = lambda_handler({"action": "get_all_connections"}, None)
    assert response == {"statusCode": 200, "body": {"connections": [], "count": 0}}
    assert wiring.get_service().settings.stale_after_seconds == 60


def test_cli__bad_configuration_is_one_line_on_stderr(broken_env, capsys):
    code = cli.main(["cleanup", "--dry-run"])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith("error: Invalid configuration")
    assert "STALE_AFTER_SECONDS" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def _import_handler_in_lambda(extra: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys

    env = {"PATH": os.environ.get("PATH", ""), "AWS_LAMBDA_FUNCTION_NAME": "connection-manager-test", **extra}
    return subprocess.run(
        [sys.executable, "-c", "import connection_manager.handler"],
        capture_output=True, text=True, env=env, timeout=60,
    )


def test_lambda_start__bad_configuration__import_prints_nothing():
    """Lambda loads the module once; the import neither fails nor writes stray lines on stdout."""
    result = _import_handler_in_lambda({"STALE_AFTER_SECONDS": "sixty"})

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_lambda_start__no_signing_key__import_prints_nothing():
    result = _import_handler_in_lambda({"CONNECTIONS_TABLE_NAME": "t"})

    assert (result.returncode, result.stdout) == (0, ""), result.stderr

