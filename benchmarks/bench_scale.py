"""Scale and cost benchmark: the sweep and the full listing against a naive baseline.

Runs against a real ``moto_server`` on the loopback interface with the project's DynamoDB
proxy in front of it. The proxy adds a fixed latency to every request (a stand-in for the
network round trip to DynamoDB) and counts the items each request read, summed from
DynamoDB's own ``ScannedCount`` / ``Count``, which is what DynamoDB bills.

For each table size (rows of DISCONNECTED history) with a fixed number of live and stale
CONNECTED rows it measures:

* listing every live connection: ``get_all_connections`` page by page, against a naive
  ``Scan`` with ``FilterExpression status = CONNECTED``;
* the stale sweep: ``cleanup_stale_connections`` (sparse index, concurrent conditional
  writes), the same sweep with one write at a time, and the naive sweep the original
  implementation did (Scan with a filter, then one ``UpdateItem`` per stale row).

Then the memory of a sweep (tracemalloc peak) for a small and a ten times larger number
of stale rows, and the cold-start import cost of ``connection_manager.handler`` against
``pynamodb.models`` alone, in fresh interpreters.

    python benchmarks/bench_scale.py --sizes 1000,10000,50000 --stale 500 --latency-ms 25
    python benchmarks/bench_scale.py --quick

Not part of the test suite.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.dynamo_proxy import DynamoProxy  # noqa: E402
from tests.support.moto_server import MotoServer  # noqa: E402

TABLE = "connections"
STALE_AFTER = 3600


def _local_aws_environment() -> None:
    """Dummy credentials and no shared config: nothing here may reach AWS."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "NO_PROXY": "127.0.0.1,localhost",
            "CONNECTIONS_TABLE_NAME": TABLE,
        }
    )


# Measurement helpers ---------------------------------------------------------------------


class Measured:
    """Items read, requests, wall time and peak requests in flight of one operation."""

    def __init__(self, proxy: DynamoProxy) -> None:
        self.proxy = proxy

    def __call__(self, operation: Callable[[], Any]) -> dict[str, Any]:
        self.proxy.reset_counters()
        started = time.perf_counter()
        result = operation()
        seconds = time.perf_counter() - started
        counters = self.proxy.snapshot()
        return {
            "result": result,
            "seconds": seconds,
            "items_read": counters["items_read"],
            "requests": counters["requests"],
            "max_in_flight": counters["max_in_flight"],
        }


def service_with(concurrency: int) -> Any:
    from connection_manager.config import Settings
    from connection_manager.wiring import build_service

    settings = Settings(table_name=TABLE, region="us-east-1", stale_after_seconds=STALE_AFTER, sweep_concurrency=concurrency)
    return build_service(settings)


def seed_rows(now: datetime, *, live: int = 0, stale: int = 0, history: int = 0, prefix: str) -> float:
    from connection_manager.seed import SeedPlan, seed

    started = time.perf_counter()
    seed(SeedPlan(live=live, stale=stale, history=history, stale_after_seconds=STALE_AFTER, prefix=prefix), now)
    return time.perf_counter() - started


def list_all(service: Any) -> int:
    """Every live connection, page by page, as a caller of the API would."""
    count, token = 0, None
    while True:
        page = service.get_all_connections(limit=1000, next_token=token)
        count += len(page.connections)
        token = page.next_token
        if not token:
            return count


