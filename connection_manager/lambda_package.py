"""Build the Lambda package with Zappa, and refuse a package that would not run.

Zappa zips "the current virtualenv", which it finds in ``VIRTUAL_ENV`` and, when that is
unset and pyenv is installed, in pyenv's active Python. It never looks at the interpreter
that runs it. So ``.venv/bin/zappa package`` without an activated virtualenv quietly zips
whatever Python pyenv points at: tens of megabytes of unrelated libraries and no pynamodb,
a function that fails on its first import.

Three safeguards, one check each:

- ``check_environment`` is Zappa's ``prebuild_script`` (``zappa_settings.json``). It runs
  before ``package``, ``deploy`` and ``update`` build anything and refuses when the
  environment Zappa is about to copy lacks the project's runtime dependencies.
- ``check_zip`` is Zappa's ``zip`` callback. It runs once the zip exists, before
  ``deploy`` / ``update`` upload it, and refuses (removing the zip) a package that misses
  what the function imports or carries test and dev tools.
- ``build`` backs ``connection-manager package``: it runs Zappa with ``VIRTUAL_ENV`` set
  to the environment of the interpreter running it, then checks the zip itself, so it
  works the same whether or not a virtualenv is activated.

Zappa loads the hooks by file name from the project directory, outside any package, so
this module uses the standard library only.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Top-level names the function cannot start without: our code, the libraries it imports
#: (setup.py's ``install_requires``) and what Zappa's own handler needs and writes.
REQUIRED = (
    "connection_manager",
    "models",
    "pynamodb",
    "msgspec",
    "aws_lambda_powertools",
    "flask",
    "tqdm",
    "zappa",
    "handler.py",
    "zappa_settings.py",
)

#: Top-level names that must never ship: the repository's own tooling, the test and dev
#: tools of the ``dev`` extra, installers, and the AWS SDK the Lambda runtime already has
#: (a bundled copy only adds megabytes and version skew).
DEV_ONLY = (
    "tests",
    "benchmarks",
    "scripts",
    "deploy",
    "docs",
    ".dynamodb-local",
    ".serverless-offline",
    "schemathesis.toml",
    "mkdocs.yml",
    "pytest",
    "_pytest",
    "pytest_timeout",
    "moto",
    "hypothesis",
    "schemathesis",
    "playwright",
    "websockets",
    "mkdocs",
    "material",
    "requests",
    "pip",
    "setuptools",
    "boto3",
    "botocore",
)

#: The distribution this project installs as (setup.py's ``name``).
PROJECT = "connection-manager"
#: Zappa's handler imports zappa at run time; the project lists it only in the ``dev`` extra.
ZAPPA = "zappa"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    return _normalize(match.group(0)) if match else requirement


def site_packages(environment: Path) -> Path:
    """Where Zappa copies libraries from in ``environment`` (the path Zappa itself builds)."""
    if sys.platform == "win32":
        return environment / "Lib" / "site-packages"
    return environment / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def runtime_requirements(project: importlib.metadata.Distribution) -> set[str]:
    """The distributions ``project`` needs at run time (its extras are for development)."""
    return {
        _requirement_name(requirement)
        for requirement in project.requires or []
        if not re.search(r"\bextra\s*==", requirement)
    }


def environment_problems(environment: Path | None) -> list[str]:
    """What keeps ``environment`` from giving a working package (empty when nothing does)."""
    if environment is None:
        return ["Zappa found no Python environment to package"]
    libraries = site_packages(environment)
    installed = {
        _normalize(dist.metadata["Name"]): dist
        for dist in importlib.metadata.distributions(path=[str(libraries)])
        if dist.metadata["Name"]
    }
    # The project's requirements as that environment has them, else as the interpreter running
    # Zappa has them (a foreign environment usually lacks the project itself).
    project = installed.get(PROJECT)
    if project is None:
        try:
            project = importlib.metadata.distribution(PROJECT)
        except importlib.metadata.PackageNotFoundError:
            return [f"{PROJECT} is not installed in {libraries}"]
    missing = sorted(name for name in runtime_requirements(project) | {ZAPPA} if name not in installed)
    return [f"{libraries} lacks {', '.join(missing)}"] if missing else []


def zip_problems(names: Iterable[str]) -> list[str]:
    """What is wrong with a package holding ``names`` (empty when it will run and is lean)."""
    top_level = {name.split("/", 1)[0] for name in names}
    problems = []
    missing = [name for name in REQUIRED if name not in top_level]
    if missing:
        problems.append(f"missing what the function imports: {', '.join(missing)}")
    shipped = [name for name in DEV_ONLY if name in top_level]
    if shipped:
        problems.append(f"holds what must not ship: {', '.join(shipped)}")
    return problems


def package_problems(package: Path) -> list[str]:
    """``zip_problems`` of the zip at ``package``."""
    try:
        with zipfile.ZipFile(package) as archive:
            return zip_problems(archive.namelist())
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"{package} is not a readable zip ({exc})"]


def _how_to_fix(environment: Path | None) -> str:
    if environment is not None and environment.resolve() == Path(sys.prefix).resolve():
        return f"Zappa packages the virtualenv it runs from, {sys.prefix}: install the project there (pip install -e '.[dev]')."
    if os.environ.get("VIRTUAL_ENV"):
        why = f"VIRTUAL_ENV points at {environment}, and Zappa packages that environment"
    elif environment is not None:
        why = f"VIRTUAL_ENV is not set, so Zappa fell back to pyenv's active Python, {environment}"
    else:
        why = "VIRTUAL_ENV is not set"
    return (
        f"{why}, not the interpreter it runs on ({sys.prefix}).\n"
        "Build from the project's virtualenv instead: `.venv/bin/connection-manager package STAGE`, "
        "or activate it first (`. .venv/bin/activate`) and run zappa again."
    )


def check_environment() -> None:
    """Zappa's ``prebuild_script``: stop before building from the wrong environment."""
    from zappa.core import Zappa  # only ever called inside Zappa

    environment = Zappa.get_current_venv()
    problems = environment_problems(environment)
    if problems:
        raise SystemExit(
            "Refusing to build the Lambda package: " + "; ".join(problems) + ".\n" + _how_to_fix(environment)
        )


