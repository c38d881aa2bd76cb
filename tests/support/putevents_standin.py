"""EventBridge's ``PutEvents`` on loopback: records the entries, fails some on demand.

botocore sends ``PutEvents`` as JSON 1.1 (``X-Amz-Target: AWSEvents.PutEvents``); the
answer is ``{"FailedEntryCount", "Entries"}`` with an ``EventId`` or an ``ErrorCode`` per
entry, in order. Point a client at it with ``AWS_ENDPOINT_URL_EVENTBRIDGE=<url>``, as a
user points theirs at any endpoint. ``fail_entries(n)`` fails the next n entries one by one
(throttling, a partial failure); ``known_buses`` refuses any other bus as EventBridge does.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PutEventsStandIn:
    def __init__(self, known_buses: frozenset[str] = frozenset({"default", "presence"})) -> None:
        self.known_buses = known_buses
        self.entries: list[dict[str, Any]] = []
        self.requests = 0
        #: Latency added to every call, as EventBridge's own round trip.
        self.delay_ms = 0.0
        self._fail = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_entries(self, count: int) -> None:
        with self._lock:
            self._fail = count

    def kinds(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(entry["DetailType"], entry["detail"].get("connectionId", "")) for entry in self.entries]

    def __enter__(self) -> "PutEventsStandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Silent."""

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if standin.delay_ms:
                    time.sleep(standin.delay_ms / 1000)
                status, answer = standin._answer(self.headers.get("X-Amz-Target", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, target: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if target != "AWSEvents.PutEvents":
            return 400, {"__type": "UnknownOperationException", "message": target}
        with self._lock:
            self.requests += 1
            entries = body.get("Entries", [])
            for entry in entries:
                if entry.get("EventBusName", "default") not in self.known_buses:
                    return 400, {"__type": "ResourceNotFoundException",
                                 "message": f"Event bus {entry.get('EventBusName')} does not exist."}
            results = []
            for entry in entries:
                if self._fail:
                    self._fail -= 1
                    results.append({"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"})
                    continue
                self.entries.append({**entry, "detail": json.loads(entry.get("Detail") or "{}")})
                results.append({"EventId": f"standin-{len(self.entries)}"})
            return 200, {"FailedEntryCount": sum("ErrorCode" in r for r in results), "Entries": results}
