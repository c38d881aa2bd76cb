"""The Lambda entry point: raw actions, the hourly schedule and API Gateway WebSocket events.

HTTP requests for the Flask admin app and Zappa's management commands go on to Zappa's
own handler, imported only then, so a raw or scheduled invocation never pays for Flask.
Other services' events (S3, SQS, SNS, streams, CloudWatch Logs...) are refused with a
400 that names the sender, logged and counted (see :mod:`connection_manager.event_sources`).
"""
from __future__ import annotations

import json
import logging
from typing import Any

# First on purpose (the model brings in PynamoDB and botocore, most of a cold start): the
# same modules imported in this order cost about 2,000 fewer minor page faults, 10-15 ms
# of a cold start, than with the small modules below loaded ahead of it (measured with
# benchmarks/bench_scale.py; the instruction count is the same either way).
import models.connection  # noqa: F401  # isort: skip

from connection_manager.config import Settings
from connection_manager.errors import ConflictError, ConnectionManagerError, InternalError, ValidationError
from connection_manager.event_sources import belongs_to_zappa, foreign_source
from connection_manager.gateway import management_endpoint
from connection_manager.observability import (
    metrics_enabled,
    record_activity_failure,
    record_active_connections,
    record_error,
    record_unrecognized_event,
    set_request_id,
    setup_logging,
)
from connection_manager.operations import Invocation, run_action, run_internal
from connection_manager.schemas import truncate_for_json
from connection_manager.service import CONNECTED, NOT_CONNECTED, ConnectionService
from connection_manager.wiring import get_service

log = logging.getLogger(__name__)

#: Keys of an action event that are addressing, not parameters.
_ENVELOPE_KEYS = frozenset({"action", "command"})


def lambda_handler(event: Any, context: Any = None, *, invoker: str | None = None) -> Any:
    """Answer one event. ``invoker`` names who sent a raw action when Lambda did not (the CLI's ``invoke``)."""
    setup_logging()
    set_request_id(getattr(context, "aws_request_id", None))
    try:
        if isinstance(event, dict) and _is_websocket(event):
            return _websocket(event)
        if isinstance(event, dict) and "action" not in event:
            _refuse_foreign(event)
            if _belongs_to_zappa(event):
                return _delegate(event, context)
        status, body = _dispatch(event, context, invoker)
    except ConnectionManagerError as exc:
        status, body = exc.status, exc.to_body()
        if status >= 500:
            record_error(exc.code)
            log.warning("request failed: %s", exc.message)
    except Exception:
        log.exception("unhandled error")
        record_error(InternalError.code)
        error = InternalError("Internal error; see the function's logs")
        status, body = error.status, error.to_body()
    return {"statusCode": status, "body": body}


def _dispatch(event: Any, context: Any, invoker: str | None = None) -> tuple[int, dict[str, Any]]:
    time_left = getattr(context, "get_remaining_time_in_millis", None)
    if not isinstance(event, dict):
        raise ValidationError("The event must be a JSON object with an `action`")
    if event.get("detail-type") == "Scheduled Event":
        invocation = Invocation(principal="schedule", time_left_ms=time_left)
        result = run_action(get_service(), "cleanup_stale_connections", {}, invocation=invocation)
        _record_active_connections(time_left, result[1].get("activeConnections"))
        return result
    # `zappa invoke <stage> <function> --payload '{...}'` adds its own "command" key.
    payload = {key: value for key, value in event.items() if key not in _ENVELOPE_KEYS}
    invocation = Invocation(principal=invoker or _invoker(context), time_left_ms=time_left)
    status, body = run_action(get_service(), event.get("action"), payload, invocation=invocation)
    if "command" in event:
        # `zappa invoke` shows the function's log tail, not its return value.
        log.info("response %s %s", status, json.dumps(body, default=str))
    return status, body


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


def _is_websocket(event: dict[str, Any]) -> bool:
    context = event.get("requestContext")
    return isinstance(context, dict) and "routeKey" in context and "connectionId" in context


def _websocket(event: dict[str, Any]) -> dict[str, Any]:
    """$connect registers, $disconnect marks DISCONNECTED (reason client), anything else is activity.

    API Gateway only needs a status code. Repeated deliveries are harmless: a repeated
    $connect is the same registration, a repeated $disconnect finds the row already gone.
    """
    request = event["requestContext"]
    route, connection_id = request.get("routeKey"), request.get("connectionId")
    service = get_service()
    try:
        if route == "$connect":
            user_id = _websocket_user(event)
            if user_id is None:
                raise ValidationError(
                    "$connect needs a user: an authorizer principalId or a userId query string parameter"
                )
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
        elif route == "$disconnect":
            run_internal(
                service, "disconnect", {"connectionId": connection_id}, invocation=Invocation(principal="apigateway:$disconnect")
            )
        else:
            _message(service, connection_id)
    except ConnectionManagerError as exc:
        if route == "$connect" or exc.status >= 500:
            # Refusing the handshake is the only way to tell a client its $connect failed.
            log.warning("websocket %s for %s failed: %s", route, connection_id, exc.message)
            return {"statusCode": exc.status, "body": exc.to_body()}
        log.info("websocket %s for %s ignored: %s", route, connection_id, exc.message)
    return {"statusCode": 200}


def _message(service: ConnectionService, connection_id: Any) -> None:
    """Activity of a message: at most one write per interval, and never a failed message.

    The client's message has been delivered whatever happens here, so a failed activity
    write is logged and counted (``ActivityWritesFailed``), and API Gateway gets its 200.
    """
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
        return
    if body["outcome"] == NOT_CONNECTED:
        log.info("message on %s ignored: no CONNECTED row", connection_id)


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


def _refuse_foreign(event: dict[str, Any]) -> None:
    """Another service's event is a misrouted trigger: a 400 naming it, a log line and a metric.

    Answering (rather than raising inside Lambda) keeps the event from being retried
    forever; the metric is what an alarm watches.
    """
    source = foreign_source(event)
    if source is None:
        return
    record_unrecognized_event(source)
    log.warning("refused an event from %s (top-level keys: %s)", source, ", ".join(sorted(map(str, event))[:10]))
    raise ValidationError(
        f"Unrecognized event: this function does not process events from {source}. It serves raw actions "
        "(an object with an `action`), its hourly schedule, API Gateway WebSocket and HTTP requests and "
        "Zappa commands; remove the trigger that sends these events here"
    )


def _belongs_to_zappa(event: dict[str, Any]) -> bool:
    return belongs_to_zappa(event)


def _delegate(event: dict[str, Any], context: Any) -> Any:
    from connection_manager import zappa_bridge

    answer = zappa_bridge.delegate(event, context)
    if answer is None:
        # `zappa invoke --raw` and commands whose function returns nothing: Lambda would
        # show `null`, which looks like a lost answer.
        return {"statusCode": 200, "body": {"message": "Zappa command completed"}}
    return answer
