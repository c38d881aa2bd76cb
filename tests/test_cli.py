"""The ``connection-manager`` console script, run in-process on moto's ``mock_aws``.

(The same commands as real subprocesses over HTTP are in ``test_integration.py``.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

import connection_manager.observability as observability
from connection_manager import cli
from models.connection import ConnectionModel
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import put_raw, raw_item, raw_items


@pytest.fixture(autouse=True)
def _quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_configured", True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_table__creates_once_and_enables_ttl(capsys, monkeypatch, fresh_handler_service, settings):
    from moto import mock_aws

    with mock_aws():
        code, out, _ = run(capsys, "create-table")
        assert code == 0
        assert "created" in out and "already exists" not in out
        assert "TTL enabled" in out
        assert ConnectionModel.exists()
        description = ConnectionModel.describe_table()
        indexes = {index["IndexName"] for index in description["GlobalSecondaryIndexes"]}
        assert indexes == {"UserIdIndex", "LiveIndex", "LifetimeIndex"}

        code, out, _ = run(capsys, "create-table")
        assert code == 0
        assert "already exists" in out


def test_invoke__prints_the_handler_response_as_json(capsys, handler_service, make_connection):
    make_connection("c1", user_id="u1")

    code, out, _ = run(capsys, "invoke", '{"action": "get_all_connections"}')

    assert code == 0
    response = json.loads(out)
    assert response["statusCode"] == 200
    assert [record["connectionId"] for record in response["body"]["connections"]] == ["c1"]


def test_invoke__error_response_exits_1(capsys, handler_service):
    code, out, _ = run(capsys, "invoke", '{"action": "heartbeat", "connectionId": "ghost"}')

    assert code == 1
    response = json.loads(out)
    assert response["statusCode"] == 404
    assert set(response["body"]) == {"error", "message"}
    assert response["body"]["error"] == "NotFound"
    assert raw_items() == []


def test_invoke__not_json_exits_2_with_a_400_body(capsys, handler_service):
    code, out, _ = run(capsys, "invoke", "{action: get_all_connections}")

    assert code == 2
    response = json.loads(out)
    assert response["statusCode"] == 400
    assert response["body"]["error"] == "ValidationError"
    assert "JSON" in response["body"]["message"]


def test_invoke__reader_gone__stops_quietly_without_a_traceback():
    # Given stdout is a pipe whose reader has already gone (`connection-manager invoke ... | head -0`)
    reader, writer = os.pipe()
    os.close(reader)

    # When the command prints its answer
    try:
        done = subprocess.run(
            [sys.executable, "-m", "connection_manager.cli", "invoke", "{not json"],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(writer)

    # Then it ends with an exit status and no traceback
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_invoke__scheduled_event(capsys, handler_service, make_connection):
    make_connection("stale", user_id="u1", idle=timedelta(hours=2))
    event = json.dumps({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}})

    code, out, _ = run(capsys, "invoke", event)

    assert code == 0
    assert json.loads(out)["body"]["cleanedCount"] == 1
    assert raw_item("stale")["disconnectReason"] == "stale"


def test_cleanup__dry_run_with_stale_after(capsys, handler_service, make_connection):
    make_connection("idle-10m", user_id="u1", idle=timedelta(minutes=10))
    make_connection("idle-1m", user_id="u1", idle=timedelta(minutes=1))
    before = raw_items()

    code, out, _ = run(capsys, "cleanup", "--dry-run", "--stale-after", "300")

    assert code == 0
    body = json.loads(out)
    assert (body["cleanedCount"], body["dryRun"], body["staleAfterSeconds"]) == (1, True, 300)
    assert raw_items() == before


def test_cleanup__sweeps(capsys, handler_service, make_connection):
    make_connection("idle-2h", user_id="u1", idle=timedelta(hours=2))
    make_connection("idle-1m", user_id="u1", idle=timedelta(minutes=1))

    code, out, _ = run(capsys, "cleanup")

    assert code == 0
    assert json.loads(out)["cleanedCount"] == 1
    assert raw_item("idle-2h")["status"] == "DISCONNECTED"
    assert raw_item("idle-1m")["status"] == "CONNECTED"


def test_cleanup__invalid_stale_after_is_an_error(capsys, handler_service):
    code, out, err = run(capsys, "cleanup", "--stale-after", "0")
    assert code == 1
    assert "staleAfterSeconds" in err
    assert out == ""


def test_seed__writes_live_stale_and_history_rows(capsys, handler_service, service):
    code, out, _ = run(capsys, "seed", "20", "--stale", "5", "--history", "7", "--quiet")

    assert code == 0
    assert "seeded 32 rows" in out
    items = raw_items()
    assert len(items) == 32
    assert sum(item["status"] == "CONNECTED" for item in items) == 25
    assert all(("activeShard" in item) == (item["status"] == "CONNECTED") for item in items)
    assert service.stats().stale_connections == 5
    swept = service.cleanup_stale_connections(dry_run=True)
    assert swept.cleaned == 5  # idle for hours: some are past their lifetime too (counted in both)


def test_reindex__reports_what_it_moved_into_the_index(capsys, handler_service, make_connection):
    make_connection("ours", user_id="u1")
    put_raw({"connectionId": "theirs", "userId": "u1", "status": "CONNECTED", "createdAt": "2024-01-01T11:00:00Z"})

    code, out, _ = run(capsys, "reindex")

    assert code == 0
    assert json.loads(out) == {"reindexed": 1, "skipped": 0, "failed": 0}
    assert "activeShard" in raw_item("theirs")


@pytest.mark.parametrize("argv", [["seed", "-1"], ["seed", "3", "--stale", "-2"]])
def test_seed__negative_counts_are_refused(capsys, handler_service, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "negative" in err
    assert raw_items() == []


def test_unknown_command__usage_error(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["explode"])
    assert raised.value.code == 2


# Audit: every state change the CLI makes is one audit line as cli:<user> ----------------------


@pytest.fixture
def fresh_cli_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logging as a fresh ``connection-manager`` process finds it: not configured yet."""
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(observability, "_configured", False)
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(logging.getLogger("connection_manager.audit"), "level", logging.NOTSET)
    monkeypatch.setattr(root, "level", logging.WARNING)
    monkeypatch.setattr("getpass.getuser", lambda: "alice")


