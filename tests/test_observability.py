"""What operators see: JSON log lines with the request id, audit lines, EMF metrics, no secrets."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Callable

import pytest

from connection_manager import observability
from connection_manager.errors import UnavailableError
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from tests.support.events import FakeLambdaContext, load_event, websocket_event
from tests.support.fixtures import *  # noqa: F403

ADMIN_TOKEN = "adm1n-t0ken-never-logged"

Lines = Callable[[], list[dict[str, Any]]]


def _reset_logging() -> None:
    observability._configured = False
    observability._formatter = None
    observability._keys.clear()
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler.formatter, observability._Formatter):
            logging.getLogger().removeHandler(handler)


@pytest.fixture
def lambda_logs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Lines]:
    """Lambda mode with logging configured onto the captured stdout; returns a reader of its lines.

    Every stdout line must be JSON (a log line or an EMF record): that is what makes
    them queryable in CloudWatch.
    """
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "connection-manager-test")
    monkeypatch.setenv("ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(observability, "_cold_start", True)
    _reset_logging()
    observability.setup_logging()

    def lines() -> list[dict[str, Any]]:
        out = capsys.readouterr().out
        assert ADMIN_TOKEN not in out
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    yield lines
    _reset_logging()


def _logs(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "_aws" not in line]


def _metrics(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "_aws" in line]


def _audits(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("audit") is True]


# JSON lines with the invocation's request id --------------------------------------------------


def test_lambda_mode__every_line_json_with_request_id(handler_service: ConnectionService, lambda_logs: Lines) -> None:
    first = FakeLambdaContext(aws_request_id="req-1")
    second = FakeLambdaContext(aws_request_id="req-2")

    lambda_handler({"action": "register_connection", "connectionId": "c1", "userId": "u1"}, first)
    logging.getLogger("connection_manager.test").warning("between invocations")
    lambda_handler({"action": "register_connection", "connectionId": "c1", "userId": "u2"}, second)

    logs = _logs(lambda_logs())
    assert [line["function_request_id"] for line in logs] == ["req-1", "req-1", "req-2"]
    assert [line["cold_start"] for line in logs] == [True, True, False]
    for line in logs:
        assert line["service"] == "connection-manager"
        assert line["function_name"] == "connection-manager-test"
        assert {"level", "message", "timestamp", "location"} <= set(line)


def test_lambda_mode__exception_logged_as_one_json_line(lambda_logs: Lines) -> None:
    observability.set_request_id("req-9")
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        logging.getLogger("connection_manager.test").exception("it failed")

    (line,) = _logs(lambda_logs())
    assert line["level"] == "ERROR" and line["exception_name"] == "RuntimeError"
    assert "broken" in line["exception"] and line["function_request_id"] == "req-9"


def test_local_mode__readable_text_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    _reset_logging()
    try:
        observability.setup_logging()
        observability.audit("cli:alice", "disconnect_user", "userId=u1", "ok:200")
        observability.record_error("ServiceUnavailable")  # no EMF outside Lambda
        captured = capsys.readouterr()
    finally:
        _reset_logging()
    assert captured.out == ""
    assert "INFO connection_manager.audit audit cli:alice disconnect_user userId=u1 -> ok:200" in captured.err


# Audit lines --------------------------------------------------------------------------------


def test_audit__one_line_per_state_change_with_who_what_target_outcome(
    handler_service: ConnectionService, lambda_logs: Lines, make_connection: Any
) -> None:
    context = FakeLambdaContext()
    make_connection("stale-1", user_id="u9", idle=timedelta(hours=3))
    events = [
        {"action": "register_connection", "connectionId": "c1", "userId": "u1"},
        {"action": "register_connection", "connectionId": "c1", "userId": "u2"},  # 409
        {"action": "update_connection_status", "connectionId": "c1", "status": "DISCONNECTED"},
        {"action": "disconnect_user", "userId": "u1"},
        {"action": "cleanup_stale_connections"},
        {"action": "get_connection", "connectionId": "c1"},  # a read: no audit line
    ]
    for event in events:
        lambda_handler(event, context)
    lambda_handler(websocket_event("websocket_connect", "ws-1", user_id="u3"), context)
    lambda_handler(websocket_event("websocket_disconnect", "ws-1"), context)

    audits = _audits(lambda_logs())
    invoker = f"lambda-invoke:{context.invoked_function_arn}"
    assert [(a["principal"], a["action"], a["target"], a["outcome"]) for a in audits] == [
        (invoker, "register_connection", "connectionId=c1", "ok:201"),
        (invoker, "register_connection", "connectionId=c1", "error:Conflict"),
        (invoker, "update_connection_status", "connectionId=c1", "ok:200"),
        (invoker, "disconnect_user", "userId=u1", "ok:200"),
        (invoker, "cleanup_stale_connections", "*", "ok:200"),
        ("apigateway:$connect", "register_connection", "connectionId=ws-1", "ok:201"),
        ("apigateway:$disconnect", "disconnect", "connectionId=ws-1", "ok:200"),
    ]
    assert audits[4]["cleanedCount"] == 1
    assert all(a["function_request_id"] == context.aws_request_id for a in audits)


def test_websocket_disconnect__repeated__one_audit_line_each_through_the_dispatch_table_without_a_read(
    handler_service: ConnectionService, lambda_logs: Lines, make_connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a live connection, and a service that must not read the row to disconnect it
    make_connection("ws-1", user_id="u1")
    monkeypatch.setattr(handler_service, "_get", _no_read)
    monkeypatch.setattr(handler_service, "get_connection", _no_read)

    # When API Gateway delivers its $disconnect twice
    for _ in range(2):
        assert lambda_handler(websocket_event("websocket_disconnect", "ws-1"), FakeLambdaContext()) == {"statusCode": 200}

    # Then each delivery wrote the dispatch table's audit line, the second one changing nothing
    audits = _audits(lambda_logs())
    assert [(a["principal"], a["action"], a["target"], a["outcome"], a["changed"]) for a in audits] == [
        ("apigateway:$disconnect", "disconnect", "connectionId=ws-1", "ok:200", True),
        ("apigateway:$disconnect", "disconnect", "connectionId=ws-1", "ok:200", False),
    ]
    # And the row is DISCONNECTED by the client
    assert (raw_item("ws-1")["status"], raw_item("ws-1")["disconnectReason"]) == ("DISCONNECTED", "client")


def _no_read(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a $disconnect read the row")


def test_audit__not_hidden_by_log_level(
    handler_service: ConnectionService, lambda_logs: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    _reset_logging()
    observability.setup_logging()

    lambda_handler({"action": "register_connection", "connectionId": "c1", "userId": "u1"}, FakeLambdaContext())

    assert len(_audits(lambda_logs())) == 1


def test_audit__detail_named_like_a_log_field__kept_under_another_name(lambda_logs: Lines) -> None:
    observability.audit("p", "a", "t", "ok", {"name": "x", "message": "y"})

    (line,) = _audits(lambda_logs())
    assert (line["detail_name"], line["detail_message"]) == ("x", "y")


# EMF metrics ----------------------------------------------------------------------------------


def _metric(records: list[dict[str, Any]], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(record, its CloudWatchMetrics directive) of the EMF record carrying ``name``."""
    for record in records:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            if any(metric["Name"] == name for metric in directive["Metrics"]):
                return record, directive
    raise AssertionError(f"no EMF record for {name}: {records}")


