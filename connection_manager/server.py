"""``connection-manager serve``: the admin app on werkzeug's threaded server, optionally on an embedded DynamoDB.

``--embedded`` is the zero-setup demo: moto's DynamoDB runs in a thread of this process
on a free loopback port, the standard ``AWS_ENDPOINT_URL_DYNAMODB`` points the service at
it, and the table is created and filled with demo rows before the first request. Nothing
leaves the machine. moto is a development dependency, so its absence is reported as an
instruction rather than an ImportError.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from http import HTTPStatus
from types import FrameType
from typing import Any, Iterator, TextIO

from werkzeug.serving import WSGIRequestHandler

from connection_manager.config import Settings
from connection_manager.errors import ConnectionManagerError

access_log = logging.getLogger("connection_manager.access")

DEMO_LIVE = 60
DEMO_STALE = 15
DEMO_HISTORY = 200

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def display_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class AccessLogHandler(WSGIRequestHandler):
    """Request lines under our own logger, so the embedded DynamoDB's chatter can be silenced alone.

    Errors the HTTP server finds before the app runs (a request line over 64 KiB: 414; too
    many or too long headers: 431; a malformed request line: 400) get the API's JSON error
    body, as the OpenAPI document says, instead of http.server's HTML page.
    """

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        from connection_manager.app import http_error_code

        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps({"error": http_error_code(code, phrase), "message": message or phrase}).encode()
        self.log_error("code %d, message %s", code, message)
        self.send_response(code, message)
        self.send_header("Connection", "close")
        self.close_connection = True
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log(self, type: str, message: str, *args: Any) -> None:
        line = _ANSI.sub("", message % args)  # werkzeug colours status lines for terminals
        getattr(access_log, type if type in ("info", "warning", "error") else "info")(
            "%s %s", self.address_string(), line
        )


class EmbeddedDynamo:
    """moto's DynamoDB in a background thread, on a free loopback port."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.url = ""

    def start(self) -> str:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.stop()


#: A loopback port bound and never listened on: connecting to it is refused at once. Held
#: for the life of the process so nothing else can take it.
_closed_port: socket.socket | None = None


