"""Run serverless-offline, the usual local emulator of API Gateway, as a WebSocket API.

It serves ``tests/e2e/serverless.yml``: real WebSocket clients connect to it, and it runs
``connection_manager.handler.lambda_handler`` in a Python process of its own for
``$connect``, ``$disconnect`` and every message, as API Gateway runs the Lambda. On the
same port it implements the ``@connections`` API: POST and DELETE
``/@connections/{id}`` (DELETE closes the socket, 204; 410 for an id it does not hold),
while any GET answers 426. So ``AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI`` set to
:attr:`ServerlessOffline.url` makes our DeleteConnection close a real socket.

The two npm packages (``serverless@3`` and its ``serverless-offline@13`` plugin) are
installed once into ``.serverless-offline/`` at the repository root (git-ignored) by
:func:`ensure_installed`; ``python -m tests.support.serverless_offline install`` does the
same from a shell script, and ``SERVERLESS_OFFLINE_DIR`` points at an existing copy.

Nothing leaves the machine: serverless-offline listens on ``127.0.0.1`` only, the
framework's telemetry and notifications are switched off, its home (where it would keep
its settings and an id) is a scratch folder, and its AWS credentials are dummies. The
node process runs in a process group of its own, so stopping it also stops the Python
workers it started. Standard library only, and no pytest imports.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.support import npm_package
from tests.support.local_server import LOOPBACK, LocalServerProcess, free_port

#: Pinned, so that every run tests against the same emulator.
PACKAGES = {"serverless": "3.40.0", "serverless-offline": "13.10.1"}

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where :func:`ensure_installed` puts the packages (listed in ``.gitignore``).
INSTALL_DIR = REPO_ROOT / ".serverless-offline"
#: Points at an existing folder whose ``node_modules`` holds both packages instead.
DIR_ENV = "SERVERLESS_OFFLINE_DIR"
#: The service it serves: a test-only serverless.yml, never deployed.
SERVICE_DIR = REPO_ROOT / "tests" / "e2e"

#: The framework phones home unless told not to: usage telemetry, and a request for
#: "notifications" (upgrade notices) at every start.
OFFLINE_ENVIRONMENT = {
    "SLS_TELEMETRY_DISABLED": "1",
    "SLS_TRACKING_DISABLED": "1",
    "SLS_NOTIFICATIONS_MODE": "off",
    "SLS_DEPRECATION_DISABLE": "*",
}


class ServerlessOfflineError(RuntimeError):
    """serverless-offline could not be installed or started."""


# --- installation -------------------------------------------------------------------


def install_dir() -> Path:
    """The folder whose ``node_modules`` holds the packages (may not exist yet)."""
    override = os.environ.get(DIR_ENV)
    return Path(override) if override else INSTALL_DIR / "node"


def _installed_version(directory: Path, package: str) -> str | None:
    try:
        manifest = json.loads((directory / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("version")


def is_installed(directory: Path | None = None) -> bool:
    """Both packages present, at the pinned versions (a bump reinstalls)."""
    directory = directory or install_dir()
    return all(_installed_version(directory, name) == version for name, version in PACKAGES.items())


def ensure_installed() -> Path:
    """Install the packages when they are missing; return :func:`install_dir`.

    ``npm install`` runs in a scratch folder that
    :func:`tests.support.npm_package.ensure_installed` renames into place under a file
    lock. Install scripts are skipped: none of these packages needs one (the framework's
    only prints a banner).
    """
    return npm_package.ensure_installed(
        install_dir(),
        root=INSTALL_DIR,
        is_installed=is_installed,
        fetch=_fetch,
        error=ServerlessOfflineError,
        what="serverless-offline",
        override_env=DIR_ENV,
        expected=f"{PACKAGES} in node_modules/",
    )


def _fetch(npm: str, scratch: Path) -> Path:
    """``scratch`` itself, once its ``node_modules`` holds both packages."""
    (scratch / "package.json").write_text(json.dumps({"private": True}) + "\n")
    installed = npm_package.run_npm(
        npm,
        ["install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-update-notifier",
         "--loglevel=error", *(f"{name}@{version}" for name, version in PACKAGES.items())],
        scratch,
        env={**os.environ, **OFFLINE_ENVIRONMENT},
    )
    if installed.returncode != 0 or not is_installed(scratch):
        raise ServerlessOfflineError(f"npm install {PACKAGES} failed:\n{installed.stderr[-2000:]}")
    return scratch


def node_command() -> str:
    node = shutil.which("node")
    if node is None:
        raise ServerlessOfflineError("node is needed to run serverless-offline (Debian: apt-get install nodejs)")
    return node


# --- the server ---------------------------------------------------------------------


class ServerlessOffline(LocalServerProcess):
    """serverless-offline serving ``tests/e2e/serverless.yml`` on ``127.0.0.1``.

    :attr:`port` is the WebSocket port: ``ws_url`` for clients, :attr:`url` for the
    ``@connections`` API. ``function_environment`` reaches the Lambda through
    ``${env:...}`` in serverless.yml (the table and the DynamoDB endpoint; the gateway
    endpoint is :attr:`url` unless given).
    The Python it runs the handler with is this interpreter, with this checkout first
    on its path.
    """

    name = "serverless-offline"
    error = ServerlessOfflineError
    process_group = True
    stop_timeout = 10.0
    poll_interval = 0.1

    def __init__(
        self,
        function_environment: dict[str, str],
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        startup_timeout: float = 90.0,
        install: bool = True,
    ) -> None:
        # Node loads the framework and its plugins in a few seconds, more on a loaded
        # machine; readiness is polled, so the generous bound costs nothing.
        super().__init__(host=host, port=port, startup_timeout=startup_timeout)
        self.function_environment = dict(function_environment)
        self.install = install
        self._directory = install_dir()
        self._node = "node"
        self._home: tempfile.TemporaryDirectory[str] | None = None

    @property
    def ws_url(self) -> str:
        """Where WebSocket clients connect (the stage is not part of the path offline)."""
        return self.url.replace("http://", "ws://", 1)

    @property
    def process_group_id(self) -> int | None:
        """The group holding node and every worker it started (None when not running)."""
        return self._process.pid if self._process is not None else None

    def _prepare(self) -> None:
        self._directory = ensure_installed() if self.install else install_dir()
        if not is_installed(self._directory):
            raise ServerlessOfflineError(f"serverless-offline is not installed in {self._directory}")
        self._node = node_command()

    def _command(self, port: int) -> list[str]:
        framework = self._directory / "node_modules" / "serverless" / "bin" / "serverless.js"
        command = [
            self._node, str(framework), "offline",
            "--host", self.host,
            "--websocketPort", str(port),
            # Unused here (no HTTP events), but bound all the same: never the fixed defaults.
            "--httpPort", str(free_port(self.host)),
            "--lambdaPort", str(free_port(self.host)),
            "--noSponsor",
        ]
        setpriv = shutil.which("setpriv")
        if setpriv and sys.platform.startswith("linux"):
            # Node dies with the test run however it ends; its Python workers then read
            # end-of-file on their stdin and exit.
            command = [setpriv, "--pdeathsig", "KILL", *command]
        return command

    def _environment(self, port: int) -> dict[str, str]:
        env = super()._environment(port)
        if self._home is None:
            self._home = tempfile.TemporaryDirectory(prefix="serverless-home-")
        # serverless-offline hands every AWS_* variable of its own environment to the
        # handler: none of the shell's may point it at a real account or endpoint.
        for name in [name for name in env if name.startswith("AWS_")]:
            del env[name]
        env.pop("VIRTUAL_ENV", None)  # it would put another Python first on PATH
        python_bin = str(Path(sys.executable).parent)
        no_config = str(Path(self._home.name) / "no-aws-config")
        env.update(OFFLINE_ENVIRONMENT)
        env.update(
            {
                "HOME": self._home.name,
                # serverless-offline starts "python3" from PATH for a python3.* runtime.
                "PATH": os.pathsep.join([python_bin, env.get("PATH", "")]),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_CONFIG_FILE": no_config,
                "AWS_SHARED_CREDENTIALS_FILE": no_config,
                "AWS_EC2_METADATA_DISABLED": "true",
                "NO_PROXY": "127.0.0.1,localhost",
                # The @connections API is this very server, unless the test says otherwise.
                "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": f"http://{self.host}:{port}",
            }
        )
        env.update(self.function_environment)
        return env

    def _working_directory(self) -> Path:
        return SERVICE_DIR

    def _ready(self) -> bool:
        """True once the WebSocket port's HTTP side answers: any GET there is 426."""
        try:
            status, _ = self._request("GET", "/", timeout=2)
        except OSError:
            return False
        return status == 426

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        if self._home is not None:
            self._home.cleanup()
            self._home = None



def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.serverless_offline install``: what ``scripts/test`` runs."""
    return npm_package.install_main(
        argv, module="tests.support.serverless_offline", install=ensure_installed, error=ServerlessOfflineError
    )


if __name__ == "__main__":
    sys.exit(main())
