"""A snapshot pass's cursors and partial counts, and their stored form between invocations.

A pass over ten million live rows spans invocations, so what it has counted so far must
survive in one DynamoDB item (400 KB at most): the cursor of each shard, the rows each has
counted, the counter read when its count started, the idle-time bins, and the two sketches
of :mod:`connection_manager.sketch`. Stored as compressed JSON; a state over
:data:`STATE_BUDGET_BYTES` drops the exact user set and keeps counting as an estimate.
"""
from __future__ import annotations

import bisect
import json
import logging
import uuid
import zlib
from datetime import datetime, timedelta
from typing import Any

from connection_manager.sketch import DistinctCounter, TopCounter
from models.connection import format_timestamp, read_timestamp

log = logging.getLogger(__name__)

#: Largest stored pass state; past it the exact user set is dropped (estimates from there on).
STATE_BUDGET_BYTES = 300_000
#: Heaviest users kept when the state must shrink.
SHRUNK_TOP = 1000
#: Bumped whenever the stored state's shape changes: an older state is discarded.
STATE_VERSION = 1
#: Lower bounds (seconds idle) of the idle-time distribution's bins.
IDLE_BINS: tuple[tuple[str, int], ...] = (
    ("< 5 min", 0), ("5-15 min", 300), ("15-30 min", 900), ("30-60 min", 1800), ("1-2 h", 3600), ("> 2 h", 7200),
)
TOP_USERS = 10


class _Shard:
    __slots__ = ("cursor", "done", "rows", "before", "started")

    def __init__(self) -> None:
        self.cursor: dict[str, Any] | None = None
        self.done = False
        self.rows = 0
        self.before: int | None = None
        self.started = False


class PassState:
    """A pass's cursors and partial counts, as stored between invocations."""

    def __init__(self, shards: int, index: str, started_at: str) -> None:
        self.pass_id = uuid.uuid4().hex
        self.index = index
        self.started_at = started_at
        self.shards = [_Shard() for _ in range(shards)]
        self.users = DistinctCounter()
        self.heavy = TopCounter()
        self.idle = [0] * len(IDLE_BINS)
        self.invocations = 0
        self.repaired = 0

    @property
    def complete(self) -> bool:
        return all(shard.done for shard in self.shards)

    def progress(self) -> dict[str, Any]:
        return {
            "passId": self.pass_id,
            "startedAt": self.started_at,
            "shards": len(self.shards),
            "shardsDone": sum(1 for shard in self.shards if shard.done),
            "rowsCounted": sum(shard.rows for shard in self.shards),
            "invocations": self.invocations,
        }

    def figures(self, now: datetime) -> dict[str, Any]:
        return {
            "asOf": format_timestamp(now),
            "startedAt": self.started_at,
            "activeConnections": sum(shard.rows for shard in self.shards),
            "distinctUsers": self.users.count(),
            "distinctUsersExact": self.users.exact,
            "idle": [{"label": label, "fromSeconds": low, "count": n} for (label, low), n in zip(IDLE_BINS, self.idle)],
            "topUsers": [{"userId": user, "connections": n} for user, n in self.heavy.top(TOP_USERS)],
            "topUsersExact": self.heavy.exact,
            "countersRepaired": self.repaired,
            "invocations": self.invocations,
        }

    # Stored form ------------------------------------------------------------------------

    def to_bytes(self, budget: int = STATE_BUDGET_BYTES) -> bytes:
        """Compressed JSON; past ``budget`` the exact users go and the heaviest users shrink."""
        data = self._encode(keep_exact=True)
        if len(data) > budget:
            log.info("snapshot state of %d bytes is over %d: distinct users are estimated from here on", len(data), budget)
            self.heavy.shrink(SHRUNK_TOP)
            data = self._encode(keep_exact=False)
            self.users = DistinctCounter.from_state(self.users.to_state(keep_exact=False))
        return data

    def _encode(self, keep_exact: bool) -> bytes:
        state = {
            "version": STATE_VERSION,
            "passId": self.pass_id,
            "index": self.index,
            "startedAt": self.started_at,
            "shards": [
                {"cursor": s.cursor, "done": s.done, "rows": s.rows, "before": s.before, "started": s.started}
                for s in self.shards
            ],
            "users": self.users.to_state(keep_exact=keep_exact),
            "heavy": self.heavy.to_state(),
            "idle": self.idle,
            "invocations": self.invocations,
            "repaired": self.repaired,
        }
        return zlib.compress(json.dumps(state, separators=(",", ":")).encode("utf-8"))

    @classmethod
    def from_bytes(cls, data: bytes, shards: int, index: str) -> PassState:
        """The stored pass; ``ValueError`` when it is unreadable or from another table layout."""
        try:
            saved = json.loads(zlib.decompress(data))
            if saved.get("version") != STATE_VERSION or saved.get("index") != index or len(saved["shards"]) != shards:
                raise ValueError(
                    f"layout {saved.get('version')}/{saved.get('index')}/{len(saved['shards'])} shards, "
                    f"expected {STATE_VERSION}/{index}/{shards}"
                )
            restored = cls(shards, index, str(saved["startedAt"]))
            restored.pass_id = str(saved["passId"])
            for number, (shard, stored) in enumerate(zip(restored.shards, saved["shards"])):
                cursor = stored["cursor"]
                if cursor is not None and (not isinstance(cursor, dict) or cursor.get("activeShard") != {"N": str(number)}):
                    raise ValueError(f"the cursor of shard {number} is not a key of that shard")
                shard.cursor, shard.done, shard.rows = cursor, bool(stored["done"]), int(stored["rows"])
                shard.before = None if stored["before"] is None else int(stored["before"])
                shard.started = bool(stored["started"])
            restored.users = DistinctCounter.from_state(saved["users"])
            restored.heavy = TopCounter.from_state(saved["heavy"])
            restored.idle = [int(n) for n in saved["idle"]]
            if len(restored.idle) != len(IDLE_BINS):
                raise ValueError("idle bins differ")
            restored.invocations, restored.repaired = int(saved["invocations"]), int(saved["repaired"])
        except (zlib.error, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
        return restored


class IdleBins:
    """The bin of a stored ``lastActiveAt`` relative to ``now``, by comparing text."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        # Newest bound last: bin = the number of bounds at or after the row's time.
        self.bounds = [format_timestamp(now - timedelta(seconds=low)) for _, low in reversed(IDLE_BINS[1:])]
        self.width = len(self.bounds[0])

    def count_into(self, idle: list[int], stamps: list[str | None]) -> None:
        """Add each stamp to its bin: the hot loop of the pass, with its names bound locally."""
        bounds, width, newest, search = self.bounds, self.width, len(self.bounds), bisect.bisect_left
        for stamp in stamps:
            if stamp is not None and len(stamp) == width and stamp[-1] == "Z":
                idle[newest - search(bounds, stamp)] += 1
            else:
                idle[self.of(stamp)] += 1

    def of(self, stamp: str | None) -> int:
        if stamp is None:
            return len(IDLE_BINS) - 1
        if len(stamp) == self.width and stamp[-1] == "Z":
            return len(self.bounds) - bisect.bisect_left(self.bounds, stamp)
        when = read_timestamp(stamp)  # written by another tool, in another format
        if when is None:
            return len(IDLE_BINS) - 1
        seconds = (self.now - when).total_seconds()
        return max((i for i, (_, low) in enumerate(IDLE_BINS) if seconds >= low), default=0)
