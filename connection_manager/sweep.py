"""The hourly sweep: the lifetime pass, the stale pass and the reconcile step with API Gateway.

Part of :class:`connection_manager.service.ConnectionService`, which composes the parts
(see that module for why one object). :meth:`Sweep.cleanup_stale_connections` reads\ntop to bottom: the lifetime pass, then the stale pass with its reconcile step.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator

import msgspec
from pynamodb.exceptions import PynamoDBException

from connection_manager.bulk import APPLIED, SKIPPED, BulkOutcome
from connection_manager.clock import TimeLeft
from connection_manager.dynamo import dynamo_errors, error_code
from connection_manager.gateway import GONE, UNREACHABLE, Alive
from connection_manager.rows import (
    CONNECTED,
    RowAccess,
    Tally,
    live_index_actions,
    new_write_id,
)
from models.connection import (
    ConnectionModel,
    DisconnectReason,
    activity_bucket,
    epoch_seconds,
    format_timestamp,
)

log = logging.getLogger(__name__)

#: Rows per Query page of the stale sweep: one page is all it holds in memory, whatever
#: the number of stale rows (DynamoDB's own 1 MB pages would hold tens of thousands).
SWEEP_PAGE_SIZE = 200

#: A stale-looking row API Gateway said was active: it took the gateway's time instead.
RECONCILED = "reconciled"
#: A row the sweep marked whose socket API Gateway could not be made to close.
NOT_CLOSED = "not closed"


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


class _Candidate:
    """A row the sweep may mark: its id and stored endpoint (printed as the id alone in failures)."""

    __slots__ = ("connection_id", "endpoint")

    def __init__(self, connection_id: str, endpoint: str | None) -> None:
        self.connection_id = connection_id
        self.endpoint = endpoint

    def __str__(self) -> str:
        return self.connection_id


class Sweep(RowAccess):
    """The hourly sweep: the lifetime pass, the stale pass and the reconcile step with API Gateway."""

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
        same bounded task as its write: the reconcile step (:meth:`_sweep_candidate`). A dry
        run asks nothing.
        """
        run = _SweepRun(self, stale_after_seconds or self.settings.stale_after_seconds, dry_run, time_left_ms)
        with dynamo_errors("cleanup_stale_connections"):
            if dry_run:
                run.count_without_writing()
            else:
                run.lifetime_pass()
                if not run.lifetime.stopped:
                    run.stale_pass()
            run.raise_if_nothing_was_read()
        return run.result()

    def _sweep_candidate(self, candidate: _Candidate, cutoff: datetime, tally: Tally) -> str:
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
        actions = [ConnectionModel.last_active_at.set(active), *live_index_actions(connection_id, active, self.model)]
        return self._conditional_update(row, actions, condition, "sweep reconcile")

    def _sweep_one(self, connection_id: str, cutoff: datetime, close: Tally | None = None) -> str:
        """Mark one row stale if it still is; take a DISCONNECTED row met in the index out of it.

        With ``close`` (the gateway said the socket is open), the marked row's socket is closed
        and a failure to close counted there."""
        condition = (ConnectionModel.status == CONNECTED) & (ConnectionModel.last_active_at < cutoff)
        return self._sweep_write(connection_id, DisconnectReason.STALE, condition, close)

    def _expire_one(self, connection_id: str, born_before: int, close: Tally | None = None) -> str:
        """Mark one row ``lifetime`` if it is still CONNECTED and was created before ``born_before``.

        API Gateway closes sockets at 2 hours on its own; a shorter lifetime needs the close
        sent, so every marked row with an endpoint gets one (410, already closed, is success)."""
        condition = (ConnectionModel.status == CONNECTED) & (ConnectionModel.live_since < born_before)
        return self._sweep_write(connection_id, DisconnectReason.LIFETIME, condition, close)

    def _sweep_write(
        self, connection_id: str, reason: DisconnectReason, condition: Any, close: Tally | None = None
    ) -> str:
        row = self.model(connection_id)
        write_id = new_write_id()
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


