"""The Lambda package Zappa builds, exercised the way AWS Lambda would run it.

``zappa package`` is run once per module, for real, with dummy credentials and no network.
The zip is then imported in a fresh ``python -I -S`` interpreter that sees only the
package, the standard library and the libraries the Lambda runtime provides (boto3 and
its dependencies), and the configured Lambda Handler is called with every event shape the
deployed function receives: raw actions, Zappa's scheduled cleanup, ``zappa invoke``
payloads and API Gateway REST requests for the admin app, against a real moto server.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from urllib.parse import quote
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.support.dynamo_proxy import DynamoProxy
from tests.support.events import load_event

pytestmark = pytest.mark.zappa

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
STAGE = "production"
SETTINGS = json.loads((ROOT / "zappa_settings.json").read_text(encoding="utf-8"))
HANDLER = "connection_manager.handler.lambda_handler"
FUNCTION_NAME = f"connection-manager-{STAGE}"
LAMBDA_ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION_NAME}"
ROLE_ARN = f"arn:aws:iam::123456789012:role/{FUNCTION_NAME}-execution"

#: Shipped by the Lambda Python runtime; bundling them only adds megabytes and version skew.
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "urllib3", "six"}
#: What Zappa's own handler imports at run time (its CLI dependencies stay home).
ZAPPA_RUNTIME = {"zappa", "werkzeug", "durationpy"}
#: Written into the zip by Zappa itself.
ZAPPA_FILES = {"handler.py", "zappa_settings.py", "package_info.json", "__init__.py"}


def stage_setting(stage: str, key: str) -> Any:
    """A setting as Zappa resolves it: the stage's own value, else the stage it extends."""
    config = SETTINGS[stage]
    while key not in config and "extends" in config:
        config = SETTINGS[config["extends"]]
    return config.get(key)


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for a Zappa or runtime subprocess: dummy credentials, no AWS config."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PYTHON", "VIRTUAL_ENV")) and key.lower() not in ("http_proxy", "https_proxy")
    }
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
        # Zappa packages the virtualenv it is told about; this is the one running the tests.
        VIRTUAL_ENV=sys.prefix,
    )
    env.update(extra)
    return env


def zappa(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "zappa"), *args], cwd=cwd, env=offline_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"zappa {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def runtime_closure() -> set[str]:
    """Distributions the deployed function needs: ours, transitively, plus Zappa's handler's."""
    needed: set[str] = set()
    pending = ["connection-manager", *ZAPPA_RUNTIME]
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in needed or name in RUNTIME_PROVIDED:
            continue
        needed.add(name)
        if name == "zappa":
            continue  # its declared requirements are for the CLI; the handler needs only ZAPPA_RUNTIME
        for requirement in importlib.metadata.distribution(name).requires or []:
            parsed = Requirement(requirement)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                pending.append(parsed.name)
    return needed


def top_level_names(distribution: str) -> set[str]:
    files = importlib.metadata.distribution(distribution).files or []
    return {str(f).split("/")[0] for f in files if not str(f).startswith("..")} - {"__pycache__"}


# --- the package, built once ---------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``zappa package production`` -> the zip, its names, and how long the build took."""
    out = tmp_path_factory.mktemp("zappa") / f"{FUNCTION_NAME}.zip"
    started = time.monotonic()
    zappa("package", STAGE, "-o", str(out))
    seconds = time.monotonic() - started
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    yield {"zip": out, "names": names, "seconds": seconds, "size": out.stat().st_size}


def top_level(names: list[str]) -> set[str]:
    return {name.split("/")[0] for name in names}


def test_package__builds_offline_and_quickly(package: dict[str, Any]) -> None:
    # Lambda's limit for a directly uploaded zip is 50 MB; ours is a few.
    assert package["size"] < 10 * 1024 * 1024, package["size"]
    assert package["seconds"] < 60
    print(f"\npackage: {package['size'] / 1024 / 1024:.1f} MiB, built in {package['seconds']:.1f}s")
    print("top level:", " ".join(sorted(top_level(package["names"]))))


