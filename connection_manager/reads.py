"""Reading connections: one, a user's, the fleet's (filtered, paged, fanned out over shards), and the counts.

Part of :class:`connection_manager.service.ConnectionService`, which composes the parts
(see that module for why one object).
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from connection_manager.clock import TimeLeft
from connection_manager.dynamo import dynamo_errors
from connection_manager.records import to_record
from connection_manager.rows import (
    ACTIVE_KEYS,
    CONNECTED,
    LIVE,
    USER_KEYS,
    RowAccess,
    check_start_key,
    live_key,
)
from connection_manager.schemas import ConnectionList, SnapshotProgress, Stats
from connection_manager.snapshot import Outcome
from models.connection import (
    ConnectionModel,
    activity_bucket,
    format_timestamp,
    live_shards,
    parse_timestamp,
)

if TYPE_CHECKING:
    # Imported where a page is continued or handed out: most invocations never paginate.
    from connection_manager.tokens import Cursor, TokenCodec

log = logging.getLogger(__name__)

#: A page of a listing stops growing once its records take this many bytes of JSON (as
#: ``json.dumps`` writes them, escapes included). Lambda refuses responses over 6 MB; with
#: the contract's largest record (two 2048-byte keys of control characters, each escaped
#: to six bytes, plus 2 KB of metadata: under 27 KB) a page of 1000 could reach 27 MB, so
#: the count alone cannot bound it. The page ends early with a ``nextToken`` instead.
RESPONSE_BUDGET_BYTES = 1_000_000


#: Items a filtered page may read (``sourceIp``, ``userAgent``: filter expressions, so
#: DynamoDB reads rows it does not return). A page that spends it stops short, perhaps
#: empty, with a ``nextToken``: the cost of a page stays bounded however rare the matches.
FILTER_READ_BUDGET = 1000
#: Rows per request of a filtered page: a few requests at most, each far below Lambda's 6 MB.
FILTER_REQUEST_ROWS = 100


class ConnectionFilter(msgspec.Struct, frozen=True):
    """Filters of ``get_all_connections``; all None lists every live connection."""

    idle_more_than: int | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    user_id: str | None = None

    @property
    def scope(self) -> str:
        """Part of a page token's scope: a token is only good for the filters it was issued for."""
        return json.dumps([self.idle_more_than, self.source_ip, self.user_agent], separators=(",", ":"))

    @property
    def reads_more_than_it_returns(self) -> bool:
        return self.source_ip is not None or self.user_agent is not None

    def matches(self, record: dict[str, Any], now: datetime) -> bool:
        """The same filters on a serialized record (the user listing reads a user's few rows)."""
        metadata = record.get("metadata") or {}
        if self.source_ip is not None and metadata.get("sourceIp") != self.source_ip:
            return False
        if self.user_agent is not None and self.user_agent not in str(metadata.get("userAgent", "")):
            return False
        if self.idle_more_than is not None:
            last = parse_timestamp(record["lastActiveAt"])
            if last >= now - timedelta(seconds=self.idle_more_than):
                return False
        return True


