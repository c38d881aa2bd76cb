"""One dispatch table from action name to validated service call.

The raw Lambda handler and the Flask views both go through :func:`run_action`, so an
action validates, answers and audits the same way whichever door it came in by.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import msgspec

from connection_manager import schemas as s
from connection_manager.errors import ConnectionManagerError, ValidationError
from connection_manager.observability import audit, record_evictions, record_sockets_not_closed, record_sweep
from connection_manager.service import CONNECTED, DISCONNECTED, ConnectionFilter, ConnectionService, Registration, TimeLeft
from models.connection import DisconnectReason

log = logging.getLogger(__name__)

Body = dict[str, Any]
Result = tuple[int, Body]


class Invocation(msgspec.Struct, frozen=True):
    """Who is asking and how much time they have; not part of any payload.

    This and :class:`Operation` are msgspec Structs rather than dataclasses because a
    dataclass costs about a millisecond to create at import, on every Lambda cold start.
    """

    principal: str = "anonymous"
    time_left_ms: TimeLeft = None
    #: Called with the number of rows done, by long operations that report progress (``seed``).
    progress: Callable[[int], Any] | None = None


class Operation(msgspec.Struct, frozen=True):
    name: str
    schema: type[s.Params]
    run: Callable[[ConnectionService, Any, Invocation], Result]
    mutates: bool
    summary: str

    def target(self, params: Any) -> str:
        for field in ("connectionId", "userId"):
            value = getattr(params, field, None)
            if value:
                return f"{field}={value}"
        return "*"


def connection_filter(p: s.GetAllConnections) -> ConnectionFilter | None:
    """The listing's filters as the service takes them; None when there are none."""
    where = ConnectionFilter(p.idleMoreThan, p.sourceIp, p.userAgent, p.userId)
    return None if where == ConnectionFilter() else where


def _register(svc: ConnectionService, p: s.RegisterConnection, _: Invocation) -> Result:
    return _registered(svc.connect(p.connectionId, p.userId, p.metadata))


def _connect(svc: ConnectionService, p: s.ClientConnect, _: Invocation) -> Result:
    return _registered(svc.connect(p.connectionId, p.userId, p.metadata, p.endpoint))


def _registered(registration: Registration) -> Result:
    body: Body = {"connection": registration.record}
    if registration.evicted:
        record_evictions(len(registration.evicted))
        # Ids only: the stored endpoints are internal.
        body["evictedConnectionIds"] = [item.connection_id for item in registration.evicted]
    return (201 if registration.created else 200), _with_not_closed(body, registration.not_closed)


def _update_status(svc: ConnectionService, p: s.UpdateConnectionStatus, _: Invocation) -> Result:
    if p.status != DISCONNECTED:
        return 200, {"connection": svc.update_connection_status(p.connectionId, p.status)}
    record, not_closed = svc.admin_disconnect(p.connectionId)
    return 200, _with_not_closed({"connection": record}, not_closed)


def _disconnect_user(svc: ConnectionService, p: s.DisconnectUser, _: Invocation) -> Result:
    outcome = svc.admin_disconnect_user(p.userId)
    return 200, _with_not_closed({"disconnectedCount": outcome.disconnected}, outcome.not_closed)


def _with_not_closed(body: Body, not_closed: int) -> Body:
    """The contract's body as it was, plus ``notClosedCount`` only when a socket stayed open."""
    if not_closed:
        record_sockets_not_closed(not_closed)
        body["notClosedCount"] = not_closed
    return body


def _cleanup(svc: ConnectionService, p: s.CleanupStaleConnections, inv: Invocation) -> Result:
    result = svc.cleanup_stale_connections(p.staleAfterSeconds, p.dryRun, inv.time_left_ms)
    record_sweep(result)
    body = _with_not_closed(result.to_body(), result.not_closed)
    if not p.dryRun:
        _after_sweep(svc, body, inv)
    return 200, body


