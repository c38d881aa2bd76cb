"""``connection-manager serve --embedded`` in a child process, started and stopped as a person would.

Its output is drained by a thread the whole time: a pipe nobody reads fills up, and a
child blocked writing to it hangs exactly where a test waits for it to stop.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
URL_LINE = re.compile(r"Connection Manager admin: (http://127\.0\.0\.1:(\d+)/)")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ServeProcess:
    """The embedded demo server on a free port; ``start()`` returns its URL, ``stop()`` its exit code.

    ``env`` replaces the environment (default: this process's). ``sigint_ignored=True`` starts it the way a shell starts a background job (``cmd &``):
    with SIGINT ignored, which the child inherits.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, sigint_ignored: bool = False) -> None:
        # The embedded DynamoDB must be the one it talks to, whatever the caller's environment says.
        source = os.environ if env is None else env
        self._command = [sys.executable, "-m", "connection_manager.cli", "serve", "--embedded", "--port", "0", *args]
        self._env = {key: value for key, value in source.items() if not key.startswith("AWS_ENDPOINT_URL")}
        self._preexec = _ignore_sigint if sigint_ignored else None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._output: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    @property
    def output(self) -> str:
        return "".join(self._output)

    def start(self, timeout: float = 60) -> str:
        self.process = subprocess.Popen(
            self._command,
            cwd=REPO,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=self._preexec,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"the server printed no URL in {timeout} s:\n{self.output}") from None
            if line is None:
                raise AssertionError(f"the server exited before printing its URL:\n{self.output}")
            match = URL_LINE.search(line)
            if match:
                assert match.group(2) != "0", "the server printed port 0 instead of the port it took"
                return match.group(1)

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, timeout: float = 30) -> int:
        """Ctrl-C, then wait; a server that does not stop is killed and the test fails with its output."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not stop on SIGINT within {timeout} s:\n{self.output}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()
