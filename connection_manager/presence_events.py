"""Presence from the table's stream: which records change a connection, and the events they make.

Pure functions of DynamoDB Streams records (``NEW_AND_OLD_IMAGES``, in the shape Lambda
delivers them): no I/O. A record changes presence only when a row crosses CONNECTED: it
becomes CONNECTED (``Connection Opened``) or stops being so (``Connection Closed``). Every
other record (an activity write, a heartbeat, a history row expiring) is not a change and
costs nothing past this module.

Each event's ``eventId`` is derived from the table, the connection, the record's sequence
number and the detail type, so a record consumed twice (a Lambda retry, a replay) makes the
same ids: a consumer drops what it has seen, and :mod:`connection_manager.presence` never
owes one twice.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from models.connection import ConnectionStatus, DisconnectReason
from models.platform import is_reserved

SOURCE = "connection-manager"
OPENED, CLOSED, ONLINE, OFFLINE = "Connection Opened", "Connection Closed", "User Online", "User Offline"
DETAIL_TYPES = (OPENED, CLOSED, ONLINE, OFFLINE)
_REASONS = frozenset(reason.value for reason in DisconnectReason)
_CONNECTED = ConnectionStatus.CONNECTED.value


class Unusable(ValueError):
    """A record presence cannot use (another table, no ``userId``, a row another tool wrote):
    skipped with a log line and a metric, never a failure of the batch."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class Change:
    """One connection crossing CONNECTED, as one stream record says."""

    connection_id: str
    user_id: str
    opened: bool
    reason: str | None
    at: str
    sequence: int


def table_of(arn: Any) -> str | None:
    """The table a stream ARN names: ``arn:aws:dynamodb:<region>:<account>:table/<name>/stream/<label>``."""
    if not isinstance(arn, str):
        return None
    _, _, resource = arn.partition(":table/")
    name, _, rest = resource.partition("/")
    return name if name and rest.startswith("stream/") else None


def change_of(record: Any, table: str, now: datetime) -> Change | None:
    """The change ``record`` makes, None when it makes none; :class:`Unusable` when it cannot be read."""
    if not isinstance(record, dict) or not isinstance(record.get("dynamodb"), dict):
        raise Unusable("malformed", "a record without `dynamodb`")
    source = table_of(record.get("eventSourceARN"))
    if source != table:
        raise Unusable("other_table", f"a record of table {source!r}, not {table!r}")
    data, received = record["dynamodb"], now
    key = _text((data.get("Keys") or {}).get("connectionId"))
    if key is None:
        raise Unusable("malformed", "a record without a `connectionId` key")
    if is_reserved(key):
        return None  # the platform's own items: counters, snapshot, presence
    old, new = data.get("OldImage") or {}, data.get("NewImage") or {}
    was, connected = _text(old.get("status")) == _CONNECTED, _text(new.get("status")) == _CONNECTED
    if was == connected:
        return None
    image = new if connected else (new or old)
    user = _text(image.get("userId")) or _text(old.get("userId"))
    if not user:
        raise Unusable("no_user", f"connection {key[:100]} has no `userId`")
    try:
        sequence = int(str(data.get("SequenceNumber")))
    except ValueError:
        raise Unusable("malformed", f"connection {key[:100]}: sequence number {data.get('SequenceNumber')!r}") from None
    reason = None
    if not connected:
        stated = _text(new.get("disconnectReason"))
        # A row deleted while CONNECTED (by hand, or by another tool) is gone as far as anyone knows.
        reason = stated if stated in _REASONS else DisconnectReason.GONE.value
    return Change(key, user, connected, reason, _when(image, connected, data, received), sequence)


def connection_event(change: Change, table: str) -> tuple[str, dict[str, Any]]:
    """``Connection Opened`` or ``Connection Closed`` for ``change``."""
    return _event(OPENED if change.opened else CLOSED, change, table)


def user_event(change: Change, table: str) -> tuple[str, dict[str, Any]]:
    """``User Online`` (this change opened the user's first connection) or ``User Offline`` (it closed the last)."""
    return _event(ONLINE if change.opened else OFFLINE, change, table)


def _event(detail_type: str, change: Change, table: str) -> tuple[str, dict[str, Any]]:
    """Every detail names the connection and the user; a close says why."""
    detail = {"eventId": event_id(table, change, detail_type), "connectionId": change.connection_id,
              "userId": change.user_id, "at": change.at}
    if not change.opened:
        detail["reason"] = change.reason
    return detail_type, detail


def event_id(table: str, change: Change, detail_type: str) -> str:
    """The same for the same record, whoever consumes it and however often."""
    text = f"{table}\n{change.connection_id}\n{change.sequence}\n{detail_type}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _text(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("S"), str):
        return value["S"]
    return None


def _when(image: dict[str, Any], opened: bool, data: dict[str, Any], received: datetime) -> str:
    """When the change happened: the row's own time for it, else when the stream saw it."""
    names = ("updatedAt", "createdAt") if opened else ("disconnectedAt", "updatedAt")
    for name in names:
        stamp = _text(image.get(name))
        if stamp:
            return stamp
    seen = data.get("ApproximateCreationDateTime")
    moment = datetime.fromtimestamp(float(seen), timezone.utc) if isinstance(seen, (int, float)) else received
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
