"""Which door an event takes: ``classify`` over every sample event, and the order of its rules.

``classify`` is a pure function of the event, so these tests need no table, no service and
no Lambda context; what each door then answers is tested in ``test_handler.py``,
``test_event_sources.py`` and ``test_zappa_package.py``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

from connection_manager.event_sources import Door, Kind, Sender, classify
from connection_manager.handler import _DOORS
from tests.support.events import EVENTS_DIR, load_event

#: Every sample event of ``tests/events`` and ``tests/events/aws`` -> the door it takes.
SAMPLES: dict[str, Kind] = {
    "apigateway_admin_patch": Kind.ZAPPA,
    "apigateway_rest_request": Kind.ZAPPA,
    "scheduled_event": Kind.SCHEDULE,
    "zappa_scheduled_event": Kind.SCHEDULE,
    "zappa_invoke_command": Kind.ACTION,
    "websocket_connect": Kind.CONNECT,
    "websocket_connect_authorized": Kind.CONNECT,
    "websocket_disconnect": Kind.DISCONNECT,
    "websocket_message": Kind.MESSAGE,
    "aws/lambda_go_alb": Kind.ZAPPA,
    "aws/powertools_alb": Kind.ZAPPA,
    "aws/lambda_go_http_api_v2_iam": Kind.ZAPPA,
    "aws/powertools_http_api_v2": Kind.ZAPPA,
    "aws/powertools_function_url": Kind.ZAPPA,
    "aws/lambda_go_cloudwatch_logs": Kind.FOREIGN,
    "aws/powertools_cloudwatch_logs": Kind.FOREIGN,
    "aws/sam_cloudwatch_logs": Kind.FOREIGN,
    "aws/lambda_go_dynamodb_stream": Kind.TABLE_STREAM,  # the handler refuses other tables
    "aws/powertools_dynamodb_stream": Kind.TABLE_STREAM,
    "aws/lambda_go_kinesis": Kind.FOREIGN,
    "aws/powertools_kinesis": Kind.FOREIGN,
    "aws/lambda_go_s3": Kind.FOREIGN,
    "aws/powertools_s3": Kind.FOREIGN,
    "aws/sam_s3_delete": Kind.FOREIGN,
    "aws/lambda_go_sns": Kind.FOREIGN,
    "aws/powertools_sns": Kind.FOREIGN,
    "aws/lambda_go_sqs": Kind.FOREIGN,
    "aws/powertools_sqs": Kind.FOREIGN,
    "aws/sam_sqs": Kind.FOREIGN,
    "aws/powertools_ses": Kind.FOREIGN,
    "aws/powertools_kafka_msk": Kind.FOREIGN,
    "aws/powertools_cognito_pre_signup": Kind.FOREIGN,
    "aws/powertools_apigateway_authorizer_request": Kind.FOREIGN,
    "aws/powertools_cloudformation_custom_resource": Kind.FOREIGN,
    "aws/powertools_eventbridge": Kind.FOREIGN,
}


def test_samples__every_sample_event__has_an_expected_door() -> None:
    # Given the sample events on disk
    on_disk = {path.relative_to(EVENTS_DIR).with_suffix("").as_posix() for path in EVENTS_DIR.rglob("*.json")}

    # Then each one is in the table above (a new sample fails until its door is stated)
    assert on_disk == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_classify__sample_event__takes_its_door(name: str) -> None:
    # Given a sample event as Lambda delivers it
    event = load_event(name)

    # When it is classified
    door = classify(event)

    # Then it takes the expected door, with the payload that door's handler reads
    assert door.kind is SAMPLES[name]
    if door.kind is Kind.FOREIGN:
        assert isinstance(door.payload, Sender)
        assert door.payload.keys == tuple(sorted(event))[:10]
    else:
        assert door.payload == event


def test_classify__foreign_sample__names_the_sender() -> None:
    door = classify(load_event("aws/powertools_sqs"))

    assert door == Door(Kind.FOREIGN, Sender("SQS", ("Records",)))


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        # An `action` makes the object ours whatever else it carries...
        ({"action": "heartbeat", "command": "connection_manager.handler.lambda_handler"}, Kind.ACTION),
        ({"action": "heartbeat", "Records": [{"eventSource": "aws:sqs"}]}, Kind.ACTION),
        ({"action": "heartbeat", "httpMethod": "GET"}, Kind.ACTION),
        # ...except that the schedule is always the sweep and a WebSocket event always a route.
        ({"action": "heartbeat", "detail-type": "Scheduled Event"}, Kind.SCHEDULE),
        ({"action": "heartbeat", "requestContext": {"routeKey": "$connect", "connectionId": "c1"}}, Kind.CONNECT),
        # Another service's event is refused even when it looks like an HTTP request (an authorizer).
        ({"type": "REQUEST", "methodArn": "arn", "httpMethod": "GET"}, Kind.FOREIGN),
        ({"detail-type": "Scheduled Event", "Records": [{"eventSource": "aws:s3"}]}, Kind.FOREIGN),
        # A scheduled event carrying a Zappa command is Zappa's.
        ({"detail-type": "Scheduled Event", "command": "x"}, Kind.ZAPPA),
        ({"raw_command": "x = 1"}, Kind.ZAPPA),
        ({"manage": "check"}, Kind.ZAPPA),
        # Any route but the two lifecycle ones, however odd, is a message.
        ({"requestContext": {"routeKey": None, "connectionId": "c1"}}, Kind.MESSAGE),
        ({"requestContext": {"routeKey": ["$connect"], "connectionId": "c1"}}, Kind.MESSAGE),
        ({"requestContext": {"routeKey": "$default", "connectionId": "c1"}}, Kind.MESSAGE),
        # A route without a connection id is no WebSocket event: an action without its `action`.
        ({"requestContext": {"routeKey": "$connect"}}, Kind.ACTION),
        ({}, Kind.ACTION),
    ],
)
def test_classify__rules__tried_in_order(event: dict[str, Any], kind: Kind) -> None:
    assert classify(event).kind is kind


@pytest.mark.parametrize("event", [None, [], ["action"], "action", 0, 1.5, True])
def test_classify__not_an_object__its_own_door(event: Any) -> None:
    assert classify(event) == Door(Kind.NOT_AN_OBJECT, event)


def test_dispatch__every_kind__has_exactly_one_handler() -> None:
    # A new kind fails here until the handler says who answers it.
    assert set(_DOORS) == set(Kind)


def test_event_sources__imports_only_the_standard_library() -> None:
    # Given the classifier's module
    source = Path(sys.modules[classify.__module__].__file__ or "").read_text(encoding="utf-8")
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }

    # Then it needs nothing but the standard library (no I/O, no cold-start cost)
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
