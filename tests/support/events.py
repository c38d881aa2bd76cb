"""AWS-shaped test events and a stand-in for the Lambda context object.

The JSON files in ``tests/events`` are the events AWS really sends (EventBridge schedule,
API Gateway WebSocket routes); tests load a fresh copy and change only what they test,
so the rest of the event stays as realistic as the day it was captured. ``tests/events/aws``
holds public sample events of other AWS services (its README says where each comes from):
``load_event("aws/powertools_sqs")``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of ``tests/events/<name>.json`` (mutating it never affects other tests)."""
    path = EVENTS_DIR / f"{name}.json"
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def websocket_event(name: str, connection_id: str, **changes: Any) -> dict[str, Any]:
    """A WebSocket event for ``connection_id``.

    ``user_id`` sets the query string user (``None`` removes the query string),
    ``principal`` sets the authorizer's principal (``None`` removes the authorizer).
    """
    event = load_event(name)
    event["requestContext"]["connectionId"] = connection_id
    if "user_id" in changes:
        user_id = changes.pop("user_id")
        if user_id is None:
            event["queryStringParameters"] = None
            event["multiValueQueryStringParameters"] = None
        else:
            event["queryStringParameters"] = {"userId": user_id}
            event["multiValueQueryStringParameters"] = {"userId": [user_id]}
    if "principal" in changes:
        principal = changes.pop("principal")
        if principal is None:
            event["requestContext"].pop("authorizer", None)
        else:
            event["requestContext"]["authorizer"] = {"principalId": principal, "integrationLatency": 5}
    if changes:
        raise TypeError(f"unknown changes: {sorted(changes)}")
    return event


@dataclass
class FakeLambdaContext:
    """The attributes of ``awslambdaric``'s context object that our code reads.

    ``time_left_ms`` is either a fixed number or a callable, so a test can make the
    remaining time run out in the middle of a sweep.
    """

    function_name: str = "connection-manager-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:connection-manager-test"
    memory_limit_in_mb: int = 256
    aws_request_id: str = "6f1d1a5e-1c2b-4d3e-9f00-0a1b2c3d4e5f"
    log_group_name: str = "/aws/lambda/connection-manager-test"
    log_stream_name: str = "2024/01/01/[$LATEST]0123456789abcdef0123456789abcdef"
    time_left_ms: int | Callable[[], int] = 900_000

    def get_remaining_time_in_millis(self) -> int:
        if callable(self.time_left_ms):
            return int(self.time_left_ms())
        return self.time_left_ms
