"""PynamoDB models of the connections table.

The only layer that knows DynamoDB's shape: attribute names, key schema and indexes.
"""
from models.connection import (
    LifetimeIndex,
    LiveIndex,
    ConnectionModel,
    ConnectionStatus,
    DisconnectReason,
    UserIdIndex,
    activity_bucket,
    configure,
    epoch_seconds,
    model_for,
    live_shards,
    shard_for,
)

__all__ = [
    "LifetimeIndex",
    "LiveIndex",
    "ConnectionModel",
    "ConnectionStatus",
    "DisconnectReason",
    "UserIdIndex",
    "activity_bucket",
    "configure",
    "epoch_seconds",
    "model_for",
    "live_shards",
    "shard_for",
]