def closed_local_url() -> str:
    """An address on loopback that refuses every connection (see ``_closed_port``)."""
    global _closed_port
    if _closed_port is None:
        _closed_port = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _closed_port.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{_closed_port.getsockname()[1]}"


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def point_at(url: str, environ: Any = None) -> None:
    """Aim botocore at ``url`` with dummy credentials; must run before the service is built.

    The demo has no WebSocket API: API Gateway calls (none for demo rows, which store no
    endpoint) go to a local stand-in the caller chose, else to a closed loopback port,
    never to a real ``execute-api`` host.
    """
    env = os.environ if environ is None else environ
    env["AWS_ENDPOINT_URL_DYNAMODB"] = url
    if not _is_loopback(env.get("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI", "")):
        env["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] = closed_local_url()
    # Dummy values on purpose: they keep a developer's real credentials out of the demo.
    env["AWS_ACCESS_KEY_ID"] = "embedded"
    env["AWS_SECRET_ACCESS_KEY"] = "embedded"
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = "us-east-1"
    env["AWS_EC2_METADATA_DISABLED"] = "true"


def local_exports(url: str) -> list[str]:
    """Shell lines that point the CLI (or any AWS SDK) at a local DynamoDB, with dummy credentials."""
    return [
        f"export AWS_ENDPOINT_URL_DYNAMODB={url}",
        "export AWS_ACCESS_KEY_ID=local",
        "export AWS_SECRET_ACCESS_KEY=local",
        "export AWS_REGION=us-east-1",
    ]


def local_dynamodb(port: int = 8000, out: TextIO = sys.stdout, wait: Any = None) -> int:
    """Run moto's DynamoDB on loopback in the foreground and print the exports that reach it.

    ``wait`` blocks until the server should stop (default: until Ctrl-C or SIGTERM). The
    signal handlers are in place before anything is printed: a caller that sees the exports
    and sends SIGINT at once must not find it still ignored (as a background job inherits it).
    """
    with _stop_on_signals():
        try:
            return _local_dynamodb(port, out, wait)
        except KeyboardInterrupt:
            return 0


def _local_dynamodb(port: int, out: TextIO, wait: Any) -> int:
    try:
        dynamo = EmbeddedDynamo(port)
    except ImportError:
        print("error: local-dynamodb needs moto, a development dependency; install it with: pip install -e '.[dev]'",
              file=sys.stderr)
        return 2
    try:
        url = dynamo.start()
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        print(f"# local DynamoDB (moto, in memory) on {url}; paste these lines into another shell:", file=out)
        for line in local_exports(url):
            print(line, file=out)
        print("# then: connection-manager create-table && connection-manager seed 100 --stale 10", file=out)
        print("# Ctrl-C stops it (and forgets every table).", file=out, flush=True)
        (wait or _wait_for_stop)()
        return 0
    finally:
        dynamo.stop()


def _wait_for_stop() -> None:
    """Until Ctrl-C or SIGTERM: the handlers `local_dynamodb` installed raise KeyboardInterrupt."""
    threading.Event().wait()


def prepare_demo(out: TextIO) -> None:
    """Create the table (with TTL) and seed demo rows through the process-wide service."""
    from connection_manager.wiring import get_service
    from connection_manager.seed import SeedPlan, seed

    service = get_service()
    table = service.settings.table_name
    print(f"embedded DynamoDB: creating table '{table}' with its indexes...", file=out, flush=True)
    service.create_table()
    service.enable_ttl()
    plan = SeedPlan(
        live=DEMO_LIVE,
        stale=DEMO_STALE,
        history=DEMO_HISTORY,
        stale_after_seconds=service.settings.stale_after_seconds,
    )
    print(f"embedded DynamoDB: seeding {plan.total} demo rows...", file=out, flush=True)
    written = seed(plan, service.clock(), model=service.model)
    service.take_snapshot()  # seeded rows bypass the live counters; a snapshot counts them
    print(
        f"embedded DynamoDB: table '{table}' with {written} demo rows "
        f"({plan.live} live, {plan.stale} stale, {plan.history} disconnected)",
        file=out,
        flush=True,
    )


def serve(host: str = "127.0.0.1", port: int = 8080, embedded: bool = False) -> int:
    """Run the admin app until Ctrl-C (or SIGTERM); returns the process exit code."""
    from connection_manager.observability import setup_logging

    setup_logging()
    with _stop_on_signals():
        return _serve(host, port, embedded)


def _serve(host: str, port: int, embedded: bool) -> int:
    dynamo: EmbeddedDynamo | None = None
    if embedded:
        # moto logs every DynamoDB call through werkzeug's logger; the app's lines stay.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            dynamo = EmbeddedDynamo()
        except ImportError:
            print(
                "error: --embedded needs moto, a development dependency; install it with: pip install -e '.[dev]'",
                file=sys.stderr,
            )
            return 2
    try:
        if dynamo is not None:
            print("embedded DynamoDB: starting moto's DynamoDB in this process...", flush=True)
            point_at(dynamo.start())
            print(f"embedded DynamoDB: listening on {dynamo.url}", flush=True)
        try:
            settings = Settings.from_env()
        except ConnectionManagerError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        if dynamo is not None:
            prepare_demo(sys.stdout)
        return _run(host, port, settings)
    except KeyboardInterrupt:
        return 0
    finally:
        if dynamo is not None:
            dynamo.stop()


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop the server, from the first line on.

    Python turns SIGINT into KeyboardInterrupt only when the parent left it alone, and a
    shell starts a background job (``serve &``, a CI runner's steps) with SIGINT ignored:
    without an explicit handler such a server would ignore Ctrl-C and `kill -INT`. The
    previous handlers come back afterwards (``serve`` may run inside another program).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def build_app(host: str, settings: Settings) -> Any:
    """The admin app as served on ``host``: a loopback bind answers only to loopback names."""
    from connection_manager.app import create_app

    config: dict[str, Any] = {}
    if is_loopback(host):
        # Only names that mean this machine: a page on another site that rebinds its DNS
        # name to 127.0.0.1 or ::1 then gets a 400 instead of a same-origin view of the API.
        # The app checks it (werkzeug's TRUSTED_HOSTS cannot parse a bracketed IPv6 Host).
        config["ALLOWED_HOSTS"] = _LOOPBACK_NAMES
    elif not settings.admin_token:
        print(
            f"warning: listening on {host} without ADMIN_TOKEN: anyone who can reach this port can read and change state",
            file=sys.stderr,
            flush=True,
        )
    return create_app(config=config)


def _run(host: str, port: int, settings: Settings) -> int:
    from werkzeug.serving import make_server

    app = build_app(host, settings)
    try:
        server = make_server(host, port, app, threaded=True, request_handler=AccessLogHandler)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"Connection Manager admin: {display_url(host, server.server_port)}", flush=True)
    if settings.admin_token:
        print("every request but /health needs: Authorization: Bearer $ADMIN_TOKEN", flush=True)

    try:
        server.serve_forever()  # returns on Ctrl-C (werkzeug catches the KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", file=sys.stderr, flush=True)
    return 0
