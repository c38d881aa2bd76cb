"""What one WebSocket message costs, in DynamoDB write units, on Amazon DynamoDB Local.

Not part of the test suite. DynamoDB Local reports ``ConsumedCapacity`` per table and per
index (``ReturnConsumedCapacity=INDEXES``), as DynamoDB bills it. A failed condition
returns no capacity; DynamoDB bills it 1 write unit, and so does this count.

Runs, side by side:

* ``seed layout``: the layout before this change (UserIdIndex ALL, live index sorted by
  ``lastActiveAt``), every message writing, the seed's UpdateItem;
* ``every message``: the current layout, ``ACTIVITY_WRITE_INTERVAL_SECONDS=0``;
* ``coalesced, 1 container``: the default interval, one process;
* ``coalesced, 4 containers``: the same, four OS processes (no shared memory) taking turns,
  message k of a connection going to process k mod 4.

Every connection sends a message every ``--every`` seconds of simulated time (a fixed
clock per process, moved to each message's time), ``--messages`` in all.

    .venv/bin/python benchmarks/bench_hot_path.py --connections 40 --messages 40 --every 30
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.capacity_meter import CapacityMeter  # noqa: E402

START = datetime(2024, 1, 1, 12, 0, 7, tzinfo=timezone.utc)


def _service(table: str, interval: int) -> Any:
    os.environ["CONNECTIONS_TABLE_NAME"] = table
    os.environ["ACTIVITY_WRITE_INTERVAL_SECONDS"] = str(interval)
    from connection_manager.clock import FixedClock
    from connection_manager.config import Settings
    from connection_manager.service import ConnectionService

    service = ConnectionService(Settings.from_env(), FixedClock(START))
    meter = CapacityMeter()
    # The service's own model class (one per table) holds the client its writes go through.
    meter.attach(service.model._get_connection().connection.client)
    return service, meter


def _message(service: Any, connection_id: str, at: datetime) -> tuple[str, float]:
    """One message's activity, as the handler's message route runs it; its latency."""
    service.clock.now = at
    started = time.perf_counter()
    outcome = service.record_activity(connection_id)
    return outcome, time.perf_counter() - started


def _worker(table: str, interval: int, inbox: Any, outbox: Any) -> None:
    service, meter = _service(table, interval)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    while True:
        job = inbox.get()
        if job is None:
            break
        outcome, elapsed = _message(service, job[0], job[1])
        outcomes[outcome] += 1
        latencies.append(elapsed)
        outbox.put(True)
    outbox.put((dict(meter.units), dict(outcomes), latencies))


def _schedule(connections: int, messages: int, every: int) -> list[tuple[str, datetime, int]]:
    jobs = []
    for k in range(messages):
        for c in range(connections):
            jobs.append((f"conn-{c:04d}", START + timedelta(seconds=every * (k + 1) + c % every), k))
    return sorted(jobs, key=lambda job: job[1])


def _setup(table: str, interval: int, connections: int) -> None:
    service, _ = _service(table, interval)
    service.create_table()
    for c in range(connections):
        service.register_connection(f"conn-{c:04d}", f"user-{c % 7}")


def run_new(table: str, interval: int, containers: int, args: argparse.Namespace) -> dict[str, Any]:
    _setup(table, interval, args.connections)
    jobs = _schedule(args.connections, args.messages, args.every)
    context = multiprocessing.get_context("spawn")
    workers = []
    for _ in range(containers):
        inbox, outbox = context.Queue(), context.Queue()
        process = context.Process(target=_worker, args=(table, interval, inbox, outbox), daemon=True)
        process.start()
        workers.append((process, inbox, outbox))
    for connection_id, at, k in jobs:
        _, inbox, outbox = workers[k % containers]
        inbox.put((connection_id, at))
        outbox.get()  # one message at a time: the containers take turns
    units: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    for process, inbox, outbox in workers:
        inbox.put(None)
        got_units, got_outcomes, got_latencies = outbox.get()
        units.update(got_units)
        outcomes.update(got_outcomes)
        latencies += got_latencies
        process.join()
    return _summary(units, outcomes, latencies, len(jobs))


def run_seed_layout(table: str, args: argparse.Namespace) -> dict[str, Any]:
    """The seed's layout and its message write, through boto3 directly."""
    import boto3

    from models.connection import format_timestamp, shard_for

    client = boto3.client("dynamodb")
    meter = CapacityMeter()
    meter.attach(client)
    attributes = [("connectionId", "S"), ("userId", "S"), ("status", "S"), ("activeShard", "N"), ("lastActiveAt", "S")]
    client.create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in attributes],
        KeySchema=[{"AttributeName": "connectionId", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {"IndexName": "UserIdIndex", "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": "userId", "KeyType": "HASH"}, {"AttributeName": "status", "KeyType": "RANGE"}]},
            {"IndexName": "ActiveIndex", "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": "activeShard", "KeyType": "HASH"},
                           {"AttributeName": "lastActiveAt", "KeyType": "RANGE"}]},
        ],
    )
    now = format_timestamp(START)
    for c in range(args.connections):
        cid = f"conn-{c:04d}"
        client.put_item(TableName=table, Item={
            "connectionId": {"S": cid}, "userId": {"S": f"user-{c % 7}"}, "status": {"S": "CONNECTED"},
            "createdAt": {"S": now}, "lastActiveAt": {"S": now}, "updatedAt": {"S": now},
            "activeShard": {"N": str(shard_for(cid) % 4)},
        })
    meter.units.clear()
    jobs = _schedule(args.connections, args.messages, args.every)
    latencies = []
    for connection_id, at, _ in jobs:
        stamp = format_timestamp(at)
        started = time.perf_counter()
        client.update_item(
            TableName=table, Key={"connectionId": {"S": connection_id}},
            UpdateExpression="SET lastActiveAt = :t, updatedAt = :t, activeShard = :s",
            ConditionExpression="attribute_exists(connectionId) AND #st = :c",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues={":t": {"S": stamp}, ":s": {"N": str(shard_for(connection_id) % 4)},
                                       ":c": {"S": "CONNECTED"}},
            ReturnValues="ALL_NEW",
        )
        latencies.append(time.perf_counter() - started)
    return _summary(meter.units, Counter(written=len(jobs)), latencies, len(jobs))


