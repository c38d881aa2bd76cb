"""Which AWS service sent an event that is not a raw action: ours, Zappa's, or another's.

The function's handler serves raw actions, the hourly schedule and API Gateway WebSocket
events itself. Zappa's handler serves exactly two more kinds: HTTP requests for the Flask
app (API Gateway REST and HTTP APIs, Lambda function URLs, Application Load Balancers)
and its management invocations (``command``, ``raw_command``, ``manage``).

Everything else is another service's event that reached this function by mistake (a
trigger left on the wrong function, a copied subscription). Zappa's handler would answer
those with ``null`` (S3, SQS, SNS, streams: it finds no function configured for them,
and Lambda counts ``null`` as success, so the batch is gone without a trace) or would
call the Flask app with the raw event (CloudWatch Logs: a 500 inside WSGI). They are
named here so the handler can refuse them with a 400 that says what arrived.

Pure functions of the event: no I/O, no imports beyond the standard library.
"""
from __future__ import annotations

from typing import Any

#: Keys of Zappa's management invocations (``zappa invoke``, ``zappa invoke --raw``, ``zappa manage``).
ZAPPA_COMMAND_KEYS = ("command", "raw_command", "manage")

#: ``eventSource`` / ``EventSource`` of record batches, and the service each one names.
_RECORD_SOURCES = {
    "aws:s3": "S3",
    "aws:sqs": "SQS",
    "aws:sns": "SNS",
    "aws:dynamodb": "DynamoDB Streams",
    "aws:kinesis": "Kinesis",
    "aws:ses": "SES",
    "aws:kafka": "MSK (Kafka)",
    "SelfManagedKafka": "Kafka",
    "aws:mq": "Amazon MQ",
    "aws:rmq": "Amazon MQ (RabbitMQ)",
    "aws:codecommit": "CodeCommit",
}


def is_http_request(event: dict[str, Any]) -> bool:
    """An HTTP request Zappa turns into a WSGI call on the Flask app.

    REST APIs and ALBs send ``httpMethod`` (v1 payload); HTTP APIs and function URLs send
    ``version: "2.0"`` with ``requestContext.http``. These are exactly the two branches
    of Zappa's handler that call the app.
    """
    request = event.get("requestContext")
    if isinstance(event.get("httpMethod"), str) and event["httpMethod"]:
        return True
    return event.get("version") == "2.0" and isinstance(request, dict) and isinstance(request.get("http"), dict)


def is_zappa_command(event: dict[str, Any]) -> bool:
    return any(event.get(key) for key in ZAPPA_COMMAND_KEYS)


def belongs_to_zappa(event: dict[str, Any]) -> bool:
    """Zappa's handler answers it: an HTTP request for the app or a management command.

    Checked only after :func:`foreign_source`: a REQUEST authorizer event carries
    ``httpMethod`` too, but wants an IAM policy back, not the app's response.
    """
    return is_http_request(event) or is_zappa_command(event)


def foreign_source(event: dict[str, Any]) -> str | None:
    """The name of the AWS service that sent ``event`` when it is none of ours, else None."""
    records = event.get("Records")
    if isinstance(records, list):
        return _records_source(records)
    if "awslogs" in event:
        return "CloudWatch Logs"
    if event.get("type") in ("TOKEN", "REQUEST") and "methodArn" in event:
        return "an API Gateway Lambda authorizer"
    if event.get("type") == "REQUEST" and "routeArn" in event:
        return "an API Gateway Lambda authorizer"
    if isinstance(event.get("triggerSource"), str):
        return "Cognito"
    if "RequestType" in event and "ResponseURL" in event:
        return "a CloudFormation custom resource"
    if isinstance(event.get("records"), dict) and isinstance(event.get("eventSource"), str):
        return _RECORD_SOURCES.get(event["eventSource"], event["eventSource"])
    if "detail-type" in event and "source" in event and event.get("detail-type") != "Scheduled Event":
        return f"EventBridge ({event.get('source')!s:.100}, {event.get('detail-type')!s:.100})"
    if "bot" in event and ("currentIntent" in event or "sessionState" in event):
        return "Lex"
    return None


def _records_source(records: list[Any]) -> str:
    first = records[0] if records else None
    if not isinstance(first, dict):
        return "a batch of records"
    source = first.get("eventSource") or first.get("EventSource")
    if isinstance(source, str) and source:
        return _RECORD_SOURCES.get(source, source[:100])
    return "a batch of records"
