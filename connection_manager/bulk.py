"""Concurrent conditional writes with a bound on how many are in flight.

Against real DynamoDB a write is a network round trip; issuing them one at a time makes a
sweep of N rows cost N round trips of wall time. A small thread pool overlaps them, and a
semaphore caps the work queued ahead of the pool so memory stays flat however many rows a
sweep streams through.

The thread pool module is imported when the first writer is built, not with this module:
most invocations (reads, heartbeats, WebSocket events) never write in bulk.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

import msgspec

if TYPE_CHECKING:
    from concurrent.futures import Future

#: What one write reports: it was applied, its condition no longer held, or it failed; or,
#: instead of its own change, it repaired a row other tools left inconsistent.
APPLIED, SKIPPED, FAILED, REPAIRED = "applied", "skipped", "failed", "repaired"


class BulkOutcome(msgspec.Struct):
    """What a batch of writes did. A Struct, not a dataclass: it is built at import for free."""

    applied: int = 0
    skipped: int = 0
    failed: int = 0
    repaired: int = 0
    max_in_flight: int = 0
    #: True when ``stop`` refused an item: items remained that were never written.
    stopped: bool = False
    failures: list[str] = msgspec.field(default_factory=list)


class BoundedWriter:
    """Runs ``write(item) -> APPLIED|SKIPPED|FAILED|REPAIRED`` for each submitted item, concurrently.

    ``stop()``, when given, is asked before each write starts; once it answers True no
    further write starts (a deadline: the caller's time is running out).
    """

    MAX_FAILURES_KEPT = 10

    def __init__(self, write: Callable[[str], str], concurrency: int, stop: Callable[[], bool] | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._write = write
        self._stop = stop
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cm-write")
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.outcome = BulkOutcome()

    def submit(self, item: str) -> bool:
        """Start writing ``item`` once a slot is free; False (nothing started) when ``stop()`` says so.

        ``stop`` is asked after the slot is taken, not before: waiting for a slot lasts as long
        as the slowest write in flight, and a deadline that passes during the wait must
        still keep this write from starting.
        """
        self._slots.acquire()
        if self._stop is not None and self._stop():
            self._slots.release()
            self.outcome.stopped = True
            return False
        with self._lock:
            self._in_flight += 1
            self.outcome.max_in_flight = max(self.outcome.max_in_flight, self._in_flight)
        future = self._pool.submit(self._run, item)
        future.add_done_callback(self._done)
        return True

    def _run(self, item: str) -> str:
        try:
            return self._write(item)
        except Exception as exc:  # reported in the outcome, never lost
            with self._lock:
                if len(self.outcome.failures) < self.MAX_FAILURES_KEPT:
                    self.outcome.failures.append(f"{item}: {exc}")
            return FAILED

    def _done(self, future: Future[str]) -> None:
        result = future.result()
        with self._lock:
            self._in_flight -= 1
            if result == APPLIED:
                self.outcome.applied += 1
            elif result == SKIPPED:
                self.outcome.skipped += 1
            elif result == REPAIRED:
                self.outcome.repaired += 1
            else:
                self.outcome.failed += 1
        self._slots.release()

    def close(self) -> BulkOutcome:
        """Wait for every submitted write; nothing is left half-done when this returns."""
        self._pool.shutdown(wait=True)
        return self.outcome

    def __enter__(self) -> "BoundedWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
