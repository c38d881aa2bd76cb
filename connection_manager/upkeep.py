"""Table upkeep: create the table and its TTL, migrate an older layout, reindex the live rows.

Part of :class:`connection_manager.service.ConnectionService`, which composes the parts
(see that module for why one object).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable, Iterator

from connection_manager.bulk import APPLIED, SKIPPED, BulkOutcome
from connection_manager.dynamo import dynamo_errors
from connection_manager.rows import (
    CONNECTED,
    RowAccess,
)
from models.connection import (
    ConnectionModel,
    activity_bucket,
    epoch_seconds,
    shard_for,
)

log = logging.getLogger(__name__)


class Upkeep(RowAccess):
    """Table upkeep: create the table and its TTL, migrate an older layout, reindex the live rows."""

    # Table ------------------------------------------------------------------------------

    def create_table(self) -> bool:
        """Create the table and its indexes if missing; True when it was created now."""
        with dynamo_errors("create_table"):
            if self.model.exists():
                return False
            # TTL is switched on by enable_ttl, where a server without TTL support can be reported.
            self.model.create_table(wait=True, billing_mode="PAY_PER_REQUEST", ignore_update_ttl_errors=True)
            return True

    def enable_ttl(self) -> bool:
        """Let DynamoDB purge DISCONNECTED rows once ``expiresAt`` passes; False if unsupported."""
        try:
            # DynamoDB refuses to enable TTL twice (ValidationException), and PynamoDB's
            # create_table has already enabled it: look before writing.
            if self._ttl_enabled():
                return True
            self.model.update_ttl(ignore_update_ttl_errors=False)
        except Exception as exc:  # servers without TTL support fail in several ways
            log.warning("could not enable TTL on %s: %s", self.settings.table_name, exc)
            return False
        return True

    def _ttl_enabled(self) -> bool:
        client = self.model._get_connection().connection.client
        answer = client.describe_time_to_live(TableName=self.settings.table_name)
        description = answer.get("TimeToLiveDescription", {})
        return description.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and description.get(
            "AttributeName"
        ) == self.model._ttl_attribute().attr_name

    def enable_stream(self) -> str:
        """Give the table the stream presence reads: ``enabled`` now, ``present`` already, or
        ``differs: <view type>`` (left alone: changing it means disabling the stream first,
        and a consumer would lose the records in between)."""
        wanted = self.model.Meta.stream_view_type
        with dynamo_errors("migrate"):
            client = self.model._get_connection().connection.client
            table = client.describe_table(TableName=self.settings.table_name)["Table"]
            current = table.get("StreamSpecification") or {}
            if current.get("StreamEnabled"):
                view = current.get("StreamViewType")
                return "present" if view == wanted else f"differs: {view}"
            client.update_table(TableName=self.settings.table_name,
                                StreamSpecification={"StreamEnabled": True, "StreamViewType": wanted})
            log.info("stream %s enabled on %s", wanted, self.settings.table_name)
            return "enabled"

    def migrate(self, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Bring a table created by an earlier version to this layout: add the indexes it
        lacks (UpdateTable), then :meth:`reindex` its CONNECTED rows into them."""
        from connection_manager.migration import add_missing_indexes

        report = add_missing_indexes(self.model, sleep=sleep)
        stream = self.enable_stream()
        outcome = self.reindex()
        return {
            "createdIndexes": report.created,
            "presentIndexes": report.present,
            "differingIndexes": report.differs,
            "stream": stream,
            "reindexed": outcome.applied,
            "skipped": outcome.skipped,
            "failed": outcome.failed,
        }

    def reindex(self) -> BulkOutcome:
        """Put CONNECTED rows written by other tools into the sparse index; a one-time migration.

        Rows the platform wrote before this service (no ``activeShard``, perhaps no
        ``lastActiveAt``) are invisible to the sweep and to ``get_all_connections``. This is
        the one operation that Scans the table, so it is a CLI command, never routine: it
        sets ``activeShard`` and, where missing, ``lastActiveAt = createdAt`` (a connection
        with no activity counts as active since it was created) and ``liveSince`` (the
        lifetime index's key, from ``createdAt``), conditional on the row still being
        CONNECTED. ``migrate`` runs it after adding the indexes a table lacks.
        """
        missing = (
            ConnectionModel.active_shard.does_not_exist()
            | ConnectionModel.active_bucket.does_not_exist()
            | ConnectionModel.last_active_at.does_not_exist()
            | ConnectionModel.live_since.does_not_exist()
        )
        with dynamo_errors("reindex"):
            rows = self.model.scan(
                filter_condition=(ConnectionModel.status == CONNECTED) & missing,
                attributes_to_get=["connectionId", "lastActiveAt", "createdAt"],
            )
            # Reading a row to compute its bucket and age: other tools' rows may hold any
            # timestamp format, which DynamoDB cannot convert in an update expression.
            by_id: dict[str, tuple[datetime | None, datetime | None]] = {}

            def ids() -> Iterator[str]:
                for row in rows:
                    by_id[row.connection_id] = (row.last_active_at or row.created_at, row.created_at or row.last_active_at)
                    yield row.connection_id

            return self._write_all(ids(), lambda cid: self._reindex_one(cid, *by_id.pop(cid, (None, None))))

    def _reindex_one(self, connection_id: str, last_active: datetime | None, created: datetime | None = None) -> str:
        row = self.model(connection_id)
        now = self.clock()
        actions = [
            ConnectionModel.last_active_at.set(ConnectionModel.last_active_at | ConnectionModel.created_at),
            ConnectionModel.active_shard.set(shard_for(connection_id, self.model)),
            ConnectionModel.active_bucket.set(activity_bucket(last_active or now)),
            # A row of unknown age gets a whole lifetime from now (the stale sweep still sees it).
            ConnectionModel.live_since.set(ConnectionModel.live_since | epoch_seconds(created or now)),
        ]
        # A heartbeat or message in between set its own bucket: keep it.
        condition = (ConnectionModel.status == CONNECTED) & (
            ConnectionModel.active_bucket.does_not_exist() | ConnectionModel.active_shard.does_not_exist()
            | ConnectionModel.last_active_at.does_not_exist() | ConnectionModel.live_since.does_not_exist()
        )
        if not self._conditional_update(row, actions, condition, "reindex"):
            return SKIPPED
        self.platform.count(connection_id, +1)
        return APPLIED
