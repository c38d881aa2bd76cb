"""The Lambda entry point: raw actions, the hourly schedule and API Gateway WebSocket events.

HTTP requests for the Flask admin app and Zappa's management commands go on to Zappa's
own handler, imported only then, so a raw or scheduled invocation never pays for Flask.
The table's own DynamoDB stream feeds presence (Lambda's partial batch response comes
back); other services' events (S3, SQS, SNS, other tables' streams, CloudWatch Logs...) are
refused with a 400 that names the sender, logged and counted. Which door an event takes is decided once,
by :func:`connection_manager.event_sources.classify`; ``_DOORS`` maps each kind to the one
function that answers it.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

# First on purpose (the model brings in PynamoDB and botocore, most of a cold start): the
# same modules imported in this order cost about 2,000 fewer minor page faults, 10-15 ms
# of a cold start, than with the small modules below loaded ahead of it (measured with
# benchmarks/bench_scale.py; the instruction count is the same either way).
import models.connection  # noqa: F401  # isort: skip

from connection_manager.config import Settings
from connection_manager.errors import ConflictError, ConnectionManagerError, InternalError, ValidationError
from connection_manager.event_sources import Kind, Sender, belongs_to_zappa, classify, sender_of
from connection_manager.gateway import management_endpoint
from connection_manager.observability import (
    metrics_enabled,
    record_activity_failure,
    record_active_connections,
    record_error,
    record_presence,
    record_unrecognized_event,
    set_request_id,
    setup_logging,
)
from connection_manager.operations import Invocation, run_action, run_internal
from connection_manager.schemas import truncate_for_json
from connection_manager.service import CONNECTED, NOT_CONNECTED
from connection_manager.wiring import get_service

log = logging.getLogger(__name__)

#: Keys of an action event that are addressing, not parameters.
_ENVELOPE_KEYS = frozenset({"action", "command"})

#: What Lambda gets back: ``{"statusCode": ..., "body": ...}`` or Zappa's own answer.
Answer = Any


def lambda_handler(event: Any, context: Any = None, *, invoker: str | None = None) -> Answer:
    """Answer one event. ``invoker`` names who sent a raw action when Lambda did not (the CLI's ``invoke``)."""
    setup_logging()
    set_request_id(getattr(context, "aws_request_id", None))
    try:
        kind, payload = classify(event)
        return _DOORS[kind](payload, context, invoker)
    except ConnectionManagerError as exc:
        if exc.status >= 500:
            record_error(exc.code)
            log.warning("request failed: %s", exc.message)
        return _answer(exc.status, exc.to_body())
    except Exception:
        log.exception("unhandled error")
        record_error(InternalError.code)
        error = InternalError("Internal error; see the function's logs")
        return _answer(error.status, error.to_body())


def _answer(status: int, body: dict[str, Any]) -> Answer:
    return {"statusCode": status, "body": body}


# Raw actions and the schedule ----------------------------------------------------------------


def _action(event: dict[str, Any], context: Any, invoker: str | None) -> Answer:
    # `zappa invoke <stage> <function> --payload '{...}'` adds its own "command" key.
    payload = {key: value for key, value in event.items() if key not in _ENVELOPE_KEYS}
    invocation = Invocation(principal=invoker or _invoker(context), time_left_ms=_time_left(context))
    status, body = run_action(get_service(), event.get("action"), payload, invocation=invocation)
    if "command" in event:
        # `zappa invoke` shows the function's log tail, not its return value.
        log.info("response %s %s", status, json.dumps(body, default=str))
    return _answer(status, body)


def _schedule(event: dict[str, Any], context: Any, invoker: str | None) -> Answer:
    time_left = _time_left(context)
    invocation = Invocation(principal="schedule", time_left_ms=time_left)
    status, body = run_action(get_service(), "cleanup_stale_connections", {}, invocation=invocation)
    _record_active_connections(time_left, body.get("activeConnections"))
    return _answer(status, body)


def _time_left(context: Any) -> Any:
    return getattr(context, "get_remaining_time_in_millis", None)


def _record_active_connections(time_left: Any, counted: int | None = None) -> None:
    """The hourly ActiveConnections gauge: the sweep's snapshot already counted them; counting
    again costs reads, so only where it is emitted, and never in the time the sweep kept in reserve."""
    if not metrics_enabled():
        return
    if counted is not None:
        record_active_connections(counted)
        return
    if time_left is not None and time_left() < get_service().settings.sweep_time_margin_ms:
        return
    try:
        record_active_connections(get_service().count_active())
    except ConnectionManagerError as exc:  # the sweep succeeded; a missing gauge point must not fail it
        log.warning("could not count live connections for the ActiveConnections metric: %s", exc.message)


def _invoker(context: Any) -> str:
    """Direct invocations are authorized by IAM (lambda:InvokeFunction); name the function."""
    arn = getattr(context, "invoked_function_arn", None)
    return f"lambda-invoke:{arn}" if arn else "local"


# API Gateway WebSocket ---------------------------------------------------------------------


# API Gateway only needs a status code. Repeated deliveries are harmless: a repeated $connect
# is the same registration, a repeated $disconnect finds the row already gone.


def _connect(event: dict[str, Any], context: Any, invoker: str | None) -> Answer:
    """$connect registers; refusing the handshake is the only way to tell a client it failed."""
    request = event["requestContext"]
    connection_id = request.get("connectionId")
    service = get_service()
    try:
        user_id = _websocket_user(event)
        if user_id is None:
            raise ValidationError("$connect needs a user: an authorizer principalId or a userId query string parameter")
        payload: dict[str, Any] = {"connectionId": connection_id, "userId": user_id}
        metadata = _websocket_metadata(request)
        if metadata:
            payload["metadata"] = metadata
        endpoint = management_endpoint(request.get("domainName"), request.get("stage"))
        if endpoint:
            payload["endpoint"] = endpoint
        _, body = run_internal(service, "connect", payload, invocation=Invocation(principal="apigateway:$connect"))
        if body["connection"]["status"] != CONNECTED:
            # The per-user cap found this connection among the user's oldest (a same-second
            # tie, or a skewed clock): refusing the handshake closes it, as eviction would.
            raise ConflictError(f"Connection '{connection_id}' was evicted: its user has newer connections")
    except ConnectionManagerError as exc:
        return _socket_refused("$connect", connection_id, exc)
    return {"statusCode": 200}


def _disconnect(event: dict[str, Any], context: Any, invoker: str | None) -> Answer:
    """$disconnect marks the row DISCONNECTED (reason client); only a 5xx is worth API Gateway's retry."""
    connection_id = event["requestContext"].get("connectionId")
    service = get_service()
    try:
        run_internal(
            service, "disconnect", {"connectionId": connection_id}, invocation=Invocation(principal="apigateway:$disconnect")
        )
    except ConnectionManagerError as exc:
        if exc.status >= 500:
            return _socket_refused("$disconnect", connection_id, exc)
        log.info("websocket $disconnect for %s ignored: %s", connection_id, exc.message)
    return {"statusCode": 200}


def _socket_refused(route: str, connection_id: Any, exc: ConnectionManagerError) -> Answer:
    log.warning("websocket %s for %s failed: %s", route, connection_id, exc.message)
    return _answer(exc.status, exc.to_body())


def _message(event: dict[str, Any], context: Any, invoker: str | None) -> Answer:
    """Activity of a message (any other route): at most one write per interval, and never a failed message.

    The client's message has been delivered whatever happens here, so a failed activity
    write is logged and counted (``ActivityWritesFailed``), and API Gateway gets its 200.
    """
    connection_id = event["requestContext"].get("connectionId")
    service = get_service()
    try:
        _, body = run_internal(
            service, "activity", {"connectionId": connection_id}, invocation=Invocation(principal="apigateway:message")
        )
    except ConnectionManagerError as exc:
        if exc.status >= 500:
            log.warning("activity of %s not recorded: %s", connection_id, exc.message)
            record_activity_failure(exc.code)
        else:
            log.info("message on %s ignored: %s", connection_id, exc.message)
        return {"statusCode": 200}
    if body["outcome"] == NOT_CONNECTED:
        log.info("message on %s ignored: no CONNECTED row", connection_id)
    return {"statusCode": 200}


def _websocket_user(event: dict[str, Any]) -> Any:
    authorizer = event["requestContext"].get("authorizer") or {}
    if isinstance(authorizer, dict) and authorizer.get("principalId"):
        return authorizer["principalId"]
    query = event.get("queryStringParameters") or {}
    return query.get("userId") if isinstance(query, dict) else None


def _websocket_metadata(request: dict[str, Any]) -> dict[str, Any]:
    """Source IP and user agent, when they are the strings API Gateway sends (anything else is dropped)."""
    identity = request.get("identity")
    if not isinstance(identity, dict):
        return {}
    metadata = {"sourceIp": identity.get("sourceIp"), "userAgent": identity.get("userAgent")}
    # Cut by the escaped JSON bytes the metadata limit counts, not by characters: two values
    # of 512 such bytes and their keys always fit MAX_METADATA_BYTES (2048), so no client is
    # refused for its user agent.
    return {key: truncate_for_json(value, 512) for key, value in metadata.items() if isinstance(value, str) and value}


# Everything else -----------------------------------------------------------------------------


def _refuse_foreign(sender: Sender, context: Any, invoker: str | None) -> Answer:
    """Another service's event is a misrouted trigger: a 400 naming it, a log line and a metric.

    Answering (rather than raising inside Lambda) keeps the event from being retried
    forever; the metric is what an alarm watches.
    """
    record_unrecognized_event(sender.service)
    log.warning("refused an event from %s (top-level keys: %s)", sender.service, ", ".join(sender.keys))
    raise ValidationError(
        f"Unrecognized event: this function does not process events from {sender.service}. It serves raw "
        "actions (an object with an `action`), its hourly schedule, API Gateway WebSocket and HTTP requests "
        "and Zappa commands; remove the trigger that sends these events here"
    )


def _table_stream(event: dict[str, Any], context: Any, invoker: str | None) -> Answer:
    """The table's own stream feeds presence; a stream of any other table is refused like any
    other service's event. The answer is Lambda's partial batch response: the first record
    not settled, so Lambda retries from it (``ReportBatchItemFailures``)."""
    from connection_manager.presence_events import table_of

    service = get_service()
    first = event["Records"][0] if event.get("Records") else {}
    if not isinstance(first, dict) or table_of(first.get("eventSourceARN")) != service.settings.table_name:
        return _refuse_foreign(sender_of(event, "DynamoDB Streams"), context, invoker)
    done = service.consume_stream(event["Records"])
    record_presence(done)
    return {"batchItemFailures": [{"itemIdentifier": done.failed}] if done.failed else []}


def _not_an_object(event: Any, context: Any, invoker: str | None) -> Answer:
    raise ValidationError("The event must be a JSON object with an `action`")


def _belongs_to_zappa(event: dict[str, Any]) -> bool:
    """Kept for the handler's fuzz test, which leaves Zappa's share to Zappa's handler."""
    return belongs_to_zappa(event)


def _delegate(event: dict[str, Any], context: Any, invoker: str | None) -> Answer:
    from connection_manager import zappa_bridge

    answer = zappa_bridge.delegate(event, context)
    if answer is None:
        # `zappa invoke --raw` and commands whose function returns nothing: Lambda would
        # show `null`, which looks like a lost answer.
        return _answer(200, {"message": "Zappa command completed"})
    return answer


#: The one dispatch: each kind :func:`classify` returns, and the function that answers it.
_DOORS: dict[Kind, Callable[[Any, Any, str | None], Answer]] = {
    Kind.ACTION: _action,
    Kind.SCHEDULE: _schedule,
    Kind.CONNECT: _connect,
    Kind.DISCONNECT: _disconnect,
    Kind.MESSAGE: _message,
    Kind.TABLE_STREAM: _table_stream,
    Kind.ZAPPA: _delegate,
    Kind.FOREIGN: _refuse_foreign,
    Kind.NOT_AN_OBJECT: _not_an_object,
}
