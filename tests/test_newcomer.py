"""What a newcomer sees on a first run: progress at every step, and the real cause of a failure.

``scripts/run`` is exercised with stand-ins for Python and pip (no network, milliseconds);
the embedded demo's own steps run against the in-process DynamoDB.
"""
from __future__ import annotations

import io
import os
import sys
import shutil
import subprocess
from pathlib import Path

import pytest

from connection_manager import server
from tests.support.fixtures import *  # noqa: F401,F403

REPO = Path(__file__).resolve().parent.parent

_FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for Python: "-m venv DIR" makes a venv of stand-ins, "-m pip install" prints like pip.
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
    printf '#!/usr/bin/env bash\\necho "serve $*"\\n' > "$3/bin/connection-manager"
    chmod +x "$3/bin/connection-manager"
elif [ "$1 $2" = "-m pip" ]; then
    echo "Obtaining file:///repo"
    echo "Collecting pynamodb<7,>=6.1"
    echo "  Downloading pynamodb-6.1.0-py3-none-any.whl (60 kB)"
    echo "Collecting moto>=5.1"
    echo "Successfully installed moto pynamodb"
fi
"""


@pytest.fixture
def fresh_clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of scripts/run and setup.py without .venv, and a PATH whose python3.11 is a stand-in."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "run", tmp_path / "repo" / "scripts" / "run")
    shutil.copy2(REPO / "setup.py", tmp_path / "repo" / "setup.py")
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "python3.11"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    return tmp_path / "repo", env


def test_scripts_run__first_run__says_what_it_does_and_shows_each_step(fresh_clone) -> None:
    # Given a fresh clone (no .venv)
    repo, env = fresh_clone

    # When scripts/run is started for the first time
    done = subprocess.run(["bash", "scripts/run", "--port", "0"], cwd=repo, env=env, capture_output=True, text=True, timeout=30)

    # Then it says up front what it does and how long the first run takes
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "embedded DynamoDB" in lines[0] and "a few minutes the first time" in done.stderr
    # And names each step as it starts it, with pip's progress per package in between
    steps = [line for line in lines if line.startswith("==> [")]
    assert [step[:10] for step in steps] == ["==> [1/3] ", "==> [2/3] ", "==> [3/3] "]
    assert "creating the virtual environment" in steps[0] and "installing" in steps[1]
    assert "Collecting moto>=5.1" in lines and "  Downloading" not in done.stderr
    assert lines.index("Collecting moto>=5.1") < lines.index(steps[2])
    # And finally hands over to the embedded server with the arguments given
    assert done.stdout.strip() == "serve serve --embedded --port 0"
    assert (repo / ".venv" / ".dev-install").exists()


def test_scripts_run__second_run__starts_without_the_setup_steps(fresh_clone) -> None:
    # Given a clone whose .venv is already set up
    repo, env = fresh_clone
    subprocess.run(["bash", "scripts/run"], cwd=repo, env=env, capture_output=True, text=True, timeout=30, check=True)

    # When scripts/run is started again
    done = subprocess.run(["bash", "scripts/run"], cwd=repo, env=env, capture_output=True, text=True, timeout=30)

    # Then it goes straight to the server
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("==>")] == [
        "==> [3/3] starting the admin app: embedded DynamoDB, table, demo rows, then the dashboard's URL"
    ]


def test_prepare_demo__reports_table_and_seeding_before_the_summary(handler_service) -> None:
    # Given the process-wide service on a DynamoDB
    out = io.StringIO()

    # When the demo is prepared
    server.prepare_demo(out)

    # Then each step was announced before it ran, and the result after
    lines = out.getvalue().splitlines()
    assert lines == [
        "embedded DynamoDB: creating table 'connections' with its indexes...",
        f"embedded DynamoDB: seeding {server.DEMO_LIVE + server.DEMO_STALE + server.DEMO_HISTORY} demo rows...",
        f"embedded DynamoDB: table 'connections' with 275 demo rows "
        f"({server.DEMO_LIVE} live, {server.DEMO_STALE} stale, {server.DEMO_HISTORY} disconnected)",
    ]
    assert handler_service.stats().active_connections == server.DEMO_LIVE + server.DEMO_STALE


def test_serve__embedded__announces_the_dynamodb_it_starts(monkeypatch, capsys) -> None:
    # Given an embedded DynamoDB stand-in and no real server
    class FakeDynamo:
        url = ""

        def start(self) -> str:
            self.url = "http://127.0.0.1:4567"
            return self.url

        def stop(self) -> None:
            pass

    monkeypatch.setattr(server, "EmbeddedDynamo", FakeDynamo)
    monkeypatch.setattr(server, "prepare_demo", lambda out: print("demo ready", file=out))
    monkeypatch.setattr(server, "_run", lambda host, port, settings: 0)
    monkeypatch.setattr(server, "point_at", lambda url: None)

    # When serve --embedded starts
    code = server.serve(port=0, embedded=True)

    # Then it said what it was starting, and where, before preparing the demo
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "embedded DynamoDB: starting moto's DynamoDB in this process...",
        "embedded DynamoDB: listening on http://127.0.0.1:4567",
        "demo ready",
    ]


# Missing credentials -------------------------------------------------------------------------


@pytest.fixture
def no_credentials(monkeypatch, fresh_handler_service) -> None:
    """No credentials anywhere botocore looks; a DynamoDB endpoint that nothing may reach."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
    monkeypatch.setenv("DYNAMODB_MAX_RETRIES", "0")


