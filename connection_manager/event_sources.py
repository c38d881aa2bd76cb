"""Which door an event takes: one pure classification of everything the function receives.

:func:`classify` decides it once and returns a :class:`Door`, the kind and the payload its
handler needs; ``connection_manager.handler`` then dispatches once on the kind.

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

from enum import StrEnum
from typing import Any, NamedTuple

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


class Kind(StrEnum):
    """The doors. A new kind is one member here, one rule in :func:`classify`, one handler entry."""

    #: An object with an ``action`` (or without one: the action's own 400 names what is missing).
    ACTION = "action"
    #: The hourly EventBridge schedule: the sweep.
    SCHEDULE = "schedule"
    #: API Gateway WebSocket routes; any route but the two lifecycle ones is a message.
    CONNECT = "$connect"
    DISCONNECT = "$disconnect"
    MESSAGE = "message"
    #: A DynamoDB Streams batch: presence, when it is the function's own table's stream (the
    #: handler checks the table, which needs the settings); refused as another service's otherwise.
    TABLE_STREAM = "table stream"
    #: HTTP requests for the Flask app and Zappa's management commands: Zappa's handler answers.
    ZAPPA = "zappa"
    #: Another AWS service's event: refused with a 400 naming it.
    FOREIGN = "foreign"
    #: A list, a string, a number, null: refused with a 400.
    NOT_AN_OBJECT = "not an object"


class Door(NamedTuple):
    """The kind of an event and what its handler needs: the event itself, or a :class:`Sender`."""

    kind: Kind
    payload: Any


class Sender(NamedTuple):
    """The payload of :attr:`Kind.FOREIGN`: the service to name in the 400, and keys to log."""

    service: str
    #: The event's first ten top-level keys, sorted: enough to find the trigger, never its data.
    keys: tuple[str, ...]


#: WebSocket route keys that are not messages.
_ROUTES = {"$connect": Kind.CONNECT, "$disconnect": Kind.DISCONNECT}


def classify(event: Any) -> Door:
    """The one decision of which door ``event`` takes; the rules are tried in this order.

    An ``action`` makes an object ours whatever else it carries (``zappa invoke`` adds
    ``command``), except that a WebSocket event is always a route and a scheduled event
    always the sweep.
    """
    if not isinstance(event, dict):
        return Door(Kind.NOT_AN_OBJECT, event)
    if is_websocket(event):
        route = event["requestContext"]["routeKey"]
        return Door(_ROUTES.get(route, Kind.MESSAGE) if isinstance(route, str) else Kind.MESSAGE, event)
    if "action" not in event:
        service = foreign_source(event)
        if service == _RECORD_SOURCES["aws:dynamodb"]:
            return Door(Kind.TABLE_STREAM, event)
        if service is not None:
            return Door(Kind.FOREIGN, sender_of(event, service))
        if belongs_to_zappa(event):
            return Door(Kind.ZAPPA, event)
    if event.get("detail-type") == "Scheduled Event":
        return Door(Kind.SCHEDULE, event)
    return Door(Kind.ACTION, event)


def sender_of(event: dict[str, Any], service: str) -> Sender:
    return Sender(service, tuple(sorted(map(str, event))[:10]))


def is_websocket(event: dict[str, Any]) -> bool:
    """An API Gateway WebSocket event: a request context with a route and a connection id."""
    context = event.get("requestContext")
    return isinstance(context, dict) and "routeKey" in context and "connectionId" in context


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
