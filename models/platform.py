"""Platform records: the counters, the latest snapshot and the sweep history, kept in the
connections table itself under reserved keys.

They share the table so the function's role, ``create-table`` and the package need nothing
new. None of them can reach a listing: listings read ``LiveIndex`` shards ``0..n-1`` and
``UserIdIndex``, and these items carry no ``userId`` and no ``status``. The sweep history
uses ``LiveIndex`` partition :data:`HISTORY_SHARD` (negative, so never a connection's
shard), sorted by the sweep's epoch second: the last 48 hours are one range query.
"""
from __future__ import annotations

from typing import Any

from pynamodb.attributes import BinaryAttribute, NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from models.connection import ConnectionModel

#: Every reserved key starts with this; connection ids that do are refused at the door.
RESERVED_PREFIX = "#cm#"
SNAPSHOT_KEY = RESERVED_PREFIX + "snapshot"
#: The snapshot pass under way: its cursor per shard and its partial counts (compressed JSON).
PASS_KEY = RESERVED_PREFIX + "snapshot#pass"
#: A user's presence: the connection ids the stream has seen open (see connection_manager.presence).
PRESENCE_PREFIX = RESERVED_PREFIX + "presence#"
#: A closed connection's last sequence number applied by presence, until DynamoDB's TTL removes it.
CLOSED_PREFIX = RESERVED_PREFIX + "closed#"
#: ``LiveIndex`` partition of the sweep history (connections use ``0..live_shards-1``).
HISTORY_SHARD = -1


def counter_key(shard: int) -> str:
    """The live-connection counter of one live shard: connects spread over the shards as
    the index writes do, so no single item takes every connect of the platform."""
    return f"{RESERVED_PREFIX}live#{shard}"


def history_key(epoch_seconds: int, unique: str) -> str:
    """One sweep's record; ``unique`` keeps two sweeps of the same second apart (the index
    orders them by ``activeBucket``, the epoch, so the key need not sort)."""
    return f"{RESERVED_PREFIX}sweep#{epoch_seconds:012d}#{unique}"


def presence_key(user_id: str) -> str:
    return PRESENCE_PREFIX + user_id


def closed_key(connection_id: str) -> str:
    """Not under :data:`PRESENCE_PREFIX`: a user id may look like anything after it."""
    return CLOSED_PREFIX + connection_id


def is_reserved(key: str) -> bool:
    return key.startswith(RESERVED_PREFIX)


class HistoryIndex(GlobalSecondaryIndex["PlatformRecord"]):
    """``LiveIndex`` as the history reads it (the same index; the table model creates it)."""

    class Meta:
        index_name = "LiveIndex"
        projection = AllProjection()

    active_shard = NumberAttribute(hash_key=True, attr_name="activeShard")
    active_bucket = NumberAttribute(range_key=True, attr_name="activeBucket")


class PlatformRecord(Model):
    """A counter (``live``), the snapshot, one sweep's result or a user's presence (``body``, JSON text).

    The snapshot item also holds the lease of the pass under way (``leaseOwner`` until
    ``leaseUntil``, epoch milliseconds) and its progress (``progress``, JSON text); the
    pass's cursors and partial counts are the ``state`` of :data:`PASS_KEY`, kept apart so
    that ``/stats`` and taking the lease read and write a small item.
    """

    class Meta:
        table_name = "connections"

    key = UnicodeAttribute(hash_key=True, attr_name="connectionId")
    live = NumberAttribute(null=True, attr_name="live")
    body = UnicodeAttribute(null=True, attr_name="body")
    active_shard = NumberAttribute(null=True, attr_name="activeShard")
    active_bucket = NumberAttribute(null=True, attr_name="activeBucket")
    expires_at = TTLAttribute(null=True, attr_name="expiresAt")
    lease_owner = UnicodeAttribute(null=True, attr_name="leaseOwner")
    lease_until = NumberAttribute(null=True, attr_name="leaseUntil")
    progress = UnicodeAttribute(null=True, attr_name="progress")
    state = BinaryAttribute(null=True, legacy_encoding=False, attr_name="state")
    #: A presence item's writes are fenced by its version; ``pending`` holds the events its
    #: last writes owe the bus (JSON text), cleared once they are published.
    version = NumberAttribute(null=True, attr_name="version")
    pending = UnicodeAttribute(null=True, attr_name="pending")

    history = HistoryIndex()


def records_for(model: type[ConnectionModel]) -> type[PlatformRecord]:
    """A ``PlatformRecord`` class bound to the same table, region and retries as ``model``."""
    source = model.Meta
    names = ("table_name", "region", "connect_timeout_seconds", "read_timeout_seconds",
             "max_pool_connections", "max_retry_attempts", "host")
    values: dict[str, Any] = {name: getattr(source, name) for name in names if hasattr(source, name)}
    meta = type("Meta", (), values)
    namespace = {"Meta": meta, "_connection": None, "__module__": __name__, "__qualname__": "PlatformRecord"}
    return type("PlatformRecord", (PlatformRecord,), namespace)
