"""The one place a stored row becomes the contract's JSON record.

Internal helper attributes (``activeShard``, the TTL ``expiresAt``) never leave here.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec

from connection_manager.schemas import ConnectionRecord
from models.connection import ConnectionModel, format_timestamp


#: ``createdAt`` of a row that holds no readable timestamp at all (written by another tool):
#: older than any real connection, so such a row is never mistaken for a fresh one.
UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_record(row: ConnectionModel) -> dict[str, Any]:
    """Serialize a row; a connection with no activity yet is active since ``createdAt``.

    Rows written by other tools may lack ``createdAt`` or hold one we cannot read (the
    model reads it as None); the record then takes the earliest time the row does tell,
    so the contract's ``createdAt`` is always there.
    """
    created = format_timestamp(_created_at(row))
    record = ConnectionRecord(
        connectionId=row.connection_id,
        userId=row.user_id,
        status=row.status,  # type: ignore[arg-type]
        createdAt=created,
        lastActiveAt=format_timestamp(row.last_active_at) if row.last_active_at else created,
        updatedAt=format_timestamp(row.updated_at) if row.updated_at else None,
        disconnectedAt=format_timestamp(row.disconnected_at) if row.disconnected_at else None,
        disconnectReason=row.disconnect_reason,  # type: ignore[arg-type]
        metadata=row.metadata.as_dict() if row.metadata is not None else None,
    )
    return msgspec.to_builtins(record)


def _created_at(row: ConnectionModel) -> datetime:
    if row.created_at is not None:
        return row.created_at
    known = [t for t in (row.last_active_at, row.updated_at, row.disconnected_at) if t is not None]
    return min(known, default=UNKNOWN_TIME)