def naive_list_all(client: Any) -> int:
    """The original listing: Scan the whole table and let DynamoDB filter (after billing)."""
    kwargs: dict[str, Any] = {
        "TableName": TABLE,
        "FilterExpression": "#s = :connected",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":connected": {"S": "CONNECTED"}},
    }
    count = 0
    while True:
        page = client.scan(**kwargs)
        count += len(page["Items"])
        if "LastEvaluatedKey" not in page:
            return count
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def naive_sweep(client: Any, now: datetime) -> int:
    """The original sweep: Scan for stale CONNECTED rows, then update them one at a time."""
    from models.connection import format_timestamp

    cutoff = format_timestamp(now - timedelta(seconds=STALE_AFTER))
    kwargs: dict[str, Any] = {
        "TableName": TABLE,
        "FilterExpression": "#s = :connected AND lastActiveAt < :cutoff",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":connected": {"S": "CONNECTED"}, ":cutoff": {"S": cutoff}},
    }
    stale: list[dict[str, Any]] = []
    while True:
        page = client.scan(**kwargs)
        stale.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    stamp = format_timestamp(now)
    for item in stale:
        client.update_item(
            TableName=TABLE,
            Key={"connectionId": item["connectionId"]},
            UpdateExpression="SET #s = :gone, disconnectReason = :stale, disconnectedAt = :now, updatedAt = :now "
            "REMOVE activeShard",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":gone": {"S": "DISCONNECTED"}, ":stale": {"S": "stale"}, ":now": {"S": stamp}},
        )
    return len(stale)


