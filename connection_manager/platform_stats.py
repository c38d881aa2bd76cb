"""Platform counts at a cost that does not grow with connections: counters, a snapshot, a history.

* **Counters.** Every write that puts a row into or out of the live set adds +1 or -1 to
  the counter item of that row's live shard (:func:`models.platform.counter_key`), after
  the row's own conditional write succeeded. ``/stats`` reads the ``n`` counters and the
  snapshot in one BatchGetItem: ``n + 1`` small items whatever the number of connections.
* **Snapshot.** After each sweep, in the time the sweep left, a pass over every live row
  (the cost of a ``Select=COUNT``: DynamoDB bills the bytes it reads either way) goes on
  from where the last invocation stopped (:mod:`connection_manager.snapshot`): it counts
  each shard exactly, repairs a counter that drifted (a counter write lost after its row
  write, rows other tools wrote), and, once every shard is done, publishes distinct users,
  the idle-time distribution and the heaviest users.
* **History.** Each sweep's result is one small record that DynamoDB's TTL removes after
  :data:`HISTORY_TTL_SECONDS`; ``GET /stats/history`` is one range query.
"""
from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from pynamodb.exceptions import PynamoDBException

from connection_manager.clock import TimeLeft
from connection_manager.dynamo import dynamo_errors
from connection_manager.snapshot import Outcome, SnapshotPass
from models.connection import ConnectionModel, format_timestamp, live_shards, shard_for
from models.platform import (
    HISTORY_SHARD,
    SNAPSHOT_KEY,
    PlatformRecord,
    counter_key,
    history_key,
    records_for,
)

log = logging.getLogger(__name__)

HISTORY_TTL_SECONDS = 30 * 24 * 3600
#: The sweep counts a history record carries; counts a sweep does not report are 0.
SWEEP_COUNTS = {
    "staleFound": "scannedCount",
    "cleaned": "cleanedCount",
    "gone": "goneCount",
    "lifetime": "lifetimeCount",
    "evicted": "evictedCount",
}


class PlatformStats:
    """The counters, the snapshot and the history of one table."""

    def __init__(self, model: type[ConnectionModel], concurrency: int = 16) -> None:
        self.model = model
        self.records: type[PlatformRecord] = records_for(model)
        self.concurrency = concurrency
        self.snapshots = SnapshotPass(model, self.records, concurrency)

    # Counters ---------------------------------------------------------------------------

    def count(self, connection_id: str, delta: int) -> None:
        """Move a connection's shard counter by ``delta``, after its row write applied.

        A failure here must not fail that write (a client would retry a connect that
        succeeded): the counter is off by one until the next snapshot repairs it.
        """
        shard = shard_for(connection_id, self.model)
        try:
            self.records(counter_key(shard)).update(actions=[PlatformRecord.live.add(delta)])
        except PynamoDBException as exc:
            log.warning("live counter of shard %s not moved by %+d (%s); the next snapshot repairs it", shard, delta, exc)

    def read(self) -> tuple[int, dict[str, Any] | None]:
        """The live connections the counters hold, and the latest snapshot (None before the first)."""
        active, snapshot, _ = self.read_all()
        return active, snapshot

    def read_all(self) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
        """The counters' live connections, the latest snapshot and the pass under way (or None)."""
        keys = [counter_key(shard) for shard in range(live_shards(self.model))] + [SNAPSHOT_KEY]
        with dynamo_errors("stats"):
            items = list(self.records.batch_get(keys))
        active = sum(int(item.live or 0) for item in items if item.key != SNAPSHOT_KEY)
        own = next((item for item in items if item.key == SNAPSHOT_KEY), None)
        snapshot = json.loads(own.body) if own is not None and own.body else None
        progress = json.loads(own.progress) if own is not None and own.progress else None
        return max(active, 0), snapshot, progress

    # Snapshot ---------------------------------------------------------------------------

    def advance_snapshot(self, now: datetime, time_left: TimeLeft, margin_ms: int) -> Outcome:
        """Carry the snapshot pass on until ``margin_ms`` is left (see :mod:`connection_manager.snapshot`)."""
        return self.snapshots.advance(now, time_left, margin_ms)

    def take_snapshot(self, now: datetime) -> dict[str, Any]:
        """Count every live row now, with no deadline (seeding, the CLI); the latest figures.

        A pass another invocation holds is left to it: its figures so far are returned.
        """
        outcome = self.snapshots.advance(now, None, 0)
        if outcome.figures is not None:
            return outcome.figures
        return self.read()[1] or {}

    # History ----------------------------------------------------------------------------

    def record_sweep(self, now: datetime, sweep: dict[str, Any], snapshot: dict[str, Any] | None) -> dict[str, Any]:
        """Store one sweep's result; DynamoDB's TTL deletes it after 30 days."""
        entry: dict[str, Any] = {"at": format_timestamp(now)}
        # Without a finished pass, the counters' figure the sweep's answer carries (if any).
        entry["activeConnections"] = snapshot["activeConnections"] if snapshot else sweep.get("activeConnections")
        entry["distinctUsers"] = snapshot["distinctUsers"] if snapshot else None
        entry.update({name: int(sweep.get(field) or 0) for name, field in SWEEP_COUNTS.items()})
        entry["durationMs"] = int(sweep.get("durationMs") or 0)
        epoch = int(now.timestamp())
        with dynamo_errors("record_sweep"):
            self.records(
                history_key(epoch, uuid.uuid4().hex[:12]),
                body=json.dumps(entry, separators=(",", ":")),
                active_shard=HISTORY_SHARD,
                active_bucket=epoch,
                expires_at=now + timedelta(seconds=HISTORY_TTL_SECONDS),
            ).save()
        return entry

    def history(self, since: datetime, limit: int) -> list[dict[str, Any]]:
        """Sweep records since ``since``, oldest first, at most ``limit`` (the newest ones)."""
        with dynamo_errors("stats_history"):
            found = self.records.history.query(
                HISTORY_SHARD,
                range_key_condition=PlatformRecord.active_bucket >= int(since.timestamp()),
                scan_index_forward=False,
                limit=limit,
                page_size=limit,
            )
            entries = [json.loads(item.body) for item in found if item.body]
        return entries[::-1]