def test_package__ships_only_the_runtime_closure(package: dict[str, Any]) -> None:
    allowed = set(ZAPPA_FILES) | {"connection_manager", "models"}
    for distribution in runtime_closure() - {"connection-manager"}:
        allowed |= top_level_names(distribution)
    shipped = top_level(package["names"])

    assert shipped <= allowed, f"unexpected in the package (add to `exclude`): {sorted(shipped - allowed)}"
    for missing in ("connection_manager", "models", "handler.py", "zappa_settings.py", "flask", "pynamodb", "zappa"):
        assert missing in shipped
    for absent in ("boto3", "botocore", "s3transfer", "pytest", "_pytest", "moto", "hypothesis", "schemathesis",
                   "playwright", "troposphere", "pip", "setuptools", "tests", "benchmarks", "scripts", "deploy"):
        assert absent not in shipped
    assert not [n for n in package["names"] if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in package["names"] if n.startswith(("connection_manager/", "models/")) and "test" in n]


def test_package__keeps_every_runtime_file(package: dict[str, Any]) -> None:
    """Zappa's `exclude` patterns match names at any depth; none may bite a runtime dependency."""
    shipped = set(package["names"])
    missing: list[str] = []
    for distribution in runtime_closure() - {"connection-manager"}:
        for file in importlib.metadata.distribution(distribution).files or []:
            name = str(file)
            if name.startswith("..") or "__pycache__" in name or name.endswith((".pyc", ".pyi", "py.typed")):
                continue
            if ".dist-info/" in name and name.rsplit("/", 1)[-1] in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            if name not in shipped:
                missing.append(name)
    assert not missing, missing[:20]
    project = [
        str(path.relative_to(ROOT))
        for top in ("connection_manager", "models")
        for path in (ROOT / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert set(project) <= shipped, sorted(set(project) - shipped)


def test_package__zappa_settings_module(package: dict[str, Any]) -> None:
    with zipfile.ZipFile(package["zip"]) as archive:
        settings = archive.read("zappa_settings.py").decode()
        zappa_handler = archive.read("handler.py").decode()
    assert "APP_MODULE='connection_manager.app'" in settings
    assert "APP_FUNCTION='app'" in settings
    assert "LOG_LEVEL='INFO'" in settings
    assert "DEBUG=False" in settings
    assert "SLIM_HANDLER" not in settings
    # No WebSocket API of Zappa's own: our handler serves API Gateway WebSocket events itself.
    assert "WEBSOCKET_HANDLER_MODULE" not in settings
    # The root handler.py is Zappa's (the bridge imports it by that name).
    assert "class LambdaHandler" in zappa_handler


def test_save_python_settings_file__offline(tmp_path: Path) -> None:
    target = tmp_path / "zappa_settings.py"
    zappa("save-python-settings-file", STAGE, "-o", str(target))
    text = target.read_text(encoding="utf-8")
    assert "API_STAGE='production'" in text and "LOG_LEVEL='INFO'" in text


def test_template__every_method_is_iam_authorized(tmp_path: Path) -> None:
    target = tmp_path / "template.json"
    zappa("template", STAGE, "-l", LAMBDA_ARN, "-r", ROLE_ARN, "-o", str(target))
    resources = json.loads(target.read_text(encoding="utf-8"))["Resources"]
    methods = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApiGateway::Method"]

    assert methods
    for method in methods:
        assert method["AuthorizationType"] == "AWS_IAM", method["HttpMethod"]
        # API Gateway calls the function with the execution role, hence lambda:InvokeFunction in the policy.
        assert method["Integration"]["Credentials"] == ROLE_ARN
        assert LAMBDA_ARN in json.dumps(method["Integration"]["Uri"])


# --- the package, run like Lambda runs it ---------------------------------------------


def run_in_package(
    package: dict[str, Any], tmp_path: Path, events: list[Any], endpoint: str | DynamoProxy,
    *, variables: dict[str, str] | None = None, function_name: str = FUNCTION_NAME,
) -> dict[str, Any]:
    """Call the configured Lambda Handler inside the package with ``events``, in a fresh interpreter.

    The environment is the stage's own, as `zappa deploy` sets it, plus only what points AWS
    at the test's servers: nothing a user's deploy would not have (no secret set by hand).
    """
    dynamodb, aws = endpoints(endpoint)
    events_file, output = tmp_path / "events.json", tmp_path / "results.json"
    events_file.write_text(json.dumps(events), encoding="utf-8")
    env = offline_env(
        AWS_LAMBDA_FUNCTION_NAME=function_name,
        AWS_ENDPOINT_URL_DYNAMODB=dynamodb,
        AWS_ENDPOINT_URL_SSM=aws,
        **(stage_setting(STAGE, "aws_environment_variables") if variables is None else variables),
    )
    env.pop("VIRTUAL_ENV")
    result = subprocess.run(
        [
            sys.executable, "-I", "-S", str(ROOT / "deploy" / "run_package.py"),
            "--package", str(package["zip"]),
            "--runtime-site", str(SITE_PACKAGES),
            "--handler", SETTINGS["dev"]["lambda_handler"],
            "--function-name", function_name,
            "--events", str(events_file),
            "--output", str(output),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text(encoding="utf-8"))
    report["stdout"] = result.stdout
    for outcome in report["results"]:
        assert "error" not in outcome, outcome.get("trace")
    return report


def endpoints(target: str | DynamoProxy) -> tuple[str, str]:
    """Where DynamoDB calls go, and where every other AWS call (SSM: the stage's signing key) goes:
    a proxy's own URL and the moto server behind it, or one server for both."""
    if isinstance(target, DynamoProxy):
        return target.url, f"http://{target.upstream_host}:{target.upstream_port}"
    return target, target


def setup_stage(proxy: DynamoProxy) -> None:
    """What a user runs once per stage before `zappa deploy`: the table and the signing key."""
    cli("setup-stage", STAGE, endpoint=proxy)


def cli(*args: str, endpoint: str | DynamoProxy) -> None:
    dynamodb, aws = endpoints(endpoint)
    env = offline_env(AWS_ENDPOINT_URL_DYNAMODB=dynamodb, AWS_ENDPOINT_URL_SSM=aws,
                      **stage_setting(STAGE, "aws_environment_variables"))
    result = subprocess.run([str(BIN / "connection-manager"), *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def http_request(method: str, path: str, query: dict[str, str] | None = None, body: Any = None) -> dict[str, Any]:
    event = load_event("apigateway_rest_request")
    event["httpMethod"] = event["requestContext"]["httpMethod"] = method
    event["path"] = path
    event["pathParameters"] = {"proxy": path.lstrip("/")}
    event["requestContext"]["path"] = f"/{STAGE}{path}"
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} if query else None
    if body is not None:
        event["body"] = json.dumps(body)
        event["headers"]["Content-Type"] = "application/json"
        event["multiValueHeaders"]["Content-Type"] = ["application/json"]
    return event


def policy_actions(stage: str) -> set[str]:
    policy = json.loads((ROOT / stage_setting(stage, "attach_policy")).read_text(encoding="utf-8"))
    actions: set[str] = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    return actions


@pytest.mark.integration
def test_package__serves_every_event_shape(package: dict[str, Any], dynamo_proxy: DynamoProxy, tmp_path: Path) -> None:
    # Given the stage's table with 3 live, 2 stale and 1 disconnected connection
    setup_stage(dynamo_proxy)
    cli("seed", "3", "--stale", "2", "--history", "1", "--users", "1", "--quiet", endpoint=dynamo_proxy)
    dynamo_proxy.reset_counters()

    # When every kind of event reaches the packaged Lambda Handler
    zappa_invoke = load_event("zappa_invoke_command")
    events = [
        {"action": "get_all_connections"},
        {"action": "get_user_connections", "userId": "user-00000"},
        {"action": "register_connection", "connectionId": "pkg-1", "userId": "user-pkg"},
        {"action": "no_such_action"},
        load_event("zappa_scheduled_event"),
        zappa_invoke,
        {"command": HANDLER},
        http_request("GET", "/health"),
        http_request("GET", "/connections", {"limit": "2"}),
        http_request("GET", "/connections/pkg-1"),
    ]
    report = run_in_package(package, tmp_path, events, dynamo_proxy)
    answers = [outcome["ok"] for outcome in report["results"]]

    # Then the raw actions answer per the contract, without importing Flask
    listing, by_user, registered, unknown, scheduled, invoked, bare_command, health, page, one = answers
    assert listing["statusCode"] == 200 and listing["body"]["count"] == 5
    assert by_user["statusCode"] == 200 and by_user["body"]["count"] == 5
    assert registered["statusCode"] == 201 and registered["body"]["connection"]["connectionId"] == "pkg-1"
    assert unknown["statusCode"] == 400 and unknown["body"]["error"] == "ValidationError"
    # the hourly rule, delivered as Zappa's input transformer shapes it, runs the cleanup
    assert scheduled["statusCode"] == 200
    assert scheduled["body"]["message"] == "Stale connections cleaned up"
    assert scheduled["body"]["cleanedCount"] == 2
    # `zappa invoke <stage> <handler> --payload '{"action": ...}'` is a raw action
    assert invoked["statusCode"] == 200 and invoked["body"]["count"] == 4, invoked
    # a command without an action comes back through Zappa's handler and stops with a 400, no loop
    assert bare_command["statusCode"] == 400
    assert report["flask_loaded"][:6] == [False] * 6

    # and HTTP requests reach the Flask app through Zappa's handler
    assert health["statusCode"] == 200, health
    assert json.loads(health["body"])["status"] == "ok"
    assert page["statusCode"] == 200
    assert len(json.loads(page["body"])["connections"]) == 2
    assert json.loads(page["body"])["nextToken"]
    assert one["statusCode"] == 200 and json.loads(one["body"])["connection"]["userId"] == "user-pkg"

    # Every library came from the package, or from the runtime for boto3/botocore
    origins = report["origins"]
    task_root = report["task_root"]
    for name in ("flask", "werkzeug", "pynamodb", "msgspec", "zappa", "handler"):
        assert origins[name].startswith(task_root), (name, origins[name])
    for name in ("boto3", "botocore"):
        assert not origins[name].startswith(task_root) and "lambda-runtime-" in origins[name]

    # And the function used no DynamoDB action its IAM policy does not grant
    used = set(dynamo_proxy.snapshot()["iam_actions"])
    assert used, "the proxy saw no DynamoDB traffic"
    assert used <= policy_actions(STAGE), sorted(used - policy_actions(STAGE))


#: Public sample events of services this function does not serve (tests/events/aws/README.md).
FOREIGN_EVENTS = ["powertools_s3", "lambda_go_sqs", "powertools_sns", "powertools_dynamodb_stream", "lambda_go_kinesis",
                  "powertools_cloudwatch_logs", "sam_cloudwatch_logs", "powertools_ses", "powertools_kafka_msk",
                  "powertools_apigateway_authorizer_request", "powertools_cognito_pre_signup", "powertools_eventbridge"]
#: HTTP requests of the other API kinds, from the same samples: Zappa hands them to the app.
HTTP_EVENTS = ["powertools_http_api_v2", "lambda_go_http_api_v2_iam", "powertools_function_url", "powertools_alb",
               "lambda_go_alb"]


@pytest.mark.integration
def test_package__other_services_events__400_never_null(
    package: dict[str, Any], dynamo_proxy: DynamoProxy, tmp_path: Path
) -> None:
    # Given the stage's table
    setup_stage(dynamo_proxy)

    # When other services' events and HTTP requests of every API kind reach the packaged handler
    events = [load_event(f"aws/{name}") for name in FOREIGN_EVENTS + HTTP_EVENTS] + [{"raw_command": "x = 1"}]
    report = run_in_package(package, tmp_path, events, dynamo_proxy)
    answers = [outcome["ok"] for outcome in report["results"]]

    # Then each foreign event gets a 400 naming its service, and is counted (an EMF record on stdout)
    for name, answer in zip(FOREIGN_EVENTS, answers):
        assert isinstance(answer, dict) and answer["statusCode"] == 400, (name, answer)
        assert answer["body"]["error"] == "ValidationError" and "does not process events from" in answer["body"]["message"]
    assert report["stdout"].count('"UnrecognizedEvents"') >= len(FOREIGN_EVENTS)
    # And HTTP requests reach the Flask app (the samples' paths: the dashboard at "/", else a JSON 404)
    for name, answer in zip(HTTP_EVENTS, answers[len(FOREIGN_EVENTS):]):
        assert isinstance(answer, dict) and answer["statusCode"] in (200, 404), (name, answer)
    # And a raw Zappa command answers something, not null
    assert answers[-1] == {"statusCode": 200, "body": {"message": "Zappa command completed"}}


@pytest.mark.integration
def test_package__percent_encoded_ids_in_paths__reach_the_connection(
    package: dict[str, Any], dynamo_proxy: DynamoProxy, tmp_path: Path
) -> None:
    # Given connections whose ids hold "/", "+" and "=" (API Gateway's ids are base64)
    setup_stage(dynamo_proxy)
    ids = ["a/b", "L0SM9cOF+vHcC/hw=", "/lead", "two//slashes"]
    events: list[Any] = [{"action": "register_connection", "connectionId": cid, "userId": "u/1+"} for cid in ids]

    # When each is read over the API, percent-encoded in the path as API Gateway sends it
    for cid in ids:
        events.append(http_request("GET", "/connections/" + quote(cid, safe="")))
    events.append(http_request("GET", "/users/" + quote("u/1+", safe="") + "/connections"))
    report = run_in_package(package, tmp_path, events, dynamo_proxy)
    answers = [outcome["ok"] for outcome in report["results"]]

    # Then each request reaches its own connection
    assert [answer["statusCode"] for answer in answers[: len(ids)]] == [201] * len(ids)
    for cid, answer in zip(ids, answers[len(ids): 2 * len(ids)]):
        assert answer["statusCode"] == 200, (cid, answer)
        assert json.loads(answer["body"])["connection"]["connectionId"] == cid
    assert json.loads(answers[-1]["body"])["count"] == len(ids)


# --- the settings, as Zappa itself reads them -------------------------------------------


@pytest.fixture(params=["dev", "production"])
def zappa_cli(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Zappa's CLI object with a stage's settings loaded (no AWS calls)."""
    from zappa.cli import ZappaCLI

    monkeypatch.chdir(ROOT)  # policy file paths in the settings are relative to the project
    cli = ZappaCLI()
    cli.api_stage = request.param
    cli.load_credentials = False
    cli.load_settings("zappa_settings.json")
    return cli


def test_settings__entry_points_and_defaults_we_override(zappa_cli: Any) -> None:
    stage = zappa_cli.api_stage
    assert zappa_cli.lambda_name == f"connection-manager-{stage}"
    assert zappa_cli.lambda_handler == HANDLER
    assert zappa_cli.app_function == "connection_manager.app.app"
    assert zappa_cli.runtime == "python3.11"
    assert zappa_cli.stage_config["keep_warm"] is False  # Zappa's default pings every 4 minutes
    assert zappa_cli.log_level == "INFO"  # Zappa's default is DEBUG
    assert zappa_cli.debug is False
    assert zappa_cli.iam_authorization is True
    assert zappa_cli.memory_size == 512 and zappa_cli.timeout_seconds == 300
    assert not zappa_cli.stage_config.get("slim_handler")
    # Set on the function itself, so the raw path sees them before any Zappa code runs.
    assert zappa_cli.aws_environment_variables["CONNECTIONS_TABLE_NAME"] == f"connections-{stage}"
    assert not zappa_cli.environment_variables


def test_settings__hourly_cleanup_reaches_our_handler(zappa_cli: Any) -> None:
    events = zappa_cli.stage_config["events"]
    assert [(e["function"], e["expression"]) for e in events] == [(HANDLER, "rate(1 hour)")]


def test_settings__least_privilege_role(zappa_cli: Any) -> None:
    stage, table = zappa_cli.api_stage, zappa_cli.aws_environment_variables["CONNECTIONS_TABLE_NAME"]
    assert zappa_cli.manage_roles is True
    assert zappa_cli.zappa.role_name == f"connection-manager-{stage}-execution"
    # Zappa puts attach_policy as the role's whole inline policy: our file replaces its default.
    policy = json.loads(zappa_cli.zappa.attach_policy)
    assert policy == json.loads((ROOT / f"deploy/iam-policy{'' if stage == 'production' else '-dev'}.json").read_text())
    assert not zappa_cli.zappa.extra_permissions

    granted: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            assert "*" not in action, action
            granted.setdefault(action, set()).update(resources)
    assert set(granted) == {
        "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
        "dynamodb:DescribeTable", "dynamodb:Query",
        "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "lambda:InvokeFunction",
        "execute-api:ManageConnections", "ssm:GetParameter",
        "dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams",
        "events:PutEvents",
    }
    # The stream presence reads: the table's own, nothing else (Lambda's mapping polls it as the role)
    for action in ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator",
                   "dynamodb:ListStreams"):
        assert granted[action] == {f"arn:aws:dynamodb:*:*:table/{table}/stream/*"}, action
    assert granted["events:PutEvents"] == {f"arn:aws:events:*:*:event-bus/connection-manager-{stage}"}
    # The signing key: the one parameter the stage names (AWS-managed key: no kms grant needed)
    parameter = zappa_cli.aws_environment_variables["PAGINATION_KEY_PARAMETER"]
    assert granted["ssm:GetParameter"] == {f"arn:aws:ssm:*:*:parameter{parameter}"}
    table_arn = f"arn:aws:dynamodb:*:*:table/{table}"
    for action in ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                   "dynamodb:DescribeTable"):
        assert granted[action] == {table_arn}
    # Only the WebSocket API and stage the settings name, and only the calls made (tests/test_gateway.py).
    api_id = zappa_cli.aws_environment_variables["WEBSOCKET_API_ID"]
    ws_stage = zappa_cli.aws_environment_variables["WEBSOCKET_STAGE"]
    assert granted["execute-api:ManageConnections"] == {
        f"arn:aws:execute-api:*:*:{api_id}/{ws_stage}/{method}/@connections/*" for method in ("DELETE", "GET")
    }
    assert granted["dynamodb:Query"] == {f"{table_arn}/index/*"}
    log_group = f"arn:aws:logs:*:*:log-group:/aws/lambda/{zappa_cli.lambda_name}"
    assert granted["logs:PutLogEvents"] == {log_group, f"{log_group}:*"}
    assert granted["lambda:InvokeFunction"] == {f"arn:aws:lambda:*:*:function:{zappa_cli.lambda_name}"}

    trust = json.loads(zappa_cli.zappa.assume_policy)
    assert trust["Statement"][0]["Principal"]["Service"] == ["lambda.amazonaws.com", "apigateway.amazonaws.com"]


# --- the bridge outside a package ---------------------------------------------------------


def test_bridge__outside_a_zappa_package_is_a_400() -> None:
    from connection_manager import zappa_bridge
    from connection_manager.errors import ValidationError

    assert not zappa_bridge.in_zappa_package()
    with pytest.raises(zappa_bridge.UnrecognizedEventError) as raised:
        zappa_bridge.delegate(load_event("apigateway_rest_request"), None)
    assert isinstance(raised.value, ValidationError)
    assert raised.value.status == 400 and raised.value.to_body()["error"] == "ValidationError"


def test_bridge__import_loads_neither_zappa_nor_flask() -> None:
    probe = (
        "import sys, connection_manager.zappa_bridge; "
        "print(sorted(m for m in ('zappa', 'handler', 'flask', 'werkzeug') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
