"""The operations on connection rows. Knows DynamoDB through the models, nothing of HTTP or Lambda.

Every write that correctness depends on is a single conditional request, so concurrent
writers (a heartbeat racing the sweep, two sweeps, a retry whose answer was lost) settle
in DynamoDB rather than in a read-modify-write window here.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import msgspec
from pynamodb.exceptions import DoesNotExist, PynamoDBException

from connection_manager.activity import ActivityMemory
from connection_manager.bulk import APPLIED, REPAIRED, SKIPPED, BoundedWriter, BulkOutcome
from connection_manager.clock import Clock, utc_now
from connection_manager.config import Settings
from connection_manager.dynamo import dynamo_errors, error_code, is_condition_failure, update_or_current
from connection_manager.errors import (
    ConflictError,
    ConnectionManagerError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from connection_manager.gateway import GONE, UNREACHABLE, Alive, Gateway
from connection_manager.platform_stats import PlatformStats
from connection_manager.records import UNKNOWN_TIME, to_record
from connection_manager.schemas import ConnectionList, Stats
from connection_manager.signing_key import SigningKeys
from models.connection import (
    ConnectionModel,
    ConnectionStatus,
    DisconnectReason,
    activity_bucket,
    epoch_seconds,
    format_timestamp,
    live_shards,
    model_for,
    parse_timestamp,
    shard_for,
)

if TYPE_CHECKING:
    # Imported where a page is continued or handed out: most invocations never paginate.
    from connection_manager.tokens import Cursor, TokenCodec

log = logging.getLogger(__name__)

CONNECTED = ConnectionStatus.CONNECTED.value
DISCONNECTED = ConnectionStatus.DISCONNECTED.value

_ACTIVE_KEYS = frozenset({"connectionId", "activeShard", "activeBucket"})

#: Other tools sharing the table may disconnect a row without removing ``activeShard``, so
#: the sparse index can hold a few DISCONNECTED rows; reads of it filter them out (they are
#: billed, but rare, and the sweep takes them out of the index when it meets them).
_LIVE = ConnectionModel.status == CONNECTED
_USER_KEYS = frozenset({"connectionId", "userId", "status"})

#: Milliseconds of Lambda time left; None when the caller has no deadline.
TimeLeft = Callable[[], int] | None

#: A page of a listing stops growing once its records take this many bytes of JSON (as
#: ``json.dumps`` writes them, escapes included). Lambda refuses responses over 6 MB; with
#: the contract's largest record (two 2048-byte keys of control characters, each escaped
#: to six bytes, plus 2 KB of metadata: under 27 KB) a page of 1000 could reach 27 MB, so
#: the count alone cannot bound it. The page ends early with a ``nextToken`` instead.
RESPONSE_BUDGET_BYTES = 1_000_000

#: Rows per Query page of the stale sweep: one page is all it holds in memory, whatever
#: the number of stale rows (DynamoDB's own 1 MB pages would hold tens of thousands).
SWEEP_PAGE_SIZE = 200

#: What a WebSocket message did to ``lastActiveAt``.
WRITTEN = "written"  # the stored time was older than the interval: moved to now
REMEMBERED = "remembered"  # this process knew it was recent: no request at all
CURRENT = "current"  # the table said it was recent (a failed condition, 1 write unit)
CHECKED = "checked"  # a read of the row said it was recent (0.5 read units): no write
NOT_CONNECTED = "not_connected"  # no such row, or not CONNECTED: nothing changed

#: A stale-looking row API Gateway said was active: it took the gateway's time instead.
RECONCILED = "reconciled"
#: A row the sweep marked whose socket API Gateway could not be made to close.
NOT_CLOSED = "not closed"


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


class SweepResult(msgspec.Struct, frozen=True):
    """What one sweep did.

    A msgspec Struct rather than a dataclass: a dataclass costs about a millisecond to
    create at import, which every Lambda cold start would pay.

    ``cleaned`` counts every row the sweep DISCONNECTED (``cleanedCount``); ``lifetime`` and
    ``gone`` say how many of them for those reasons, the rest are ``stale``. The other
    counts cover both passes.
    """

    cleaned: int
    lifetime: int
    scanned: int
    skipped: int
    failed: int
    #: DISCONNECTED rows (written by other tools) met in the live index and taken out of it.
    repaired: int
    complete: bool
    dry_run: bool
    stale_after_seconds: int
    cutoff: datetime
    #: Rows created before this are past ``MAX_CONNECTION_LIFETIME_SECONDS``.
    lifetime_cutoff: datetime
    duration_ms: int
    max_in_flight: int
    #: Rows API Gateway answered 410 for: DISCONNECTED with reason ``gone`` (part of ``cleaned``).
    gone: int = 0
    #: Stale-looking rows the gateway said were active: kept CONNECTED with the gateway's time.
    reconciled: int = 0
    #: Rows with an endpoint the gateway could not be asked about: swept as before.
    unreconciled: int = 0
    #: Rows marked whose socket may still be open (past their lifetime, or alive but idle at
    #: the gateway) and that API Gateway could not be made to close.
    not_closed: int = 0

    def to_body(self) -> dict[str, Any]:
        return {
            "message": "Stale connections cleaned up" if not self.dry_run else "Dry run: nothing was changed",
            "cleanedCount": self.cleaned,
            "lifetimeCount": self.lifetime,
            "dryRun": self.dry_run,
            "complete": self.complete,
            "scannedCount": self.scanned,
            "skippedCount": self.skipped,
            "failedCount": self.failed,
            "repairedCount": self.repaired,
            "goneCount": self.gone,
            "reconciledCount": self.reconciled,
            "unreconciledCount": self.unreconciled,
            "staleAfterSeconds": self.stale_after_seconds,
            "cutoff": format_timestamp(self.cutoff),
            "lifetimeCutoff": format_timestamp(self.lifetime_cutoff),
            "durationMs": self.duration_ms,
        }


class Evicted(msgspec.Struct, frozen=True):
    """A connection the per-user cap has just DISCONNECTED: what closing its socket needs."""

    connection_id: str
    #: The management endpoint stored at ``$connect``; None for rows without one.
    endpoint: str | None = None


class Registration(msgspec.Struct, frozen=True):
    """What a ``$connect`` (or ``register_connection``) did: the row, and whom the cap evicted."""

    record: dict[str, Any]
    created: bool
    #: Connections of the user DISCONNECTED (reason ``evicted``) by this registration; their
    #: sockets were closed at the gateway (those it could not close are counted below).
    evicted: tuple[Evicted, ...] = ()
    not_closed: int = 0


def new_connection_row(
    connection_id: str,
    user_id: str,
    now: datetime,
    metadata: dict[str, Any] | None = None,
    model: type[ConnectionModel] = ConnectionModel,
    endpoint: str | None = None,
) -> ConnectionModel:
    """A fresh CONNECTED row, in the sparse index from its first write."""
    return model(
        connection_id,
        user_id=user_id,
        status=CONNECTED,
        created_at=now,
        last_active_at=now,
        updated_at=now,
        metadata=metadata,
        active_shard=shard_for(connection_id, model),
        active_bucket=activity_bucket(now),
        live_since=epoch_seconds(now),
        gateway_endpoint=endpoint,
    )


class AdminDisconnect(msgspec.Struct, frozen=True):
    """What an admin disconnect did: rows marked, and sockets API Gateway could not be made to close."""

    disconnected: int
    not_closed: int


class _Tally:
    """Counts shared by the threads of one bulk operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


