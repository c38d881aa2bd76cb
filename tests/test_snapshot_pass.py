"""The snapshot pass never outlives its invocation, carries on where it stopped, and is counted once.

Pages are made small (``PAGE_ROWS``) so that a few dozen rows take several pages, and the
remaining time is injected, so each test decides exactly when time runs short.
"""
from __future__ import annotations

import json
import zlib
from datetime import timedelta
from typing import Any

import pytest

import connection_manager.snapshot as snapshot
from connection_manager.handler import lambda_handler
from connection_manager.raw_query import raw_query
from connection_manager.service import ConnectionService, new_connection_row
from connection_manager.snapshot_state import PassState
from models.connection import ConnectionModel
from models.platform import PASS_KEY, SNAPSHOT_KEY, counter_key
from tests.support.events import FakeLambdaContext, load_event
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import platform_items, put_raw

LIVE = 40
USERS = 7


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch, service: ConnectionService) -> None:
    """Three rows a page, and one shard read at a time: each page then sees the time left
    exactly as the test set it (with threads, each shard may start one page after another
    shard's read took the time under the margin; the margin covers that page)."""
    monkeypatch.setattr(snapshot, "PAGE_ROWS", 3)
    monkeypatch.setattr(service.platform.snapshots, "concurrency", 1)


def seed_live(clock: Any, count: int = LIVE) -> None:
    """Rows written around the service (batch writes): only a snapshot counts them."""
    with ConnectionModel.batch_write() as batch:
        for index in range(count):
            batch.save(new_connection_row(f"live-{index:03d}", f"user-{index % USERS}", clock() - timedelta(minutes=index)))