def audit_lines(err: str) -> list[str]:
    return [line.split(" audit ", 1)[1] for line in err.splitlines() if "connection_manager.audit audit " in line]


def test_cleanup__writes_one_audit_line_as_the_cli_user(capsys, handler_service, make_connection, fresh_cli_logging):
    # Given a stale connection
    make_connection("idle-2h", user_id="u1", idle=timedelta(hours=2))

    # When the operator sweeps from the CLI
    code, out, err = run(capsys, "cleanup")

    # Then the sweep is done and audited once, as cli:<user>, on stderr (stdout stays JSON)
    assert code == 0 and json.loads(out)["cleanedCount"] == 1
    assert audit_lines(err) == ["cli:alice cleanup_stale_connections * -> ok:200"]
    assert raw_item("idle-2h")["status"] == "DISCONNECTED"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("invoke", '{"action": "disconnect_user", "userId": "u1"}'), "cli:alice disconnect_user userId=u1 -> ok:200"),
        (("create-table",), "cli:alice create_table * -> ok:200"),
        (("reindex",), "cli:alice reindex * -> ok:200"),
        (("seed", "2", "--quiet"), "cli:alice seed * -> ok:201"),
    ],
    ids=["invoke", "create-table", "reindex", "seed"],
)
def test_state_changing_commands__each_audited_as_the_cli_user(
    capsys, handler_service, make_connection, fresh_cli_logging, argv, expected
):
    # Given a table with one live connection
    make_connection("c1", user_id="u1")

    # When a state-changing command runs
    code, _, err = run(capsys, *argv)

    # Then it wrote exactly one audit line, naming the operator
    assert code == 0, err
    assert audit_lines(err) == [expected]
    assert {item["connectionId"] for item in raw_items()} >= {"c1"}