def _summary(units: Counter[str], outcomes: Counter[str], latencies: list[float], messages: int) -> dict[str, Any]:
    failed = outcomes.get("current", 0) + outcomes.get("not_connected", 0)
    total = sum(units.values()) + failed
    ordered = sorted(latencies)
    return {
        "messages": messages,
        "outcomes": dict(outcomes),
        "table": units.get("table", 0.0) / messages,
        "UserIdIndex": units.get("UserIdIndex", 0.0) / messages,
        "live index": (units.get("LiveIndex", 0.0) + units.get("ActiveIndex", 0.0)) / messages,
        "failed conditions": failed / messages,
        "total": total / messages,
        "median ms": statistics.median(ordered) * 1000,
        "p99 ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--messages", type=int, default=40, help="messages per connection")
    parser.add_argument("--every", type=int, default=30, help="seconds between a connection's messages")
    parser.add_argument("--interval", type=int, default=300, help="ACTIVITY_WRITE_INTERVAL_SECONDS of the coalesced runs")
    args = parser.parse_args()

    from tests.support.dynamodb_local import DynamoDBLocal

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1")
    with DynamoDBLocal() as server:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = server.url
        rows = {
            "seed layout, every message": run_seed_layout("bench-seed", args),
            "every message (interval 0)": run_new("bench-every", 0, 1, args),
            f"coalesced ({args.interval} s), 1 container": run_new("bench-one", args.interval, 1, args),
            f"coalesced ({args.interval} s), 4 containers": run_new("bench-four", args.interval, 4, args),
        }
    per_interval = args.interval / args.every
    print(f"{args.connections} connections x {args.messages} messages, one every {args.every} s "
          f"({per_interval:g} per interval); write units per message")
    print()
    print("| run | total WU/msg | table | UserIdIndex | live index | failed conditions | median ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | **{row['total']:.3f}** | {row['table']:.3f} | {row['UserIdIndex']:.3f} | "
              f"{row['live index']:.3f} | {row['failed conditions']:.3f} | {row['median ms']:.2f} | {row['p99 ms']:.2f} |")
    print()
    for name, row in rows.items():
        print(f"{name}: {row['outcomes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