class Pages:
    """Time left that drops by ``step_ms`` per page read; records what each page saw."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start_ms: int, step_ms: int) -> None:
        self.left, self.step, self.seen_at_read = start_ms, step_ms, []
        monkeypatch.setattr(snapshot, "raw_query", self._query)

    def __call__(self) -> int:
        return self.left

    def _query(self, client: Any, **params: Any) -> dict[str, Any]:
        self.seen_at_read.append(self.left)
        self.left -= self.step
        return raw_query(client, **params)


def figures(service: ConnectionService) -> tuple[int, int, int]:
    stats = service.stats()
    return stats.active_connections, stats.distinct_users, sum(item["count"] for item in stats.idle)


def test_time_box_smaller_than_one_pass__stops_before_the_margin(service, clock, monkeypatch):
    seed_live(clock)
    margin = service.settings.sweep_time_margin_ms
    time_left = Pages(monkeypatch, start_ms=margin + 4 * 100, step_ms=100)

    outcome = service.advance_snapshot(time_left)

    # Then no page was read with less than the margin left, and the pass is not done
    assert time_left.seen_at_read and min(time_left.seen_at_read) >= margin
    assert outcome.figures is None and outcome.skipped is None
    assert 0 < outcome.progress["rowsCounted"] < LIVE
    # /stats says a pass is under way and has no figures from it yet
    stats = service.stats()
    assert stats.as_of is None and stats.snapshot_pass is not None
    assert stats.snapshot_pass.rows_counted == outcome.progress["rowsCounted"]
    # and the lease is free again
    assert "leaseOwner" not in platform_items()[SNAPSHOT_KEY]


def test_next_invocation__continues_from_the_cursors_and_reads_each_row_once(service, clock, monkeypatch):
    seed_live(clock)
    margin = service.settings.sweep_time_margin_ms
    pages: list[int] = []
    runs = 0
    while True:
        runs += 1
        time_left = Pages(monkeypatch, start_ms=margin + 3 * 100, step_ms=100)
        outcome = service.advance_snapshot(time_left)
        pages.append(len(time_left.seen_at_read))
        if outcome.figures is not None:
            break
        assert runs < 50

    # Then every run read at most its share, and together they read each row once
    assert runs > 2 and max(pages) <= 4  # read at margin + 300, 200, 100 and 0
    assert outcome.figures["activeConnections"] == LIVE
    assert outcome.figures["invocations"] == runs
    assert sum(pages) <= LIVE // 3 + 4 + runs  # a page per 3 rows, an empty last page per shard at most


def test_enough_invocations__counters_exact_and_stats_fresh(service, clock, monkeypatch):
    seed_live(clock)
    service.register_connection("own", "user-own")  # counted by the counters as it is written
    assert service.stats().active_connections == 1
    margin = service.settings.sweep_time_margin_ms

    for _ in range(50):
        if service.advance_snapshot(Pages(monkeypatch, start_ms=margin + 500, step_ms=100)).figures:
            break
    clock.advance(seconds=30)

    # Then the counters were repaired to the rows, and /stats is exact and says how old it is
    assert figures(service) == (LIVE + 1, USERS + 1, LIVE + 1)
    stats = service.stats()
    assert (stats.snapshot_pass, stats.snapshot_age_seconds) == (None, 30)
    assert sum(int(item.get("live", 0)) for key, item in platform_items().items() if "#live#" in key) == LIVE + 1
    assert "state" not in platform_items()[PASS_KEY]  # a finished pass leaves no state behind


def test_overlapping_invocations__the_second_skips_and_the_first_counts_once(service, clock, monkeypatch):
    seed_live(clock)
    margin = service.settings.sweep_time_margin_ms
    answers: dict[str, Any] = {}
    real = snapshot.raw_query

    def overlapping(client: Any, **params: Any) -> dict[str, Any]:
        if "second" not in answers:  # while the first holds the lease, a second invocation comes
            answers["second"] = service.advance_snapshot(lambda: margin + 60_000)
        return real(client, **params)

    monkeypatch.setattr(snapshot, "raw_query", overlapping)
    first = service.advance_snapshot(lambda: margin + 60_000)

    assert answers["second"].skipped == "lease held"
    assert first.figures["activeConnections"] == LIVE
    assert figures(service) == (LIVE, USERS, LIVE)


def test_lease_ran_out_and_taken_over__the_late_invocation_stores_nothing(service, clock, monkeypatch):
    seed_live(clock)
    margin = service.settings.sweep_time_margin_ms
    real = snapshot.raw_query
    late: dict[str, Any] = {}

    def stalls(client: Any, **params: Any) -> dict[str, Any]:
        if "taken over" not in late:
            # The first invocation stalls past its deadline; the next one takes the lease and finishes.
            late["taken over"] = True
            clock.advance(seconds=120)
            monkeypatch.setattr(snapshot, "raw_query", real)
            late["second"] = service.advance_snapshot(lambda: margin + 60_000)
        return real(client, **params)

    monkeypatch.setattr(snapshot, "raw_query", stalls)
    first = service.advance_snapshot(lambda: margin + 1_000)  # a lease of one second past the margin

    assert late["second"].figures["activeConnections"] == LIVE
    assert first.skipped == "lease lost"
    # Then the published figures and the counters are the second's, counted once
    assert figures(service) == (LIVE, USERS, LIVE)
    assert service.stats().snapshot_pass is None


def test_counter_moved_during_the_pass__not_repaired_wrongly(service, clock, monkeypatch):
    seed_live(clock)
    margin = service.settings.sweep_time_margin_ms
    # A first invocation starts every shard (reads their counters), then time runs out
    service.advance_snapshot(Pages(monkeypatch, start_ms=margin + 4 * 100, step_ms=100))
    # A connect moves one shard's counter while the pass is under way
    service.register_connection("late", "user-late")

    for _ in range(50):
        if service.advance_snapshot(lambda: margin + 60_000).figures:
            break

    # Then the moved shard kept its counter (+1) instead of being set to a count that may miss the row
    from models.connection import shard_for

    moved = platform_items()[counter_key(shard_for("late"))]
    assert int(moved["live"]) == 1
    assert service.stats().active_connections < LIVE + 1  # the next pass repairs it
    service.advance_snapshot(lambda: margin + 60_000)
    assert service.stats().active_connections == LIVE + 1


@pytest.mark.parametrize(
    "state",
    [b"not zlib at all", zlib.compress(b"{\"version\": 1}"), zlib.compress(b"[1, 2]"), None],
    ids=["garbage", "fields missing", "not an object", "state item gone"],
)
def test_unreadable_cursor__discarded_with_a_log_line_and_a_new_pass(service, clock, monkeypatch, caplog, state):
    seed_live(clock)
    margin = service.settings.sweep_time_margin_ms
    service.advance_snapshot(Pages(monkeypatch, start_ms=margin + 4 * 100, step_ms=100))
    if state is None:
        ConnectionModel._get_connection().delete_item(PASS_KEY)
    else:
        put_raw({"connectionId": PASS_KEY, "state": state})

    outcome = service.advance_snapshot(lambda: margin + 60_000)

    assert "snapshot cursor discarded" in caplog.text
    assert outcome.figures["activeConnections"] == LIVE  # a whole new pass, counted once
    assert outcome.figures["invocations"] == 1


def test_cursor_from_another_layout__discarded(service, clock, monkeypatch, caplog):
    seed_live(clock)
    margin = service.settings.sweep_time_margin_ms
    service.advance_snapshot(Pages(monkeypatch, start_ms=margin + 4 * 100, step_ms=100))
    stored = json.loads(zlib.decompress(platform_items()[PASS_KEY]["state"].value))
    stored["shards"] = stored["shards"][:2]  # the table had 2 live shards when it was written
    put_raw({"connectionId": PASS_KEY, "state": zlib.compress(json.dumps(stored).encode())})

    outcome = service.advance_snapshot(lambda: margin + 60_000)

    assert "snapshot cursor discarded" in caplog.text and "shards" in caplog.text
    assert outcome.figures["activeConnections"] == LIVE


def test_state_over_its_budget__estimates_from_there_on(clock):
    state = PassState(4, "LiveIndex", "2024-01-01T12:00:00Z")
    for index in range(3000):
        state.users.add(f"a-rather-long-user-id-{index:08d}-{index * 7919 % 10007:05d}")
        state.heavy.add(f"user-{index % 1500}")

    restored = PassState.from_bytes(state.to_bytes(budget=2_000), 4, "LiveIndex")

    assert (restored.users.exact, restored.heavy.exact) == (False, False)
    assert abs(restored.users.count() - 3000) < 150
    assert PassState.from_bytes(state.to_bytes(), 4, "LiveIndex").users.count() == restored.users.count()


def test_scheduled_invocation__sweeps_first_then_snapshots_in_what_is_left(handler_service, clock, monkeypatch):
    seed_live(clock)
    with ConnectionModel.batch_write() as batch:
        for index in range(5):
            batch.save(new_connection_row(f"stale-{index}", "user-0", clock() - timedelta(hours=2)))
    margin = handler_service.settings.sweep_time_margin_ms
    time_left = Pages(monkeypatch, start_ms=margin + 4 * 100, step_ms=100)

    response = lambda_handler(load_event("scheduled_event"), FakeLambdaContext(time_left_ms=time_left))

    body = json.loads(response["body"]) if isinstance(response.get("body"), str) else response["body"]
    assert body["cleanedCount"] == 5 and body["complete"] is True
    assert body["snapshotComplete"] is False
    assert min(time_left.seen_at_read) >= margin