def traced_peak(operation: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        operation()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# Cold start -------------------------------------------------------------------------------


def import_times(module: str, repetitions: int, cache_dir: str) -> list[tuple[float, float, int]]:
    """(wall s, CPU s, minor page faults) to import ``module`` in fresh interpreters.

    Bytecode is cached (as after an install). CPU time and page faults are reported next to
    wall time because they shift far less when other processes load the machine.
    """
    code = (
        "import resource, time; r0 = resource.getrusage(resource.RUSAGE_SELF); t = time.perf_counter(); "
        f"import {module}; "
        "w = time.perf_counter() - t; r1 = resource.getrusage(resource.RUSAGE_SELF); "
        "print(w, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)"
    )
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    times = []
    for _ in range(repetitions):
        out = subprocess.run(
            [sys.executable, "-X", f"pycache_prefix={cache_dir}", "-c", code],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )
        wall, cpu, faults = out.stdout.split()
        times.append((float(wall), float(cpu), int(faults)))
    return times


def cold_start(repetitions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as cache_dir:
        import_times("connection_manager.handler", 1, cache_dir)  # compile once, like a packaged install
        base: list[tuple[float, float, int]] = []
        handler: list[tuple[float, float, int]] = []
        for _ in range(repetitions):  # interleaved, so background load hits both alike
            base += import_times("pynamodb.models", 1, cache_dir)
            handler += import_times("connection_manager.handler", 1, cache_dir)
    probe = (
        "import sys, connection_manager.handler as h;"
        "print(','.join(m for m in ('flask', 'werkzeug', 'jinja2', 'aws_lambda_powertools') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    summary: dict[str, Any] = {"heavy_modules_loaded": loaded.stdout.strip() or "none"}
    for index, metric in enumerate(("wall", "cpu", "faults")):
        for name, samples in (("base", base), ("handler", handler)):
            values = [sample[index] for sample in samples]
            summary[f"{name}_{metric}_min"] = min(values)
            summary[f"{name}_{metric}_median"] = statistics.median(values)
        for stat in ("min", "median"):
            summary[f"ratio_{metric}_{stat}"] = summary[f"handler_{metric}_{stat}"] / summary[f"base_{metric}_{stat}"]
    return summary


# The run -----------------------------------------------------------------------------------


def run_size(moto: MotoServer, proxy: DynamoProxy, history: int, args: argparse.Namespace) -> dict[str, Any]:
    import boto3

    moto.reset()
    proxy.configure(latency_ms=0)
    measured = Measured(proxy)
    now = datetime.now(timezone.utc)
    fast = service_with(args.concurrency)
    fast.create_table()
    seed_seconds = seed_rows(now, live=args.live, stale=args.stale, history=history, prefix="a")
    client = boto3.client("dynamodb", endpoint_url=proxy.url, region_name="us-east-1")
    proxy.configure(latency_ms=args.latency_ms)

    listed = measured(lambda: list_all(fast))
    naive_listed = measured(lambda: naive_list_all(client))
    assert listed["result"] == naive_listed["result"] == args.live + args.stale, (listed, naive_listed)

    naive = measured(lambda: naive_sweep(client, now))
    assert naive["result"] == args.stale, naive

    proxy.configure(latency_ms=0)
    seed_rows(now, stale=args.stale, prefix="b")
    proxy.configure(latency_ms=args.latency_ms)
    sequential = measured(lambda: service_with(1).cleanup_stale_connections())
    assert sequential["result"].cleaned == args.stale, sequential

    proxy.configure(latency_ms=0)
    seed_rows(now, stale=args.stale, prefix="c")
    proxy.configure(latency_ms=args.latency_ms)
    swept = measured(lambda: service_with(args.concurrency).cleanup_stale_connections())
    assert swept["result"].cleaned == args.stale and swept["result"].complete, swept
    proxy.configure(latency_ms=0)
    return {
        "history": history, "seed_seconds": seed_seconds,
        "list": listed, "naive_list": naive_listed,
        "sweep": swept, "sequential": sequential, "naive_sweep": naive,
    }


def run_memory(moto: MotoServer, proxy: DynamoProxy, stale: int, args: argparse.Namespace) -> dict[str, int]:
    import boto3

    moto.reset()
    proxy.configure(latency_ms=0)
    now = datetime.now(timezone.utc)
    service = service_with(args.concurrency)
    service.create_table()
    client = boto3.client("dynamodb", endpoint_url=proxy.url, region_name="us-east-1")
    seed_rows(now, stale=stale, prefix="m")
    naive_scan_peak = traced_peak(lambda: naive_list_all(client))  # the naive sweep's first half
    sweep_peak = traced_peak(lambda: service.cleanup_stale_connections())
    return {"stale": stale, "sweep_peak": sweep_peak, "naive_scan_peak": naive_scan_peak}


def report(args: argparse.Namespace, rows: list[dict[str, Any]], memory: list[dict[str, int]], imports: dict[str, Any]) -> str:
    ms = lambda seconds: f"{seconds * 1000:,.0f}"  # noqa: E731
    lines = [
        f"Latency injected by the proxy: {args.latency_ms:g} ms per request. Live rows: {args.live}, "
        f"stale rows: {args.stale}, sweep concurrency: {args.concurrency}.",
        "",
        "Listing every live connection (get_all_connections, pages of 1000) vs naive Scan + filter:",
        "",
        "| history rows | returned | items read | read/returned | requests | ms | naive items read | naive read/returned | naive ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ours, naive = row["list"], row["naive_list"]
        returned = ours["result"]
        lines.append(
            f"| {row['history']:,} | {returned:,} | {ours['items_read']:,} | {ours['items_read'] / returned:.2f} | "
            f"{ours['requests']} | {ms(ours['seconds'])} | {naive['items_read']:,} | "
            f"{naive['items_read'] / returned:.2f} | {ms(naive['seconds'])} |"
        )
    lines += [
        "",
        "Stale sweep (cleanup_stale_connections) vs the same sweep one write at a time vs the naive sweep",
        "(Scan + filter, then one UpdateItem per stale row):",
        "",
        "| history rows | stale | items read | read/stale | ms | writes in flight (max) | one-at-a-time ms | speed-up vs one-at-a-time "
        "| naive items read | naive read/stale | naive ms | speed-up vs naive |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ours, seq, naive = row["sweep"], row["sequential"], row["naive_sweep"]
        stale = ours["result"].cleaned
        lines.append(
            f"| {row['history']:,} | {stale:,} | {ours['items_read']:,} | {ours['items_read'] / stale:.2f} | "
            f"{ms(ours['seconds'])} | {ours['result'].max_in_flight} (proxy saw {ours['max_in_flight']}) | "
            f"{ms(seq['seconds'])} | {seq['seconds'] / ours['seconds']:.1f}x | {naive['items_read']:,} | "
            f"{naive['items_read'] / stale:.2f} | {ms(naive['seconds'])} | {naive['seconds'] / ours['seconds']:.1f}x |"
        )
    lines += [
        "",
        "Seeding (BatchWriteItem, no latency): "
        + ", ".join(f"{row['history'] + args.live + args.stale:,} rows in {row['seed_seconds']:.1f} s" for row in rows),
        "",
        "Memory, tracemalloc peak during one sweep (no latency, no history):",
        "",
        "| stale rows | sweep peak | naive Scan peak (the naive sweep's first step) |",
        "|---:|---:|---:|",
    ]
    if not rows:
        lines = []
    for item in memory:
        lines.append(f"| {item['stale']:,} | {item['sweep_peak'] / 1024:,.0f} KiB | {item['naive_scan_peak'] / 1024:,.0f} KiB |")
    if len(memory) == 2:
        lines.append("")
        lines.append(
            f"Sweep peak grows {memory[1]['sweep_peak'] / memory[0]['sweep_peak']:.2f}x for "
            f"{memory[1]['stale'] / memory[0]['stale']:.0f}x the stale rows "
            f"(naive Scan: {memory[1]['naive_scan_peak'] / memory[0]['naive_scan_peak']:.2f}x)."
        )
    lines += [
        "",
        f"Cold start, {args.import_reps} fresh interpreters each, interleaved, bytecode cached:",
        "",
        "| import | wall min ms | wall median ms | CPU min ms | CPU median ms | minor page faults (min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("base", "pynamodb.models"), ("handler", "connection_manager.handler")):
        lines.append(
            f"| {label} | {ms(imports[name + '_wall_min'])} | {ms(imports[name + '_wall_median'])} | "
            f"{ms(imports[name + '_cpu_min'])} | {ms(imports[name + '_cpu_median'])} | {imports[name + '_faults_min']:,} |"
        )
    lines += [
        f"| ratio | {imports['ratio_wall_min']:.3f} | {imports['ratio_wall_median']:.3f} | "
        f"{imports['ratio_cpu_min']:.3f} | {imports['ratio_cpu_median']:.3f} | {imports['ratio_faults_min']:.3f} |",
        "",
        f"Loaded by importing the handler, of flask, werkzeug, jinja2, aws_lambda_powertools: {imports['heavy_modules_loaded']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="rows of DISCONNECTED history, comma-separated")
    parser.add_argument("--stale", type=int, default=500, help="stale CONNECTED rows the sweep must find")
    parser.add_argument("--live", type=int, default=200, help="live CONNECTED rows")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="latency the proxy adds to every request")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent sweep writes (SWEEP_CONCURRENCY)")
    parser.add_argument("--memory-stale", default="1000,10000", help="two stale-row counts for the memory check")
    parser.add_argument("--import-reps", type=int, default=30, help="fresh interpreters per import measurement")
    parser.add_argument("--imports-only", action="store_true", help="only the cold-start measurement")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check in under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.stale, args.live = "1000,5000", 100, 50
        args.memory_stale, args.import_reps = "500,5000", 10
    sizes = [int(size) for size in args.sizes.split(",") if size]
    memory_sizes = [int(size) for size in args.memory_stale.split(",") if size]

    _local_aws_environment()
    started = time.perf_counter()
    rows, memory = [], []
    if args.imports_only:
        sizes, memory_sizes = [], []
    with MotoServer() as moto, DynamoProxy(moto.url) as proxy:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = proxy.url
        for history in sizes:
            print(f"... {history:,} history rows", file=sys.stderr, flush=True)
            rows.append(run_size(moto, proxy, history, args))
        for stale in memory_sizes:
            print(f"... memory with {stale:,} stale rows", file=sys.stderr, flush=True)
            memory.append(run_memory(moto, proxy, stale, args))
    print("... cold start", file=sys.stderr, flush=True)
    imports = cold_start(args.import_reps)
    print(report(args, rows, memory, imports))
    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
