"""Events of other AWS services reaching the function: a 400 that names the sender, never ``null``.

The events are the public samples in ``tests/events/aws`` (see its README), run through
``lambda_handler`` as Lambda delivers them. HTTP requests belong to Zappa's handler, which
exists only inside the package; ``tests/test_zappa_package.py`` runs them there.
"""
from __future__ import annotations

import logging
from typing import Any

import pytest

import connection_manager.handler as handler_module
import connection_manager.observability as observability
from connection_manager.event_sources import belongs_to_zappa, foreign_source
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from tests.support.events import FakeLambdaContext, load_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import raw_items

#: Sample event -> the service the 400 must name.
FOREIGN = {
    "aws/powertools_s3": "S3",
    "aws/lambda_go_s3": "S3",
    "aws/sam_s3_delete": "S3",
    "aws/powertools_sqs": "SQS",
    "aws/lambda_go_sqs": "SQS",
    "aws/sam_sqs": "SQS",
    "aws/powertools_sns": "SNS",
    "aws/lambda_go_sns": "SNS",
    "aws/powertools_dynamodb_stream": "DynamoDB Streams",
    "aws/lambda_go_dynamodb_stream": "DynamoDB Streams",
    "aws/powertools_kinesis": "Kinesis",
    "aws/lambda_go_kinesis": "Kinesis",
    "aws/powertools_cloudwatch_logs": "CloudWatch Logs",
    "aws/lambda_go_cloudwatch_logs": "CloudWatch Logs",
    "aws/sam_cloudwatch_logs": "CloudWatch Logs",
    "aws/powertools_ses": "SES",
    "aws/powertools_kafka_msk": "MSK (Kafka)",
    "aws/powertools_cognito_pre_signup": "Cognito",
    "aws/powertools_apigateway_authorizer_request": "an API Gateway Lambda authorizer",
    "aws/powertools_cloudformation_custom_resource": "a CloudFormation custom resource",
    "aws/powertools_eventbridge": "EventBridge (aws.ec2, EC2 Instance State-change Notification)",
}

#: HTTP requests: Zappa's handler turns them into WSGI calls on the Flask app.
HTTP = ["aws/powertools_alb", "aws/lambda_go_alb", "aws/powertools_http_api_v2", "aws/lambda_go_http_api_v2_iam",
        "aws/powertools_function_url", "apigateway_rest_request", "apigateway_admin_patch"]


@pytest.fixture(autouse=True)
def _quiet_logging(monkeypatch: pytest.MonkeyPatch, handler_service: ConnectionService) -> None:
    """The test's service; logging setup skipped so ``caplog`` sees the lines."""
    monkeypatch.setattr(observability, "_configured", True)


@pytest.fixture
def unrecognized(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources counted in the UnrecognizedEvents metric."""
    counted: list[str] = []
    monkeypatch.setattr(handler_module, "record_unrecognized_event", counted.append)
    return counted


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_handler__other_service_event__400_naming_it_logged_and_counted(
    name: str, unrecognized: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a real sample event of another service
    event = load_event(name)

    # When it reaches the function
    with caplog.at_level(logging.WARNING, logger="connection_manager.handler"):
        response = lambda_handler(event, FakeLambdaContext())

    # Then it is refused with a 400 that names the sender, and is logged and counted
    assert response["statusCode"] == 400, response
    assert response["body"]["error"] == "ValidationError"
    assert f"events from {FOREIGN[name]}." in response["body"]["message"]
    assert "remove the trigger" in response["body"]["message"]
    assert unrecognized == [FOREIGN[name]]
    assert any(FOREIGN[name] in record.getMessage() for record in caplog.records)
    # And nothing was written
    assert raw_items() == []


@pytest.mark.parametrize("name", HTTP)
def test_event_sources__http_requests__belong_to_zappa(name: str) -> None:
    event = load_event(name)

    assert foreign_source(event) is None
    assert belongs_to_zappa(event)


@pytest.mark.parametrize("name", HTTP)
def test_handler__http_request_outside_the_package__400_not_null(name: str, unrecognized: list[str]) -> None:
    response = lambda_handler(load_event(name), FakeLambdaContext())

    assert response["statusCode"] == 400 and response["body"]["error"] == "ValidationError"
    assert "served only by the deployed package" in response["body"]["message"]
    assert unrecognized == []


@pytest.mark.parametrize(
    "event",
    [{"command": "connection_manager.handler.lambda_handler"}, {"raw_command": "x = 1"}, {"manage": "check"}],
)
def test_event_sources__zappa_commands__belong_to_zappa(event: dict[str, Any]) -> None:
    assert foreign_source(event) is None and belongs_to_zappa(event)


def test_handler__zappa_answers_none__200_not_null(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Zappa's handler answering `None`, as it does for `zappa invoke --raw`
    from connection_manager import zappa_bridge

    monkeypatch.setattr(zappa_bridge, "delegate", lambda event, context: None)

    # When such a command arrives
    response = lambda_handler({"raw_command": "print('hello')"}, FakeLambdaContext())

    # Then Lambda gets an answer, not null
    assert response == {"statusCode": 200, "body": {"message": "Zappa command completed"}}


def test_metrics__unrecognized_event__counted_by_source(monkeypatch: pytest.MonkeyPatch) -> None:
    emitted: list[tuple[Any, Any]] = []
    monkeypatch.setattr(observability, "emit_metrics", lambda values, dimensions=None: emitted.append((values, dimensions)))

    observability.record_unrecognized_event("SQS")

    assert emitted == [({"UnrecognizedEvents": (1, "Count")}, {"source": "SQS"})]