class _Candidate:
    """A row the sweep may mark: its id and stored endpoint (printed as the id alone in failures)."""

    __slots__ = ("connection_id", "endpoint")

    def __init__(self, connection_id: str, endpoint: str | None) -> None:
        self.connection_id = connection_id
        self.endpoint = endpoint

    def __str__(self) -> str:
        return self.connection_id


#: Reasons whose socket is known to be closed already: no DeleteConnection is sent for them.
_SOCKET_CLOSED = frozenset({DisconnectReason.CLIENT.value, DisconnectReason.GONE.value})


class ConnectionService:
    """The operations of the contract; one instance per process is enough.

    ``model`` is the table's model class; without one the service gets a class of its own
    for ``settings``' table, so building a service never rebinds one already in use.
    Conditions and update actions name attributes through ``ConnectionModel``: they are
    attribute paths, the same on every table's class.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock = utc_now,
        model: type[ConnectionModel] | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.model = model if model is not None else model_for(settings)
        self.activity = ActivityMemory(settings.activity_memory_size)
        #: Live counters, snapshot and sweep history, in the same table under reserved keys.
        self.platform = PlatformStats(self.model, settings.sweep_concurrency)
        # Building it costs nothing: boto3 is imported on the first gateway call.
        self.gateway = gateway if gateway is not None else Gateway(settings)
        self.signing_keys = SigningKeys(settings)

    @property
    def _tokens(self) -> TokenCodec:
        """Built per use from the current keys: only paging needs them (see signing_key)."""
        from connection_manager.tokens import TokenCodec

        # The table is part of the key: a token issued for one table is refused by another,
        # even where both share a secret (one process, or one secret for several stages).
        return TokenCodec([f"{secret}\n{self.settings.table_name}" for secret in self.signing_keys.keys()])

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

    def migrate(self, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Bring a table created by an earlier version to this layout: add the indexes it
        lacks (UpdateTable), then :meth:`reindex` its CONNECTED rows into them."""
        from connection_manager.migration import add_missing_indexes

        report = add_missing_indexes(self.model, sleep=sleep)
        outcome = self.reindex()
        return {
            "createdIndexes": report.created,
            "presentIndexes": report.present,
            "differingIndexes": report.differs,
            "reindexed": outcome.applied,
            "skipped": outcome.skipped,
            "failed": outcome.failed,
        }

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
        start = self._tokens.decode(next_token, scope, shards=1, key_names=_USER_KEYS).key if next_token else None
        _check_start_key(start, {"userId": {"S": user_id}, "status": {"S": status}})
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
            self._tokens.decode(next_token, "all", shards=shards, key_names=_ACTIVE_KEYS)
            if next_token
            else Cursor(0, None)
        )
        _check_start_key(cursor.key, {"activeShard": {"N": str(cursor.shard)}})
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
                            next_cursor = Cursor(current, _live_key(found[taken - 1]))
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
            self._tokens.decode(next_token, scope, shards=shards, key_names=_ACTIVE_KEYS)
            if next_token
            else Cursor(0, None)
        )
        _check_start_key(cursor.key, {"activeShard": {"N": str(cursor.shard)}})
        now = self.clock()
        range_key = None
        condition = _LIVE
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
            shard, filter_condition=_LIVE, limit=limit, page_size=limit, last_evaluated_key=start
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
                    list(range(live_shards(self.model))), lambda shard: self.model.live_index.count(shard, filter_condition=_LIVE)
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
        active, snapshot = self.platform.read()
        with dynamo_errors("stats"):
            stale = sum(
                self._fan_out(
                    list(range(live_shards(self.model))),
                    lambda shard: self.model.live_index.count(
                        shard,
                        range_key_condition=ConnectionModel.active_bucket <= activity_bucket(cutoff),
                        filter_condition=_LIVE & (ConnectionModel.last_active_at < cutoff),
                    ),
                )
            )
        snap = snapshot or {}
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
        )

    def take_snapshot(self) -> dict[str, Any]:
        """Count every live row once and repair the counters (after each sweep; see PlatformStats)."""
        return self.platform.take_snapshot(self.clock())

    def record_sweep(self, sweep: dict[str, Any], snapshot: dict[str, Any] | None) -> dict[str, Any]:
        return self.platform.record_sweep(self.clock(), sweep, snapshot)

    def stats_history(self, hours: int, limit: int) -> list[dict[str, Any]]:
        """The sweeps of the last ``hours`` hours, oldest first (at most ``limit``, the newest)."""
        return self.platform.history(self.clock() - timedelta(hours=hours), limit)

    # Writes -----------------------------------------------------------------------------

    def register_connection(
        self,
        connection_id: str,
        user_id: str,
        metadata: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a CONNECTED row. Returns ``(record, created)``.

        Repeating the same registration (same id and user, still CONNECTED) is a retry whose
        answer was lost and returns the stored row with ``created=False``; any other existing
        id is a conflict. ``endpoint`` is the socket's management endpoint (``$connect`` only).
        """
        row = new_connection_row(connection_id, user_id, self.clock(), metadata, self.model, endpoint)
        try:
            with dynamo_errors("register_connection"):
                row.save(condition=ConnectionModel.connection_id.does_not_exist())
            self.platform.count(connection_id, +1)
            # Messages this container receives next need no write until the interval passes.
            self.activity.remember(connection_id, row.last_active_at)
            return to_record(row), True
        except PynamoDBException as exc:
            if not is_condition_failure(exc):
                raise
        existing = self._get(connection_id, missing=ConflictError(f"Connection '{connection_id}' already exists"))
        if existing.user_id == user_id and existing.status == CONNECTED:
            return to_record(existing), False
        raise ConflictError(
            f"Connection '{connection_id}' already exists"
            + (" for another user" if existing.user_id != user_id else f" and is {existing.status}")
        )

    def connect(
        self,
        connection_id: str,
        user_id: str,
        metadata: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> Registration:
        """Register a connection, then hold its user to ``MAX_CONNECTIONS_PER_USER``.

        The registration is :meth:`register_connection`; the cap runs after it, a retry
        included (the first attempt may have stopped before its cap ran). The evicted rows'
        sockets are closed at the gateway, concurrently; the new connection itself, when a
        tie made it the oldest, is refused by its ``$connect`` instead.
        """
        record, created = self.register_connection(connection_id, user_id, metadata, endpoint)
        cap = self.settings.max_connections_per_user
        if not cap:
            return Registration(record, created)
        evicted = self._hold_user_to_cap(user_id, cap, connection_id, parse_timestamp(record["createdAt"]))
        for row in evicted:
            if row.connection_id == connection_id:
                record = to_record(row)  # it was the oldest after all: say so
        others = [row for row in evicted if row.connection_id != connection_id]
        not_closed = sum(not closed for closed in self._fan_out(others, self._close_socket)) if others else 0
        return Registration(
            record,
            created,
            tuple(Evicted(row.connection_id, row.gateway_endpoint) for row in evicted),
            not_closed,
        )

    def _hold_user_to_cap(
        self, user_id: str, cap: int, registered_id: str, registered_at: datetime
    ) -> list[ConnectionModel]:
        """DISCONNECT the user's CONNECTED rows beyond the ``cap`` newest (reason ``evicted``).

        Every caller orders rows the same way, by ``(createdAt, connectionId)``, so two
        registrations racing for one user never disagree on which rows are the newest:
        a row is evicted only when ``cap`` rows newer than it were seen CONNECTED, which
        the ``cap`` newest of the user can never be. ``UserIdIndex`` projects ``createdAt``,
        so this is one Query and no read of the table. The index is eventually consistent:
        the row just written is added to what it answers, and rows it does not show yet are
        left to the next registration of the user (README, "Per-user cap").

        Never fails the registration: a read or write failing after retries is logged, and
        the next registration of the user evicts what this one could not.
        """
        try:
            with dynamo_errors("per-user cap"):
                seen = {
                    row.connection_id: row.created_at
                    for row in self.model.user_index.query(
                        user_id,
                        range_key_condition=ConnectionModel.status == CONNECTED,
                        attributes_to_get=["connectionId", "createdAt"],
                    )
                }
        except ConnectionManagerError as exc:
            log.warning("per-user cap of %s not applied: %s", user_id, exc.message)
            return []
        seen[registered_id] = registered_at
        if len(seen) <= cap:
            return []
        # A row without a readable createdAt counts as the oldest, as its record says (UNKNOWN_TIME).
        oldest_first = sorted(seen, key=lambda cid: (seen[cid] or UNKNOWN_TIME, cid))
        victims = oldest_first[: len(oldest_first) - cap]

        def evict(connection_id: str) -> ConnectionModel | None:
            try:
                return self._disconnect_if_connected(connection_id, DisconnectReason.EVICTED)
            except ConnectionManagerError as exc:
                log.warning("could not evict %s of user %s: %s", connection_id, user_id, exc.message)
                return None

        # None: already DISCONNECTED (by its client, another registration) or failed.
        return [row for row in self._fan_out(victims, evict) if row is not None]

    def heartbeat(self, connection_id: str) -> dict[str, Any]:
        """Refresh ``lastActiveAt`` of a CONNECTED row; a DISCONNECTED one stays as it is (409).

        The explicit action always writes, whatever the activity interval.
        """
        now = self.clock()
        row = self.model(connection_id)
        actions = [
            ConnectionModel.last_active_at.set(now),
            ConnectionModel.updated_at.set(now),
            *_live_index_actions(connection_id, now, self.model),
        ]
        if self._conditional_update(
            row, actions, ConnectionModel.connection_id.exists() & (ConnectionModel.status == CONNECTED), "heartbeat"
        ):
            self.activity.remember(connection_id, now)
            return to_record(row)
        existing = self._get(connection_id)
        raise ConflictError(f"Connection '{connection_id}' is {existing.status}; a heartbeat cannot revive it")

    def record_activity(self, connection_id: str) -> str:
        """A WebSocket message: move ``lastActiveAt`` at most once per activity interval.

        Returns WRITTEN, REMEMBERED, CHECKED, CURRENT or NOT_CONNECTED, cheapest first:

        1. this process's memory of a time the table holds: within the interval, no request;
        2. else an eventually consistent read of the row, 0.5 read units (a tenth of a
           write's price): across a Lambda fleet a container has rarely seen the connection,
           and a conditional write that fails would cost a whole write unit to say the same;
        3. only a stored time older than the interval sends the conditional write, which
           still decides (two containers may both have read the old time).

        Guarantee: the stored time is never older than ``interval`` seconds before any
        message. An eventually consistent read can only be behind, never ahead: a stale
        answer costs a write (refused if the row is recent), never a missed one.
        """
        now = self.clock()
        interval = self.settings.activity_write_interval_seconds
        if not interval:
            return self.write_activity(connection_id, now, None)
        threshold = now - timedelta(seconds=interval)
        known = self.activity.get(connection_id)
        if known is not None and known > threshold:
            return REMEMBERED
        with dynamo_errors("record_activity"):
            connected, stored = read_activity(self.model, connection_id)
        if not connected:
            self.activity.forget(connection_id)
            return NOT_CONNECTED
        if stored is not None and stored > threshold:
            self.activity.remember(connection_id, stored)
            return CHECKED
        return self.write_activity(connection_id, now, threshold)

    def write_activity(self, connection_id: str, now: datetime, threshold: datetime | None) -> str:
        """The conditional write of a message's activity: only if ``lastActiveAt <= threshold``.

        Nothing is read back on success (no ``ReturnValues``); a failed condition returns the
        stored row (``ALL_OLD``), free, so the next messages here know the time too."""
        condition = ConnectionModel.status == CONNECTED
        if threshold is not None:
            condition &= ConnectionModel.last_active_at.does_not_exist() | (
                ConnectionModel.last_active_at <= threshold
            )
        actions = [ConnectionModel.last_active_at.set(now), *_live_index_actions(connection_id, now, self.model)]
        with dynamo_errors("record_activity"):
            applied, stored = update_or_current(self.model(connection_id), actions, condition, return_values=None)
        if applied:
            self.activity.remember(connection_id, now)
            return WRITTEN
        if stored is None or stored.get("status", {}).get("S") != CONNECTED:
            self.activity.forget(connection_id)
            return NOT_CONNECTED
        last = _stored_time(stored)
        if last is not None:
            self.activity.remember(connection_id, last)
        return CURRENT

    def update_connection_status(self, connection_id: str, status: str) -> dict[str, Any]:
        """Set a status. Setting the status a row already has changes nothing and returns it."""
        if status == DISCONNECTED:
            return self.admin_disconnect(connection_id)[0]
        now = self.clock()
        row = self.model(connection_id)
        actions = [
            ConnectionModel.status.set(CONNECTED),
            ConnectionModel.last_active_at.set(now),
            ConnectionModel.updated_at.set(now),
            *_live_index_actions(connection_id, now, self.model),
            ConnectionModel.disconnected_at.remove(),
            ConnectionModel.disconnect_reason.remove(),
            ConnectionModel.expires_at.remove(),
        ]
        condition = ConnectionModel.connection_id.exists() & (ConnectionModel.status != CONNECTED)
        if self._conditional_update(row, actions, condition, "update_connection_status"):
            self.platform.count(connection_id, +1)
            return to_record(row)
        return self.get_connection(connection_id)  # already CONNECTED, or 404

    def disconnect(self, connection_id: str, reason: DisconnectReason) -> dict[str, Any] | None:
        """Mark one connection DISCONNECTED; None when it was already, or never existed.

        One conditional write and no read: a repeated or unknown $disconnect needs no answer
        beyond "nothing changed".
        """
        row = self._disconnect_if_connected(connection_id, reason)
        return to_record(row) if row is not None else None

    def admin_disconnect(self, connection_id: str) -> tuple[dict[str, Any], int]:
        """Mark one connection DISCONNECTED (reason ``admin``) and close its socket at API Gateway.

        Returns ``(record, sockets not closed)``. The row is marked whatever the gateway does.
        A row already DISCONNECTED by an admin, the sweep or another tool has its close sent
        again (410 Gone is success), so repeating the request retries a close that failed;
        rows whose socket is known closed (``client``, ``gone``) are left alone. 404 if absent.
        """
        row = self._disconnect_if_connected(connection_id, DisconnectReason.ADMIN)
        if row is None:
            row = self._get(connection_id)  # unchanged, or 404
            if row.status == CONNECTED or row.disconnect_reason in _SOCKET_CLOSED:
                return to_record(row), 0
        return to_record(row), 0 if self._close_socket(row) else 1

    def disconnect_user(self, user_id: str) -> int:
        """Disconnect every live connection of a user (reason ``admin``); returns how many."""
        return self.admin_disconnect_user(user_id).disconnected

    def admin_disconnect_user(self, user_id: str) -> AdminDisconnect:
        """Disconnect every live connection of a user (reason ``admin``) and close their sockets.

        Each connection's row write and then its DeleteConnection run in one task of the
        bounded writer, so a user with thousands of sockets is closed ``sweep_concurrency``
        at a time, never one by one and never all at once.
        """
        not_closed = _Tally()

        def disconnect(connection_id: str) -> str:
            row = self._disconnect_if_connected(connection_id, DisconnectReason.ADMIN)
            if row is None:
                return SKIPPED
            if not self._close_socket(row):
                not_closed.add("socket")
            return APPLIED

        with dynamo_errors("disconnect_user"):
            ids = (
                row.connection_id
                for row in self.model.user_index.query(
                    user_id, range_key_condition=ConnectionModel.status == CONNECTED, attributes_to_get=["connectionId"]
                )
            )
            outcome = self._write_all(ids, disconnect)
        if outcome.failed:
            raise UnavailableError(
                f"{outcome.failed} of the user's connections could not be disconnected after retries "
                f"({outcome.applied} were); try again"
            )
        return AdminDisconnect(outcome.applied, not_closed["socket"])

    def _close_socket(self, row: ConnectionModel) -> bool:
        """DeleteConnection for a row with a stored endpoint; True when closed, already gone, or none is known."""
        if not row.gateway_endpoint:
            return True  # written by another tool: handled as before
        return self.gateway.close(row.gateway_endpoint, row.connection_id)

    def cleanup_stale_connections(
        self,
        stale_after_seconds: int | None = None,
        dry_run: bool = False,
        time_left_ms: TimeLeft = None,
    ) -> SweepResult:
        """Mark CONNECTED rows past their lifetime (reason ``lifetime``), then idle ones (``stale``).

        Each pass reads only the rows it writes (range queries per shard of a sparse index),
        writes them concurrently, and stops taking new rows once ``time_left_ms()`` falls
        under the configured margin, reporting ``complete=False`` so the next run finishes
        the job. Lifetime goes first: those connections are closed whatever their activity,
        and API Gateway has closed them already, so the stale pass need not look at them.
        Each write re-checks its condition, so a heartbeat that lands mid-sweep wins over
        ``stale`` (never over ``lifetime``, which activity does not change).

        A stale-looking row with a stored endpoint is first asked about at API Gateway, in the
        same bounded task as its write (see :meth:`_sweep_candidate`). A dry run asks nothing.
        """
        started = time.monotonic()
        now = self.clock()
        stale_after = stale_after_seconds or self.settings.stale_after_seconds
        cutoff = now - timedelta(seconds=stale_after)
        lifetime_cutoff = now - timedelta(seconds=self.settings.max_connection_lifetime_seconds)
        born_before = epoch_seconds(lifetime_cutoff)
        margin = self.settings.sweep_time_margin_ms

        def out_of_time() -> bool:
            return time_left_ms is not None and time_left_ms() < margin

        read_failure: PynamoDBException | None = None

        def guarded(read: Callable[[list[BaseException]], Iterable[ConnectionModel]]) -> Iterator[ConnectionModel]:
            # A shard whose Query still fails after retries is left for the next run;
            # the others carry on, and the writes already made are counted.
            nonlocal read_failure
            failures: list[BaseException] = []
            rows = iter(read(failures))
            while True:
                try:
                    yield next(rows)
                except StopIteration:
                    if failures:
                        failure = failures[0]
                        if not isinstance(failure, PynamoDBException):
                            raise failure
                        read_failure = read_failure or failure
                    return

        def expired() -> Iterator[ConnectionModel]:
            # Keys only: the conditional write checks the status (index leftovers of other
            # tools fail it and are repaired).
            return guarded(
                lambda failures: self._index_rows(
                    self.model.lifetime_index,
                    attributes=["connectionId", "activeShard", "liveSince"],
                    range_key_condition=ConnectionModel.live_since < born_before,
                    page_size=SWEEP_PAGE_SIZE,
                    errors=failures,
                )
            )

        def stale() -> Iterator[ConnectionModel]:
            # Every bucket up to the cutoff's own: the older ones hold only stale rows, the
            # cutoff's bucket some that are not stale yet, dropped by the filter before
            # any write (read, never written: at most one bucket's worth per run).
            for row in guarded(
                lambda failures: self._index_rows(
                    self.model.live_index,
                    attributes=[
                        "connectionId", "activeShard", "activeBucket", "lastActiveAt", "status", "liveSince",
                        "gatewayEndpoint",
                    ],
                    range_key_condition=ConnectionModel.active_bucket <= activity_bucket(cutoff),
                    filter_condition=ConnectionModel.last_active_at < cutoff,
                    page_size=SWEEP_PAGE_SIZE,
                    errors=failures,
                )
            ):
                # Past its lifetime: the lifetime pass's row (a dry run counts it there).
                if row.live_since is None or row.live_since >= born_before:
                    yield row

        tally = _Tally()
        with dynamo_errors("cleanup_stale_connections"):
            if dry_run:
                lifetime_outcome = stale_outcome = None
                stopped, lifetime_count, scanned, stale_count = False, 0, 0, 0
                for row in expired():
                    if out_of_time():
                        stopped = True
                        break
                    lifetime_count += 1
                    scanned += 1
                if not stopped:
                    for row in stale():
                        if out_of_time():
                            stopped = True
                            break
                        scanned += 1
                        # DISCONNECTED rows left in the index by other tools are not stale connections.
                        stale_count += row.status == CONNECTED
            else:
                # The deadline is checked by the writer once a write slot is free, right
                # before the write would start (waiting for the slot takes time too).
                lifetime_outcome = self._write_all(
                    (row.connection_id for row in expired()),
                    lambda cid: self._expire_one(cid, born_before, tally),
                    stop=out_of_time,
                )
                stale_outcome = BulkOutcome(stopped=True)
                if not lifetime_outcome.stopped:
                    stale_outcome = self._write_all(
                        (_Candidate(row.connection_id, row.gateway_endpoint) for row in stale()),
                        lambda candidate: self._sweep_candidate(candidate, cutoff, tally),
                        stop=out_of_time,
                    )
                stopped = stale_outcome.stopped
                lifetime_count, stale_count = lifetime_outcome.applied, stale_outcome.applied
                scanned = sum(
                    outcome.applied + outcome.skipped + outcome.failed + outcome.repaired
                    for outcome in (lifetime_outcome, stale_outcome)
                )
            if read_failure is not None and scanned == 0:
                raise read_failure  # nothing done: a plain 503 says it best
        complete = not stopped and read_failure is None
        if read_failure is not None:
            log.warning(
                "sweep stopped early: reading rows to sweep failed after retries (%s); the next run resumes",
                error_code(read_failure) or "DynamoDB unreachable",
            )
        outcomes = [outcome for outcome in (lifetime_outcome, stale_outcome) if outcome is not None]
        failed = sum(outcome.failed for outcome in outcomes)
        result = SweepResult(
            cleaned=stale_count + lifetime_count,
            lifetime=lifetime_count,
            scanned=scanned,
            # Reconciled rows were written (their time moved) but not marked: not "skipped".
            skipped=sum(outcome.skipped for outcome in outcomes) - tally[RECONCILED],
            failed=failed,
            repaired=sum(outcome.repaired for outcome in outcomes),
            # Rows whose write failed are still there to sweep: more remains for the next run.
            complete=complete and failed == 0,
            dry_run=dry_run,
            stale_after_seconds=stale_after,
            cutoff=cutoff,
            lifetime_cutoff=lifetime_cutoff,
            duration_ms=int((time.monotonic() - started) * 1000),
            max_in_flight=max((outcome.max_in_flight for outcome in outcomes), default=0),
            gone=tally[GONE],
            reconciled=tally[RECONCILED],
            unreconciled=tally[UNREACHABLE],
            not_closed=tally[NOT_CLOSED],
        )
        failures = [failure for outcome in outcomes for failure in outcome.failures]
        if failures:
            log.warning("sweep writes failed after retries: %s", "; ".join(failures))
        return result

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
        write_id = _new_write_id()
        applied, current = self._update_or_current(
            row, self._disconnect_actions(reason, write_id), condition, "disconnect"
        )
        if applied or (current is not None and current.write_id == write_id):
            self.platform.count(connection_id, -1)
            return row if applied else current
        return None

    def _disconnect_outcome(self, connection_id: str, reason: DisconnectReason) -> str:
        return APPLIED if self._disconnect_if_connected(connection_id, reason) is not None else SKIPPED

    def _sweep_candidate(self, candidate: _Candidate, cutoff: datetime, tally: _Tally) -> str:
        """Ask API Gateway about a stale-looking row before marking it (rows without an endpoint: as before).

        410 -> DISCONNECTED, reason ``gone``. Alive with activity after the cutoff (a client
        that only receives sends us no messages, yet its socket is in use) -> the row takes
        the gateway's time and stays CONNECTED. Alive but idle too, or no answer -> stale.
        """
        connection_id = candidate.connection_id
        if candidate.endpoint:
            answer = self.gateway.probe(candidate.endpoint, connection_id)
            if answer == GONE:
                outcome = self._disconnect_outcome(connection_id, DisconnectReason.GONE)
                if outcome == APPLIED:
                    tally.add(GONE)
                return outcome
            if isinstance(answer, Alive):
                active = answer.last_active_at or answer.connected_at
                if active is not None and active >= cutoff:
                    if self._take_gateway_time(connection_id, min(active, self.clock())):
                        tally.add(RECONCILED)
                    return SKIPPED
                # Open but idle at the gateway too: marked stale, and its socket closed so
                # the row and API Gateway agree.
                return self._sweep_one(connection_id, cutoff, tally)
            tally.add(UNREACHABLE)
        return self._sweep_one(connection_id, cutoff)

    def _take_gateway_time(self, connection_id: str, active: datetime) -> bool:
        """Move ``lastActiveAt`` forward to the gateway's time; never back (a heartbeat may be newer)."""
        row = self.model(connection_id)
        condition = (ConnectionModel.status == CONNECTED) & (
            ConnectionModel.last_active_at.does_not_exist() | (ConnectionModel.last_active_at < active)
        )
        actions = [ConnectionModel.last_active_at.set(active), *_live_index_actions(connection_id, active, self.model)]
        return self._conditional_update(row, actions, condition, "sweep reconcile")

    def _sweep_one(self, connection_id: str, cutoff: datetime, close: _Tally | None = None) -> str:
        """Mark one row stale if it still is; take a DISCONNECTED row met in the index out of it.

        With ``close`` (the gateway said the socket is open), the marked row's socket is closed
        and a failure to close counted there."""
        condition = (ConnectionModel.status == CONNECTED) & (ConnectionModel.last_active_at < cutoff)
        return self._sweep_write(connection_id, DisconnectReason.STALE, condition, close)

    def _expire_one(self, connection_id: str, born_before: int, close: _Tally | None = None) -> str:
        """Mark one row ``lifetime`` if it is still CONNECTED and was created before ``born_before``.

        API Gateway closes sockets at 2 hours on its own; a shorter lifetime needs the close
        sent, so every marked row with an endpoint gets one (410, already closed, is success)."""
        condition = (ConnectionModel.status == CONNECTED) & (ConnectionModel.live_since < born_before)
        return self._sweep_write(connection_id, DisconnectReason.LIFETIME, condition, close)

    def _sweep_write(
        self, connection_id: str, reason: DisconnectReason, condition: Any, close: _Tally | None = None
    ) -> str:
        row = self.model(connection_id)
        write_id = _new_write_id()
        applied, current = self._update_or_current(
            row, self._disconnect_actions(reason, write_id), condition, "sweep"
        )
        if applied or (current is not None and current.write_id == write_id):
            self.platform.count(connection_id, -1)
            # The write's answer holds the row (its endpoint too): closing costs no read.
            if close is not None and not self._close_socket(row if applied else current):
                close.add(NOT_CLOSED)
            return APPLIED
        if current is not None and current.status != CONNECTED and current.active_shard is not None:
            return self._leave_index(connection_id)
        return SKIPPED  # a heartbeat, another sweep or a disconnect got there first

    def _leave_index(self, connection_id: str) -> str:
        """Remove ``activeShard`` from a row that is not CONNECTED (another tool disconnected it
        and left it), so listings, counts and later sweeps stop reading it. Conditional, so a
        row revived in between keeps its place in the index."""
        row = self.model(connection_id)
        condition = ConnectionModel.active_shard.exists() & (ConnectionModel.status != CONNECTED)
        actions = [ConnectionModel.active_shard.remove()]
        return REPAIRED if self._conditional_update(row, actions, condition, "sweep repair") else SKIPPED

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


def read_activity(model: type[ConnectionModel], connection_id: str) -> tuple[bool, datetime | None]:
    """(CONNECTED?, stored ``lastActiveAt``) of a row, by one eventually consistent GetItem.

    0.5 read units whatever is projected (reads are billed by the item, rounded up to
    4 KB); the projection only keeps the answer small. A missing row is not CONNECTED."""
    answer = model._get_connection().get_item(
        connection_id, consistent_read=False, attributes_to_get=["status", "lastActiveAt"]
    )
    item = answer.get("Item") or {}
    return item.get("status", {}).get("S") == CONNECTED, _stored_time(item)


def _stored_time(item: dict[str, Any]) -> datetime | None:
    """``lastActiveAt`` of a raw item; None when missing or in another tool's format."""
    last = item.get("lastActiveAt", {}).get("S")
    if not last:
        return None
    try:
        return parse_timestamp(last)
    except ValueError:
        return None  # the next message asks the table again


def _new_write_id() -> str:
    return uuid.uuid4().hex


def _live_index_actions(connection_id: str, now: datetime, model: type[ConnectionModel]) -> list[Any]:
    """Keep a CONNECTED row in the live index at ``now``'s bucket (also heals other tools' rows).

    Setting a key to the value it already has leaves the index item where it is.
    """
    return [
        ConnectionModel.active_shard.set(shard_for(connection_id, model)),
        ConnectionModel.active_bucket.set(activity_bucket(now)),
    ]


def _live_key(row: ConnectionModel) -> dict[str, dict[str, str]]:
    """The live-index key of a row, as DynamoDB's ``LastEvaluatedKey`` spells it."""
    return {
        "connectionId": {"S": row.connection_id},
        "activeShard": {"N": str(row.active_shard)},
        "activeBucket": {"N": str(row.active_bucket)},
    }


def _check_start_key(key: dict[str, dict[str, Any]] | None, expected: dict[str, dict[str, str]]) -> None:
    """A token's key must lie in the partition the listing queries.

    DynamoDB rejects an ``ExclusiveStartKey`` from another partition with a
    ValidationException (a 500 here), and the signature alone cannot rule one out:
    whoever holds the signing secret can sign any key.
    """
    if key is not None and any(key.get(name) != value for name, value in expected.items()):
        raise ValidationError("`nextToken` is not a token issued by this service for this listing")