class _SweepRun:
    """One sweep's state: its cutoffs, its deadline, its counts, and the passes that fill them."""

    def __init__(self, sweep: Sweep, stale_after: int, dry_run: bool, time_left_ms: TimeLeft) -> None:
        self.sweep = sweep
        self.started = time.monotonic()
        now = sweep.clock()
        self.stale_after = stale_after
        self.dry_run = dry_run
        self.cutoff = now - timedelta(seconds=stale_after)
        self.lifetime_cutoff = now - timedelta(seconds=sweep.settings.max_connection_lifetime_seconds)
        self.born_before = epoch_seconds(self.lifetime_cutoff)
        self._margin = sweep.settings.sweep_time_margin_ms
        self._time_left_ms = time_left_ms
        self.read_failure: PynamoDBException | None = None
        self.tally = Tally()
        self.lifetime = BulkOutcome()
        self.stale = BulkOutcome()
        self.stopped = False
        self.lifetime_count = self.stale_count = self.scanned = 0

    def out_of_time(self) -> bool:
        return self._time_left_ms is not None and self._time_left_ms() < self._margin

    # The rows each pass reads ----------------------------------------------------------

    def _guarded(self, read: Callable[[list[BaseException]], Iterable[ConnectionModel]]) -> Iterator[ConnectionModel]:
        """A shard whose Query still fails after retries is left for the next run; the others
        carry on, and the writes already made are counted."""
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
                    self.read_failure = self.read_failure or failure
                return

    def expired_rows(self) -> Iterator[ConnectionModel]:
        """Rows past their lifetime. Keys only: the conditional write checks the status (index
        leftovers of other tools fail it and are repaired)."""
        return self._guarded(
            lambda failures: self.sweep._index_rows(
                self.sweep.model.lifetime_index,
                attributes=["connectionId", "activeShard", "liveSince"],
                range_key_condition=ConnectionModel.live_since < self.born_before,
                page_size=SWEEP_PAGE_SIZE,
                errors=failures,
            )
        )

    def stale_rows(self) -> Iterator[ConnectionModel]:
        """Every bucket up to the cutoff's own: the older ones hold only stale rows, the cutoff's
        bucket some that are not stale yet, dropped by the filter before any write (read, never
        written: at most one bucket's worth per run)."""
        for row in self._guarded(
            lambda failures: self.sweep._index_rows(
                self.sweep.model.live_index,
                attributes=[
                    "connectionId", "activeShard", "activeBucket", "lastActiveAt", "status", "liveSince",
                    "gatewayEndpoint",
                ],
                range_key_condition=ConnectionModel.active_bucket <= activity_bucket(self.cutoff),
                filter_condition=ConnectionModel.last_active_at < self.cutoff,
                page_size=SWEEP_PAGE_SIZE,
                errors=failures,
            )
        ):
            # Past its lifetime: the lifetime pass's row (a dry run counts it there).
            if row.live_since is None or row.live_since >= self.born_before:
                yield row

    # The passes -------------------------------------------------------------------------

    def lifetime_pass(self) -> None:
        """Mark rows past their lifetime. The deadline is checked by the writer once a write slot
        is free, right before the write would start (waiting for the slot takes time too)."""
        born_before, tally = self.born_before, self.tally
        self.lifetime = self.sweep._write_all(
            (row.connection_id for row in self.expired_rows()),
            lambda cid: self.sweep._expire_one(cid, born_before, tally),
            stop=self.out_of_time,
        )
        self.stale = BulkOutcome(stopped=True)
        self._count()

    def stale_pass(self) -> None:
        """Mark idle rows stale, each after the reconcile step has asked API Gateway about it."""
        cutoff, tally = self.cutoff, self.tally
        self.stale = self.sweep._write_all(
            (_Candidate(row.connection_id, row.gateway_endpoint) for row in self.stale_rows()),
            lambda candidate: self.sweep._sweep_candidate(candidate, cutoff, tally),
            stop=self.out_of_time,
        )
        self._count()

    def _count(self) -> None:
        self.stopped = self.stale.stopped
        self.lifetime_count, self.stale_count = self.lifetime.applied, self.stale.applied
        self.scanned = sum(
            outcome.applied + outcome.skipped + outcome.failed + outcome.repaired
            for outcome in (self.lifetime, self.stale)
        )

    def count_without_writing(self) -> None:
        """The dry run: both passes' rows counted, nothing asked or written."""
        for _ in self.expired_rows():
            if self.out_of_time():
                self.stopped = True
                return
            self.lifetime_count += 1
            self.scanned += 1
        for row in self.stale_rows():
            if self.out_of_time():
                self.stopped = True
                return
            self.scanned += 1
            # DISCONNECTED rows left in the index by other tools are not stale connections.
            self.stale_count += row.status == CONNECTED

    def raise_if_nothing_was_read(self) -> None:
        if self.read_failure is not None and self.scanned == 0:
            raise self.read_failure  # nothing done: a plain 503 says it best

    # The answer -------------------------------------------------------------------------

    def result(self) -> SweepResult:
        if self.read_failure is not None:
            log.warning(
                "sweep stopped early: reading rows to sweep failed after retries (%s); the next run resumes",
                error_code(self.read_failure) or "DynamoDB unreachable",
            )
        outcomes = [] if self.dry_run else [self.lifetime, self.stale]
        failed = sum(outcome.failed for outcome in outcomes)
        tally = self.tally
        failures = [failure for outcome in outcomes for failure in outcome.failures]
        if failures:
            log.warning("sweep writes failed after retries: %s", "; ".join(failures))
        return SweepResult(
            cleaned=self.stale_count + self.lifetime_count,
            lifetime=self.lifetime_count,
            scanned=self.scanned,
            # Reconciled rows were written (their time moved) but not marked: not "skipped".
            skipped=sum(outcome.skipped for outcome in outcomes) - tally[RECONCILED],
            failed=failed,
            repaired=sum(outcome.repaired for outcome in outcomes),
            # Rows whose write failed are still there to sweep: more remains for the next run.
            complete=not self.stopped and self.read_failure is None and failed == 0,
            dry_run=self.dry_run,
            stale_after_seconds=self.stale_after,
            cutoff=self.cutoff,
            lifetime_cutoff=self.lifetime_cutoff,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            max_in_flight=max((outcome.max_in_flight for outcome in outcomes), default=0),
            gone=tally[GONE],
            reconciled=tally[RECONCILED],
            unreconciled=tally[UNREACHABLE],
            not_closed=tally[NOT_CLOSED],
        )
