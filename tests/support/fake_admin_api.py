"""A stand-in for the admin HTTP API with in-memory demo data, for working on the dashboard.

The dashboard is plain HTML, CSS and JavaScript talking to the JSON API; this serves the
real template and static files next to a fake of that API (same paths, shapes and error
bodies as the contract), so the page can be previewed and clicked through in a browser
without DynamoDB. Browser tests of the page itself can use it too.

    python -m tests.support.fake_admin_api --port 8765 [--admin-token secret] [--prefix /dev]
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "connection_manager"
DEFAULT_STALE_AFTER = 3600
MAX_PAGE_SIZE = 1000
MAX_STALE_AFTER = 365 * 24 * 3600

USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0 Safari/537.36 Edg/121.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:122.0) Gecko/20100101 Firefox/122.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
    "okhttp/4.12.0",
    "python-websockets/12.0",
]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Wall-clock time in UTC; the fake takes a clock so tests can pin it."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """The contract's timestamp format: ISO-8601 UTC with a ``Z`` and whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class ApiError(Exception):
    """An error answered as the contract's ``{"error", "message"}`` body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def demo_connections(now: datetime, count: int = 140, seed: int = 7) -> list[dict[str, Any]]:
    """Plausible records: many users, a share of them stale, some already disconnected."""
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    users = [f"user-{n:04d}" for n in rng.sample(range(1, 9999), max(1, count // 3))]
    records = []
    for index in range(count):
        connection_id = "".join(rng.choice(alphabet) for _ in range(15)) + "="
        created = now - timedelta(seconds=rng.randint(30, 3 * 86400))
        roll = rng.random()
        if roll < 0.15:
            last = created + timedelta(seconds=rng.randint(0, 600))
            last = min(last, now - timedelta(seconds=DEFAULT_STALE_AFTER + rng.randint(60, 86400)))
        else:
            last = now - timedelta(seconds=rng.randint(0, min(3000, int((now - created).total_seconds()))))
        last = max(last, created)
        record: dict[str, Any] = {
            "connectionId": connection_id,
            "userId": users[index % len(users)] if index % 4 else rng.choice(users[:5]),
            "status": "CONNECTED",
            "createdAt": iso(created),
            "lastActiveAt": iso(last),
        }
        if rng.random() < 0.9:
            record["metadata"] = {
                "sourceIp": f"203.0.113.{rng.randint(1, 254)}" if rng.random() < 0.5 else f"198.51.100.{rng.randint(1, 254)}",
                "userAgent": rng.choice(USER_AGENTS),
            }
            if rng.random() < 0.15:
                record["metadata"]["appVersion"] = f"2.{rng.randint(0, 9)}.{rng.randint(0, 20)}"
        if roll > 0.88:
            gone = min(now, last + timedelta(seconds=rng.randint(1, 7200)))
            record.update(
                status="DISCONNECTED",
                disconnectedAt=iso(gone),
                updatedAt=iso(gone),
                disconnectReason=rng.choice(["client", "client", "stale", "admin"]),
            )
        records.append(record)
    return records


class FakeConnectionStore:
    """The connections table as a dict, with the service's operations on it."""

    def __init__(self, records: list[dict[str, Any]], clock: Clock, stale_after: int = DEFAULT_STALE_AFTER) -> None:
        self._rows = {r["connectionId"]: dict(r) for r in records}
        self._clock = clock
        self._lock = threading.Lock()
        self.stale_after = stale_after

    def _connected(self) -> list[dict[str, Any]]:
        rows = [r for r in self._rows.values() if r["status"] == "CONNECTED"]
        return sorted(rows, key=lambda r: (r["createdAt"], r["connectionId"]), reverse=True)

    def _is_stale(self, row: dict[str, Any], cutoff: datetime) -> bool:
        return row["status"] == "CONNECTED" and parse_iso(row.get("lastActiveAt") or row["createdAt"]) < cutoff

    def page(self, user_id: str | None, limit: int, token: str | None) -> dict[str, Any]:
        with self._lock:
            rows = self._connected()
            if user_id is not None:
                rows = [r for r in rows if r["userId"] == user_id]
            start = decode_token(token) if token else 0
            chunk = rows[start : start + limit]
            body: dict[str, Any] = {"connections": [dict(r) for r in chunk], "count": len(chunk)}
            if start + limit < len(rows):
                body["nextToken"] = encode_token(start + limit)
            return body

    def get(self, connection_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._rows.get(connection_id)
            if row is None:
                raise ApiError(404, "NotFound", f"connection {connection_id!r} does not exist")
            return dict(row)

    def set_status(self, connection_id: str, status: str) -> dict[str, Any]:
        with self._lock:
            row = self._rows.get(connection_id)
            if row is None:
                raise ApiError(404, "NotFound", f"connection {connection_id!r} does not exist")
            if row["status"] == status:
                return dict(row)
            if status == "CONNECTED":
                raise ApiError(409, "Conflict", "a DISCONNECTED connection cannot be connected again")
            self._disconnect(row, "admin")
            return dict(row)

    def _disconnect(self, row: dict[str, Any], reason: str) -> None:
        stamp = iso(self._clock())
        row.update(status="DISCONNECTED", disconnectedAt=stamp, updatedAt=stamp, disconnectReason=reason)

    def disconnect_user(self, user_id: str) -> int:
        with self._lock:
            rows = [r for r in self._rows.values() if r["userId"] == user_id and r["status"] == "CONNECTED"]
            for row in rows:
                self._disconnect(row, "admin")
            return len(rows)

    def cleanup(self, stale_after: int, dry_run: bool) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            cutoff = now - timedelta(seconds=stale_after)
            stale = [r for r in self._rows.values() if self._is_stale(r, cutoff)]
            if not dry_run:
                for row in stale:
                    self._disconnect(row, "stale")
            return {
                "message": "Stale connections cleaned up",
                "cleanedCount": len(stale),
                "dryRun": dry_run,
                "complete": True,
                "scannedCount": len(stale),
                "skippedCount": 0,
                "failedCount": 0,
                "staleAfterSeconds": stale_after,
                "cutoff": iso(cutoff),
                "durationMs": 3,
            }

    def stats(self, table: str) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            cutoff = now - timedelta(seconds=self.stale_after)
            connected = self._connected()
            return {
                "activeConnections": len(connected),
                "distinctUsers": len({r["userId"] for r in connected}),
                "staleConnections": sum(1 for r in connected if self._is_stale(r, cutoff)),
                "staleAfterSeconds": self.stale_after,
                "table": table,
                "generatedAt": iso(now),
            }

    def simulate_activity(self, rng: random.Random) -> None:
        """Heartbeats, arrivals and departures, so auto-refresh has something to show."""
        with self._lock:
            now = self._clock()
            cutoff = now - timedelta(seconds=self.stale_after)
            fresh = [r for r in self._connected() if not self._is_stale(r, cutoff)]
            for row in rng.sample(fresh, min(4, len(fresh))):
                row["lastActiveAt"] = iso(now)
            if fresh and rng.random() < 0.3:
                self._disconnect(rng.choice(fresh), "client")
            if rng.random() < 0.5:
                template = demo_connections(now, count=1, seed=rng.randint(0, 10**9))[0]
                template.update(status="CONNECTED", createdAt=iso(now), lastActiveAt=iso(now))
                for key in ("disconnectedAt", "updatedAt", "disconnectReason"):
                    template.pop(key, None)
                self._rows[template["connectionId"]] = template


def encode_token(offset: int) -> str:
    raw = json.dumps({"fake": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = data["fake"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ApiError(400, "ValidationError", "`nextToken` was not issued by this service") from None
    if not isinstance(offset, int) or offset < 0:
        raise ApiError(400, "ValidationError", "`nextToken` was not issued by this service")
    return offset


def read_limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ApiError(400, "ValidationError", f"`limit` must be an integer from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def read_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and not request.get_data():
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, "ValidationError", "the request body must be a JSON object")
    return body


def create_app(
    records: list[dict[str, Any]] | None = None,
    *,
    admin_token: str | None = None,
    clock: Clock = utc_now,
    table: str = "connections",
    stale_after: int = DEFAULT_STALE_AFTER,
    live: bool = False,
) -> Flask:
    """The fake app; pass ``records`` for a known table, ``live`` for a table that changes by itself."""
    app = Flask(
        __name__,
        template_folder=str(PACKAGE_DIR / "templates"),
        static_folder=str(PACKAGE_DIR / "static"),
        static_url_path="/static",
    )
    store = FakeConnectionStore(demo_connections(clock()) if records is None else records, clock, stale_after)
    app.extensions["fake_store"] = store
    rng = random.Random(11)

    @app.errorhandler(ApiError)
    def api_error(err: ApiError) -> tuple[Response, int]:
        return jsonify(error=err.code, message=err.message), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[Response, int]:
        code = (err.name or "Error").replace(" ", "")
        return jsonify(error=code, message=err.description or code), err.code or 500

    @app.before_request
    def require_token() -> None:
        """Like the real app with ``ADMIN_TOKEN`` set: state changes need the bearer token."""
        if admin_token is None or request.method in ("GET", "HEAD", "OPTIONS"):
            return
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise ApiError(401, "Unauthorized", "this operation needs the admin token (Authorization: Bearer <token>)")
        if header.removeprefix("Bearer ") != admin_token:
            raise ApiError(403, "Forbidden", "the admin token is not valid")

    @app.get("/")
    def dashboard() -> str:
        """The real dashboard template, with the mount point as its API base."""
        return render_template("dashboard.html", api_base=request.script_root)

    @app.get("/health")
    def health() -> Response:
        """Always healthy: there is no table to lose."""
        return jsonify(status="ok", table=table)

    @app.get("/stats")
    def stats() -> Response:
        """Counts for the KPI cards."""
        if live:
            store.simulate_activity(rng)
        return jsonify(store.stats(table))

    @app.get("/connections")
    def list_connections() -> Response:
        """One page of CONNECTED connections."""
        return jsonify(store.page(None, read_limit(), request.args.get("nextToken") or None))

    @app.get("/users/<path:user_id>/connections")
    def user_connections(user_id: str) -> Response:
        """One page of a user's CONNECTED connections."""
        return jsonify(store.page(user_id, read_limit(), request.args.get("nextToken") or None))

    @app.get("/connections/<path:connection_id>")
    def get_connection(connection_id: str) -> Response:
        """One connection, whatever its status."""
        return jsonify(connection=store.get(connection_id))

    @app.patch("/connections/<path:connection_id>")
    def patch_connection(connection_id: str) -> Response:
        """Correct a connection's status."""
        status = read_body().get("status")
        if status not in ("CONNECTED", "DISCONNECTED"):
            raise ApiError(400, "ValidationError", "`status` must be CONNECTED or DISCONNECTED")
        return jsonify(connection=store.set_status(connection_id, status))

    @app.post("/users/<path:user_id>/disconnect")
    def disconnect_user(user_id: str) -> Response:
        """Disconnect every CONNECTED connection of a user."""
        return jsonify(disconnectedCount=store.disconnect_user(user_id))

    @app.post("/connections/cleanup")
    def cleanup() -> Response:
        """Count or mark the stale connections."""
        body = read_body()
        dry_run = body.get("dryRun", False)
        threshold = body.get("staleAfterSeconds", store.stale_after)
        if not isinstance(dry_run, bool):
            raise ApiError(400, "ValidationError", "`dryRun` must be a boolean")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= MAX_STALE_AFTER:
            raise ApiError(400, "ValidationError", f"`staleAfterSeconds` must be an integer from 1 to {MAX_STALE_AFTER}")
        return jsonify(store.cleanup(threshold, dry_run))

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the fake on the loopback interface for a browser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--admin-token", default=None, help="require this bearer token on state changes")
    parser.add_argument("--prefix", default="", help="mount under a path prefix, like an API Gateway stage")
    parser.add_argument("--static", action="store_true", help="no simulated activity between refreshes")
    args = parser.parse_args(argv)

    app = create_app(admin_token=args.admin_token, live=not args.static)
    if args.prefix:
        from werkzeug.middleware.dispatcher import DispatcherMiddleware

        app.wsgi_app = DispatcherMiddleware(Response("mounted under " + args.prefix, 404), {args.prefix: app.wsgi_app})  # type: ignore[method-assign]
    app.run(host=args.host, port=args.port, debug=False, threaded=True)


if __name__ == "__main__":
    main()
