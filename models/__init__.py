"""PynamoDB models of the connections table.

The only layer that knows DynamoDB's shape: attribute names, key schema and indexes.
"""
from models.connection import (
    ACTIVE_SHARDS,
    ActiveIndex,
    ConnectionModel,
    ConnectionStatus,
    DisconnectReason,
    UserIdIndex,
    configure,
    model_for,
    shard_for,
)

__all__ = [
    "ACTIVE_SHARDS",
    "ActiveIndex",
    "ConnectionModel",
    "ConnectionStatus",
    "DisconnectReason",
    "UserIdIndex",
    "configure",
    "model_for",
    "shard_for",
]