def check_zip(zappa_cli: Any) -> None:
    """Zappa's ``zip`` callback: refuse the built zip before it is uploaded, and remove it.

    It also warns (on stderr, without refusing) when the stage still holds the shipped
    WebSocket API placeholder: such a function runs, but may not close a socket.
    """
    package = Path(zappa_cli.zip_path)
    problems = package_problems(package)
    if problems:
        package.unlink(missing_ok=True)
        raise SystemExit(
            f"Refusing the Lambda package {package} (removed): " + "; ".join(problems) + ".\n"
            "Check zappa_settings.json's `exclude` and the environment Zappa packaged "
            f"({zappa_cli.zappa.get_current_venv()})."
        )
    for warning in placeholder_warnings(getattr(zappa_cli, "stage_config", None) or {}, Path.cwd()):
        print(f"warning: {warning}", file=sys.stderr)


#: What ``zappa_settings.json`` and the policy files ship in place of the WebSocket API's id.
PLACEHOLDER = "REPLACE_WITH_WEBSOCKET_API_ID"


def placeholder_warnings(stage_config: dict[str, Any], project: Path) -> list[str]:
    """Where a stage still holds :data:`PLACEHOLDER` (empty once both are set).

    Not a refusal: a platform may deploy before its WebSocket API exists, and the function
    works without it (the gateway calls are refused, logged once, and counted). But a
    placeholder grants nothing, so it is said at every build rather than found in the logs.
    """
    places = []
    variables = stage_config.get("aws_environment_variables") or {}
    if PLACEHOLDER in str(variables.get("WEBSOCKET_API_ID", "")):
        places.append("aws_environment_variables.WEBSOCKET_API_ID")
    policy = stage_config.get("attach_policy")
    if policy:
        try:
            if PLACEHOLDER in (project / policy).read_text(encoding="utf-8"):
                places.append(str(policy))
        except OSError:
            pass  # Zappa itself reports a policy file it cannot read
    if not places:
        return []
    return [
        f"{' and '.join(places)} still hold {PLACEHOLDER}: the function will not be allowed to close "
        "sockets or ask API Gateway about them (execute-api:ManageConnections). Set your WebSocket "
        "API's id in both (README, \"The IAM policy\")."
    ]


def zappa_command() -> list[str]:
    """Zappa's console script in the running interpreter's environment."""
    script = Path(sysconfig.get_path("scripts")) / ("zappa.exe" if sys.platform == "win32" else "zappa")
    return [str(script)]


def build(stage: str, output: Path, project: Path) -> list[str]:
    """Run ``zappa package`` on this interpreter's environment; what is wrong (empty when the zip is good).

    ``VIRTUAL_ENV`` is set to ``sys.prefix``: the environment this command runs from is the
    one with the project and its dependencies installed, whatever the shell has activated.
    A zip with problems is removed, so it cannot be deployed by mistake.
    """
    command = zappa_command()
    if not Path(command[0]).exists():
        return [f"zappa is not installed in {sys.prefix} (pip install -e '.[dev]')"]
    if not (project / "zappa_settings.json").is_file():
        return [f"no zappa_settings.json in {project}: run this from the project directory"]
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix}
    result = subprocess.run([*command, "package", stage, "-o", str(output)], cwd=project, env=env)
    if result.returncode != 0:
        return [f"zappa package {stage} failed (exit {result.returncode})"]
    problems = package_problems(output)
    if problems:
        output.unlink(missing_ok=True)
    return problems
