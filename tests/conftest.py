"""Shared pytest fixtures.

Every test runs with dummy AWS credentials and a fixed region, and without any proxy or
profile from the developer's shell, so no test can ever reach real AWS. Tests that need
the wire protocol get a real ``moto_server`` (one per test run) and a fresh
``dynamo_proxy`` in front of it; tests that take ``engine`` run on both moto_server and
Amazon DynamoDB Local (one JVM per test run, started only when such a test is selected).
"""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.dynamo_proxy import DynamoProxy
from tests.support.dynamodb_local import DynamoDBLocal
from tests.support.engines import DYNAMODB_LOCAL, ENGINES, MOTO, Engine
from tests.support.gateway_standin import GatewayStandIn
from tests.support.moto_server import MotoServer

# Environment that could point boto3 somewhere other than the local fakes.
_AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


# --- environment --------------------------------------------------------------------


@pytest.fixture(scope="session")
def closed_gateway_url() -> Iterator[str]:
    """A loopback address that refuses connections at once: a port bound but never listened on.

    Held for the whole run, so no other process can take the port and answer on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


@pytest.fixture(autouse=True)
def aws_test_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, closed_gateway_url: str
) -> None:
    """Dummy credentials and region; no shared config or credentials file is read.

    Every API Gateway ``@connections`` call goes to a closed loopback port unless a test
    points it at the stand-in: rows registered from ``$connect`` events store real
    ``*.execute-api.*`` endpoints, and no test may ever reach one.
    """
    for name in _AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # The instance metadata service is an AWS endpoint too; never wait for it.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI", closed_gateway_url)


@pytest.fixture
def standin() -> Iterator[GatewayStandIn]:
    """A fresh stand-in of API Gateway's ``@connections`` API on a free loopback port."""
    with GatewayStandIn() as server:
        yield server


# --- wire-level DynamoDB: a real moto server and a proxy in front of it -------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One ``moto_server`` subprocess on a free loopback port for the whole test run."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dynamo_proxy(moto_server: MotoServer) -> Iterator[DynamoProxy]:
    """A fresh proxy (no latency, no faults, zeroed counters) on an empty moto server.

    The server's state is wiped first, so each test starts without tables.
    Point clients at ``dynamo_proxy.url``.
    """
    moto_server.reset()
    with DynamoProxy(moto_server.url) as proxy:
        yield proxy


# --- the same tests on two engines: moto_server and Amazon DynamoDB Local ----------


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """One DynamoDB Local JVM on a free loopback port for the whole test run.

    Its start takes seconds, so it is shared; ``finally`` stops it however the run ends,
    and the JVM also dies with this process if the run is killed outright.
    """
    server = DynamoDBLocal()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(
    params=[
        pytest.param(MOTO, id=MOTO),
        pytest.param(DYNAMODB_LOCAL, id=DYNAMODB_LOCAL, marks=pytest.mark.dynamodb_local),
    ]
)
def engine(request: pytest.FixtureRequest) -> Engine:
    """An empty DynamoDB-compatible server: the test runs once on each engine.

    The session server is looked up by name so that a run selecting only moto
    (``-m "not dynamodb_local"``) never starts a JVM.
    """
    assert request.param in ENGINES
    server = request.getfixturevalue("moto_server" if request.param == MOTO else "dynamodb_local")
    server.reset()
    return Engine(request.param, server)


@pytest.fixture
def engine_proxy(engine: Engine) -> Iterator[DynamoProxy]:
    """A fresh proxy (no latency, no faults, zeroed counters) in front of the empty ``engine``."""
    with DynamoProxy(engine.url) as proxy:
        yield proxy


# --- service-level fixtures ---------------------------------------------------------
# (in-process ``dynamodb`` table, ``service``, ``clock``, ``make_connection`` go here)
