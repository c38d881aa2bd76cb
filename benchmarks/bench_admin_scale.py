"""The admin API at 10k live connections: requests per second and p99 per route, per engine.

Not part of the test suite. For each engine (Amazon DynamoDB Local, and ``moto_server`` for
comparison with the first load figures, which were taken on moto) it:

1. starts the engine on loopback;
2. starts the admin app in a subprocess on werkzeug's threaded server, as ``serve`` runs
   it, plus one route registered only here: ``GET /_bench/noop``, a Flask view that
   returns ``{}``. That subprocess creates the table, seeds ``--live`` CONNECTED rows with
   BatchWriteItem (``connection_manager/seed.py``) and takes the snapshot ``/stats``
   answers from, then listens;
3. for each route and each client count, runs closed-loop clients (one keep-alive session
   each) for ``--duration`` seconds after a short warm-up, and records every latency.

Every phase ends at its deadline, so the whole run is bounded: engines x routes x client
counts x (duration + warm-up), plus seeding. It prints one table, side by side. The no-op
route is served by the same process, over the same HTTP server, to the same clients, so
``route - no-op`` is what the app itself (auth, validation, the service, DynamoDB round
trips, JSON) adds to a request. Any status but 200 or a transport error counts as an
error; the run exits 1 if there was one.

    .venv/bin/python benchmarks/bench_admin_scale.py --live 10000 --clients 1,8 --duration 8
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from benchmarks.bench_scale import _local_aws_environment  # noqa: E402
from benchmarks.load_admin import TOKEN, AdminServer  # noqa: E402

TABLE = "bench-admin"
NOOP = "/_bench/noop"
#: Routes measured, by name. The listing asks for a dashboard page of 100; the idle filter
#: for rows idle over 25 minutes (seeded activity is spread over the last 30 minutes, so
#: about a sixth of the rows match and a page of 100 is always full).
ROUTES: dict[str, str] = {
    "no-op": NOOP,
    "/stats": "/stats",
    "/connections": "/connections?limit=100",
    "/connections idle": "/connections?limit=100&idleMoreThan=1500",
}
ENGINES = ("dynamodb-local", "moto")
#: moto's Query on an index walks the whole table (70-85 ms of CPU per query at the demo's
#: 275 rows, seconds at 10k with the shards queried at once), past the app's 5 s read
#: timeout. On moto only, the app waits this long instead, so its figures are slow
#: answers rather than errors; DynamoDB Local runs with the app's own settings.
MOTO_READ_TIMEOUT_SECONDS = 120


# --- the server side: runs in the admin subprocess ------------------------------------


def serve_child(live: int, read_timeout: int | None) -> int:
    """Seed the table, then serve the admin app with the no-op route (the subprocess's main)."""
    from dataclasses import replace

    from werkzeug.serving import make_server

    import connection_manager.wiring as wiring
    from connection_manager.config import Settings
    from connection_manager.observability import setup_logging
    from connection_manager.seed import SeedPlan, seed
    from connection_manager.server import AccessLogHandler, build_app, point_at

    setup_logging()
    point_at(os.environ["BENCH_DYNAMODB_URL"])
    settings = Settings.from_env()
    if read_timeout:
        settings = replace(settings, read_timeout_seconds=read_timeout)
    # The process-wide service, which the app built by build_app() takes on first use.
    wiring._service = service = wiring.build_service(settings)
    service.create_table()
    started = time.perf_counter()
    written = seed(SeedPlan(live=live, stale_after_seconds=service.settings.stale_after_seconds), service.clock(),
                   model=service.model)
    seeded = time.perf_counter() - started
    started = time.perf_counter()
    service.take_snapshot()  # seeded rows bypass the live counters; /stats answers from the snapshot
    print(f"seeded {written} live rows in {seeded:.1f} s, snapshot in {time.perf_counter() - started:.1f} s",
          file=sys.stderr, flush=True)

    app = build_app("127.0.0.1", settings)
    # Registered on the app itself, after the API's blueprints: it runs the app's own
    # hooks (host check, response headers) and nothing else.
    app.add_url_rule(NOOP, "bench_noop", lambda: {})
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=AccessLogHandler)
    print(f"Connection Manager admin: http://127.0.0.1:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


# --- the client side ------------------------------------------------------------------


@dataclass
class Phase:
    """One route at one client count: every latency, and what went wrong."""

    engine: str
    route: str
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0

    @property
    def per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else 0.0


def _client(url: str, until: float, measure_from: float, phase: Phase, lock: threading.Lock) -> None:
    session = requests.Session()
    session.trust_env = False  # never a proxy from the environment: the server is on loopback
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    latencies: list[float] = []
    errors: list[str] = []
    while (now := time.monotonic()) < until:
        started = time.perf_counter()
        try:
            response = session.get(url, timeout=30)
            response.content  # the whole body is part of the latency
            failure = None if response.status_code == 200 else f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as exc:
            failure = type(exc).__name__
        elapsed = (time.perf_counter() - started) * 1000
        if now >= measure_from:  # requests started during the warm-up are not counted
            latencies.append(elapsed)
            if failure:
                errors.append(failure)
    session.close()
    with lock:
        phase.latencies_ms.extend(latencies)
        phase.errors.extend(errors)


def run_phase(base: str, engine: str, route: str, clients: int, duration: float, warmup: float) -> Phase:
    """``clients`` closed-loop clients on one route; measured for ``duration`` s after ``warmup`` s."""
    phase = Phase(engine, route, clients)
    lock = threading.Lock()
    measure_from = time.monotonic() + warmup
    until = measure_from + duration
    threads = [
        threading.Thread(target=_client, args=(base + ROUTES[route], until, measure_from, phase, lock), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(until - time.monotonic() + 40)  # one request may still run (30 s timeout)
    phase.seconds = duration
    return phase


def _engine_server(engine: str) -> Any:
    if engine == "moto":
        from tests.support.moto_server import MotoServer

        return MotoServer()
    from tests.support.dynamodb_local import DynamoDBLocal

    return DynamoDBLocal()


def run_engine(engine: str, args: argparse.Namespace) -> list[Phase]:
    phases: list[Phase] = []
    print(f"... {engine}: starting, seeding {args.live:,} live rows", file=sys.stderr, flush=True)
    with _engine_server(engine) as dynamo:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-child", "--live", str(args.live)]
        if engine == "moto":
            command += ["--read-timeout", str(MOTO_READ_TIMEOUT_SECONDS)]
        env = {"BENCH_DYNAMODB_URL": dynamo.url, "CONNECTIONS_TABLE_NAME": TABLE}
        with AdminServer(startup_timeout=args.startup_timeout, command=command, env=env, stderr=None) as server:
            for route in args.routes:
                for clients in args.clients:
                    phase = run_phase(server.url, engine, route, clients, args.duration, args.warmup)
                    print(f"    {engine} {route} x{clients}: {phase.per_second:.1f}/s, "
                          f"p99 {phase.percentile(0.99):.1f} ms, {len(phase.errors)} errors", file=sys.stderr, flush=True)
                    phases.append(phase)
    return phases


def print_table(phases: list[Phase], args: argparse.Namespace) -> None:
    noop = {(p.engine, p.clients): p for p in phases if p.route == "no-op"}
    print(f"\n{args.live:,} live rows; {args.duration:g} s per phase after {args.warmup:g} s of warm-up; "
          "closed-loop clients, one keep-alive session each; "
          f"on moto the app's DynamoDB read timeout is {MOTO_READ_TIMEOUT_SECONDS} s, not 5 s\n")
    print("| engine | route | clients | requests | req/s | p50 ms | p99 ms | mean ms | app overhead ms (mean - no-op mean) | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        base = noop.get((p.engine, p.clients))
        overhead = "" if p.route == "no-op" or base is None else f"{p.mean_ms - base.mean_ms:.1f}"
        print(f"| {p.engine} | `{ROUTES[p.route]}` | {p.clients} | {len(p.latencies_ms):,} | {p.per_second:,.1f} | "
              f"{p.percentile(0.50):.1f} | {p.percentile(0.99):.1f} | {p.mean_ms:.1f} | {overhead} | {len(p.errors)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=10_000, help="live connections seeded (default 10000)")
    parser.add_argument("--clients", default="1,8", help="client counts, comma separated (default 1,8)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase (default 8)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (default 1)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma separated, of {', '.join(ENGINES)}")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma separated, of {', '.join(ROUTES)}")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds for seeding and start")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--read-timeout", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_child:
        return serve_child(args.live, args.read_timeout)
    args.clients = [int(n) for n in args.clients.split(",")]
    args.routes = [name.strip() for name in args.routes.split(",")]
    engines = [name.strip() for name in args.engines.split(",")]
    unknown = [r for r in args.routes if r not in ROUTES] + [e for e in engines if e not in ENGINES]
    if unknown or min(args.clients) < 1 or args.duration <= 0:
        parser.error(f"bad --routes/--engines/--clients/--duration: {unknown or ''}")
    if "no-op" not in args.routes:
        args.routes.insert(0, "no-op")  # the baseline every overhead is measured against
    _local_aws_environment()
    started = time.monotonic()
    phases: list[Phase] = []
    failed: list[str] = []
    for engine in engines:
        try:
            phases += run_engine(engine, args)
        except Exception as exc:  # noqa: BLE001 - report it and still print what the other engines measured
            failed.append(f"{engine}: {type(exc).__name__}: {exc}")
    print_table(phases, args)
    print(f"\ntotal {time.monotonic() - started:.0f} s", file=sys.stderr)
    errors = failed + [f"{p.engine} {p.route}: {e}" for p in phases for e in p.errors]
    for error in errors[:10]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
