"""What one WebSocket message costs DynamoDB, in write-unit equivalents, on DynamoDB Local.

Not part of the test suite. Every process talks to DynamoDB Local through the metering proxy
(``tests/support/metering_proxy.py``), which asks each request for
``ReturnConsumedCapacity=INDEXES`` and sums what DynamoDB bills, whichever process sent it; a
failed condition, which answers an error and reports no capacity, is counted as the 1 write
unit DynamoDB bills for it. Cost is given in write-unit equivalents: WUE = WRU + RRU / 5
(on demand, a write request unit costs five read request units).

Each phase runs twice in the same run, in fresh processes (spawned, no shared memory) on fresh
tables: the **old** path (this process's memory of the stored time, then the conditional
write) and the **new** one (``record_activity``: memory, then an eventually consistent read,
then the conditional write only when the stored time is older than the interval).

Phases (every connection registered at the start, messages sent one at a time):

* ``one container``: one process, ``--one`` messages per connection inside the interval;
* ``four containers``: four processes, ``--four`` messages each per connection inside the
  interval (message k of a connection goes to process k mod 4);
* ``fleet``: ``--fleet`` processes, one message each per connection inside the interval:
  every message lands in a container that has not seen the connection, as across a Lambda
  fleet of hundreds of containers;
* ``fleet, an hour``: a message every ``--every`` s per connection for an hour, each one as
  in a container that has not seen the connection (``ACTIVITY_MEMORY_SIZE=0``, two
  processes taking turns): the writes once per interval included, what production pays.

    .venv/bin/python benchmarks/bench_hot_path.py --connections 40 --fleet 8
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START = datetime(2024, 1, 1, 12, 0, 7, tzinfo=timezone.utc)
PATHS = ("old", "new")


@dataclass(frozen=True)
class Phase:
    name: str
    containers: int
    #: Messages per connection, in all.
    messages: int
    #: Seconds between two messages of a connection (0: spread inside the interval).
    every: float = 0.0
    memory_size: int | None = None
    target: float | None = None

    def schedule(self, connections: int, interval: int) -> list[tuple[str, datetime, int]]:
        """(connection, time, container) of every message, in time order."""
        step = self.every or (interval - 1) / (self.messages + 1)
        jobs = [
            (f"conn-{c:04d}", START + timedelta(seconds=step * (k + 1) + c * step / connections), k % self.containers)
            for k in range(self.messages) for c in range(connections)
        ]
        return sorted(jobs, key=lambda job: job[1])


def old_path(service: Any, connection_id: str) -> str:
    """The message path before the read: this process's memory, then the conditional write."""
    now = service.clock()
    threshold = now - timedelta(seconds=service.settings.activity_write_interval_seconds)
    known = service.activity.get(connection_id)
    if known is not None and known > threshold:
        return "remembered"
    return service.write_activity(connection_id, now, threshold)


def new_path(service: Any, connection_id: str) -> str:
    return service.record_activity(connection_id)


def _service(table: str, interval: int, memory_size: int | None) -> Any:
    os.environ["CONNECTIONS_TABLE_NAME"] = table
    os.environ["ACTIVITY_WRITE_INTERVAL_SECONDS"] = str(interval)
    if memory_size is not None:
        os.environ["ACTIVITY_MEMORY_SIZE"] = str(memory_size)
    from connection_manager.clock import FixedClock
    from connection_manager.config import Settings
    from connection_manager.service import ConnectionService

    return ConnectionService(Settings.from_env(), FixedClock(START))


def _worker(table: str, interval: int, memory_size: int | None, path: str, inbox: Any, outbox: Any) -> None:
    service = _service(table, interval, memory_size)
    send: Callable[[Any, str], str] = old_path if path == "old" else new_path
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    outbox.put("ready")
    while (job := inbox.get()) is not None:
        service.clock.now = job[1]
        started = time.perf_counter()
        outcomes[send(service, job[0])] += 1
        latencies.append(time.perf_counter() - started)
        outbox.put(True)
    outbox.put((dict(outcomes), latencies))


