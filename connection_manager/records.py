"""The one place a stored row becomes the contract's JSON record.

Internal helper attributes (``activeShard``, the TTL ``expiresAt``) never leave here.
"""
from __future__ import annotations

from typing import Any

import msgspec

from connection_manager.schemas import ConnectionRecord
from models.connection import ConnectionModel, format_timestamp


def to_record(row: ConnectionModel) -> dict[str, Any]:
    """Serialize a row; a connection with no activity yet is active since ``createdAt``."""
    created = format_timestamp(row.created_at)
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
