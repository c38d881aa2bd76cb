"""A forward proxy in front of a DynamoDB endpoint that measures and misbehaves on purpose.

moto answers instantly and never fails; real DynamoDB costs a network round trip per
request, bills every item it reads, throttles, and sometimes loses an answer after the
write went through. This proxy adds exactly those effects (latency, read counting,
throttles, 5xx, dropped sockets) so tests and benchmarks can assert on cost and
resilience against a server that speaks the real wire protocol.

Standard library only, and no pytest imports: the benchmark script uses it too.

Usage::

    with MotoServer() as moto, DynamoProxy(moto.url, latency_ms=5) as proxy:
        client = boto3.client("dynamodb", endpoint_url=proxy.url)
        ...
        proxy.snapshot()["items_read"]
"""
from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Literal
from urllib.parse import urlsplit

from tests.support.local_server import LocalServer

FaultMode = Literal["throttle", "server_error", "drop"]
FaultPhase = Literal["before", "after"]
FAULT_MODES: tuple[str, ...] = ("throttle", "server_error", "drop")
FAULT_PHASES: tuple[str, ...] = ("before", "after")

# Headers that describe one hop, not the request; forwarding them would confuse the next hop.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "content-length", "host"}
)

# IAM authorizes each part of a transaction by the item action it performs.
_TRANSACTION_PARTS: dict[str, dict[str, str]] = {
    "TransactWriteItems": {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                           "ConditionCheck": "ConditionCheckItem"},
    "TransactGetItems": {"Get": "GetItem"},
}