class Reads(RowAccess):
    """Reading connections: one, a user's, the fleet's (filtered, paged, fanned out over shards), and the counts."""

    @property
    def _tokens(self) -> TokenCodec:
        """Built per use from the current keys: only paging needs them (see signing_key)."""
        from connection_manager.tokens import TokenCodec

        # The table is part of the key: a token issued for one table is refused by another,
        # even where both share a secret (one process, or one secret for several stages).
        return TokenCodec([f"{secret}\n{self.settings.table_name}" for secret in self.signing_keys.keys()])

    def health(self) -> dict[str, Any]:
        with dynamo_errors("health check"):
            self.model.describe_table()
        return {"status": "ok", "table": self.settings.table_name}

    # Reads ------------------------------------------------------------------------------

    def get_connection(self, connection_id: str) -> dict[str, Any]:
        return to_record(self._get(connection_id))

    def get_user_connections(
        self,
        user_id: str,
        limit: int | None = None,
        next_token: str | None = None,
        status: str = CONNECTED,
        where: ConnectionFilter | None = None,
    ) -> ConnectionList:
        """A user's connections in ``status`` (DISCONNECTED: their history), from UserIdIndex.

        ``where``'s other filters apply to the rows read: a user has few of them.
        """
        from connection_manager.tokens import Cursor

        limit = limit or self.settings.default_page_size
        scope = f"user:{user_id}" if status == CONNECTED and where is None else f"user:{user_id}:{status}:" + (
            where.scope if where else ""
        )
        start = self._tokens.decode(next_token, scope, shards=1, key_names=USER_KEYS).key if next_token else None
        check_start_key(start, {"userId": {"S": user_id}, "status": {"S": status}})
        now = self.clock()
        with dynamo_errors("get_user_connections"):
            results = self.model.user_index.query(
                user_id,
                range_key_condition=ConnectionModel.status == status,
                limit=limit,
                page_size=limit,
                last_evaluated_key=start,
            )
            ids = [row.connection_id for row in results]
            index_end = results.last_evaluated_key
            # The index holds keys only (activity writes would otherwise pay for a copy
            # there too); the records come from the table, in the index's order.
            stored = {row.connection_id: row for row in self.model.batch_get(ids)} if ids else {}
        rows: list[dict[str, Any]] = []
        used, last_taken = 0, None
        for connection_id in ids:
            last_taken = connection_id
            row = stored.get(connection_id)
            if row is None or row.status != status:
                continue  # changed status since the index was read
            record = to_record(row)
            if where is not None and not where.matches(record, now):
                continue
            rows.append(record)
            used += len(json.dumps(record, default=str))
            if used >= RESPONSE_BUDGET_BYTES:
                break
        if last_taken is not None and last_taken != ids[-1]:
            last_key: dict[str, Any] | None = {
                "connectionId": {"S": last_taken}, "userId": {"S": user_id}, "status": {"S": status}
            }
        else:
            last_key = index_end if len(ids) == limit else None
        token = self._tokens.encode(scope, Cursor(0, last_key)) if last_key else None
        return ConnectionList(rows, len(rows), token)

    def get_all_connections(
        self, limit: int | None = None, next_token: str | None = None, where: ConnectionFilter | None = None
    ) -> ConnectionList:
        """Live connections from the sparse index, shard by shard, oldest activity bucket first.

        With ``where``: ``userId`` reads UserIdIndex (see :meth:`get_user_connections`),
        the others go to :meth:`_filtered_page`.

        A page that empties its shard goes on to the next ones in concurrent waves of 1, 2,
        4... shards (at most ``sweep_concurrency``), each asked only for the rows the page
        still lacks: full shards cost one query as before, and a table spread thinly over
        many shards is walked in a few round trips instead of one per shard.
        """
        from connection_manager.tokens import Cursor

        if where is not None and where.user_id is not None:
            return self.get_user_connections(where.user_id, limit, next_token, CONNECTED, where)
        if where is not None and where != ConnectionFilter():
            return self._filtered_page(limit or self.settings.default_page_size, next_token, where)
        limit = limit or self.settings.default_page_size
        shards = live_shards(self.model)
        cursor = (
            self._tokens.decode(next_token, "all", shards=shards, key_names=ACTIVE_KEYS)
            if next_token
            else Cursor(0, None)
        )
        check_start_key(cursor.key, {"activeShard": {"N": str(cursor.shard)}})
        rows: list[dict[str, Any]] = []
        used = 0
        shard, start = cursor.shard, cursor.key
        next_cursor: Cursor | None = None
        wave = 1
        with dynamo_errors("get_all_connections"):
            while shard < shards and next_cursor is None:
                wanted = limit - len(rows)
                batch = list(range(shard, min(shards, shard + wave)))
                pages = self._fan_out(
                    batch, lambda s, k=start, first=shard, n=wanted: self._live_page(s, n, k if s == first else None)
                )
                for current, (found, _) in zip(batch, pages):
                    # Mid-page (the budget was spent) the key is that of the last row taken.
                    taken = 0
                    full = False
                    for row in found:
                        record = to_record(row)
                        rows.append(record)
                        taken += 1
                        used += len(json.dumps(record, default=str))
                        if used >= RESPONSE_BUDGET_BYTES or len(rows) >= limit:
                            full = True
                            break
                    if full:
                        more_here = taken < len(found) or pages[batch.index(current)][1] is not None
                        if more_here:
                            next_cursor = Cursor(current, live_key(found[taken - 1]))
                        elif current + 1 < shards:
                            next_cursor = Cursor(current + 1, None)
                        break
                shard, start = batch[-1] + 1, None
                wave = min(wave * 2, self.settings.sweep_concurrency)
        token = self._tokens.encode("all", next_cursor) if next_cursor else None
        return ConnectionList(rows, len(rows), token)

    def _filtered_page(self, limit: int, next_token: str | None, where: ConnectionFilter) -> ConnectionList:
        """A page of live connections matching ``where``, read shard by shard.

        ``idleMoreThan`` is a range on the live index's activity buckets (only the buckets at
        or before the cutoff's are read: about what it returns, plus one bucket's rows not
        idle long enough yet). ``sourceIp`` and ``userAgent`` are filter expressions: DynamoDB
        reads rows it does not return, so the page stops once it has read
        :data:`FILTER_READ_BUDGET` items and hands back a ``nextToken``, even with fewer
        rows than ``limit`` (or none): follow it to read on.
        """
        from connection_manager.tokens import Cursor

        scope = "all:" + where.scope
        shards = live_shards(self.model)
        cursor = (
            self._tokens.decode(next_token, scope, shards=shards, key_names=ACTIVE_KEYS)
            if next_token
            else Cursor(0, None)
        )
        check_start_key(cursor.key, {"activeShard": {"N": str(cursor.shard)}})
        now = self.clock()
        range_key = None
        condition = LIVE
        if where.idle_more_than is not None:
            cutoff = now - timedelta(seconds=where.idle_more_than)
            range_key = ConnectionModel.active_bucket <= activity_bucket(cutoff)
            condition &= ConnectionModel.last_active_at < cutoff
        if where.source_ip is not None:
            condition &= ConnectionModel.metadata["sourceIp"] == where.source_ip
        if where.user_agent is not None:
            condition &= ConnectionModel.metadata["userAgent"].contains(where.user_agent)
        budget = FILTER_READ_BUDGET if where.reads_more_than_it_returns else None
        rows: list[dict[str, Any]] = []
        read = used = 0
        shard, start = cursor.shard, cursor.key
        with dynamo_errors("get_all_connections"):
            while shard < shards:
                wanted = min(limit - len(rows), FILTER_REQUEST_ROWS)
                if budget is not None:
                    wanted = min(wanted, budget - read)
                if wanted <= 0 or used >= RESPONSE_BUDGET_BYTES:
                    break
                page = next(
                    self.model.live_index.query(
                        shard, range_key_condition=range_key, filter_condition=condition,
                        page_size=wanted, last_evaluated_key=start,
                    ).page_iter
                )
                read += int(page.get("ScannedCount", 0))
                for item in page.get("Items", []):
                    record = to_record(self.model.from_raw_data(item))
                    rows.append(record)
                    used += len(json.dumps(record, default=str))
                start = page.get("LastEvaluatedKey")
                if start is None:
                    shard += 1
        next_cursor = Cursor(shard, start) if shard < shards else None
        token = self._tokens.encode(scope, next_cursor) if next_cursor else None
        return ConnectionList(rows, len(rows), token)

    def _live_page(
        self, shard: int, limit: int, start: dict[str, Any] | None
    ) -> tuple[list[ConnectionModel], dict[str, Any] | None]:
        results = self.model.live_index.query(
            shard, filter_condition=LIVE, limit=limit, page_size=limit, last_evaluated_key=start
        )
        found = list(results)
        return found, results.last_evaluated_key

    def _fan_out(self, items: list[Any], call: Callable[[Any], Any]) -> list[Any]:
        """``call`` on every item, concurrently when there are several; results in order."""
        if len(items) == 1:
            return [call(items[0])]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(items), self.settings.sweep_concurrency)) as pool:
            return list(pool.map(call, items))

    def count_active(self) -> int:
        """Live connections, counted on the sparse index with ``Select=COUNT``.

        No item crosses the wire, but DynamoDB bills the index bytes it reads: about one
        read unit per 8 KB of live rows (eventually consistent), so a few units per
        thousand live connections each time it runs (once per scheduled sweep).
        """
        with dynamo_errors("count_active"):
            return sum(
                self._fan_out(
                    list(range(live_shards(self.model))), lambda shard: self.model.live_index.count(shard, filter_condition=LIVE)
                )
            )

    def stats(self) -> Stats:
        """Counts for the dashboard at a cost independent of the number of connections.

        Active connections come from the live counters (exact at every snapshot, then kept
        by the writes); distinct users, the idle-time distribution and the heaviest users
        from the latest snapshot (``asOf``). Stale rows are counted on the live index
        (``Select=COUNT``, only buckets at or before the cutoff's): that reads the stale
        rows, which each sweep removes, plus the not-yet-stale ones of the cutoff's bucket.
        """
        now = self.clock()
        cutoff = now - timedelta(seconds=self.settings.stale_after_seconds)
        active, snapshot, progress = self.platform.read_all()
        with dynamo_errors("stats"):
            stale = sum(
                self._fan_out(
                    list(range(live_shards(self.model))),
                    lambda shard: self.model.live_index.count(
                        shard,
                        range_key_condition=ConnectionModel.active_bucket <= activity_bucket(cutoff),
                        filter_condition=LIVE & (ConnectionModel.last_active_at < cutoff),
                    ),
                )
            )
        snap = snapshot or {}
        as_of = parse_timestamp(snap["asOf"]) if snap.get("asOf") else None
        return Stats(
            active_connections=active,
            distinct_users=int(snap.get("distinctUsers", 0)),
            stale_connections=stale,
            stale_after_seconds=self.settings.stale_after_seconds,
            table=self.settings.table_name,
            generated_at=format_timestamp(now),
            as_of=snap.get("asOf"),
            distinct_users_exact=bool(snap.get("distinctUsersExact", True)),
            idle=snap.get("idle", []),
            top_users=snap.get("topUsers", []),
            snapshot_age_seconds=None if as_of is None else max(0, int((now - as_of).total_seconds())),
            snapshot_pass=None if progress is None else SnapshotProgress(
                started_at=progress["startedAt"],
                shards=int(progress["shards"]),
                shards_done=int(progress["shardsDone"]),
                rows_counted=int(progress["rowsCounted"]),
                invocations=int(progress["invocations"]),
            ),
        )

    def take_snapshot(self) -> dict[str, Any]:
        """Count every live row once, with no deadline, and repair the counters (seeding, the CLI)."""
        return self.platform.take_snapshot(self.clock())

    def counted_live(self) -> int:
        """The live connections the counters hold: ``n`` small items, whatever the number of rows."""
        return self.platform.read()[0]

    def advance_snapshot(self, time_left: TimeLeft) -> Outcome:
        """Carry the snapshot pass on in the time left before the sweep's margin (the hourly path)."""
        return self.platform.advance_snapshot(self.clock(), time_left, self.settings.sweep_time_margin_ms)

    def record_sweep(self, sweep: dict[str, Any], snapshot: dict[str, Any] | None) -> dict[str, Any]:
        return self.platform.record_sweep(self.clock(), sweep, snapshot)

    def stats_history(self, hours: int, limit: int) -> list[dict[str, Any]]:
        """The sweeps of the last ``hours`` hours, oldest first (at most ``limit``, the newest)."""
        return self.platform.history(self.clock() - timedelta(hours=hours), limit)
