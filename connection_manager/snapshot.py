"""The snapshot as a pass over the live rows that may span invocations, never outliving one.

At ten million connections one pass over the live rows takes longer than a Lambda may run,
so a pass is resumable and boxed by the invocation's deadline:

* **A lease.** An invocation first takes the lease on the snapshot item (a conditional
  UpdateItem: free, or past its ``leaseUntil``), until its own deadline. Only the holder
  counts; a second invocation that overlaps skips the snapshot (its sweep still runs).
* **A cursor per shard.** Each live shard is read page by page (``LiveIndex``, the three
  attributes counted, :data:`PAGE_ROWS` at a time) until the shard is done or less than
  the sweep's margin is left. The cursors and the partial counts are then stored in the pass
  item (:data:`models.platform.PASS_KEY`) in one transaction that also releases the lease
  and holds only while the lease is still this invocation's: an invocation whose lease ran
  out and was taken over stores nothing, so no shard is ever counted twice. The next
  invocation carries on from the cursors.
* **Counted raw.** Rows are read as DynamoDB's JSON (:mod:`connection_manager.raw_query`):
  no model object per row, and the idle time is found by comparing the stored ISO
  timestamps as text with the bins' bounds (our format sorts as time does).
* **Repairs as before.** A shard's counter is read when its count starts and set to the
  count when it ends, only if no write moved it meanwhile.

When the last shard is done, the figures are published in the snapshot item (``/stats``
reads them with the counters, as before) and the next invocation starts a new pass.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, NamedTuple

from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.transactions import TransactWrite

from connection_manager.clock import TimeLeft
from connection_manager.dynamo import dynamo_errors, is_condition_failure
from connection_manager.raw_query import RAW_ITEMS, Value, raw_query, row_decoder
from connection_manager.snapshot_state import IdleBins, PassState
from models.connection import (
    ConnectionModel,
    ConnectionStatus,
    format_timestamp,
    live_shards,
)
from models.platform import PASS_KEY, SNAPSHOT_KEY, PlatformRecord, counter_key

log = logging.getLogger(__name__)

#: Rows asked for per page: small enough that the deadline is looked at every few tens of ms.
PAGE_ROWS = 1000
#: Shards read at once: enough to hide DynamoDB's latency behind one vCPU's work.
PAGE_THREADS = 4
#: The lease of a caller without a deadline (the CLI, seeding): the longest a Lambda may run.
LEASE_WITHOUT_DEADLINE_MS = 15 * 60 * 1000


class Outcome(NamedTuple):
    """What one invocation did for the snapshot."""

    #: The figures published by this invocation (it finished a pass), else None.
    figures: dict[str, Any] | None
    #: The pass under way after this invocation (None when it finished one or did nothing).
    progress: dict[str, Any] | None
    #: Why nothing was counted: ``"lease held"``, ``"no time"``, ``"lease lost"``; None when it counted.
    skipped: str | None = None


class SnapshotPass:
    """Takes, carries on and publishes the snapshot passes of one table."""

    def __init__(self, model: type[ConnectionModel], records: type[PlatformRecord], concurrency: int) -> None:
        self.model = model
        self.records = records
        # Pages are CPU-bound here (decode and count); past a few threads, more only add
        # switching between them, which costs CPU (measured: 9 µs a row at 4, 11 at 8).
        self.concurrency = min(concurrency, PAGE_THREADS)
        self.index = model.live_index.Meta.index_name
        self._names = {
            "#sh": ConnectionModel.active_shard.attr_name,
            "#st": ConnectionModel.status.attr_name,
            "#u": ConnectionModel.user_id.attr_name,
            "#la": ConnectionModel.last_active_at.attr_name,
            "#ca": ConnectionModel.created_at.attr_name,
        }
        self._rows = row_decoder(user=self._names["#u"], last=self._names["#la"], created=self._names["#ca"])

    def advance(self, now: datetime, time_left: TimeLeft, margin_ms: int) -> Outcome:
        """Count as much of the pass as fits before ``margin_ms`` is left, and store it."""

        def out_of_time() -> bool:
            return time_left is not None and time_left() < margin_ms

        if out_of_time():
            return Outcome(None, None, "no time")
        owner = uuid.uuid4().hex
        until = _epoch_ms(now) + (time_left() if time_left is not None else LEASE_WITHOUT_DEADLINE_MS)
        with dynamo_errors("snapshot"):
            progress = self._take_lease(owner, now, until)
            if progress is False:
                log.info("snapshot skipped: another invocation holds its lease")
                return Outcome(None, None, "lease held")
            try:
                state = self._resume(progress) or PassState(live_shards(self.model), self.index, format_timestamp(now))
                state.invocations += 1
                failure = self._count(state, IdleBins(now), out_of_time)
                figures = state.figures(now) if state.complete else None
                if not self._store(owner, state, figures):
                    log.warning("snapshot work of this invocation dropped: its lease ran out and was taken over")
                    return Outcome(None, None, "lease lost")
            except BaseException:
                self._release(owner)
                raise
        if failure is not None:
            raise failure
        return Outcome(figures, None if figures else state.progress())

    # Lease ------------------------------------------------------------------------------

    def _take_lease(self, owner: str, now: datetime, until: int) -> dict[str, Any] | None | bool:
        """The progress of the pass under way (None: none), or False when the lease is held."""
        record = self.records(SNAPSHOT_KEY)
        free = PlatformRecord.lease_until.does_not_exist() | (PlatformRecord.lease_until < _epoch_ms(now))
        try:
            record.update(actions=[PlatformRecord.lease_owner.set(owner), PlatformRecord.lease_until.set(until)], condition=free)
        except PynamoDBException as exc:
            if is_condition_failure(exc):
                return False
            raise
        try:
            return json.loads(record.progress) if record.progress else None
        except ValueError:
            return None

    def _release(self, owner: str) -> None:
        try:
            self.records(SNAPSHOT_KEY).update(
                actions=[PlatformRecord.lease_owner.remove(), PlatformRecord.lease_until.remove()],
                condition=PlatformRecord.lease_owner == owner,
            )
        except PynamoDBException as exc:  # it runs out at the deadline anyway
            log.warning("snapshot lease not released (%s); it runs out at this invocation's deadline", exc)

    # Pass state -------------------------------------------------------------------------

    def _resume(self, progress: dict[str, Any] | None) -> PassState | None:
        if not progress or not progress.get("passId"):
            return None
        try:
            stored = self.records.get(PASS_KEY, consistent_read=True)
        except self.records.DoesNotExist:
            stored = None
        try:
            if stored is None or stored.state is None:
                raise ValueError("no stored state")
            state = PassState.from_bytes(stored.state, live_shards(self.model), self.index)
            if state.pass_id != progress["passId"]:
                raise ValueError(f"state of pass {state.pass_id}, expected {progress['passId']}")
        except ValueError as exc:
            log.warning("snapshot cursor discarded (%s): a new pass starts", exc)
            return None
        return state

    def _store(self, owner: str, state: PassState, figures: dict[str, Any] | None) -> bool:
        """Store the pass (or publish its figures) and release the lease, only while it is ours."""
        actions = [PlatformRecord.lease_owner.remove(), PlatformRecord.lease_until.remove()]
        if figures is None:
            actions.append(PlatformRecord.progress.set(json.dumps(state.progress(), separators=(",", ":"))))
        else:
            actions += [PlatformRecord.progress.remove(), PlatformRecord.body.set(json.dumps(figures, separators=(",", ":")))]
        connection = self.records._get_connection().connection
        try:
            with TransactWrite(connection=connection) as transaction:
                # A finished pass leaves the item empty rather than deleting it: the role
                # has no DeleteItem, so it cannot delete a connection either.
                stored = None if figures is not None else state.to_bytes()
                transaction.save(self.records(PASS_KEY, state=stored))
                transaction.update(self.records(SNAPSHOT_KEY), actions=actions, condition=PlatformRecord.lease_owner == owner)
        except TransactWriteError as exc:
            reasons = [reason.code for reason in exc.cancellation_reasons if reason is not None]
            if "ConditionalCheckFailed" in reasons:
                return False
            raise
        return True

    # Counting ---------------------------------------------------------------------------

    def _count(self, state: PassState, bins: IdleBins, out_of_time: Callable[[], bool]) -> BaseException | None:
        """Read the shards not done until they are or time is short; the first failure, if any,
        is returned after every shard stopped at a consistent point (its cursor and counts agree)."""
        lock = threading.Lock()
        failures: list[BaseException] = []
        client = self.model._get_connection().connection.client

        def stop() -> bool:
            return bool(failures) or out_of_time()

        def count_shard(number: int) -> None:
            shard = state.shards[number]
            try:
                if not shard.started:
                    shard.before, shard.started = self._counter(number), True
                while not shard.done and not stop():
                    page = raw_query(client, rows=self._rows, **self._page_request(number, shard.cursor))
                    with lock:
                        self._add(state, page[RAW_ITEMS], bins)
                        shard.rows += len(page[RAW_ITEMS])
                        shard.cursor = page.get("LastEvaluatedKey")
                        shard.done = shard.cursor is None
            except Exception as exc:  # noqa: BLE001 - every shard stops, the pass is stored, then it is raised
                failures.append(exc)

        waiting = [number for number, shard in enumerate(state.shards) if not shard.done]
        if waiting:
            with ThreadPoolExecutor(max_workers=max(1, min(len(waiting), self.concurrency))) as pool:
                list(pool.map(count_shard, waiting))
        # Counters are repaired once no page is being read: a few writes, and an in-process
        # stand-in (the embedded demo's) must not see its items change under a running query.
        for number in waiting:
            shard = state.shards[number]
            try:
                if shard.done and self._repair(number, shard.before, shard.rows):
                    state.repaired += 1
            except Exception as exc:  # noqa: BLE001 - as above
                failures.append(exc)
        return failures[0] if failures else None

    def _page_request(self, shard: int, cursor: dict[str, Any] | None) -> dict[str, Any]:
        request: dict[str, Any] = {
            "TableName": self.model.Meta.table_name,
            "IndexName": self.index,
            "KeyConditionExpression": "#sh = :sh",
            "FilterExpression": "#st = :connected",
            "ProjectionExpression": "#u, #la, #ca",
            "ExpressionAttributeNames": self._names,
            "ExpressionAttributeValues": {":sh": {"N": str(shard)}, ":connected": {"S": ConnectionStatus.CONNECTED.value}},
            "Limit": PAGE_ROWS,
        }
        if cursor is not None:
            request["ExclusiveStartKey"] = cursor
        return request

    def _add(self, state: PassState, rows: list[Any], bins: IdleBins) -> None:
        """The per-row work of the pass, page by page: a user id and a time taken out of each
        decoded row, then counted in bulk (a user seen before is not hashed again)."""
        users = [row.user.S for row in rows if row.user is not None and row.user.S is not None]
        state.users.add_many(users)
        state.heavy.add_many(users)
        bins.count_into(state.idle, [_text(row.last or row.created) for row in rows])

    def _counter(self, shard: int) -> int | None:
        try:
            return int(self.records.get(counter_key(shard), consistent_read=True).live or 0)
        except self.records.DoesNotExist:
            return None

    def _repair(self, shard: int, before: int | None, rows: int) -> bool:
        """Set a shard's counter to its count, unless a connect or disconnect moved it since the
        count started (then the count may be stale already: the next pass tries again)."""
        if before == rows:
            return False
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


def _text(value: Value | None) -> str | None:
    if value is None:
        return None
    return value.S if value.S is not None else value.N  # epoch numbers, from other tools


def _epoch_ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)
