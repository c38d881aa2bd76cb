"""``zappa deploy``, ``schedule``, ``status`` and ``undeploy`` against a local moto server.

Every AWS call Zappa makes (IAM, S3, Lambda, EventBridge, CloudFormation, API Gateway)
goes to the test run's moto server through the standard ``AWS_ENDPOINT_URL`` variable,
so the test checks what a deployment really creates: the function's configuration, the
role and the one policy on it, the hourly rule and the IAM-authorized API. ``touch`` is off
in the settings (an unsigned GET cannot pass IAM authorization anyway), so nothing is
fetched from the deployed API.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.events import load_event, websocket_event
from tests.support.moto_server import MotoServer
from tests.test_zappa_package import BIN, HANDLER, ROOT, http_request, offline_env, run_in_package

pytestmark = [pytest.mark.zappa, pytest.mark.integration, pytest.mark.slow]

STAGE = "dev"
FUNCTION = f"connection-manager-{STAGE}"
ROLE = f"{FUNCTION}-execution"


def zappa(endpoint: str, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "zappa"), *args],
        cwd=ROOT,
        env=offline_env(AWS_ENDPOINT_URL=endpoint),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"zappa {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def client(endpoint: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def rules(endpoint: str) -> list[dict[str, Any]]:
    return client(endpoint, "events").list_rules()["Rules"]


def test_deploy_schedule_status_undeploy(moto_server: MotoServer) -> None:
    moto_server.reset()
    endpoint = moto_server.url

    zappa(endpoint, "deploy", STAGE)
    # The zip is built in the project directory and removed once uploaded
    assert not list(ROOT.glob(f"{FUNCTION}-*.zip"))

    # The function runs our handler, on 3.11, with the table name set on the function itself
    config = client(endpoint, "lambda").get_function_configuration(FunctionName=FUNCTION)
    assert config["Handler"] == HANDLER
    assert config["Runtime"] == "python3.11"
    assert (config["MemorySize"], config["Timeout"]) == (512, 300)
    assert config["Environment"]["Variables"]["CONNECTIONS_TABLE_NAME"] == "connections-dev"
    assert config["Role"].endswith(f":role/{ROLE}")

    # Its role carries exactly our policy: nothing of Zappa's default, no managed policies
    iam = client(endpoint, "iam")
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == ["zappa-permissions"]
    assert iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"] == []
    document = iam.get_role_policy(RoleName=ROLE, PolicyName="zappa-permissions")["PolicyDocument"]
    assert document == json.loads((ROOT / "deploy" / "iam-policy-dev.json").read_text(encoding="utf-8"))

    # One rule, hourly, aimed at the function, delivering the scheduled event (no keep-warm rule)
    (rule,) = rules(endpoint)
    assert rule["ScheduleExpression"] == "rate(1 hour)" and rule["State"] == "ENABLED"
    assert rule["Name"].endswith(f"-{HANDLER}")
    (target,) = client(endpoint, "events").list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert target["Arn"] == config["FunctionArn"]
    assert '"detail-type": <detail-type>' in target["InputTransformer"]["InputTemplate"]

    # Every API method requires IAM (SigV4) authorization
    apigateway = client(endpoint, "apigateway")
    (api,) = apigateway.get_rest_apis()["items"]
    methods = [
        apigateway.get_method(restApiId=api["id"], resourceId=resource["id"], httpMethod=method)
        for resource in apigateway.get_resources(restApiId=api["id"])["items"]
        for method in resource.get("resourceMethods") or {}
    ]
    assert methods and all(method["authorizationType"] == "AWS_IAM" for method in methods)

    # Rescheduling replaces the rule instead of adding one; status reports it
    zappa(endpoint, "schedule", STAGE)
    assert [r["ScheduleExpression"] for r in rules(endpoint)] == ["rate(1 hour)"]
    status = json.loads(zappa(endpoint, "status", STAGE, "--json"))
    assert status["Lambda Handler"] == HANDLER
    assert [e["Event Rule Schedule"] for e in status["Events"]] == ["rate(1 hour)"]

    # Undeploy removes the function, its rule and its API stack
    zappa(endpoint, "undeploy", STAGE, "--yes")
    assert FUNCTION not in [f["FunctionName"] for f in client(endpoint, "lambda").list_functions()["Functions"]]
    assert rules(endpoint) == []
    # (the API lives in Zappa's CloudFormation stack; the local server keeps the API object itself)
    stacks = client(endpoint, "cloudformation").list_stacks()["StackSummaries"]
    assert {s["StackName"]: s["StackStatus"] for s in stacks} == {FUNCTION: "DELETE_COMPLETE"}



def test_from_zero__setup_stage_then_deploy__every_event_answers(moto_server: MotoServer, tmp_path: Path) -> None:
    """An empty account, the committed settings, two commands: the function answers every event.

    Nothing is set by hand: the function runs with exactly the environment `zappa deploy`
    gave it (read back from the deployed function), plus only what points AWS at the
    test's server.
    """
    moto_server.reset()
    endpoint = moto_server.url

    # Given the stage set up by the project's one command (table, indexes, TTL, signing key)
    setup = subprocess.run(
        [str(BIN / "connection-manager"), "setup-stage", STAGE], cwd=ROOT, env=offline_env(AWS_ENDPOINT_URL=endpoint),
        capture_output=True, text=True, timeout=120,
    )
    assert setup.returncode == 0, setup.stderr
    print(setup.stdout)
    again = subprocess.run(
        [str(BIN / "connection-manager"), "setup-stage", STAGE], cwd=ROOT, env=offline_env(AWS_ENDPOINT_URL=endpoint),
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert "already exists (kept)" in again.stdout  # idempotent: the key is never replaced
    # and deployed with Zappa
    zappa(endpoint, "deploy", STAGE)
    variables = client(endpoint, "lambda").get_function_configuration(FunctionName=FUNCTION)["Environment"]["Variables"]
    assert "PAGINATION_TOKEN_SECRET" not in variables

    # When the package built from the same settings runs each kind of event with that environment
    out = tmp_path / f"{FUNCTION}.zip"
    zappa(endpoint, "package", STAGE, "-o", str(out))
    package = {"zip": out}
    connects = [websocket_event("websocket_connect", f"conn-{name}", user_id="user-1") for name in ("a", "b", "c")]
    connected = run_in_package(package, tmp_path, connects, endpoint, variables=variables, function_name=FUNCTION)
    assert [outcome["ok"]["statusCode"] for outcome in connected["results"]] == [200, 200, 200]
    first = run_in_package(
        package, tmp_path,
        [websocket_event("websocket_message", "conn-a"), load_event("scheduled_event"),
         http_request("GET", "/health"), {"action": "get_all_connections", "limit": 2}],
        endpoint, variables=variables, function_name=FUNCTION,
    )
    message, scheduled, health, page = (outcome["ok"] for outcome in first["results"])
    token = page["body"]["nextToken"]
    # and another process (another container) continues the listing
    (rest,) = (outcome["ok"] for outcome in run_in_package(
        package, tmp_path, [{"action": "get_all_connections", "limit": 2, "nextToken": token}],
        endpoint, variables=variables, function_name=FUNCTION,
    )["results"])

    # Then all of them answer 2xx
    answers = {"message": message["statusCode"], "schedule": scheduled["statusCode"], "health": health["statusCode"],
               "page": page["statusCode"], "next page": rest["statusCode"]}
    print(answers)
    assert answers == {"message": 200, "schedule": 200, "health": 200, "page": 200, "next page": 200}
    ids = [row["connectionId"] for row in page["body"]["connections"] + rest["body"]["connections"]]
    assert sorted(ids) == ["conn-a", "conn-b", "conn-c"]
