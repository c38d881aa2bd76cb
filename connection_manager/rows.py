"""The one data-access module: every PynamoDB condition and update action on a connection row.

Part of :class:`connection_manager.service.ConnectionService`, which composes the parts
(see that module for why one object).
"""
from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from pynamodb.exceptions import DoesNotExist, PynamoDBException

from connection_manager.activity import ActivityMemory
from connection_manager.bulk import (
    APPLIED,
    REPAIRED,
    SKIPPED,
    BoundedWriter,
    BulkOutcome,
)
from connection_manager.clock import Clock
from connection_manager.config import Settings
from connection_manager.dynamo import (
    dynamo_errors,
    is_condition_failure,
    update_or_current,
)
from connection_manager.errors import (
    NotFoundError,
    ValidationError,
)
from connection_manager.gateway import Gateway
from connection_manager.platform_stats import PlatformStats
from connection_manager.signing_key import SigningKeys
from models.connection import (
    ConnectionModel,
    ConnectionStatus,
    DisconnectReason,
    activity_bucket,
    live_shards,
    parse_timestamp,
    shard_for,
)

log = logging.getLogger(__name__)

CONNECTED = ConnectionStatus.CONNECTED.value
DISCONNECTED = ConnectionStatus.DISCONNECTED.value

ACTIVE_KEYS = frozenset({"connectionId", "activeShard", "activeBucket"})

#: Other tools sharing the table may disconnect a row without removing ``activeShard``, so
#: the sparse index can hold a few DISCONNECTED rows; reads of it filter them out (they are
#: billed, but rare, and the sweep takes them out of the index when it meets them).
LIVE = ConnectionModel.status == CONNECTED
USER_KEYS = frozenset({"connectionId", "userId", "status"})


#: What a WebSocket message did to ``lastActiveAt``.
WRITTEN = "written"  # the stored time was older than the interval: moved to now
REMEMBERED = "remembered"  # this process knew it was recent: no request at all
CURRENT = "current"  # the table said it was recent (a failed condition, 1 write unit)
CHECKED = "checked"  # a read of the row said it was recent (0.5 read units): no write
NOT_CONNECTED = "not_connected"  # no such row, or not CONNECTED: nothing changed


class Tally:
    """Counts shared by the threads of one bulk operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


#: Reasons whose socket is known to be closed already: no DeleteConnection is sent for them.
SOCKET_CLOSED = frozenset({DisconnectReason.CLIENT.value, DisconnectReason.GONE.value})


def read_activity(model: type[ConnectionModel], connection_id: str) -> tuple[bool, datetime | None]:
    """(CONNECTED?, stored ``lastActiveAt``) of a row, by one eventually consistent GetItem.

    0.5 read units whatever is projected (reads are billed by the item, rounded up to
    4 KB); the projection only keeps the answer small. A missing row is not CONNECTED."""
    answer = model._get_connection().get_item(
        connection_id, consistent_read=False, attributes_to_get=["status", "lastActiveAt"]
    )
    item = answer.get("Item") or {}
    return item.get("status", {}).get("S") == CONNECTED, stored_time(item)


def stored_time(item: dict[str, Any]) -> datetime | None:
    """``lastActiveAt`` of a raw item; None when missing or in another tool's format."""
    last = item.get("lastActiveAt", {}).get("S")
    if not last:
        return None
    try:
        return parse_timestamp(last)
    except ValueError:
        return None  # the next message asks the table again


def new_write_id() -> str:
    return uuid.uuid4().hex


def live_index_actions(connection_id: str, now: datetime, model: type[ConnectionModel]) -> list[Any]:
    """Keep a CONNECTED row in the live index at ``now``'s bucket (also heals other tools' rows).

    Setting a key to the value it already has leaves the index item where it is.
    """
    return [
        ConnectionModel.active_shard.set(shard_for(connection_id, model)),
        ConnectionModel.active_bucket.set(activity_bucket(now)),
    ]


def live_key(row: ConnectionModel) -> dict[str, dict[str, str]]:
    """The live-index key of a row, as DynamoDB's ``LastEvaluatedKey`` spells it."""
    return {
        "connectionId": {"S": row.connection_id},
        "activeShard": {"N": str(row.active_shard)},
        "activeBucket": {"N": str(row.active_bucket)},
    }


def check_start_key(key: dict[str, dict[str, Any]] | None, expected: dict[str, dict[str, str]]) -> None:
    """A token's key must lie in the partition the listing queries.

    DynamoDB rejects an ``ExclusiveStartKey`` from another partition with a
    ValidationException (a 500 here), and the signature alone cannot rule one out:
    whoever holds the signing secret can sign any key.
    """
    if key is not None and any(key.get(name) != value for name, value in expected.items()):
        raise ValidationError("`nextToken` is not a token issued by this service for this listing")


