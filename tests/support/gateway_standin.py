"""A stand-in for API Gateway's ``@connections`` API, on a free loopback port.

moto's ``apigatewaymanagementapi`` makes up a connection for any id and never answers
410, so the behaviour that matters (a closed socket answers ``GoneException``) cannot be
tested on it. This server answers the way API Gateway does:

- ``GET /{stage}/@connections/{id}``: 200 with ``connectedAt``, ``lastActiveAt`` (ISO 8601)
  and ``identity`` {``sourceIp``, ``userAgent``}, or 410;
- ``DELETE``: 204 (the connection is closed from then on), or 410;
- ``POST``: 200, or 410;
- 410 carries ``x-amzn-ErrorType: GoneException``, a throttled call 429
  ``LimitExceededException``, a refused one 403 ``ForbiddenException``.

Clients are the real boto3 ``apigatewaymanagementapi`` client pointed here with
``endpoint_url`` (or ``AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI``). Signatures are not
checked. Knobs: ``latency_ms`` per request, :meth:`throttle` and :meth:`forbid` for the
next calls; ``calls`` records every request. Standard library only: the benchmark uses it.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Callable
from urllib.parse import unquote, urlsplit


@dataclass
class Socket:
    connected_at: datetime
    last_active_at: datetime
    source_ip: str = "203.0.113.10"
    user_agent: str = "stand-in/1.0"


@dataclass(frozen=True)
class Call:
    method: str
    stage: str
    connection_id: str
    status: int


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class GatewayStandIn:
    """The ``@connections`` API of one WebSocket API, every stage alike."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self._lock = threading.Lock()
        self._sockets: dict[str, Socket] = {}
        self._faults: list[tuple[int, str]] = []
        self.calls: list[Call] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        #: Called with (method, connection id) as each request arrives, before it is answered:
        #: lets a test land a write between a caller's question and its next step, deterministically.
        self.on_request: Callable[[str, str], None] | None = None

    # -- state ---------------------------------------------------------------------

    def open(self, connection_id: str, connected_at: datetime, last_active_at: datetime | None = None) -> None:
        """A live socket; ids never opened (or closed since) answer 410."""
        with self._lock:
            self._sockets[connection_id] = Socket(connected_at, last_active_at or connected_at)

    def drop(self, connection_id: str) -> None:
        """The socket closes on the client's side (no call to us): 410 from then on."""
        with self._lock:
            self._sockets.pop(connection_id, None)

    def touch(self, connection_id: str, last_active_at: datetime) -> None:
        """Traffic on an open socket (sent or received) moves its ``lastActiveAt``."""
        with self._lock:
            self._sockets[connection_id].last_active_at = last_active_at

    def is_open(self, connection_id: str) -> bool:
        with self._lock:
            return connection_id in self._sockets

    def throttle(self, count: int = 1) -> None:
        """The next ``count`` requests answer 429 LimitExceededException."""
        with self._lock:
            self._faults.extend([(429, "LimitExceededException")] * count)

    def forbid(self, count: int = 1) -> None:
        """The next ``count`` requests answer 403 ForbiddenException (the role lacks the permission)."""
        with self._lock:
            self._faults.extend([(403, "ForbiddenException")] * count)

    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.method == method]

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self.max_in_flight = self.in_flight

    # -- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint for a stage-less client: ``http://127.0.0.1:port``."""
        if self._server is None:
            raise RuntimeError("stand-in is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "GatewayStandIn":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="gateway-standin")
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "GatewayStandIn":
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- answering -----------------------------------------------------------------

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        stage, _, rest = urlsplit(path).path.partition("/@connections/")
        connection_id = unquote(rest)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            latency = self.latency_ms
        try:
            if self.on_request is not None:
                self.on_request(method, connection_id)
            if latency:
                time.sleep(latency / 1000)
            status, headers, body = self._decide(method, connection_id)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.calls.append(Call(method, stage.strip("/"), connection_id, status))
        return status, headers, body

    def _decide(self, method: str, connection_id: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            if self._faults:
                status, code = self._faults.pop(0)
                return _error(status, code)
            socket = self._sockets.get(connection_id)
            if socket is None or not connection_id:
                return _error(410, "GoneException")
            if method == "DELETE":
                del self._sockets[connection_id]
                return 204, {}, b""
            if method == "GET":
                body = {
                    "connectedAt": _iso(socket.connected_at),
                    "lastActiveAt": _iso(socket.last_active_at),
                    "identity": {"sourceIp": socket.source_ip, "userAgent": socket.user_agent},
                }
                return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
            if method == "POST":
                return 200, {}, b""
        return _error(400, "BadRequestException")


def _error(status: int, code: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"x-amzn-ErrorType": code, "Content-Type": "application/json"}, json.dumps({"message": None}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        standin: GatewayStandIn = self.server.standin  # type: ignore[attr-defined]
        status, headers, body = standin.answer(self.command, self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    do_GET = do_DELETE = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass
