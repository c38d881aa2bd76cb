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
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import msgspec
from pynamodb.exceptions import DoesNotExist, PynamoDBException

from connection_manager.activity import ActivityMemory
from connection_manager.bulk import APPLIED, REPAIRED, SKIPPED, BoundedWriter, BulkOutcome
from connection_manager.clock import Clock, utc_now
from connection_manager.config import Settings
from connection_manager.dynamo import dynamo_errors, error_code, is_condition_failure, update_or_current
from connection_manager.errors import ConflictError, NotFoundError, UnavailableError, ValidationError
from connection_manager.gateway import GONE, UNREACHABLE, Alive, Gateway
from connection_manager.records import to_record
from connection_manager.schemas import ConnectionList, Stats
from models.connection import (
    ConnectionModel,
    ConnectionStatus,
    DisconnectReason,
    activity_bucket,
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
NOT_CONNECTED = "not_connected"  # no such row, or not CONNECTED: nothing changed

#: A stale-looking row API Gateway said was active: it took the gateway's time instead.
RECONCILED = "reconciled"


class SweepResult(msgspec.Struct, frozen=True):
    """What one sweep did.

    A msgspec Struct rather than a dataclass: a dataclass costs about a millisecond to
    create at import, which every Lambda cold start would pay.
    """

    cleaned: int
    scanned: int
    skipped: int
    failed: int
    #: DISCONNECTED rows (written by other tools) met in the live index and taken out of it.
    repaired: int
    complete: bool
    dry_run: bool
    stale_after_seconds: int
    cutoff: datetime
    duration_ms: int
    max_in_flight: int
    #: Rows API Gateway answered 410 for: DISCONNECTED with reason ``gone`` (part of ``cleaned``).
    gone: int = 0
    #: Stale-looking rows the gateway said were active: kept CONNECTED with the gateway's time.
    reconciled: int = 0
    #: Rows with an endpoint the gateway could not be asked about: swept as before.
    unreconciled: int = 0

    def to_body(self) -> dict[str, Any]:
        return {
            "message": "Stale connections cleaned up" if not self.dry_run else "Dry run: nothing was changed",
            "cleanedCount": self.cleaned,
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
            "durationMs": self.duration_ms,
        }


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
        # Building it costs nothing: boto3 is imported on the first gateway call.
        self.gateway = gateway if gateway is not None else Gateway(settings)

    @cached_property
    def _tokens(self) -> TokenCodec:
        from connection_manager.config import process_token_secret
        from connection_manager.tokens import TokenCodec

        # The table is part of the key: a token issued for one table is refused by another,
        # even where both share a secret (one process, or one secret for several stages).
        secret = self.settings.token_secret or process_token_secret()
        return TokenCodec(f"{secret}\n{self.settings.table_name}")

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

    def health(self) -> dict[str, Any]:
        with dynamo_errors("health check"):
            self.model.describe_table()
        return {"status": "ok", "table": self.settings.table_name}

    # Reads ------------------------------------------------------------------------------

    def get_connection(self, connection_id: str) -> dict[str, Any]:
        return to_record(self._get(connection_id))

    def get_user_connections(
        self, user_id: str, limit: int | None = None, next_token: str | None = None
    ) -> ConnectionList:
        from connection_manager.tokens import Cursor

        limit = limit or self.settings.default_page_size
        scope = f"user:{user_id}"
        start = self._tokens.decode(next_token, scope, shards=1, key_names=_USER_KEYS).key if next_token else None
        _check_start_key(start, {"userId": {"S": user_id}, "status": {"S": CONNECTED}})
        with dynamo_errors("get_user_connections"):
            results = self.model.user_index.query(
                user_id,
                range_key_condition=ConnectionModel.status == CONNECTED,
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
            if row is None or row.status != CONNECTED:
                continue  # disconnected since the index was read
            record = to_record(row)
            rows.append(record)
            used += len(json.dumps(record, default=str))
            if used >= RESPONSE_BUDGET_BYTES:
                break
        if last_taken is not None and last_taken != ids[-1]:
            last_key: dict[str, Any] | None = {
                "connectionId": {"S": last_taken}, "userId": {"S": user_id}, "status": {"S": CONNECTED}
            }
        else:
            last_key = index_end if len(ids) == limit else None
        token = self._tokens.encode(scope, Cursor(0, last_key)) if last_key else None
        return ConnectionList(rows, len(rows), token)

    def get_all_connections(
        self, limit: int | None = None, next_token: str | None = None
    ) -> ConnectionList:
        """Live connections from the sparse index, shard by shard, oldest activity bucket first.

        A page that empties its shard goes on to the next ones in concurrent waves of 1, 2,
        4... shards (at most ``sweep_concurrency``), each asked only for the rows the page
        still lacks: full shards cost one query as before, and a table spread thinly over
        many shards is walked in a few round trips instead of one per shard.
        """
        from connection_manager.tokens import Cursor

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
        """Counts for the dashboard in one pass over the live rows (never the history)."""
        now = self.clock()
        cutoff = now - timedelta(seconds=self.settings.stale_after_seconds)
        active = stale = 0
        users: set[str] = set()
        with dynamo_errors("stats"):
            for row in self._active_rows(
                attributes=["connectionId", "userId", "status", "lastActiveAt", "activeShard", "activeBucket"],
                filter_condition=_LIVE,
            ):
                active += 1
                users.add(row.user_id)
                if row.last_active_at is not None and row.last_active_at < cutoff:
                    stale += 1
        return Stats(
            active, len(users), stale, self.settings.stale_after_seconds, self.settings.table_name, format_timestamp(now)
        )

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

        Returns WRITTEN, REMEMBERED, CURRENT or NOT_CONNECTED. The table decides with a
        conditional write (``lastActiveAt`` older than the interval), so containers that
        share nothing still write about once per interval; this process's memory of the
        stored time skips the request altogether for most messages. Nothing is read back
        on success (no ``ReturnValues``); a failed condition returns the stored row
        (``ALL_OLD``), free, so the next messages here know the time too. Guarantee: the
        stored time is never older than ``interval`` seconds before any message.
        """
        now = self.clock()
        interval = self.settings.activity_write_interval_seconds
        threshold = now - timedelta(seconds=interval)
        if interval:
            known = self.activity.get(connection_id)
            if known is not None and known > threshold:
                return REMEMBERED
        condition = ConnectionModel.status == CONNECTED
        if interval:
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
        last = stored.get("lastActiveAt", {}).get("S")
        if last:
            try:
                self.activity.remember(connection_id, parse_timestamp(last))
            except ValueError:
                pass  # another tool's format: the next message asks the table again
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
        """Mark CONNECTED rows idle since before the cutoff as DISCONNECTED (reason ``stale``).

        Reads only the stale rows (a range query per shard of the sparse index), writes them
        concurrently, and stops taking new rows once ``time_left_ms()`` falls under the
        configured margin, reporting ``complete=False`` so the next run finishes the job.
        Each write re-checks the cutoff, so a heartbeat that lands mid-sweep wins.

        A row with a stored endpoint is first asked about at API Gateway, in the same bounded
        task as its write (see :meth:`_sweep_candidate`). A dry run asks nothing.
        """
        started = time.monotonic()
        stale_after = stale_after_seconds or self.settings.stale_after_seconds
        cutoff = self.clock() - timedelta(seconds=stale_after)
        margin = self.settings.sweep_time_margin_ms

        def out_of_time() -> bool:
            return time_left_ms is not None and time_left_ms() < margin

        read_failure: PynamoDBException | None = None

        def candidates() -> Iterator[ConnectionModel]:
            nonlocal read_failure
            # Every bucket up to the cutoff's own: the older ones hold only stale rows, the
            # cutoff's bucket some that are not stale yet, dropped by the filter before
            # any write (read, never written: at most one bucket's worth per run).
            # A shard whose Query still fails after retries is left for the next run;
            # the others carry on, and the writes already made are counted.
            failures: list[BaseException] = []
            rows = iter(
                self._active_rows(
                    attributes=[
                        "connectionId", "activeShard", "activeBucket", "lastActiveAt", "status", "gatewayEndpoint"
                    ],
                    range_key_condition=ConnectionModel.active_bucket <= activity_bucket(cutoff),
                    filter_condition=ConnectionModel.last_active_at < cutoff,
                    page_size=SWEEP_PAGE_SIZE,
                    errors=failures,
                )
            )
            while True:
                try:
                    yield next(rows)
                except StopIteration:
                    if failures:
                        failure = failures[0]
                        if not isinstance(failure, PynamoDBException):
                            raise failure
                        read_failure = failure
                    return

        scanned = stale = 0
        tally = _Tally()
        with dynamo_errors("cleanup_stale_connections"):
            if dry_run:
                stopped = False
                for row in candidates():
                    if out_of_time():
                        stopped = True
                        break
                    scanned += 1
                    # DISCONNECTED rows left in the index by other tools are not stale connections.
                    stale += row.status == CONNECTED
                outcome = None
            else:
                # The deadline is checked by the writer once a write slot is free, right
                # before the write would start (waiting for the slot takes time too).
                outcome = self._write_all(
                    (_Candidate(row.connection_id, row.gateway_endpoint) for row in candidates()),
                    lambda candidate: self._sweep_candidate(candidate, cutoff, tally),
                    stop=out_of_time,
                )
                scanned = outcome.applied + outcome.skipped + outcome.failed + outcome.repaired
                stopped = outcome.stopped
            if read_failure is not None and scanned == 0:
                raise read_failure  # nothing done: a plain 503 says it best
        complete = not stopped and read_failure is None
        if read_failure is not None:
            log.warning(
                "sweep stopped early: reading stale rows failed after retries (%s); the next run resumes",
                error_code(read_failure) or "DynamoDB unreachable",
            )
        duration_ms = int((time.monotonic() - started) * 1000)
        failed = 0 if outcome is None else outcome.failed
        result = SweepResult(
            cleaned=stale if outcome is None else outcome.applied,
            scanned=scanned,
            # Reconciled rows were written (their time moved) but not marked: not "skipped".
            skipped=0 if outcome is None else outcome.skipped - tally[RECONCILED],
            failed=failed,
            repaired=0 if outcome is None else outcome.repaired,
            # Rows whose write failed are still stale: more remains for the next run.
            complete=complete and failed == 0,
            dry_run=dry_run,
            stale_after_seconds=stale_after,
            cutoff=cutoff,
            duration_ms=duration_ms,
            max_in_flight=0 if outcome is None else outcome.max_in_flight,
            gone=tally[GONE],
            reconciled=tally[RECONCILED],
            unreconciled=tally[UNREACHABLE],
        )
        if outcome is not None and outcome.failures:
            log.warning("sweep writes failed after retries: %s", "; ".join(outcome.failures))
        return result

    # Internals --------------------------------------------------------------------------

    def _get(self, connection_id: str, missing: Exception | None = None) -> ConnectionModel:
        try:
            with dynamo_errors("get_connection"):
                return self.model.get(connection_id, consistent_read=True)
        except DoesNotExist:
            raise (missing or NotFoundError(f"Connection '{connection_id}' does not exist")) from None

    def _active_rows(
        self,
        attributes: list[str],
        range_key_condition: Any = None,
        filter_condition: Any = None,
        page_size: int | None = None,
        errors: list[BaseException] | None = None,
    ) -> Iterable[ConnectionModel]:
        """Stream the sparse index, its shards read concurrently; a few pages in memory at a time."""
        from connection_manager.fanout import merged

        def shard_rows(shard: int) -> Iterable[ConnectionModel]:
            return self.model.live_index.query(
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
        if applied:
            return row
        return current if current is not None and current.write_id == write_id else None

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
            else:
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

    def _sweep_one(self, connection_id: str, cutoff: datetime) -> str:
        """Mark one row stale if it still is; take a DISCONNECTED row met in the index out of it."""
        row = self.model(connection_id)
        condition = (ConnectionModel.status == CONNECTED) & (ConnectionModel.last_active_at < cutoff)
        write_id = _new_write_id()
        applied, current = self._update_or_current(
            row, self._disconnect_actions(DisconnectReason.STALE, write_id), condition, "sweep"
        )
        if applied or (current is not None and current.write_id == write_id):
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
        with no activity counts as active since it was created), conditional on the row
        still being CONNECTED.
        """
        missing = (
            ConnectionModel.active_shard.does_not_exist()
            | ConnectionModel.active_bucket.does_not_exist()
            | ConnectionModel.last_active_at.does_not_exist()
        )
        with dynamo_errors("reindex"):
            rows = self.model.scan(
                filter_condition=(ConnectionModel.status == CONNECTED) & missing,
                attributes_to_get=["connectionId", "lastActiveAt", "createdAt"],
            )
            # Reading a row to compute its bucket: other tools' rows may hold any timestamp format.
            by_id: dict[str, datetime | None] = {}

            def ids() -> Iterator[str]:
                for row in rows:
                    by_id[row.connection_id] = row.last_active_at or row.created_at
                    yield row.connection_id

            return self._write_all(ids(), lambda cid: self._reindex_one(cid, by_id.pop(cid, None)))

    def _reindex_one(self, connection_id: str, last_active: datetime | None) -> str:
        row = self.model(connection_id)
        actions = [
            ConnectionModel.last_active_at.set(ConnectionModel.last_active_at | ConnectionModel.created_at),
            ConnectionModel.active_shard.set(shard_for(connection_id, self.model)),
            ConnectionModel.active_bucket.set(activity_bucket(last_active or self.clock())),
        ]
        # A heartbeat or message in between set its own bucket: keep it.
        condition = (ConnectionModel.status == CONNECTED) & (
            ConnectionModel.active_bucket.does_not_exist() | ConnectionModel.active_shard.does_not_exist()
            | ConnectionModel.last_active_at.does_not_exist()
        )
        return APPLIED if self._conditional_update(row, actions, condition, "reindex") else SKIPPED

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
