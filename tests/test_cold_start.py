"""A raw-action or scheduled invocation loads nothing it does not use: no Flask, no Zappa, no boto3.

Each check runs in a fresh interpreter, because in this test process other tests have
long since imported the Flask app. The child talks to the session's moto server over
HTTP (importing moto in-process would itself load werkzeug). Timing is not asserted here;
``benchmarks/bench_scale.py`` measures it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Loaded only for HTTP requests (the admin app) or Zappa's own commands.
HTTP_ONLY = ("flask", "werkzeug", "jinja2", "click", "zappa", "connection_manager.app", "connection_manager.api")
#: boto3 (the runtime's, for API Gateway's @connections API) loads on the first gateway call only;
#: these invocations make none (no row has a management endpoint). botocore is PynamoDB's own.
GATEWAY_ONLY = ("boto3",)

CHILD = r"""
import json, sys

def loaded():
    return sorted(name for name in HTTP_ONLY if name in sys.modules)

from connection_manager.handler import lambda_handler
from connection_manager.wiring import get_service

report = {"after_import": loaded()}
get_service().create_table()

class Context:
    aws_request_id = "req-1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:cm"
    def get_remaining_time_in_millis(self):
        return 900_000

responses = [
    lambda_handler({"action": "register_connection", "connectionId": "c1", "userId": "u1"}, Context()),
    lambda_handler({"action": "get_all_connections", "limit": 1}, Context()),
    lambda_handler({"action": "heartbeat", "connectionId": "c1"}, Context()),
    lambda_handler({"action": "get_connection", "connectionId": "nope"}, Context()),
]
report["after_raw"] = loaded()
responses.append(
    lambda_handler(
        {"version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
         "account": "123456789012", "time": "2024-01-01T00:00:00Z", "region": "us-east-1",
         "resources": ["arn:aws:events:us-east-1:123456789012:rule/cm-cleanup"], "detail": {}},
        Context(),
    )
)
report["after_scheduled"] = loaded()
report["statuses"] = [response["statusCode"] for response in responses]
print(json.dumps(report))
"""


def run_child(endpoint: str, tmp_path: Path) -> dict[str, list]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_LAMBDA", "PYTEST", "COV_"))
    }
    env.update(
        {
            "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
            "CONNECTIONS_TABLE_NAME": "cold-start",
            "PYTHONPATH": str(ROOT),
        }
    )
    script = tmp_path / "child.py"
    script.write_text(f"HTTP_ONLY = {HTTP_ONLY + GATEWAY_ONLY!r}\n" + CHILD)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def report(dynamo_proxy, tmp_path) -> dict[str, list]:
    return run_child(dynamo_proxy.url, tmp_path)


def test_importing_the_handler_loads_no_web_framework(report):
    assert report["after_import"] == []


def test_raw_actions_load_no_web_framework(report):
    assert report["statuses"][:4] == [201, 200, 200, 404]  # they really ran against DynamoDB
    assert report["after_raw"] == []


def test_the_scheduled_sweep_loads_no_web_framework(report):
    assert report["statuses"][4] == 200
    assert report["after_scheduled"] == []


def test_the_check_itself_sees_flask_when_it_is_loaded(dynamo_proxy, tmp_path, monkeypatch):
    """Guards the test: the same child, made to import Flask, must report it."""
    monkeypatch.setattr(sys.modules[__name__], "CHILD", "import flask\n" + CHILD)
    assert "flask" in run_child(dynamo_proxy.url, tmp_path)["after_import"]
