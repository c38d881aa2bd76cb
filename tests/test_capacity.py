"""The capacity model sizes the live index; its numbers are the guide's (docs/capacity.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from connection_manager.capacity import CHECK_READ_UNITS, KEY_WRITE_LIMIT, live_shards, model, table
from connection_manager.config import Settings
from tests.support.fixtures import *  # noqa: F401,F403


def test_live_shards__defaults_carry_a_million_connections_under_the_key_limit():
    settings = Settings.from_env({})

    capacity = model(settings.capacity_connections, 30, settings.activity_write_interval_seconds)

    assert settings.live_shards == capacity.shards == 9
    assert capacity.peak_key_wu_per_second < KEY_WRITE_LIMIT / 2


@pytest.mark.parametrize("connections", [1, 1_000, 1_000_000, 10_000_000, 100_000_000])
@pytest.mark.parametrize("interval", [0, 1, 60, 300])
def test_live_shards__every_key_under_half_the_limit(connections, interval):
    capacity = model(connections, 1.0, interval)  # a message every second: the worst case here

    assert capacity.peak_key_wu_per_second <= KEY_WRITE_LIMIT / 2
    assert capacity.shards == live_shards(connections, interval, 1.0)


def test_live_shards__grow_with_connections_and_shrink_with_coalescing():
    assert live_shards(10_000_000, 300) > live_shards(1_000_000, 300) >= 1
    assert live_shards(1_000_000, 0) > live_shards(1_000_000, 300)


def test_model__coalescing_cuts_the_monthly_bill():
    every_message = model(1_000_000, 30, 0)
    coalesced = model(1_000_000, 30, 300)

    assert coalesced.table_wu_per_second == pytest.approx(1_000_000 / 300)
    assert coalesced.monthly_cost_usd < every_message.monthly_cost_usd / 5


def test_model__fleet__every_coalesced_message_pays_one_eventually_consistent_read():
    # A message every 30 s, a write every 300 s: ten messages per write, each checked with a read
    capacity = model(1_000_000, 30, 300)

    assert capacity.read_units_per_second == pytest.approx(1_000_000 / 30 * CHECK_READ_UNITS)
    per_write = (capacity.table_wu_per_second + capacity.index_wu_per_second) / capacity.writes_per_second
    assert capacity.wue_per_message == pytest.approx(CHECK_READ_UNITS / 5 + per_write / 10)
    # Reads touch no index: the shards are those of the writes alone
    assert capacity.shards == live_shards(1_000_000, 300)


def test_model__interval_zero__every_message_writes_and_nothing_is_read():
    capacity = model(1_000_000, 30, 0)

    assert capacity.read_units_per_second == 0
    assert capacity.wue_per_message == pytest.approx(2 + 30 / 900)  # table + index, and the bucket's moves


def test_table__rows_are_the_model():
    rows = table(((1_000_000, 300),)).splitlines()

    assert len(rows) == 3
    capacity = model(1_000_000, 30, 300)
    assert f"| {capacity.wue_per_message:.3f} |" in rows[2]
    assert f"| {capacity.monthly_cost_usd:,.0f} |" in rows[2]


def test_from_env__activity_interval_validated():
    assert Settings.from_env({}).activity_write_interval_seconds == 300
    assert Settings.from_env({"ACTIVITY_WRITE_INTERVAL_SECONDS": "0"}).activity_write_interval_seconds == 0
    assert Settings.from_env({"STALE_AFTER_SECONDS": "120"}).activity_write_interval_seconds == 60
    for bad, fragment in (("301", "between 0 and 300"), ("soon", "whole number"), ("-1", "between 0 and 300")):
        with pytest.raises(Exception, match=fragment):
            Settings.from_env({"ACTIVITY_WRITE_INTERVAL_SECONDS": bad})
    with pytest.raises(Exception, match="shorter than STALE_AFTER_SECONDS"):
        Settings.from_env({"ACTIVITY_WRITE_INTERVAL_SECONDS": "120", "STALE_AFTER_SECONDS": "120"})


def test_get_all_connections__many_shards__every_row_once_in_small_pages(settings, clock, dynamodb):
    # Given 89 shards (ten million connections' worth) and 40 live rows spread thinly over them
    from connection_manager.service import ConnectionService
    from models.connection import live_shards as configured_shards

    big = Settings(**{**settings.__dict__, "capacity_connections": 10_000_000})
    service = ConnectionService(big, clock)
    assert configured_shards(service.model) == big.live_shards == 89
    for n in range(40):
        service.register_connection(f"c{n:02d}", "u1")

    # When it is listed 7 at a time
    seen: list[str] = []
    token = None
    for _ in range(20):
        page = service.get_all_connections(limit=7, next_token=token)
        seen += [record["connectionId"] for record in page.connections]
        token = page.next_token
        if not token:
            break

    # Then every row comes exactly once, and the sweep sees all shards too
    assert sorted(seen) == [f"c{n:02d}" for n in range(40)]
    clock.advance(hours=2)
    assert service.cleanup_stale_connections().cleaned == 40


def test_guide_table__every_row_is_the_models_answer():
    # Given the capacity table of the guide (N | I | shards | table | index | reads | WUE | peak | $ | sweep)
    page = (Path(__file__).resolve().parent.parent / "docs" / "capacity.md").read_text(encoding="utf-8")
    rows = [
        [cell.strip().replace(",", "").split(" ")[0] for cell in line.strip("|").split("|")]
        for line in page.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ]
    assert len(rows) >= 4

    # Then each row says what the model computes for a message every 30 s
    for n, interval, shards, table, index, reads, wue, peak, cost, sweep in rows:
        capacity = model(int(n), 30, int(interval))
        assert capacity.shards == int(shards), n
        assert [float(table), float(index), float(reads), float(peak), float(cost)] == pytest.approx(
            [capacity.table_wu_per_second, capacity.index_wu_per_second, capacity.read_units_per_second,
             capacity.peak_key_wu_per_second, capacity.monthly_cost_usd], rel=0.005), n
        assert float(wue) == pytest.approx(capacity.wue_per_message, abs=0.0005), n
        shown_to = 0.5 * 10 ** -len(sweep.partition(".")[2])  # rounded to the digits shown
        assert float(sweep) == pytest.approx(capacity.sweep_seconds_per_1pct_stale, abs=shown_to), n
