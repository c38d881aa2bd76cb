"""What every local server the tests start has in common: a loopback port, and a lifecycle.

:class:`LocalServer` is the ``with`` protocol of anything with ``start`` and ``stop``
(the in-thread DynamoDB proxy is one). :class:`LocalServerProcess` runs a server as a
subprocess: it picks a free port, retries when another process takes that port first,
keeps the child's output for error messages, waits until a real request succeeds, and
stops the child however the run ends. A subclass supplies only what differs from one
server to the next: its command line, its readiness probe, its startup failures and how
to stop it.

Standard library only, and no pytest imports: the benchmarks use it too.
"""
from __future__ import annotations

import abc
import atexit
import http.client
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

LOOPBACK = "127.0.0.1"

# A proxy from the developer's shell would swallow the child's own calls to AWS endpoints.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def free_port(host: str = LOOPBACK) -> int:
    """Ask the kernel for a port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalServer(abc.ABC):
    """Started by :meth:`start`, stopped by :meth:`stop`, or both by a ``with`` block."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start serving (nothing happens when it already runs) and return ``self``."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop serving and release the port."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalServerProcess(LocalServer):
    """A server subprocess on ``host``, on a free port unless ``port`` is given."""

    #: Names the server in error messages.
    name: ClassVar[str]
    #: What every failure to start or to answer raises.
    error: ClassVar[type[RuntimeError]]
    #: How long :meth:`stop` waits for the child to exit, by default.
    stop_timeout: ClassVar[float] = 5.0
    #: How often :meth:`start` asks whether the child is ready.
    poll_interval: ClassVar[float] = 0.05
    #: Run the child in a process group of its own, and signal the whole group: for a
    #: server that starts workers of its own, which must go with it.
    process_group: ClassVar[bool] = False

    def __init__(self, *, host: str = LOOPBACK, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what a subclass supplies ----------------------------------------------------

    def _prepare(self) -> None:
        """Check, once per :meth:`start`, what every attempt needs (an executable, an install)."""

    @abc.abstractmethod
    def _command(self, port: int) -> list[str]:
        """The command line that serves on ``port``."""

    def _environment(self, port: int) -> dict[str, str]:
        """The child's environment: this process's, without the proxy settings."""
        env = dict(os.environ)
        for name in _PROXY_VARIABLES:
            env.pop(name, None)
        return env

    def _working_directory(self) -> Path | None:
        return None

    def _startup_failure(self) -> str | None:
        """Why the child, still alive, will never answer (None while there is hope)."""
        return None

    @abc.abstractmethod
    def _ready(self) -> bool:
        """Whether the child answers a real request (an open port alone is not enough)."""

    def _terminate(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """A polite SIGTERM first, SIGKILL if it does not go."""
        self._signal(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(process, signal.SIGKILL)
            process.wait(timeout=timeout)

    def _signal(self, process: subprocess.Popen[bytes], signum: int) -> None:
        """Send ``signum`` to the child, or to its whole group with :attr:`process_group`."""
        if not self.process_group:
            process.send_signal(signum)
            return
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass  # the group is empty: everything in it has already exited

    # -- the lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self.port is None:
            raise self.error(f"{self.name} is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server and return once it answers requests."""
        if self.running:
            return self
        self._prepare()
        # The port is picked before the child binds it, so another process may grab it in
        # between; a few attempts on other ports make that race harmless.
        attempts = 1 if self._requested_port is not None else 3
        last_error: RuntimeError | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(port)
                # Even a run that ends without reaching stop() (an interrupted benchmark)
                # leaves no server behind.
                atexit.register(self.stop)
                return self
            except self.error as error:
                last_error = error
                self._cleanup()
        assert last_error is not None
        raise last_error

    def _spawn(self, port: int) -> None:
        # A file (not a pipe) can never fill up and block the child, and still shows why it died.
        self._log = tempfile.TemporaryFile(prefix="local-server-")
        self.port = port
        self._process = subprocess.Popen(
            self._command(port),
            cwd=self._working_directory(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._environment(port),
            start_new_session=self.process_group,
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                raise self.error(
                    f"{self.name} exited with code {self._process.returncode} before answering:\n{self.output()}"
                )
            failure = self._startup_failure()
            if failure is not None:
                raise self.error(f"{failure}:\n{self.output()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise self.error(
                    f"{self.name} did not answer on {self.url} within {self.startup_timeout:.0f}s:\n{self.output()}"
                )
            time.sleep(self.poll_interval)

    def _request(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """One HTTP request to the server: its status and body; OSError when nothing answers."""
        assert self.port is not None, f"{self.name} is not started"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def output(self, last: int | None = 4000) -> str:
        """What the server wrote to stdout and stderr so far: the ``last`` characters (enough
        for an error message), or all of it with ``last=None`` (to look for a log line)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")
        self._log.seek(0, os.SEEK_END)
        return text if last is None else text[-last:]

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server, waiting at most ``timeout`` seconds (:attr:`stop_timeout` by default)."""
        atexit.unregister(self.stop)
        process = self._process
        if process is not None and process.poll() is None:
            self._terminate(process, self.stop_timeout if timeout is None else timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            self._signal(process, signal.SIGKILL)
            process.wait()
        if process is not None and self.process_group:
            # The leader may be gone while its workers live on: the group outlives it.
            self._signal(process, signal.SIGKILL)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._requested_port is None:
            self.port = None
