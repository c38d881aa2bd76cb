"""Seeded demo and benchmark rows have the shape the service writes, index keys included."""
from __future__ import annotations

from connection_manager.seed import SeedPlan, seed
from models.connection import activity_bucket, parse_timestamp
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, raw_items


def test_seed__live_and_stale_rows__in_the_live_index_bucket_of_their_last_activity(service):
    # Given a plan of live, stale and history rows
    plan = SeedPlan(live=40, stale=10, history=10, stale_after_seconds=3600)

    # When it is seeded
    written = seed(plan, NOW, model=service.model)

    # Then every CONNECTED row sits in the bucket of its lastActiveAt, as the service keeps it
    # (a row filed under its createdAt's older bucket is read by every idle filter and sweep
    # that reaches that bucket, and returned by none of them)
    items = raw_items()
    assert written == len(items) == 60
    live = [item for item in items if item["status"] == "CONNECTED"]
    assert len(live) == 50
    assert all(int(item["activeBucket"]) == activity_bucket(parse_timestamp(item["lastActiveAt"])) for item in live)
    assert all("activeBucket" not in item or item["status"] == "CONNECTED" for item in items)