@pytest.mark.parametrize(
    ("profile", "cause"), [(None, "NoCredentialsError"), ("no-such-profile", "ProfileNotFound")]
)
def test_cli_cleanup__without_credentials__names_the_missing_credentials(
    no_credentials, monkeypatch, capsys, profile, cause
) -> None:
    # Given no usable AWS credentials (none at all, or a profile that does not exist)
    if profile:
        monkeypatch.setenv("AWS_PROFILE", profile)
    from connection_manager import cli

    # When an operator runs a command that needs DynamoDB
    code = cli.main(["cleanup", "--dry-run"])

    # Then it fails with the real cause and what to do, not as an outage to wait out
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")][-1]
    assert code == 1
    assert err.startswith("error: No usable AWS credentials for DynamoDB")
    assert cause in err and "AWS_ACCESS_KEY_ID" in err and "local-dynamodb" in err
    assert "could not be reached" not in err and "try again" not in err


def test_lambda_handler__without_credentials__503_naming_the_cause(no_credentials) -> None:
    # Given no usable AWS credentials
    from connection_manager.handler import lambda_handler

    # When a raw action needs DynamoDB
    response = lambda_handler({"action": "get_connection", "connectionId": "c1"}, None)

    # Then the error body names the missing credentials
    assert response["statusCode"] == 503
    assert response["body"]["error"] == "ServiceUnavailable"
    assert "NoCredentialsError" in response["body"]["message"]


# One command for a local DynamoDB ----------------------------------------------------------------


def test_local_dynamodb__prints_exports_that_point_the_cli_at_it(monkeypatch, capsys, fresh_handler_service) -> None:
    # Given the local DynamoDB command, started on a free loopback port
    from connection_manager import cli

    out = io.StringIO()
    seen: dict[str, object] = {}

    def while_running() -> None:
        # When its export lines are applied, as a shell would, and the CLI is used
        exports = [line.removeprefix("export ") for line in out.getvalue().splitlines() if line.startswith("export ")]
        for name, value in (line.split("=", 1) for line in exports):
            monkeypatch.setenv(name, value)
        seen["endpoint"] = os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
        seen["create"] = cli.main(["create-table"])
        seen["register"] = cli.main(["invoke", '{"action": "register_connection", "connectionId": "c1", "userId": "u1"}'])
        seen["get"] = cli.main(["invoke", '{"action": "get_connection", "connectionId": "c1"}'])

    code = server.local_dynamodb(port=0, out=out, wait=while_running)

    # Then the CLI reached it: the table was created and the connection stored and read back
    assert code == 0
    assert str(seen["endpoint"]).startswith("http://127.0.0.1:")
    assert (seen["create"], seen["register"], seen["get"]) == (0, 0, 0)
    assert '"userId": "u1"' in capsys.readouterr().out


def test_cli__local_dynamodb_command__runs_the_local_server(monkeypatch) -> None:
    # Given the command line
    from connection_manager import cli

    calls: list[int] = []
    monkeypatch.setattr(server, "local_dynamodb", lambda port: calls.append(port) or 0)

    # When local-dynamodb is asked for on a port
    code = cli.main(["local-dynamodb", "--port", "8123"])

    # Then it ran the local server there
    assert (code, calls) == (0, [8123])


def test_local_dynamodb__started_as_a_background_job__stops_on_sigint() -> None:
    # Given `local-dynamodb` started the way a shell starts `cmd &`: with SIGINT ignored
    import queue
    import signal
    import threading

    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_ENDPOINT_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "connection_manager.cli", "local-dynamodb", "--port", "0"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        while "export AWS_ENDPOINT_URL_DYNAMODB=" not in lines.get(timeout=60):
            pass

        # When it gets SIGINT (Ctrl-C, or `kill -INT`)
        process.send_signal(signal.SIGINT)

        # Then it stops cleanly instead of ignoring it
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