def test_scheduled_sweep__emits_sweep_metrics_and_active_gauge(
    handler_service: ConnectionService, lambda_logs: Lines, make_connection: Any
) -> None:
    make_connection("stale-1", idle=timedelta(hours=2))
    make_connection("stale-2", idle=timedelta(hours=3))
    for n in range(3):
        make_connection(f"live-{n}")
    make_connection("old", status="DISCONNECTED")

    response = lambda_handler(load_event("scheduled_event"), FakeLambdaContext())

    assert response["statusCode"] == 200
    records = _metrics(lambda_logs())
    record, directive = _metric(records, "StaleConnectionsCleaned")
    assert directive["Namespace"] == "ConnectionManager"
    assert directive["Dimensions"] == [["service"]] and record["service"] == "connection-manager"
    units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
    assert units["SweepDuration"] == "Milliseconds" and units["StaleConnectionsCleaned"] == "Count"
    assert record["StaleConnectionsCleaned"] == [2.0] and record["SweepWritesFailed"] == [0.0]
    assert isinstance(record["_aws"]["Timestamp"], int)
    gauge, _ = _metric(records, "ActiveConnections")
    assert gauge["ActiveConnections"] == [3.0]  # live rows only, after the sweep


def test_errors__counted_by_code(
    handler_service: ConnectionService, lambda_logs: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_: Any) -> Any:
        raise UnavailableError("DynamoDB is throttling")

    monkeypatch.setattr(handler_service, "get_connection", unavailable)

    response = lambda_handler({"action": "get_connection", "connectionId": "c1"}, FakeLambdaContext())

    assert response["statusCode"] == 503
    record, directive = _metric(_metrics(lambda_logs()), "Errors")
    assert sorted(directive["Dimensions"][0]) == ["code", "service"]
    assert record["code"] == "ServiceUnavailable" and record["Errors"] == [1.0]


