"""The hourly invocation on DynamoDB Local: CPU per row, old snapshot against new, and the time box.

Not part of the test suite. On one DynamoDB Local it seeds ``--live`` CONNECTED rows and
``--stale`` stale ones, then:

1. **CPU per live row**, in this process only (``time.process_time``; DynamoDB Local is
   another process): the snapshot as it was (a PynamoDB model per row, timestamps
   parsed; kept here as the baseline) and the pass as it is (raw items), alternately,
   ``--repeat`` times each; the best of each is printed with their ratio.
2. **The sweep per stale row**: wall time and CPU of the real sweep over the stale rows.
3. **The time box**: the Scheduled Event through ``lambda_handler`` with a Lambda context
   of ``--box-ms`` and ``SWEEP_TIME_MARGIN_MS=--margin-ms``, invoked until a pass finishes;
   the longest invocation is printed against the box. Exits 1 when one overran it or the
   figures are not exact.

    .venv/bin/python benchmarks/bench_hourly.py --live 40000 --stale 300
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TABLE = "bench-hourly"


def old_snapshot(model: Any, now: datetime) -> int:
    """The snapshot's counting loop before the pass: a model object per row (the baseline)."""
    from connection_manager.sketch import DistinctCounter, TopCounter
    from connection_manager.snapshot_state import IDLE_BINS
    from models.connection import ConnectionModel, ConnectionStatus, live_shards

    users, heavy = DistinctCounter(), TopCounter()
    idle = [0] * len(IDLE_BINS)
    lock = threading.Lock()

    def count_shard(shard: int) -> int:
        rows = 0
        for page in model.live_index.query(
            shard,
            filter_condition=ConnectionModel.status == ConnectionStatus.CONNECTED.value,
            attributes_to_get=["userId", "lastActiveAt", "createdAt"],
        ).page_iter:
            found = [model.from_raw_data(item) for item in page.get("Items", [])]
            with lock:
                for row in found:
                    users.add(row.user_id)
                    heavy.add(row.user_id)
                    last = row.last_active_at or row.created_at
                    seconds = (now - last).total_seconds() if last is not None else float("inf")
                    idle[max(i for i, (_, low) in enumerate(IDLE_BINS) if seconds >= low or i == 0)] += 1
            rows += len(found)
        return rows

    with ThreadPoolExecutor(max_workers=live_shards(model)) as pool:
        return sum(pool.map(count_shard, range(live_shards(model))))


def cpu_of(work: Any) -> tuple[float, float, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    answer = work()
    return time.process_time() - cpu, time.perf_counter() - wall, answer


class Deadline:
    """A Lambda context whose remaining time runs out ``box_ms`` after it is made."""

    def __init__(self, box_ms: int) -> None:
        self.ends = time.monotonic() + box_ms / 1000
        self.function_name, self.aws_request_id = "bench", "bench"
        self.invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends - time.monotonic()) * 1000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=40_000)
    parser.add_argument("--stale", type=int, default=300)
    parser.add_argument("--box-ms", type=int, default=2_000)
    parser.add_argument("--margin-ms", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from benchmarks.bench_scale import _local_aws_environment

    _local_aws_environment()
    os.environ["CONNECTIONS_TABLE_NAME"] = TABLE
    os.environ["SWEEP_TIME_MARGIN_MS"] = str(args.margin_ms)
    import connection_manager.wiring as wiring
    from connection_manager.config import Settings
    from connection_manager.handler import lambda_handler
    from connection_manager.seed import SeedPlan, seed
    from connection_manager.server import point_at
    from tests.support.dynamodb_local import DynamoDBLocal
    from tests.support.events import load_event

    with DynamoDBLocal() as server:
        point_at(server.url)
        service = wiring.build_service(Settings.from_env())
        wiring._service = service
        service.create_table()
        plan = SeedPlan(live=args.live, stale=args.stale, stale_after_seconds=service.settings.stale_after_seconds)
        seed(plan, service.clock(), model=service.model)
        print(f"seeded {args.live:,} live and {args.stale:,} stale rows", file=sys.stderr, flush=True)

        # 2. The sweep first: it takes the stale rows out of the live index.
        sweep_cpu, sweep_wall, swept = cpu_of(lambda: service.cleanup_stale_connections())
        live = service.count_active()  # seeded rows near the lifetime may have been swept too
        # 1. CPU per live row, old and new alternately.
        old_cpu, new_cpu = [], []
        for _ in range(args.repeat):
            cpu, wall, counted = cpu_of(lambda: old_snapshot(service.model, service.clock()))
            assert counted == live, counted
            old_cpu.append((cpu, wall))
            cpu, wall, outcome = cpu_of(lambda: service.platform.advance_snapshot(service.clock(), None, 0))
            assert outcome.figures and outcome.figures["activeConnections"] == live, outcome
            new_cpu.append((cpu, wall))
        # 3. The time box, through the handler, as EventBridge invokes it.
        seed(SeedPlan(live=0, stale=args.stale, prefix="late", stale_after_seconds=service.settings.stale_after_seconds),
             service.clock(), model=service.model)
        durations, bodies = [], []
        for _ in range(100):
            context = Deadline(args.box_ms)
            started = time.perf_counter()
            response = lambda_handler(load_event_scheduled(load_event), context)
            durations.append((time.perf_counter() - started) * 1000)
            body = response["body"] if isinstance(response["body"], dict) else json.loads(response["body"])
            bodies.append(body)
            # The sweep of the first invocation moved counters the pass had read: that pass
            # publishes its count but leaves them; the next, undisturbed, repairs them.
            if body.get("snapshotComplete") and service.stats().active_connections == service.count_active():
                break
        stats = service.stats()
        live_after = service.count_active()

    best_old, best_new = min(old_cpu), min(new_cpu)
    per = lambda pair: pair[0] / live * 1e6  # noqa: E731
    print(f"\nlive rows {live:,}; best of {args.repeat}; CPU of this process only")
    print(f"{'snapshot':<28}{'CPU µs/row':>12}{'wall s':>10}")
    print(f"{'old (a model per row)':<28}{per(best_old):>12.1f}{best_old[1]:>10.2f}")
    print(f"{'new (raw items)':<28}{per(best_new):>12.1f}{best_new[1]:>10.2f}")
    print(f"{'ratio old / new':<28}{per(best_old) / per(best_new):>12.1f}x")
    stale_rows = max(1, swept.cleaned)
    print(f"\nsweep: {swept.cleaned} stale rows, {sweep_wall / stale_rows * 1e3:.2f} ms wall and "
          f"{sweep_cpu / stale_rows * 1e6:.0f} µs CPU per stale row")
    print(f"\ntime box {args.box_ms} ms, margin {args.margin_ms} ms: {len(durations)} invocations until /stats "
          f"was exact; longest {max(durations):.0f} ms ({max(durations) / args.box_ms:.0%} of the box); "
          f"cleaned {sum(b['cleanedCount'] for b in bodies)}")
    print(f"/stats after: activeConnections {stats.active_connections}, asOf {stats.as_of}, pass {stats.snapshot_pass}")
    overran = max(durations) > args.box_ms
    exact = stats.active_connections == live_after and stats.snapshot_pass is None
    return 1 if overran or not exact else 0


def load_event_scheduled(load_event: Any) -> dict[str, Any]:
    return load_event("scheduled_event")


if __name__ == "__main__":
    sys.exit(main())
