"""The capacity model: what N live connections cost and how many live-index shards carry them.

Pure arithmetic, no DynamoDB: the settings size the live index from it, and
``tests/test_capacity.py`` checks every row of the table in ``docs/capacity.md`` against it,
so the documented numbers and the running layout cannot drift apart.

Per coalesced activity write (an item under 1 KB), as DynamoDB bills it:

* table: 1 write unit;
* ``LiveIndex``: 1 (its ALL projection copies ``lastActiveAt``), plus 1 more when the
  activity bucket (the index's sort key) moves, a delete and a put, once per
  ``bucket_seconds`` of continuous activity;
* ``UserIdIndex``: 0 (its projection leaves the activity attributes out).

A connection writes at most once per ``activity_interval`` seconds, and at most once per
message: ``min(message_rate, 1 / activity_interval)`` writes per second.

Across a Lambda fleet a message rarely lands in a container that has seen its connection,
so the model prices every message (interval > 0) with the check the message path makes
then: one eventually consistent ``GetItem`` of the row, 0.5 read units. Reads are priced as
write-unit equivalents, ``RRU / 5`` (a read request unit costs a fifth of a write request
unit on demand). They touch no index, so they do not change the shards.
"""
from __future__ import annotations

import math

import msgspec

#: What DynamoDB takes on one partition key, per second.
KEY_WRITE_LIMIT = 1000
#: Fraction of that limit a shard is sized for: bursts, and a skewed crc32, stay under it.
KEY_HEADROOM = 0.5
#: On-demand price, US East, per million write units.
PRICE_PER_MILLION_WRITES = 0.625
#: On-demand price, US East, per million read units (a fifth of a write's).
PRICE_PER_MILLION_READS = 0.125
#: Read units of the message path's check: an eventually consistent GetItem of a row under 4 KB.
CHECK_READ_UNITS = 0.5
SECONDS_PER_MONTH = 30 * 24 * 3600
#: A message every 30 s per connection, the rate the model assumes when none is given.
DEFAULT_MESSAGE_INTERVAL_SECONDS = 30.0
#: Width of an activity bucket, the live index's sort key. Wider buckets move the index key
#: less often (cheaper writes); the sweep reads at most the rows of one extra bucket that
#: are not stale yet (filtered out before any write).
ACTIVITY_BUCKET_SECONDS = 900
#: Stale rows one sweep writes per second: 16 writes in flight at ~10 ms each.
SWEEP_WRITES_PER_SECOND = 1600


class Capacity(msgspec.Struct, frozen=True):
    connections: int
    messages_per_second: float
    writes_per_second: float
    table_wu_per_second: float
    index_wu_per_second: float
    read_units_per_second: float
    #: Write-unit equivalents (WRU + RRU / 5) per message: what one message costs the fleet.
    wue_per_message: float
    shards: int
    peak_key_wu_per_second: float
    monthly_cost_usd: float
    sweep_seconds_per_1pct_stale: float


def activity_writes_per_second(message_interval_seconds: float, activity_interval_seconds: int) -> float:
    """Coalesced activity writes per second of one continuously active connection."""
    rate = 1.0 / message_interval_seconds
    return min(rate, 1.0 / activity_interval_seconds) if activity_interval_seconds > 0 else rate


def check_read_units_per_second(message_interval_seconds: float, activity_interval_seconds: int) -> float:
    """Read units per second of one connection: every message checks the row, unless each writes."""
    return CHECK_READ_UNITS / message_interval_seconds if activity_interval_seconds > 0 else 0.0


def index_wu_per_connection(message_interval_seconds: float, activity_interval_seconds: int,
                            bucket_seconds: int = ACTIVITY_BUCKET_SECONDS) -> float:
    """LiveIndex write units per second of one connection: 1 per write, +1 per bucket moved."""
    writes = activity_writes_per_second(message_interval_seconds, activity_interval_seconds)
    return writes + min(writes, 1.0 / bucket_seconds)


def live_shards(connections: int, activity_interval_seconds: int,
                message_interval_seconds: float = DEFAULT_MESSAGE_INTERVAL_SECONDS,
                bucket_seconds: int = ACTIVITY_BUCKET_SECONDS) -> int:
    """Partition key values the live index needs so each stays under half of 1,000 WU/s."""
    index_wu = connections * index_wu_per_connection(message_interval_seconds, activity_interval_seconds, bucket_seconds)
    return max(1, math.ceil(index_wu / (KEY_WRITE_LIMIT * KEY_HEADROOM)))


def model(connections: int, message_interval_seconds: float, activity_interval_seconds: int,
          shards: int | None = None, bucket_seconds: int = ACTIVITY_BUCKET_SECONDS) -> Capacity:
    """Steady-state cost of ``connections`` live connections (every one active), across a fleet."""
    if shards is None:
        shards = live_shards(connections, activity_interval_seconds, message_interval_seconds, bucket_seconds)
    messages = connections / message_interval_seconds
    writes = connections * activity_writes_per_second(message_interval_seconds, activity_interval_seconds)
    index_wu = connections * index_wu_per_connection(message_interval_seconds, activity_interval_seconds, bucket_seconds)
    table_wu = writes
    reads = connections * check_read_units_per_second(message_interval_seconds, activity_interval_seconds)
    return Capacity(
        connections=connections,
        messages_per_second=messages,
        writes_per_second=writes,
        table_wu_per_second=table_wu,
        index_wu_per_second=index_wu,
        read_units_per_second=reads,
        wue_per_message=(table_wu + index_wu + reads / 5) / messages,
        shards=shards,
        peak_key_wu_per_second=index_wu / shards,
        monthly_cost_usd=((table_wu + index_wu) * PRICE_PER_MILLION_WRITES + reads * PRICE_PER_MILLION_READS)
        * SECONDS_PER_MONTH / 1e6,
        sweep_seconds_per_1pct_stale=connections * 0.01 / SWEEP_WRITES_PER_SECOND,
    )


#: The rows of the documented table: (connections, activity interval).
DOCUMENTED = ((100_000, 300), (1_000_000, 300), (1_000_000, 0), (10_000_000, 300))


def table(rows: tuple[tuple[int, int], ...] = DOCUMENTED,
          message_interval_seconds: float = DEFAULT_MESSAGE_INTERVAL_SECONDS) -> str:
    """The capacity table of the docs, as Markdown (``python -m connection_manager.capacity``)."""
    lines = [
        "| N | I | shards | table WU/s | live index WU/s | check RU/s | WUE per message | "
        "peak WU/s on one index key | $/month | sweep of 1% stale |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for connections, interval in rows:
        c = model(connections, message_interval_seconds, interval)
        lines.append(
            f"| {connections:,} | {interval} | {c.shards} | {c.table_wu_per_second:,.0f} | {c.index_wu_per_second:,.0f} | "
            f"{c.read_units_per_second:,.0f} | {c.wue_per_message:.3f} | {c.peak_key_wu_per_second:,.0f} | "
            f"{c.monthly_cost_usd:,.0f} | {c.sweep_seconds_per_1pct_stale:.1f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