def test_metrics__failure_to_emit_never_fails_the_request(lambda_logs: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

    def refuse(*_: Any, **__: Any) -> None:
        raise ValueError("metric refused")

    monkeypatch.setattr(AmazonCloudWatchEMFProvider, "add_metric", refuse)

    observability.record_error("ServiceUnavailable")

    (line,) = _logs(lambda_logs())
    assert line["level"] == "WARNING" and "could not emit metrics" in line["message"]


# Secrets --------------------------------------------------------------------------------------


def test_secrets__never_in_a_log_line(lambda_logs: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", 'session"token/with+quotes')
    log = logging.getLogger("connection_manager.test")

    log.info("token is %s", ADMIN_TOKEN)
    log.info("headers", extra={"Authorization": "Bearer abc.def", "x-admin-token": ADMIN_TOKEN})
    log.info("session %s", 'session"token/with+quotes')
    try:
        raise ValueError(f"bad token {ADMIN_TOKEN}")
    except ValueError:
        log.exception("failed")

    logs = _logs(lambda_logs())  # the reader itself asserts ADMIN_TOKEN appears nowhere
    assert logs[0]["message"] == "token is ***"
    assert logs[1]["Authorization"] == "***" and logs[1]["x-admin-token"] == "***"
    assert logs[2]["message"] == "session ***"
    assert "***" in logs[3]["exception"]


def test_handler_import__does_not_load_powertools() -> None:
    """Powertools is loaded on first use, so it never adds to the cold start of a raw read."""
    code = "import sys, connection_manager.handler; print('aws_lambda_powertools' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_lambda_start__bad_configuration__named_once_in_the_log_at_the_first_event(
    lambda_logs: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connection_manager.wiring as wiring

    # Given a deployed function with a broken setting
    monkeypatch.delenv("CONNECTIONS_TABLE_NAME", raising=False)
    monkeypatch.setenv("STALE_AFTER_SECONDS", "sixty")
    monkeypatch.setattr(wiring, "_reported", False)
    monkeypatch.setattr(wiring, "_service", None)

    # When two events arrive
    first = lambda_handler({"action": "get_connection", "connectionId": "c"}, FakeLambdaContext())
    second = lambda_handler({"action": "get_connection", "connectionId": "c"}, FakeLambdaContext())

    # Then both answer the same ConfigurationError, and the log names the problems once
    assert first["body"]["error"] == second["body"]["error"] == "ConfigurationError"
    named = [line for line in _logs(lambda_logs())
             if line.get("level") == "ERROR" and "STALE_AFTER_SECONDS must be a whole number" in line["message"]]
    assert len(named) == 1
    assert "CONNECTIONS_TABLE_NAME is required" in named[0]["message"]
