"""Run the real ``moto_server`` command on a free loopback port.

The in-process ``mock_aws`` decorator patches botocore; that cannot exercise what happens
on the wire (retries, timeouts, dropped answers, latency). For those tests we start
moto's HTTP server as a subprocess and talk to it like to a real DynamoDB endpoint.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tests.support.local_server import LOOPBACK, LocalServerProcess, free_port

# LOOPBACK and free_port lived here first; other modules still import them from here.
__all__ = ["LOOPBACK", "MotoServer", "MotoServerError", "free_port", "moto_server_command"]


def moto_server_command() -> Path:
    """The ``moto_server`` script of the virtualenv running these tests.

    Taking it from next to ``sys.executable`` guarantees the server runs the same moto
    version as the tests, whatever is on ``PATH``.
    """
    return Path(sys.executable).parent / "moto_server"


class MotoServerError(RuntimeError):
    """The moto server could not be started or answered unexpectedly."""


class MotoServer(LocalServerProcess):
    """A ``moto_server`` subprocess bound to ``127.0.0.1`` on a free port.

    Use as a context manager, or call :meth:`start` and :meth:`stop` yourself.
    """

    name = "moto_server"
    error = MotoServerError

    def _prepare(self) -> None:
        if not moto_server_command().exists():
            raise MotoServerError(f"moto_server not found next to {sys.executable}; install moto[server]")

    def _command(self, port: int) -> list[str]:
        return [str(moto_server_command()), "-H", self.host, "-p", str(port)]

    def _environment(self, port: int) -> dict[str, str]:
        env = super()._environment(port)
        env["MOTO_PORT"] = str(port)
        # Keep the server's own view of AWS dummy and local, whatever the developer's shell holds.
        env.pop("AWS_PROFILE", None)
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        return env

    def _ready(self) -> bool:
        try:
            self._request("GET", "/moto-api/", timeout=1)
            return True  # any HTTP answer means the server is up
        except OSError:
            return False

    def reset(self) -> None:
        """Wipe all state (tables, items) so the next test starts from nothing."""
        status, body = self._request("POST", "/moto-api/reset", body=b"")
        if status != 200:
            raise MotoServerError(f"moto reset answered {status}: {body[:500]!r}")
