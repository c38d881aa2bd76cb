"""The sweep stops before its Lambda does, leaves no row half-written, and the next run finishes.

The sweep asks ``context.get_remaining_time_in_millis()`` before taking each stale row and
stops once less than ``sweep_time_margin_ms`` is left, waiting only for the writes already
in flight. It then answers ``complete: false``. There is no self-invocation: the next
scheduled run (hourly) reads the sparse index again and picks up exactly the rows left.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from connection_manager import bulk
from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService, new_connection_row
from models.connection import ConnectionModel, shard_for
from tests.support.events import FakeLambdaContext, load_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import raw_items

STALE = 30


def seed_stale(clock: Any, count: int = STALE, live: int = 3) -> None:
    with ConnectionModel.batch_write() as batch:
        for index in range(count):
            batch.save(new_connection_row(f"stale-{index:03d}", "u1", clock() - timedelta(hours=2, seconds=index)))
        for index in range(live):
            batch.save(new_connection_row(f"live-{index:03d}", "u2", clock()))


class DrainingTime:
    """Remaining Lambda time that drops by ``step_ms`` each time it is asked."""

    def __init__(self, start_ms: int, step_ms: int) -> None:
        self.left = start_ms
        self.step = step_ms
        self.calls = 0
        self.answers: list[int] = []

    def __call__(self) -> int:
        self.calls += 1
        answer = self.left
        self.answers.append(answer)
        self.left = max(0, self.left - self.step)
        return answer


def assert_no_half_written_rows() -> tuple[int, int]:
    """Every stale row is either untouched or fully disconnected; returns (done, untouched)."""
    done = untouched = 0
    for item in raw_items():
        if not item["connectionId"].startswith("stale-"):
            assert item["status"] == "CONNECTED", item
            continue
        if item["status"] == "DISCONNECTED":
            assert item["disconnectReason"] == "stale", item
            assert {"disconnectedAt", "updatedAt", "expiresAt"} <= set(item), item
            assert "activeShard" not in item, item
            done += 1
        else:
            assert item["status"] == "CONNECTED", item
            assert item["activeShard"] == shard_for(item["connectionId"]), item
            assert not {"disconnectedAt", "disconnectReason", "expiresAt"} & set(item), item
            untouched += 1
    return done, untouched


def test_no_time_left__nothing_is_written_and_the_run_is_incomplete(service, clock):
    seed_stale(clock)
    margin = service.settings.sweep_time_margin_ms

    result = service.cleanup_stale_connections(time_left_ms=lambda: margin - 1)

    assert (result.cleaned, result.complete) == (0, False)
    assert result.to_body()["complete"] is False
    assert assert_no_half_written_rows() == (0, STALE)


def test_ample_time__one_run_is_complete(service, clock):
    seed_stale(clock)

    result = service.cleanup_stale_connections(time_left_ms=lambda: 900_000)

    assert (result.cleaned, result.complete) == (STALE, True)
    assert assert_no_half_written_rows() == (STALE, 0)


def test_draining_time__stops_with_the_margin_kept_and_the_next_run_finishes(service, clock):
    seed_stale(clock)
    margin = service.settings.sweep_time_margin_ms
    # Ten rows' worth of time above the margin, then it runs out mid-sweep.
    time_left = DrainingTime(start_ms=margin + 10 * 1_000 - 1, step_ms=1_000)

    first = service.cleanup_stale_connections(time_left_ms=time_left)

    assert first.complete is False
    assert 0 < first.cleaned < STALE
    done, untouched = assert_no_half_written_rows()
    assert done == first.cleaned  # what it reports is what it did, writes in flight included
    assert untouched == STALE - first.cleaned
    # It stopped at the first answer under the margin and asked nothing after it.
    assert time_left.answers[-1] < margin
    assert all(answer >= margin for answer in time_left.answers[:-1])

    second = service.cleanup_stale_connections(time_left_ms=lambda: 900_000)

    assert (second.cleaned, second.complete) == (STALE - first.cleaned, True)
    assert assert_no_half_written_rows() == (STALE, 0)


def test_draining_time__several_short_runs_add_up_to_every_row_once(service, clock):
    seed_stale(clock)
    margin = service.settings.sweep_time_margin_ms
    cleaned, runs = 0, 0
    while True:
        runs += 1
        result = service.cleanup_stale_connections(time_left_ms=DrainingTime(margin + 7 * 500, 500))
        cleaned += result.cleaned
        assert_no_half_written_rows()
        if result.complete:
            break
        assert result.cleaned > 0  # every run makes progress
        assert runs < STALE
    assert cleaned == STALE
    assert runs > 1


def test_scheduled_event__reports_incomplete_then_the_next_run_completes(handler_service, clock):
    seed_stale(clock)
    margin = handler_service.settings.sweep_time_margin_ms
    short = FakeLambdaContext(time_left_ms=DrainingTime(margin + 5 * 1_000 - 1, 1_000))

    first = lambda_handler(load_event("scheduled_event"), short)

    assert first["statusCode"] == 200
    assert first["body"]["complete"] is False
    assert 0 < first["body"]["cleanedCount"] < STALE
    assert assert_no_half_written_rows()[0] == first["body"]["cleanedCount"]

    second = lambda_handler(load_event("scheduled_event"), FakeLambdaContext())

    assert second["body"]["complete"] is True
    assert first["body"]["cleanedCount"] + second["body"]["cleanedCount"] == STALE
    assert assert_no_half_written_rows() == (STALE, 0)


def test_raw_action__uses_the_context_deadline_too(handler_service, clock):
    seed_stale(clock)
    margin = handler_service.settings.sweep_time_margin_ms

    response = lambda_handler(
        {"action": "cleanup_stale_connections"}, FakeLambdaContext(time_left_ms=margin - 1)
    )

    assert response["statusCode"] == 200
    assert (response["body"]["cleanedCount"], response["body"]["complete"]) == (0, False)
    assert assert_no_half_written_rows() == (0, STALE)


class SlotsThatAnnounceWaiting:
    """The writer's slot semaphore, announcing (``waiting``) when a caller has to wait for a slot."""

    def __init__(self, value: int, waiting: threading.Event) -> None:
        self._inner = threading.BoundedSemaphore(value)
        self.waiting = waiting

    def acquire(self) -> bool:
        if not self._inner.acquire(blocking=False):
            self.waiting.set()
            self._inner.acquire()
        return True

    def release(self) -> None:
        self._inner.release()