class RowAccess:
    """The one data-access module: every PynamoDB condition and update action on a connection row."""

    settings: Settings
    clock: Clock
    model: type[ConnectionModel]
    activity: ActivityMemory
    platform: PlatformStats
    gateway: Gateway
    signing_keys: SigningKeys

    def _close_socket(self, row: ConnectionModel) -> bool:
        """DeleteConnection for a row with a stored endpoint; True when closed, already gone, or none is known."""
        if not row.gateway_endpoint:
            return True  # written by another tool: handled as before
        return self.gateway.close(row.gateway_endpoint, row.connection_id)

    # Internals --------------------------------------------------------------------------

    def _get(self, connection_id: str, missing: Exception | None = None) -> ConnectionModel:
        try:
            with dynamo_errors("get_connection"):
                return self.model.get(connection_id, consistent_read=True)
        except DoesNotExist:
            raise (missing or NotFoundError(f"Connection '{connection_id}' does not exist")) from None

    def _active_rows(self, attributes: list[str], filter_condition: Any = None) -> Iterable[ConnectionModel]:
        """Stream the live index, its shards read concurrently; a few pages in memory at a time."""
        return self._index_rows(self.model.live_index, attributes, filter_condition=filter_condition)

    def _index_rows(
        self,
        index: Any,
        attributes: list[str],
        range_key_condition: Any = None,
        filter_condition: Any = None,
        page_size: int | None = None,
        errors: list[BaseException] | None = None,
    ) -> Iterable[ConnectionModel]:
        """Stream a sparse index partitioned by ``activeShard``, its shards read concurrently."""
        from connection_manager.fanout import merged

        def shard_rows(shard: int) -> Iterable[ConnectionModel]:
            return index.query(
                shard,
                range_key_condition=range_key_condition,
                filter_condition=filter_condition,
                attributes_to_get=attributes,
                page_size=page_size,
            )

        sources = [lambda s=shard: shard_rows(s) for shard in range(live_shards(self.model))]
        return merged(sources, self.settings.sweep_concurrency, errors)

    def _conditional_update(self, row: ConnectionModel, actions: list[Any], condition: Any, operation: str) -> bool:
        """Apply ``actions`` if ``condition`` holds; False when it did not (nothing written)."""
        try:
            with dynamo_errors(operation):
                row.update(actions=actions, condition=condition)
            return True
        except PynamoDBException as exc:
            if is_condition_failure(exc):
                return False
            raise

    def _disconnect_actions(self, reason: DisconnectReason, write_id: str) -> list[Any]:
        now = self.clock()
        actions = [
            ConnectionModel.status.set(DISCONNECTED),
            ConnectionModel.write_id.set(write_id),
            ConnectionModel.disconnect_reason.set(reason.value),
            ConnectionModel.disconnected_at.set(now),
            ConnectionModel.updated_at.set(now),
            # Leaving the sparse index in the same write is what keeps it live-only.
            ConnectionModel.active_shard.remove(),
            ConnectionModel.active_bucket.remove(),
        ]
        if self.settings.retention_seconds:
            actions.append(ConnectionModel.expires_at.set(now + timedelta(seconds=self.settings.retention_seconds)))
        return actions

    def _disconnect_if_connected(self, connection_id: str, reason: DisconnectReason) -> ConnectionModel | None:
        """One conditional write; the updated row, or None when it was not CONNECTED (or absent).

        A retry of this very write whose first answer was lost counts as this write having
        applied it (see :meth:`_update_or_current`).
        """
        row = self.model(connection_id)
        condition = ConnectionModel.connection_id.exists() & (ConnectionModel.status == CONNECTED)
        write_id = new_write_id()
        applied, current = self._update_or_current(
            row, self._disconnect_actions(reason, write_id), condition, "disconnect"
        )
        if applied or (current is not None and current.write_id == write_id):
            self.platform.count(connection_id, -1)
            return row if applied else current
        return None

    def _disconnect_outcome(self, connection_id: str, reason: DisconnectReason) -> str:
        return APPLIED if self._disconnect_if_connected(connection_id, reason) is not None else SKIPPED

    def _leave_index(self, connection_id: str) -> str:
        """Remove ``activeShard`` from a row that is not CONNECTED (another tool disconnected it
        and left it), so listings, counts and later sweeps stop reading it. Conditional, so a
        row revived in between keeps its place in the index."""
        row = self.model(connection_id)
        condition = ConnectionModel.active_shard.exists() & (ConnectionModel.status != CONNECTED)
        actions = [ConnectionModel.active_shard.remove()]
        return REPAIRED if self._conditional_update(row, actions, condition, "sweep repair") else SKIPPED

    def _update_or_current(
        self, row: ConnectionModel, actions: list[Any], condition: Any, operation: str
    ) -> tuple[bool, ConnectionModel | None]:
        """Apply ``actions`` if ``condition`` holds: ``(True, None)``; else ``(False, the row as
        stored)``, or ``(False, None)`` when it does not exist. DynamoDB returns the stored item
        with the failed condition, so telling what happened costs no read."""
        with dynamo_errors(operation):
            applied, item = update_or_current(row, actions, condition)
        return applied, (self.model.from_raw_data(item) if item is not None else None)

    def _write_all(
        self, ids: Iterable[str], write: Callable[[str], str], stop: Callable[[], bool] | None = None
    ) -> BulkOutcome:
        with BoundedWriter(write, self.settings.sweep_concurrency, stop=stop) as writer:
            for connection_id in ids:
                if not writer.submit(connection_id):
                    break
        return writer.outcome
