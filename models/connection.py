"""The connections table: one row per WebSocket connection, keyed by ``connectionId``.

Two global secondary indexes serve the routine reads:

* ``UserIdIndex`` (``userId``, ``status``): a user's connections in one status, as the
  platform has always had it. It projects the keys and ``createdAt`` only: an activity
  write changes nothing it holds, so it costs that index nothing (with the ALL projection
  every message paid one more write unit there).
* ``LiveIndex`` (``activeShard``, ``activeBucket``): a *sparse* index. ``activeShard``
  is written only while a row is CONNECTED and removed in the same conditional write that
  disconnects it, so the index holds live rows only, however much DISCONNECTED history
  the table keeps. Listing live connections or finding stale ones is a range query on it
  and reads about as many items as it returns. The partition is spread over as many
  shards as the capacity model asks for. Its sort key is the *activity bucket*, the start
  of the ``ACTIVITY_BUCKET_SECONDS`` window holding ``lastActiveAt``: it moves once per
  bucket, not on every activity write, so most writes update the index item in place
  (1 write unit) instead of deleting and re-putting it (2).
* ``LifetimeIndex`` (``activeShard``, ``liveSince``): sparse and KEYS_ONLY, for the
  lifetime sweep (rows older than ``MAX_CONNECTION_LIFETIME_SECONDS``). ``liveSince`` is
  ``createdAt`` in epoch seconds, written once at registration and never changed; the row
  is in the index while ``activeShard`` is there, that is while it is CONNECTED. An
  activity write sets ``activeShard`` to the value it already holds and touches nothing
  else this index holds, so it costs this index nothing: its writes happen at connect
  and disconnect only. It is not keyed by ``createdAt`` itself because DynamoDB refuses
  any write of an item whose index key has another type than the index's: a numeric
  ``createdAt`` written by another tool would then be rejected.
"""
from __future__ import annotations

import math
import zlib
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Protocol

from pynamodb.attributes import (
    Attribute,
    MapAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
)
from pynamodb.constants import NUMBER, STRING
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection, KeysOnlyProjection
from pynamodb.models import Model

#: Width of an activity bucket in seconds (see connection_manager.capacity). Stored values
#: are epoch seconds of a bucket's start, so changing the width needs no migration.
ACTIVITY_BUCKET_SECONDS = 900

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ConnectionStatus(StrEnum):
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"


class DisconnectReason(StrEnum):
    CLIENT = "client"
    STALE = "stale"
    ADMIN = "admin"
    #: Older than ``MAX_CONNECTION_LIFETIME_SECONDS``: API Gateway has closed it by now.
    LIFETIME = "lifetime"
    #: Among a user's oldest beyond ``MAX_CONNECTIONS_PER_USER``.
    EVICTED = "evicted"
    #: API Gateway answered 410 Gone: the socket closed without a ``$disconnect`` reaching us.
    GONE = "gone"