def test_deadline_passes_while_waiting_for_a_write_slot__no_new_write_starts(settings, clock, dynamodb, monkeypatch):
    # Given one write slot, three stale rows, and a first write that holds the slot
    seed_stale(clock, count=3, live=0)
    service = ConnectionService(replace(settings, sweep_concurrency=1), clock)
    margin = service.settings.sweep_time_margin_ms
    left = [margin + 60_000]
    waiting_for_slot = threading.Event()
    monkeypatch.setattr(
        bulk,
        "threading",
        SimpleNamespace(
            BoundedSemaphore=lambda value: SlotsThatAnnounceWaiting(value, waiting_for_slot), Lock=threading.Lock
        ),
    )
    first_may_finish = threading.Event()
    original = service._sweep_one

    def sweep_one(connection_id: str, cutoff: Any, *rest: Any) -> str:
        first_may_finish.wait(timeout=30)  # a guard against hanging, not a timing assumption
        return original(connection_id, cutoff, *rest)

    monkeypatch.setattr(service, "_sweep_one", sweep_one)

    def deadline_passes_during_the_wait() -> None:
        # The sweep holds its next row and waits for the slot: the Lambda's time runs out now.
        waiting_for_slot.wait(timeout=30)
        left[0] = margin - 1
        first_may_finish.set()

    helper = threading.Thread(target=deadline_passes_during_the_wait)
    helper.start()

    # When the sweep runs
    result = service.cleanup_stale_connections(time_left_ms=lambda: left[0])
    helper.join(timeout=30)

    # Then only the write already in flight happened, and the run says more remains
    assert (result.cleaned, result.scanned, result.complete) == (1, 1, False)
    assert assert_no_half_written_rows() == (1, 2)
