"""Platform counts at a cost that does not grow with connections: counters, a snapshot, a history.

* **Counters.** Every write that puts a row into or out of the live set adds +1 or -1 to
  the counter item of that row's live shard (:func:`models.platform.counter_key`), after
  the row's own conditional write succeeded. ``/stats`` reads the ``n`` counters and the
  snapshot in one BatchGetItem: ``n + 1`` small items whatever the number of connections.
* **Snapshot.** After each sweep :meth:`PlatformStats.take_snapshot` reads every live row
  once (the cost of a ``Select=COUNT``: DynamoDB bills the bytes it reads either way),
  counts each shard exactly, repairs a counter that drifted (a counter write lost after
  its row write, rows other tools wrote), and stores distinct users, the idle-time
  distribution and the heaviest users.
* **History.** Each sweep's result is one small record that DynamoDB's TTL removes after
  :data:`HISTORY_TTL_SECONDS`; ``GET /stats/history`` is one range query.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from pynamodb.exceptions import PynamoDBException

from connection_manager.dynamo import dynamo_errors, is_condition_failure
from connection_manager.sketch import DistinctCounter, TopCounter
from models.connection import ConnectionModel, ConnectionStatus, format_timestamp, live_shards, shard_for
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
#: Users shown as the heaviest on the dashboard.
TOP_USERS = 10
#: Lower bounds (seconds idle) of the idle-time distribution's bins.
IDLE_BINS: tuple[tuple[str, int], ...] = (
    ("< 5 min", 0), ("5-15 min", 300), ("15-30 min", 900), ("30-60 min", 1800), ("1-2 h", 3600), ("> 2 h", 7200),
)
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
        keys = [counter_key(shard) for shard in range(live_shards(self.model))] + [SNAPSHOT_KEY]
        with dynamo_errors("stats"):
            items = list(self.records.batch_get(keys))
        active = sum(int(item.live or 0) for item in items if item.key != SNAPSHOT_KEY)
        snapshot = next((json.loads(item.body) for item in items if item.key == SNAPSHOT_KEY and item.body), None)
        return max(active, 0), snapshot

    # Snapshot ---------------------------------------------------------------------------

    def take_snapshot(self, now: datetime) -> dict[str, Any]:
        """Count every live row, repair the counters, store and return the snapshot body."""
        users, heavy = DistinctCounter(), TopCounter()
        idle = [0] * len(IDLE_BINS)
        lock = threading.Lock()
        repaired = 0

        def count_shard(shard: int) -> tuple[int, bool]:
            before = self._counter(shard)
            rows = 0
            for page in self.model.live_index.query(
                shard,
                filter_condition=ConnectionModel.status == ConnectionStatus.CONNECTED.value,
                attributes_to_get=["userId", "lastActiveAt", "createdAt"],
            ).page_iter:
                found = [self.model.from_raw_data(item) for item in page.get("Items", [])]
                with lock:
                    for row in found:
                        users.add(row.user_id)
                        heavy.add(row.user_id)
                        last = row.last_active_at or row.created_at
                        seconds = (now - last).total_seconds() if last is not None else float("inf")
                        idle[_bin(seconds)] += 1
                rows += len(found)
            return rows, before != rows and self._repair(shard, before, rows)

        with dynamo_errors("snapshot"):
            shards = list(range(live_shards(self.model)))
            with ThreadPoolExecutor(max_workers=max(1, min(len(shards), self.concurrency))) as pool:
                counted = list(pool.map(count_shard, shards))
            active = sum(rows for rows, _ in counted)
            repaired = sum(1 for _, fixed in counted if fixed)
            body = {
                "asOf": format_timestamp(now),
                "activeConnections": active,
                "distinctUsers": users.count(),
                "distinctUsersExact": users.exact,
                "idle": [{"label": label, "fromSeconds": low, "count": n} for (label, low), n in zip(IDLE_BINS, idle)],
                "topUsers": [{"userId": user, "connections": n} for user, n in heavy.top(TOP_USERS)],
                "topUsersExact": heavy.exact,
                "countersRepaired": repaired,
            }
            self.records(SNAPSHOT_KEY, body=json.dumps(body, separators=(",", ":"))).save()
        return body

    def _counter(self, shard: int) -> int | None:
        try:
            return int(self.records.get(counter_key(shard), consistent_read=True).live or 0)
        except self.records.DoesNotExist:
            return None

    def _repair(self, shard: int, before: int | None, rows: int) -> bool:
        """Set a shard's counter to its count, unless a connect or disconnect moved it meanwhile
        (then the count may already be stale: the next snapshot tries again)."""
        condition = PlatformRecord.live.does_not_exist() if before is None else PlatformRecord.live == before
        try:
            self.records(counter_key(shard)).update(actions=[PlatformRecord.live.set(rows)], condition=condition)
        except PynamoDBException as exc:
            if is_condition_failure(exc):
                return False
            raise
        # A first count is no repair worth an INFO line; a counter that drifted is.
        (log.debug if before is None else log.info)("live counter of shard %s set: %s -> %s", shard, before, rows)
        return True

    # History ----------------------------------------------------------------------------

    def record_sweep(self, now: datetime, sweep: dict[str, Any], snapshot: dict[str, Any] | None) -> dict[str, Any]:
        """Store one sweep's result; DynamoDB's TTL deletes it after 30 days."""
        entry: dict[str, Any] = {"at": format_timestamp(now)}
        entry["activeConnections"] = snapshot["activeConnections"] if snapshot else None
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


def _bin(seconds: float) -> int:
    index = 0
    for position, (_, low) in enumerate(IDLE_BINS):
        if seconds >= low:
            index = position
    return index
