"""Run the real ``moto_server`` command on a free loopback port.

The in-process ``mock_aws`` decorator patches botocore; that cannot exercise what happens
on the wire (retries, timeouts, dropped answers, latency). For those tests we start
moto's HTTP server as a subprocess and talk to it like to a real DynamoDB endpoint.
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Ask the kernel for a port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def moto_server_command() -> Path:
    """The ``moto_server`` script of the virtualenv running these tests.

    Taking it from next to ``sys.executable`` guarantees the server runs the same moto
    version as the tests, whatever is on ``PATH``.
    """
    return Path(sys.executable).parent / "moto_server"


class MotoServerError(RuntimeError):
    """The moto server could not be started or answered unexpectedly."""


class MotoServer:
    """A ``moto_server`` subprocess bound to ``127.0.0.1`` on a free port.

    Use as a context manager, or call :meth:`start` and :meth:`stop` yourself.
    """

    def __init__(self, *, host: str = LOOPBACK, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self.port is None:
            raise MotoServerError("moto server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "MotoServer":
        """Start the server and return once it answers HTTP requests."""
        if self.running:
            return self
        command = moto_server_command()
        if not command.exists():
            raise MotoServerError(f"moto_server not found next to {sys.executable}; install moto[server]")
        # The port is picked before the child binds it, so another process may grab it in
        # between; a few attempts make that race harmless.
        attempts = 1 if self._requested_port is not None else 3
        last_error: MotoServerError | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(command, port)
                return self
            except MotoServerError as error:
                last_error = error
                self._cleanup()
        assert last_error is not None
        raise last_error

    def _spawn(self, command: Path, port: int) -> None:
        env = dict(os.environ)
        env["MOTO_PORT"] = str(port)
        # Keep the server's own view of AWS dummy and local, whatever the developer's shell holds.
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AWS_PROFILE"):
            env.pop(name, None)
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        # werkzeug logs every request to stderr; a file (not a pipe) can never fill up and
        # block the server, and still lets us show why it died.
        self._log = tempfile.TemporaryFile(prefix="moto-server-")
        self.port = port
        self._process = subprocess.Popen(
            [str(command), "-H", self.host, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                raise MotoServerError(
                    f"moto_server exited with code {self._process.returncode} before answering:\n{self.output()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise MotoServerError(
                    f"moto_server did not answer on {self.url} within {self.startup_timeout:.0f}s:\n{self.output()}"
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        assert self.port is not None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
        try:
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()
            return True  # any HTTP answer means the server is up
        except OSError:
            return False
        finally:
            conn.close()

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far (for error messages)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")
        self._log.seek(0, os.SEEK_END)
        return text[-4000:]

    def reset(self) -> None:
        """Wipe all state (tables, items) so the next test starts from nothing."""
        assert self.port is not None, "moto server is not started"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("POST", "/moto-api/reset", body=b"")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise MotoServerError(f"moto reset answered {response.status}: {body[:500]!r}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: a polite SIGTERM first, SIGKILL if it does not go."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._requested_port is None:
            self.port = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
