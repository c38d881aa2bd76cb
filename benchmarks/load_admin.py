"""Load test of the HTTP admin API: many concurrent clients for a bounded time, zero errors.

Starts ``connection-manager serve --embedded --port 0`` (the admin app on its threaded
server, over an in-process DynamoDB seeded with demo rows), then runs a mix of reads and
state changes from concurrent clients, each on a keep-alive session, and reports requests
per second and latency percentiles. Any 5xx, unexpected status or transport error counts
as an error; the run fails if there is one.

    python benchmarks/load_admin.py --clients 32 --duration 20

Numbers from an embedded moto server measure the app and its server, not DynamoDB: moto
answers in microseconds where DynamoDB takes a few milliseconds.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

TOKEN = "load-test-admin-token"
_URL = re.compile(r"Connection Manager admin: (http://[^\s/]+)/")


class AdminServer:
    """The admin app as a subprocess, by default exactly as an operator starts it.

    ``command`` replaces ``serve --embedded`` (another benchmark starts the app its own way,
    on another DynamoDB); ``env`` adds to the environment. Either way the process must print
    the ``Connection Manager admin: <url>`` line ``serve`` prints once it listens.
    """

    def __init__(
        self,
        startup_timeout: float = 60.0,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        stderr: int | None = subprocess.DEVNULL,
    ) -> None:
        self.startup_timeout = startup_timeout
        self.url = ""
        self._command = command or [
            sys.executable, "-c", "from connection_manager.cli import main; raise SystemExit(main())",
            "serve", "--embedded", "--port", "0",
        ]
        self._extra_env = env or {}
        self._stderr = stderr
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> "AdminServer":
        env = dict(os.environ, ADMIN_TOKEN=TOKEN, LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        for name in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_ENDPOINT_URL_DYNAMODB", "HTTP_PROXY", "HTTPS_PROXY"):
            env.pop(name, None)
        env.update(self._extra_env)
        self._process = subprocess.Popen(
            self._command,
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        found: list[str] = []
        reader = threading.Thread(target=self._read_url, args=(found,), daemon=True)
        reader.start()
        reader.join(self.startup_timeout)
        if not found:
            self.stop()
            raise RuntimeError("the admin server did not print its URL in time")
        self.url = found[0]
        return self

    def _read_url(self, found: list[str]) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            match = _URL.search(line)
            if match:
                found.append(match.group(1))
                # Keep draining stdout so the server never blocks on a full pipe.
                threading.Thread(target=self._process.stdout.read, daemon=True).start()
                return

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> "AdminServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    clients: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "seconds": round(self.elapsed_s, 1),
            "requests": self.requests,
            "requests_per_second": round(self.requests / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": round(self.percentile(0.50), 1),
            "p95_ms": round(self.percentile(0.95), 1),
            "p99_ms": round(self.percentile(0.99), 1),
            "max_ms": round(max(self.latencies_ms, default=0.0), 1),
            "errors": len(self.errors),
            "statuses": dict(self.statuses),
            "by_endpoint": dict(self.by_endpoint),
        }


Request = tuple[str, str, str, dict[str, Any] | None, tuple[int, ...]]  # name, method, path, json, expected


def _workload(client: int, ids: list[str], users: list[str], rng: random.Random) -> Callable[[], Request]:
    """A client's next request: mostly reads, some state changes on its own share of the rows."""
    own_ids = ids[client :: max(1, min(len(ids), 64))] or ids
    own_user = users[client % len(users)]

    def next_request() -> Request:
        roll = rng.random()
        connection_id = rng.choice(own_ids)
        if roll < 0.30:
            return "list", "GET", f"/connections?limit={rng.choice([10, 50, 100])}", None, (200,)
        if roll < 0.50:
            return "get", "GET", f"/connections/{connection_id}", None, (200,)
        if roll < 0.65:
            return "user", "GET", f"/users/{rng.choice(users)}/connections", None, (200,)
        if roll < 0.72:
            return "stats", "GET", "/stats", None, (200,)
        if roll < 0.77:
            return "health", "GET", "/health", None, (200,)
        if roll < 0.92:
            status = rng.choice(["CONNECTED", "DISCONNECTED"])
            return "patch", "PATCH", f"/connections/{connection_id}", {"status": status}, (200,)
        if roll < 0.97:
            return "cleanup", "POST", "/connections/cleanup", {"dryRun": True}, (200,)
        return "disconnect_user", "POST", f"/users/{own_user}/disconnect", None, (200,)

    return next_request


def _client(index: int, base: str, ids: list[str], users: list[str], deadline: float, results: Results) -> None:
    rng = random.Random(index)
    next_request = _workload(index, ids, users, rng)
    session = requests.Session()
    session.trust_env = False  # never a proxy from the environment: the server is on loopback
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    endpoints: Counter[str] = Counter()
    errors: list[str] = []
    while time.monotonic() < deadline:
        name, method, path, body, expected = next_request()
        started = time.perf_counter()
        try:
            response = session.request(method, base + path, json=body, headers=headers, timeout=30)
            status = response.status_code
            response.content  # read the whole body: it is part of the latency
        except requests.RequestException as exc:
            status = 0
            errors.append(f"{method} {path}: {type(exc).__name__}")
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[status] += 1
        endpoints[name] += 1
        if status and status not in expected:
            errors.append(f"{method} {path}: {status} {response.text[:200]}")
    session.close()
    with results.lock:
        results.latencies_ms.extend(latencies)
        results.statuses.update(statuses)
        results.by_endpoint.update(endpoints)
        results.errors.extend(errors)


def _discover(base: str) -> tuple[list[str], list[str]]:
    """Connection ids and users of the demo rows, read through the API itself."""
    ids: list[str] = []
    users: set[str] = set()
    token: str | None = None
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {TOKEN}"  # reads need the token too
        while True:
            params = {"limit": 100, **({"nextToken": token} if token else {})}
            body = session.get(f"{base}/connections", params=params, timeout=30).json()
            for row in body["connections"]:
                ids.append(row["connectionId"])
                users.add(row["userId"])
            token = body.get("nextToken")
            if not token:
                return ids, sorted(users)


def run_load(base: str, clients: int, duration: float) -> Results:
    """``clients`` threads, each on its own keep-alive session, for ``duration`` seconds."""
    ids, users = _discover(base)
    if not ids:
        raise RuntimeError("no connections to work on; was the table seeded?")
    results = Results(clients=clients)
    started = time.monotonic()
    deadline = started + duration
    threads = [
        threading.Thread(target=_client, args=(n, base, ids, users, deadline, results), daemon=True)
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 60)
    results.elapsed_s = time.monotonic() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    parser.add_argument("--url", help="an already running admin server instead of starting one")
    args = parser.parse_args(argv)
    if args.url:
        results = run_load(args.url.rstrip("/"), args.clients, args.duration)
    else:
        with AdminServer() as server:
            results = run_load(server.url, args.clients, args.duration)
    summary = results.summary()
    for key, value in summary.items():
        print(f"{key:>20}: {value}")
    for error in results.errors[:10]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if results.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