_ERROR_BODIES: dict[str, tuple[int, str, str]] = {
    "throttle": (
        400,
        "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    ),
    "server_error": (500, "InternalServerError", "Internal server error"),
}


@dataclass(frozen=True)
class _Fault:
    """One decided fault: what to do and whether the server sees the request first."""

    mode: str
    phase: str


@dataclass
class _ScheduledFault:
    """A fault queued with :meth:`DynamoProxy.inject`, for deterministic tests."""

    mode: str
    phase: str
    operations: frozenset[str] | None
    remaining: int


def operation_of(target: str | None) -> str | None:
    """``DynamoDB_20120810.Query`` -> ``Query``; ``None`` for non-DynamoDB requests."""
    if not target:
        return None
    return target.rsplit(".", 1)[-1] or None


def items_in_response(operation: str, payload: dict[str, Any]) -> tuple[int, int]:
    """(items read, items returned) by one successful response, as DynamoDB bills reads.

    Query and Scan read ``ScannedCount`` items (before filters) and return ``Count``;
    GetItem reads and returns one item when it found one; BatchGetItem returns what is
    listed under ``Responses``.
    """
    if operation in ("Query", "Scan"):
        returned = int(payload.get("Count", 0))
        return int(payload.get("ScannedCount", returned)), returned
    if operation == "GetItem":
        found = 1 if payload.get("Item") else 0
        return found, found
    if operation == "BatchGetItem":
        found = sum(len(items) for items in payload.get("Responses", {}).values())
        return found, found
    if operation == "TransactGetItems":
        found = sum(1 for response in payload.get("Responses", []) if response.get("Item"))
        return found, found
    return 0, 0


class DynamoProxy(LocalServer):
    """Threaded HTTP proxy to ``upstream_url`` with latency, counters and fault injection.

    Every setting can be changed while requests are running (attributes or
    :meth:`configure`); all state is guarded by one lock.

    - ``latency_ms``: sleep before forwarding each request.
    - ``fault_rate`` (0..1): share of eligible requests that fail; the mode is drawn from
      ``fault_modes`` with a RNG seeded by ``seed`` so a run is reproducible.
    - ``fault_operations``: only these operations (e.g. ``{"UpdateItem"}``) are eligible;
      ``None`` means every DynamoDB request.
    - ``fault_phase``: ``"before"``, the request never reaches the server; ``"after"``,
      the server applies it and the answer is replaced by the fault (a lost answer).
    - ``serialize_upstream``: forward one request at a time. DynamoDB applies each
      conditional write atomically; moto checks the condition and applies the update in
      separate steps, so two concurrent writes to one item can both pass. Race tests set
      this to get DynamoDB's guarantee back while their clients stay concurrent.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        latency_ms: float = 0.0,
        fault_rate: float = 0.0,
        fault_modes: Iterable[str] = ("throttle",),
        fault_operations: Iterable[str] | None = None,
        fault_phase: str = "before",
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream_host: str = parts.hostname
        self.upstream_port: int = parts.port
        self.upstream_timeout = upstream_timeout
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._latency_ms = 0.0
        self._fault_rate = 0.0
        self._fault_modes: tuple[str, ...] = ("throttle",)
        self._fault_operations: frozenset[str] | None = None
        self._fault_phase = "before"
        self._scheduled: deque[_ScheduledFault] = deque()
        self._upstream_lock = threading.Lock()
        self.serialize_upstream = False
        self.configure(
            latency_ms=latency_ms,
            fault_rate=fault_rate,
            fault_modes=fault_modes,
            fault_operations=fault_operations,
            fault_phase=fault_phase,
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self.reset_counters()

    # -- configuration -------------------------------------------------------------

    def configure(self, **settings: Any) -> None:
        """Change several settings at once: latency_ms, fault_rate, fault_modes,
        fault_operations, fault_phase, seed (reseeds the RNG)."""
        unknown = set(settings) - {"latency_ms", "fault_rate", "fault_modes", "fault_operations", "fault_phase", "seed"}
        if unknown:
            raise TypeError(f"unknown proxy settings: {sorted(unknown)}")
        with self._lock:
            if "latency_ms" in settings:
                latency = float(settings["latency_ms"])
                if latency < 0:
                    raise ValueError("latency_ms must be >= 0")
                self._latency_ms = latency
            if "fault_rate" in settings:
                rate = float(settings["fault_rate"])
                if not 0.0 <= rate <= 1.0:
                    raise ValueError("fault_rate must be between 0 and 1")
                self._fault_rate = rate
            if "fault_modes" in settings:
                modes = tuple(settings["fault_modes"])
                _check_modes(modes)
                if not modes:
                    raise ValueError("fault_modes must name at least one mode")
                self._fault_modes = modes
            if "fault_operations" in settings:
                ops = settings["fault_operations"]
                self._fault_operations = None if ops is None else frozenset(ops)
            if "fault_phase" in settings:
                self._fault_phase = _check_phase(settings["fault_phase"])
            if "seed" in settings:
                self._rng.seed(settings["seed"])

    @property
    def latency_ms(self) -> float:
        return self._latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self.configure(latency_ms=value)

    @property
    def fault_rate(self) -> float:
        return self._fault_rate

    @fault_rate.setter
    def fault_rate(self, value: float) -> None:
        self.configure(fault_rate=value)

    @property
    def fault_modes(self) -> tuple[str, ...]:
        return self._fault_modes

    @fault_modes.setter
    def fault_modes(self, value: Iterable[str]) -> None:
        self.configure(fault_modes=value)

    @property
    def fault_operations(self) -> frozenset[str] | None:
        return self._fault_operations

    @fault_operations.setter
    def fault_operations(self, value: Iterable[str] | None) -> None:
        self.configure(fault_operations=value)

    @property
    def fault_phase(self) -> str:
        return self._fault_phase

    @fault_phase.setter
    def fault_phase(self, value: str) -> None:
        self.configure(fault_phase=value)

    def inject(
        self,
        mode: str,
        *,
        count: int = 1,
        operations: Iterable[str] | None = None,
        phase: str = "before",
    ) -> None:
        """Fail the next ``count`` eligible requests with ``mode``, regardless of ``fault_rate``.

        Deterministic where the random rate is not: "the answer to the next PutItem is
        lost" is ``inject("drop", operations={"PutItem"}, phase="after")``.
        """
        _check_modes((mode,))
        if count < 1:
            raise ValueError("count must be >= 1")
        scheduled = _ScheduledFault(
            mode, _check_phase(phase), None if operations is None else frozenset(operations), count
        )
        with self._lock:
            self._scheduled.append(scheduled)

    def clear_faults(self) -> None:
        """Stop all fault injection: rate to 0 and queued faults dropped."""
        with self._lock:
            self._fault_rate = 0.0
            self._scheduled.clear()

    # -- counters ------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero every counter (requests in flight right now stay counted as in flight)."""
        with self._lock:
            self._requests: Counter[str] = Counter()
            self._forwarded: Counter[str] = Counter()
            self._items_read: Counter[str] = Counter()
            self._items_returned: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._faults_by_operation: Counter[str] = Counter()
            self._iam_actions: Counter[str] = Counter()
            self._in_flight = getattr(self, "_in_flight", 0)
            self._max_in_flight = self._in_flight

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the counters.

        Keys: ``requests`` (total DynamoDB requests received), ``by_operation``,
        ``forwarded`` / ``forwarded_by_operation`` (reached the server), ``items_read`` /
        ``items_read_by_operation`` (billed reads), ``items_returned``, ``in_flight``,
        ``max_in_flight``, ``faults`` (by mode), ``faults_total``, ``faults_by_operation``,
        ``iam_actions`` (what IAM checks: a transaction's parts, not ``TransactWriteItems``).
        """
        with self._lock:
            return {
                "requests": sum(self._requests.values()),
                "by_operation": dict(self._requests),
                "forwarded": sum(self._forwarded.values()),
                "forwarded_by_operation": dict(self._forwarded),
                "items_read": sum(self._items_read.values()),
                "items_read_by_operation": dict(self._items_read),
                "items_returned": sum(self._items_returned.values()),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "faults": dict(self._faults),
                "faults_total": sum(self._faults.values()),
                "faults_by_operation": dict(self._faults_by_operation),
                "iam_actions": dict(self._iam_actions),
            }

    # -- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """Endpoint URL to give boto3 / PynamoDB, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("proxy is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "DynamoProxy":
        """Bind the port and serve in a background thread."""
        if self._server is not None:
            return self
        server = _ProxyServer((self._host, self._port), _ProxyHandler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="dynamo-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close client connections that are kept alive."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            # Wake handler threads blocked waiting for the next keep-alive request.
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- used by the handler -------------------------------------------------------

    def _track_client(self, client: socket.socket, connected: bool) -> None:
        with self._lock:
            if connected:
                self._clients.add(client)
            else:
                self._clients.discard(client)

    def _authorize(self, operation: str | None, body: bytes) -> None:
        """Count the IAM actions a request needs: a transaction is authorized part by part, by
        the underlying item actions (``dynamodb:TransactWriteItems`` is not an IAM action)."""
        if operation is None:
            return
        actions = [operation]
        if operation in _TRANSACTION_PARTS:
            try:
                items = json.loads(body or b"{}").get("TransactItems", [])
                actions = [_TRANSACTION_PARTS[operation][kind] for item in items for kind in item]
            except (ValueError, AttributeError, KeyError, TypeError):
                actions = [operation]
        with self._lock:
            self._iam_actions.update(f"dynamodb:{action}" for action in actions)

    def _arrive(self, operation: str | None) -> tuple[float, _Fault | None]:
        """Count an arriving request and decide its latency and fault, atomically."""
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if operation is None:
                return self._latency_ms, None
            self._requests[operation] += 1
            fault = self._choose_fault(operation)
            if fault is not None:
                self._faults[fault.mode] += 1
                self._faults_by_operation[operation] += 1
            return self._latency_ms, fault

    def _choose_fault(self, operation: str) -> _Fault | None:
        for scheduled in self._scheduled:
            if scheduled.operations is None or operation in scheduled.operations:
                scheduled.remaining -= 1
                if scheduled.remaining == 0:
                    self._scheduled.remove(scheduled)
                return _Fault(scheduled.mode, scheduled.phase)
        if self._fault_rate <= 0.0:
            return None
        if self._fault_operations is not None and operation not in self._fault_operations:
            return None
        if self._rng.random() >= self._fault_rate:
            return None
        return _Fault(self._rng.choice(self._fault_modes), self._fault_phase)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _rewrite_request(self, operation: str | None, body: bytes) -> bytes:
        """The request body to forward; a subclass may add parameters (the signature is not
        checked by the local servers this proxy fronts)."""
        return body

    def _record_response(self, operation: str | None, status: int, body: bytes) -> None:
        if operation is None:
            return
        read = returned = 0
        if status == 200:
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                payload = {}
            if isinstance(payload, dict):
                read, returned = items_in_response(operation, payload)
        with self._lock:
            self._forwarded[operation] += 1
            if read:
                self._items_read[operation] += read
            if returned:
                self._items_returned[operation] += returned


def _check_modes(modes: Iterable[str]) -> None:
    for mode in modes:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {FAULT_MODES}")


def _check_phase(phase: str) -> str:
    if phase not in FAULT_PHASES:
        raise ValueError(f"unknown fault phase {phase!r}; expected one of {FAULT_PHASES}")
    return phase


class _ProxyServer(ThreadingHTTPServer):
    """Threaded server whose close does not wait for idle keep-alive clients."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    proxy: DynamoProxy


class _ProxyHandler(BaseHTTPRequestHandler):
    """One client connection; keeps its own keep-alive connection to the upstream."""

    protocol_version = "HTTP/1.1"  # keep-alive with boto3, as with real DynamoDB
    timeout = 120  # an idle client connection does not hold a thread forever
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None
        self.server.proxy._track_client(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track_client(self.connection, False)
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a test run would otherwise print one line per DynamoDB request."""

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        operation = operation_of(self.headers.get("X-Amz-Target"))
        body = proxy._rewrite_request(operation, body)
        proxy._authorize(operation, body)
        latency_ms, fault = proxy._arrive(operation)
        left = False
        try:
            if latency_ms:
                time.sleep(latency_ms / 1000.0)
            response: tuple[int, list[tuple[str, str]], bytes] | None = None
            if fault is None or fault.phase == "after":
                try:
                    if proxy.serialize_upstream:
                        with proxy._upstream_lock:
                            response = self._forward(body)
                    else:
                        response = self._forward(body)
                except OSError as error:
                    response = (502, [("Content-Type", "text/plain")], f"upstream unreachable: {error}".encode())
                else:
                    proxy._record_response(operation, response[0], response[2])
            # Leave before answering: once a client holds its answer, the request no
            # longer counts as in flight.
            proxy._leave()
            left = True
            if fault is not None:
                self._send_fault(fault.mode)
            elif response is not None:
                self._send(*response)
        finally:
            if not left:
                proxy._leave()

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        for attempt in (1, 2):
            fresh = self._upstream is None
            if fresh:
                self._upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
                )
            conn = self._upstream
            assert conn is not None
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                # Keep the client's Host: it is part of the SigV4 signature.
                conn.putheader("Host", self.headers.get("Host", f"{proxy.upstream_host}:{proxy.upstream_port}"))
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                response = conn.getresponse()
                answer = response.read()
                headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                if response.will_close:
                    conn.close()
                    self._upstream = None
                return response.status, headers, answer
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._upstream = None
                # A reused keep-alive connection the server had already closed: the
                # request never got there, so sending it once more is safe.
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() not in ("date", "server"):
                self.send_header(name, value)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_fault(self, mode: str) -> None:
        if mode == "drop":
            # No answer at all: the client sees the connection closed under it.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        status, code, message = _ERROR_BODIES[mode]
        body = json.dumps(
            {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}
        ).encode()
        self._send(
            status,
            [
                ("Content-Type", "application/x-amz-json-1.0"),
                ("x-amzn-ErrorType", code),
                ("x-amzn-RequestId", uuid.uuid4().hex.upper()),
            ],
            body,
        )