def _after_sweep(svc: ConnectionService, body: Body, inv: Invocation) -> None:
    """Carry the snapshot pass on and keep the sweep in the history.

    The sweep ran first and kept its margin; the snapshot counts in the time between, up to
    the same margin, and the next invocation carries on where it stopped. Neither may fail
    the sweep that already ran.
    """
    figures = None
    try:
        outcome = svc.advance_snapshot(inv.time_left_ms)
        figures = outcome.figures
        body["snapshotComplete"] = figures is not None
        body["activeConnections"] = figures["activeConnections"] if figures else svc.counted_live()
    except ConnectionManagerError as exc:
        log.warning("snapshot not carried on after this sweep: %s", exc.message)
    try:
        svc.record_sweep(body, figures)
    except ConnectionManagerError as exc:
        log.warning("sweep not kept in the history: %s", exc.message)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "get_user_connections",
            s.GetUserConnections,
            lambda svc, p, _: (
                200, svc.get_user_connections(p.userId, p.limit, p.nextToken, p.status or CONNECTED).to_body()
            ),
            False,
            "A user's CONNECTED connections (status=DISCONNECTED: the user's history).",
        ),
        Operation(
            "get_user_presence",
            s.GetUserPresence,
            lambda svc, p, _: (200, svc.get_user_presence(p.userId).to_body()),
            False,
            "Whether a user is online: how many CONNECTED connections, and when they were last seen.",
        ),
        Operation(
            "get_all_connections",
            s.GetAllConnections,
            lambda svc, p, _: (200, svc.get_all_connections(p.limit, p.nextToken, connection_filter(p)).to_body()),
            False,
            "All CONNECTED connections, paginated; filters idleMoreThan, sourceIp, userAgent, userId (+ status).",
        ),
        Operation(
            "get_connection",
            s.GetConnection,
            lambda svc, p, _: (200, {"connection": svc.get_connection(p.connectionId)}),
            False,
            "One connection in any status.",
        ),
        Operation(
            "update_connection_status",
            s.UpdateConnectionStatus,
            _update_status,
            True,
            "Set a connection's status; a missing connection is a 404 and nothing is created.",
        ),
        Operation(
            "cleanup_stale_connections",
            s.CleanupStaleConnections,
            _cleanup,
            True,
            "Mark CONNECTED connections idle for longer than staleAfterSeconds as DISCONNECTED.",
        ),
        Operation("register_connection", s.RegisterConnection, _register, True, "Record a new CONNECTED connection."),
        Operation(
            "heartbeat",
            s.Heartbeat,
            lambda svc, p, _: (200, {"connection": svc.heartbeat(p.connectionId)}),
            True,
            "Refresh a CONNECTED connection's lastActiveAt.",
        ),
        Operation(
            "disconnect_user",
            s.DisconnectUser,
            _disconnect_user,
            True,
            "Disconnect every CONNECTED connection of a user (reason admin).",
        ),
    )
}

def _client_disconnect(svc: ConnectionService, p: s.ClientDisconnect, _: Invocation) -> Result:
    # One conditional write and no read: a repeated or unknown $disconnect only learns
    # that nothing changed, which is all API Gateway (and the audit line) needs.
    return 200, {"changed": svc.disconnect(p.connectionId, DisconnectReason.CLIENT) is not None}


def _client_message(svc: ConnectionService, p: s.ClientMessage, _: Invocation) -> Result:
    # At most one conditional write per activity interval; most messages write nothing.
    return 200, {"outcome": svc.record_activity(p.connectionId)}


def _create_table(svc: ConnectionService, p: s.NoParams, _: Invocation) -> Result:
    created = svc.create_table()
    return (201 if created else 200), {"table": svc.settings.table_name, "created": created, "ttl": svc.enable_ttl()}


def _reindex(svc: ConnectionService, p: s.NoParams, _: Invocation) -> Result:
    outcome = svc.reindex()
    return 200, {"reindexed": outcome.applied, "skipped": outcome.skipped, "failed": outcome.failed}


def _migrate(svc: ConnectionService, p: s.NoParams, _: Invocation) -> Result:
    return 200, svc.migrate()


def _seed(svc: ConnectionService, p: s.SeedDemo, inv: Invocation) -> Result:
    from connection_manager.seed import SeedPlan, seed  # demo data only; never on a Lambda's path

    plan = SeedPlan(
        p.live, p.stale, p.history, p.users, svc.settings.stale_after_seconds, p.prefix,
        lifetime_seconds=svc.settings.max_connection_lifetime_seconds,
    )
    written = seed(plan, svc.clock(), progress=inv.progress, model=svc.model)
    # Seeded rows bypass the live counters (batch writes): count them as a sweep would.
    svc.take_snapshot()
    return 201, {"seeded": written, "live": plan.live, "stale": plan.stale, "history": plan.history}