def format_timestamp(value: datetime) -> str:
    """ISO-8601 UTC with a ``Z`` suffix, second precision: the one format in the table.

    A fixed-width format keeps string order equal to time order, which the
    ``lastActiveAt < cutoff`` key condition of the stale sweep relies on.
    """
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(value: str) -> datetime:
    """Read our own format and the common ISO-8601 variants other writers of the table use."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


#: Epoch values above this are milliseconds, not seconds (1e11 seconds is the year 5138).
_EPOCH_MILLIS_ABOVE = 1e11


def read_timestamp(value: str) -> datetime | None:
    """A stored timestamp in whatever form another tool sharing the table wrote it; None if unreadable.

    ISO-8601 in its variants, or epoch seconds or milliseconds (a number, or digits in a
    string). A row is read, never trusted: an unreadable value must not turn a whole
    listing into an error, so it reads as unknown and the caller falls back.
    """
    if isinstance(value, str):
        try:
            return parse_timestamp(value)
        except ValueError:
            pass
    try:
        epoch = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(epoch):
        return None
    if abs(epoch) > _EPOCH_MILLIS_ABOVE:
        epoch /= 1000
    try:
        return datetime.fromtimestamp(epoch, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


class IsoTimestampAttribute(Attribute[datetime]):
    """A datetime stored as an ISO-8601 ``Z`` string (PynamoDB's own uses ``+0000``).

    Written only in our format; read leniently (see :func:`read_timestamp`): a number
    (``N``) is accepted as epoch time, and a value of any other type or an unreadable
    string reads as None instead of failing the whole row.
    """

    attr_type = STRING

    def get_value(self, value: dict[str, Any]) -> Any:
        for type_name in (STRING, NUMBER):
            if type_name in value:
                return value[type_name]
        return None

    def serialize(self, value: datetime) -> str:
        return format_timestamp(value)

    def deserialize(self, value: str) -> datetime | None:  # type: ignore[override]
        return None if value is None else read_timestamp(value)


class LenientTTLAttribute(TTLAttribute):
    """The TTL attribute, read leniently: DynamoDB only honours a number, but another tool may
    have stored a string; an unreadable value reads as None (no expiry known)."""

    def get_value(self, value: dict[str, Any]) -> Any:
        for type_name in (NUMBER, STRING):
            if type_name in value:
                return value[type_name]
        return None

    def deserialize(self, value: Any) -> datetime | None:  # type: ignore[override]
        return None if value is None else read_timestamp(value)


def epoch_seconds(value: datetime) -> int:
    """Whole seconds since the epoch: ``liveSince``, and the cutoff compared with it."""
    return int(value.timestamp())


def activity_bucket(value: datetime) -> int:
    """Start (epoch seconds) of the activity bucket holding ``value``: the live index's sort key."""
    seconds = int(value.timestamp())
    return seconds - seconds % ACTIVITY_BUCKET_SECONDS


class UserIdIndex(GlobalSecondaryIndex["ConnectionModel"]):
    """A user's connections by status; records are read from the table by key."""

    class Meta:
        index_name = "UserIdIndex"
        # Attributes that never change while a row lives: activity writes skip this index.
        projection = IncludeProjection(["createdAt"])

    user_id = UnicodeAttribute(hash_key=True, attr_name="userId")
    status = UnicodeAttribute(range_key=True, attr_name="status")


class LiveIndex(GlobalSecondaryIndex["ConnectionModel"]):
    """Live connections only (sparse), ordered by activity bucket within each shard."""

    class Meta:
        index_name = "LiveIndex"
        projection = AllProjection()

    active_shard = NumberAttribute(hash_key=True, attr_name="activeShard")
    active_bucket = NumberAttribute(range_key=True, attr_name="activeBucket")


class LifetimeIndex(GlobalSecondaryIndex["ConnectionModel"]):
    """Live connections only (sparse), oldest first within each shard; keys only."""

    class Meta:
        index_name = "LifetimeIndex"
        # Keys only: no attribute an activity write changes is copied here.
        projection = KeysOnlyProjection()

    active_shard = NumberAttribute(hash_key=True, attr_name="activeShard")
    live_since = NumberAttribute(range_key=True, attr_name="liveSince")


class ConnectionModel(Model):
    """One WebSocket connection, live or historical."""

    class Meta:
        table_name = "connections"
        billing_mode = "PAY_PER_REQUEST"
        #: The stream presence is made from (connection_manager.presence): create-table makes
        #: it, migrate adds it to a table made without one.
        stream_view_type = "NEW_AND_OLD_IMAGES"
        #: Partition values of ``LiveIndex``, bound from the capacity model with the table
        #: (:func:`configure`, :func:`model_for`). Part of the table's layout: listings and the
        #: sweep query shards ``0..n-1``, so it may grow but never shrink without a ``reindex``.
        live_shards = 4
        max_pool_connections = 32
        # Botocore's "standard" retry mode with 1 + max_retry_attempts tries: jittered
        # exponential backoff on throttling, 5xx and dropped connections.
        max_retry_attempts = 3

    connection_id = UnicodeAttribute(hash_key=True, attr_name="connectionId")
    user_id = UnicodeAttribute(attr_name="userId")
    status = UnicodeAttribute(attr_name="status")
    created_at = IsoTimestampAttribute(attr_name="createdAt")
    last_active_at = IsoTimestampAttribute(null=True, attr_name="lastActiveAt")
    updated_at = IsoTimestampAttribute(null=True, attr_name="updatedAt")
    disconnected_at = IsoTimestampAttribute(null=True, attr_name="disconnectedAt")
    disconnect_reason = UnicodeAttribute(null=True, attr_name="disconnectReason")
    metadata = MapAttribute[str, Any](null=True, attr_name="metadata")
    expires_at = LenientTTLAttribute(null=True, attr_name="expiresAt")
    active_shard = NumberAttribute(null=True, attr_name="activeShard")
    #: Random id of the last disconnecting write, set by that write itself: when botocore
    #: retries a write whose answer was lost and the retry fails its condition, finding its
    #: own id here tells it the first attempt applied. Internal; never in a response.
    write_id = UnicodeAttribute(null=True, attr_name="writeId")
    active_bucket = NumberAttribute(null=True, attr_name="activeBucket")
    #: ``createdAt`` in epoch seconds, the lifetime index's sort key (see the module docstring).
    #: Kept after a disconnect: leaving ``activeShard`` out already takes the row out of the
    #: index, and a row set CONNECTED again comes back with its own age.
    live_since = NumberAttribute(null=True, attr_name="liveSince")
    #: API Gateway's management endpoint for this socket (``https://{domainName}/{stage}``),
    #: stored at ``$connect``: where DeleteConnection and GetConnection go. Internal; never
    #: in a response. Rows written by other tools have none and are handled as before.
    gateway_endpoint = UnicodeAttribute(null=True, attr_name="gatewayEndpoint")

    user_index = UserIdIndex()
    live_index = LiveIndex()
    lifetime_index = LifetimeIndex()


def live_shards(model: type[ConnectionModel] = ConnectionModel) -> int:
    """Shards of the live index of the table ``model`` is bound to."""
    return int(model.Meta.live_shards)  # type: ignore[attr-defined]


def shard_for(connection_id: str, model: type[ConnectionModel] = ConnectionModel) -> int:
    """Stable shard of a connection id (crc32 is cheap and the same in every process)."""
    return zlib.crc32(connection_id.encode("utf-8")) % live_shards(model)


class TableSettings(Protocol):
    table_name: str
    region: str | None
    max_retry_attempts: int
    connect_timeout_seconds: int
    read_timeout_seconds: int
    max_pool_connections: int
    live_shards: int


def configure(settings: TableSettings) -> None:
    """Bind the shared model to a table, region and retry policy chosen at run time.

    Once per process, by the composition root (``connection_manager.wiring``), before the
    first request: every object already using the class follows it, which is why nothing
    else may call this under a live service (use :func:`model_for` for a second table).
    PynamoDB reads ``Meta`` when it first builds its connection, so the cached connection
    is dropped here; the endpoint itself comes from botocore's standard
    ``AWS_ENDPOINT_URL_DYNAMODB`` resolution.
    """
    _bind(ConnectionModel.Meta, settings)
    ConnectionModel._connection = None


def model_for(settings: TableSettings) -> type[ConnectionModel]:
    """A ``ConnectionModel`` subclass of its own, bound to the table ``settings`` name.

    A second table in one process (a test, a migration between tables) gets its own class,
    so binding it cannot repoint a service already working on the shared one. PynamoDB
    copies the indexes onto each subclass, and each subclass builds its own connection.
    """
    meta = type("Meta", (ConnectionModel.Meta,), {})
    _bind(meta, settings)
    namespace = {"Meta": meta, "_connection": None, "__module__": __name__, "__qualname__": "ConnectionModel"}
    return type("ConnectionModel", (ConnectionModel,), namespace)


def _bind(meta: Any, settings: TableSettings) -> None:
    meta.table_name = settings.table_name
    meta.live_shards = settings.live_shards
    meta.region = settings.region  # type: ignore[attr-defined]
    meta.connect_timeout_seconds = settings.connect_timeout_seconds  # type: ignore[attr-defined]
    meta.read_timeout_seconds = settings.read_timeout_seconds  # type: ignore[attr-defined]
    meta.max_pool_connections = settings.max_pool_connections
    # PynamoDB 6.1 builds its connection from ``max_retry_attempts`` only (botocore's
    # "standard" mode, 1 + this many tries) and never passes ``retry_configuration`` on.
    meta.max_retry_attempts = settings.max_retry_attempts  # type: ignore[attr-defined]