def run(phase: Phase, path: str, proxy: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One phase on one path, on its own table, in ``phase.containers`` fresh processes."""
    table = f"bench-{phase.name.replace(' ', '-').replace(',', '')}-{path}"
    setup = _service(table, args.interval, None)
    setup.create_table()
    for c in range(args.connections):
        setup.register_connection(f"conn-{c:04d}", f"user-{c % 7}")
    context = multiprocessing.get_context("spawn")
    workers = []
    for _ in range(phase.containers):
        inbox, outbox = context.Queue(), context.Queue()
        process = context.Process(
            target=_worker, args=(table, args.interval, phase.memory_size, path, inbox, outbox), daemon=True
        )
        process.start()
        workers.append((process, inbox, outbox))
    for _, _, outbox in workers:
        outbox.get()  # imported and connected: nothing of the start is timed or metered below
    jobs = phase.schedule(args.connections, args.interval)
    proxy.reset_counters()
    for connection_id, at, container in jobs:
        _, inbox, outbox = workers[container]
        inbox.put((connection_id, at))
        outbox.get()  # one message at a time: the containers take turns
    capacity = proxy.capacity()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    for process, inbox, outbox in workers:
        inbox.put(None)
        got_outcomes, got_latencies = outbox.get()
        outcomes.update(got_outcomes)
        latencies += got_latencies
        process.join()
    return _summary(capacity, outcomes, latencies, len(jobs))


def _summary(capacity: dict[str, Any], outcomes: Counter[str], latencies: list[float], messages: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "messages": messages,
        "outcomes": dict(sorted(outcomes.items())),
        "requests": capacity["requests"],
        "WRU": capacity["WRU"] / messages,
        "RRU": capacity["RRU"] / messages,
        "WUE": capacity["WUE"] / messages,
        "failed": capacity["failed_conditions"] / messages,
        "median ms": statistics.median(ordered) * 1000,
        "p99 ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000,
    }


def phases(args: argparse.Namespace) -> list[Phase]:
    return [
        Phase("one container", 1, args.one, target=0.05),
        Phase("four containers", 4, 4 * args.four, target=0.10),
        Phase("fleet", args.fleet, args.fleet, target=0.15),
        Phase("fleet, an hour", 2, 3600 // args.every, every=args.every, memory_size=0),
    ]


def print_table(args: argparse.Namespace, results: dict[str, dict[str, dict[str, Any]]], wanted: list[Phase]) -> None:
    print(f"{args.connections} connections, ACTIVITY_WRITE_INTERVAL_SECONDS={args.interval}; per message: "
          "write units (a failed condition counted 1), read units, write-unit equivalents (WRU + RRU/5)")
    print()
    print("| phase | messages | old WRU | old RRU | old WUE | new WRU | new RRU | **new WUE** | new/old | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for phase in wanted:
        old, new = results[phase.name]["old"], results[phase.name]["new"]
        ratio = new["WUE"] / old["WUE"] if old["WUE"] else float("nan")
        target = "" if phase.target is None else f"<= {phase.target:.2f} {'met' if new['WUE'] <= phase.target else 'MISSED'}"
        print(f"| {phase.name} | {new['messages']:,} | {old['WRU']:.3f} | {old['RRU']:.3f} | {old['WUE']:.3f} | "
              f"{new['WRU']:.3f} | {new['RRU']:.3f} | **{new['WUE']:.3f}** | {ratio:.2f} | {target} |")
    print()
    print("| phase | old median ms | old p99 ms | new median ms | new p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for phase in wanted:
        old, new = results[phase.name]["old"], results[phase.name]["new"]
        print(f"| {phase.name} | {old['median ms']:.2f} | {old['p99 ms']:.2f} | {new['median ms']:.2f} | {new['p99 ms']:.2f} |")
    print()
    for phase in wanted:
        for path in PATHS:
            row = results[phase.name][path]
            print(f"{phase.name}, {path}: outcomes {row['outcomes']}; requests {row['requests']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--interval", type=int, default=300, help="ACTIVITY_WRITE_INTERVAL_SECONDS")
    parser.add_argument("--one", type=int, default=10, help="messages per connection, one container")
    parser.add_argument("--four", type=int, default=3, help="messages per container per connection, four containers")
    parser.add_argument("--fleet", type=int, default=8, help="fresh containers of the fleet phase")
    parser.add_argument("--every", type=int, default=30, help="seconds between a connection's messages, an hour")
    args = parser.parse_args()

    from tests.support.dynamodb_local import DynamoDBLocal
    from tests.support.metering_proxy import MeteringProxy

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1")
    wanted = phases(args)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with DynamoDBLocal() as server, MeteringProxy(server.url) as proxy:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = proxy.url
        for phase in wanted:
            results[phase.name] = {path: run(phase, path, proxy, args) for path in PATHS}
    print_table(args, results, wanted)
    missed = [p.name for p in wanted if p.target is not None and results[p.name]["new"]["WUE"] > p.target]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