#: Operations no payload can name: the events AWS itself sends and the operator's CLI
#: commands (reindex Scans, which the function's role may not). Validated and audited
#: like the raw actions.
INTERNAL_OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "disconnect",
            s.ClientDisconnect,
            _client_disconnect,
            True,
            "Mark a connection DISCONNECTED (reason client) when its WebSocket closes.",
        ),
        Operation(
            "activity",
            s.ClientMessage,
            _client_message,
            True,
            "Record a message's activity (lastActiveAt, at most once per activity interval).",
        ),
        Operation("create_table", s.NoParams, _create_table, True, "Create the table and its indexes; enable TTL."),
        Operation("reindex", s.NoParams, _reindex, True, "Put CONNECTED rows written by other tools into the index."),
        Operation(
            "migrate", s.NoParams, _migrate, True, "Add the indexes an existing table lacks, then reindex its rows."
        ),
        Operation("seed", s.SeedDemo, _seed, True, "Write demo connections."),
    )
}

#: A WebSocket $connect is a registration, audited as one, whose schema adds the management
#: endpoint that only API Gateway's event can give.
INTERNAL_OPERATIONS["connect"] = Operation(
    "register_connection",
    s.ClientConnect,
    _connect,
    True,
    "Record a new CONNECTED connection from a WebSocket $connect, with its management endpoint.",
)

#: Heartbeats are state changes but arrive at message rate; auditing each would drown the log.
_NOT_AUDITED = frozenset({"heartbeat", "activity"})


def run_action(
    service: ConnectionService,
    name: Any,
    payload: dict[str, Any],
    *,
    strict: bool = True,
    invocation: Invocation = Invocation(),
) -> Result:
    """Validate ``payload`` for action ``name`` and run it. Raises ConnectionManagerError."""
    if name is None:
        raise ValidationError("Missing `action`; expected one of: " + ", ".join(OPERATIONS))
    if not isinstance(name, str):
        raise ValidationError("`action` must be a string")
    operation = OPERATIONS.get(name)
    if operation is None:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ValidationError(f"Unknown action '{shown}'; expected one of: " + ", ".join(OPERATIONS))
    return _run(service, operation, payload, strict, invocation)


def run_internal(service: ConnectionService, name: str, payload: dict[str, Any], *, invocation: Invocation) -> Result:
    """Run one of ``INTERNAL_OPERATIONS`` (an AWS event, a CLI command), validated and audited alike."""
    return _run(service, INTERNAL_OPERATIONS[name], payload, True, invocation)


def _run(
    service: ConnectionService, operation: Operation, payload: dict[str, Any], strict: bool, invocation: Invocation
) -> Result:
    name = operation.name
    params = s.parse(operation.schema, payload, strict=strict)
    if not operation.mutates or name in _NOT_AUDITED:
        return operation.run(service, params, invocation)
    try:
        status, body = operation.run(service, params, invocation)
    except ConnectionManagerError as exc:
        audit(invocation.principal, name, operation.target(params), f"error:{exc.code}")
        raise
    audit(invocation.principal, name, operation.target(params), f"ok:{status}", _audit_details(name, body))
    return status, body


def _audit_details(name: str, body: Body) -> dict[str, Any]:
    if name == "cleanup_stale_connections":
        return {key: body.get(key) for key in ("cleanedCount", "lifetimeCount", "dryRun")}
    if name == "disconnect_user":
        return {key: body[key] for key in ("disconnectedCount", "notClosedCount") if key in body}
    if name in ("disconnect", "create_table"):
        return {key: body.get(key) for key in ("changed", "created") if key in body}
    if name in ("reindex", "seed", "migrate"):
        return body
    if name == "register_connection" and "evictedConnectionIds" in body:
        return {"evictedConnectionIds": body["evictedConnectionIds"]}
    if name == "update_connection_status":
        details = {"status": body.get("connection", {}).get("status")}
        return details | ({"notClosedCount": body["notClosedCount"]} if "notClosedCount" in body else {})
    return {}
