"""The Lambda package is built from the project's virtualenv, or not at all.

Zappa packages ``$VIRTUAL_ENV``, else pyenv's active Python: never the interpreter that
runs it. A newcomer who runs ``.venv/bin/zappa package`` without activating the
virtualenv used to get a zip of unrelated libraries without pynamodb. These tests run
Zappa the way they would, with a stand-in ``pyenv`` whose active Python is an empty
environment (so the result does not depend on what this machine has installed), and
check that the settings' hooks refuse, and that ``connection-manager package`` builds a
good zip either way.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from connection_manager import cli, lambda_package
from tests.test_zappa_package import BIN, ROOT, STAGE, offline_env

#: What the function cannot start without, and what must never ship (the issue's own list).
MUST_SHIP = ("pynamodb", "connection_manager", "models", "handler.py")
MUST_NOT_SHIP = ("pytest", "_pytest", "moto", "hypothesis", "schemathesis", "playwright", "boto3", "botocore",
                 "tests", "benchmarks", "scripts", "deploy")


def _empty_python(root: Path) -> Path:
    """A Python environment with nothing installed, laid out as pyenv and venv lay them out."""
    (lambda_package.site_packages(root)).mkdir(parents=True)
    return root


@pytest.fixture
def newcomer_env(tmp_path: Path) -> dict[str, str]:
    """A shell without an activated virtualenv, where pyenv's active Python is not the project's."""
    pyenv_root = tmp_path / "pyenv"
    _empty_python(pyenv_root / "versions" / "3.11.0")
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    pyenv = stub / "pyenv"
    pyenv.write_text(
        "#!/bin/sh\n"
        f'case "$1" in root) echo "{pyenv_root}" ;; version-name) echo 3.11.0 ;; esac\n',
        encoding="utf-8",
    )
    pyenv.chmod(0o755)
    env = offline_env()
    env.pop("VIRTUAL_ENV")
    env["PATH"] = f"{stub}{os.pathsep}{env.get('PATH', '')}"
    return env


def _top_level(package: Path) -> set[str]:
    with zipfile.ZipFile(package) as archive:
        return {name.split("/", 1)[0] for name in archive.namelist()}


# --- plain zappa, as a newcomer runs it ------------------------------------------------------


@pytest.mark.zappa
@pytest.mark.parametrize("how", ["pyenv_fallback", "another_virtualenv_active"])
def test_zappa_package__outside_the_project_virtualenv__refused_before_building(
    how: str, newcomer_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a shell where Zappa would package an environment without our dependencies
    if how == "another_virtualenv_active":
        newcomer_env["VIRTUAL_ENV"] = str(_empty_python(tmp_path / "other-project-venv"))
    out = tmp_path / "out.zip"

    # When the project's Zappa is run directly, without activating the project's virtualenv
    result = subprocess.run(
        [str(BIN / "zappa"), "package", STAGE, "-o", str(out)],
        cwd=ROOT, env=newcomer_env, capture_output=True, text=True, timeout=120,
    )

    # Then it refuses loudly, naming what is missing and how to build instead
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Refusing to build the Lambda package" in result.stderr
    assert "pynamodb" in result.stderr
    assert "connection-manager package" in result.stderr
    # And no zip is left behind to be uploaded
    assert not out.exists()


@pytest.mark.zappa
def test_zappa_package__exclude_drops_a_runtime_dependency__zip_refused_and_removed(tmp_path: Path) -> None:
    # Given settings whose `exclude` would drop pynamodb from the package
    settings = json.loads((ROOT / "zappa_settings.json").read_text(encoding="utf-8"))
    settings["dev"]["exclude"].append("pynamodb")
    settings_file = tmp_path / "zappa_settings.json"
    settings_file.write_text(json.dumps(settings), encoding="utf-8")
    out = tmp_path / "out.zip"

    # When Zappa builds it from the right virtualenv
    result = subprocess.run(
        [str(BIN / "zappa"), "package", STAGE, "-s", str(settings_file), "-o", str(out)],
        cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=120,
    )

    # Then the zip callback refuses the zip and removes it
    assert result.returncode != 0, result.stdout + result.stderr
    assert "missing what the function imports: pynamodb" in result.stderr
    assert not out.exists()


# --- our command -------------------------------------------------------------------------------


@pytest.mark.zappa
def test_package_command__outside_the_virtualenv__builds_a_zip_with_the_runtime_and_no_dev_tools(
    newcomer_env: dict[str, str], tmp_path: Path
) -> None:
    # Given the same shell, where a plain `zappa package` is refused
    out = tmp_path / "build.zip"

    # When the project's own command builds the package
    result = subprocess.run(
        [sys.executable, "-m", "connection_manager.cli", "package", STAGE, "-o", str(out)],
        cwd=ROOT, env=newcomer_env, capture_output=True, text=True, timeout=120,
    )

    # Then it succeeds and says it checked the zip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checked {out}" in result.stdout
    # And the zip holds what the function imports, and none of the dev tools
    shipped = _top_level(out)
    assert set(MUST_SHIP) <= shipped, sorted(set(MUST_SHIP) - shipped)
    assert not shipped & set(MUST_NOT_SHIP), sorted(shipped & set(MUST_NOT_SHIP))
    assert out.stat().st_size < 10 * 1024 * 1024


def test_package_command__outside_the_project_directory__refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a directory without zappa_settings.json
    monkeypatch.chdir(tmp_path)

    # When the command is run there
    code = cli.main(["package", "dev"])

    # Then it refuses with a message that says where to run it, and writes nothing
    assert code == 1
    assert "no zappa_settings.json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- the checks themselves (no Zappa run) -----------------------------------------------------


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "")
    return path


GOOD = [f"{name}/__init__.py" for name in lambda_package.REQUIRED if not name.endswith(".py")] + [
    "handler.py", "zappa_settings.py", "package_info.json", "werkzeug/__init__.py",
]


def test_zip_problems__a_good_package__none() -> None:
    assert lambda_package.zip_problems(GOOD) == []


def test_zip_problems__missing_pynamodb_and_shipping_pytest__both_named() -> None:
    # Given a package without pynamodb but with pytest and the tests folder
    names = [n for n in GOOD if not n.startswith("pynamodb/")] + ["pytest/__init__.py", "tests/test_x.py"]

    # When it is checked
    problems = lambda_package.zip_problems(names)

    # Then each fault is named
    assert problems == ["missing what the function imports: pynamodb", "holds what must not ship: tests, pytest"]


def test_check_zip__bad_package__exits_and_removes_the_zip(tmp_path: Path) -> None:
    # Given the zip Zappa just built, without our models
    package = _zip(tmp_path / "p.zip", [n for n in GOOD if not n.startswith("models/")])
    zappa_cli = SimpleNamespace(zip_path=str(package), zappa=SimpleNamespace(get_current_venv=lambda: tmp_path))

    # When the zip callback runs, Zappa stops with our message, and the zip is gone
    with pytest.raises(SystemExit, match="missing what the function imports: models"):
        lambda_package.check_zip(zappa_cli)
    assert not package.exists()


def test_check_zip__good_package__kept(tmp_path: Path) -> None:
    package = _zip(tmp_path / "p.zip", GOOD)
    lambda_package.check_zip(SimpleNamespace(zip_path=str(package)))
    assert package.exists()


def test_check_zip__placeholder_api_id__warns_and_keeps_the_zip(tmp_path: Path, monkeypatch, capsys) -> None:
    # Given a stage as shipped: the WebSocket API id is still the placeholder in its settings and policy
    monkeypatch.chdir(ROOT)
    stage_config = json.loads((ROOT / "zappa_settings.json").read_text())["dev"]
    package = _zip(tmp_path / "p.zip", GOOD)

    # When the zip callback runs
    lambda_package.check_zip(SimpleNamespace(zip_path=str(package), stage_config=stage_config))

    # Then the package is kept, and one warning names both places and the permission they deny
    assert package.exists()
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: aws_environment_variables.WEBSOCKET_API_ID and deploy/iam-policy-dev.json")
    assert "execute-api:ManageConnections" in warning


def test_placeholder_warnings__api_id_set_in_both__none(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text('{"Resource": "arn:aws:execute-api:*:*:abc123/dev/DELETE/@connections/*"}')
    stage_config = {"aws_environment_variables": {"WEBSOCKET_API_ID": "abc123"}, "attach_policy": "policy.json"}
    assert lambda_package.placeholder_warnings(stage_config, tmp_path) == []


def test_environment_problems__this_virtualenv__none() -> None:
    assert lambda_package.environment_problems(Path(sys.prefix)) == []


def test_environment_problems__an_empty_environment__names_every_runtime_dependency(tmp_path: Path) -> None:
    problems = lambda_package.environment_problems(_empty_python(tmp_path / "env"))
    assert len(problems) == 1
    for name in ("pynamodb", "msgspec", "flask", "aws-lambda-powertools", "zappa"):
        assert name in problems[0]


@functools.cache
def _owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _import_names(distribution: str) -> set[str]:
    """Top-level modules of an installed distribution (names compared as pip normalizes them)."""
    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    return {top for top, owners in _owners().items() if normal(distribution) in map(normal, owners)}


def test_required__covers_every_runtime_requirement_of_setup_py() -> None:
    # Given the runtime requirements as installed from setup.py
    runtime = lambda_package.runtime_requirements(importlib.metadata.distribution("connection-manager"))
    # Then each one is among the names the zip check requires
    for requirement in runtime:
        assert _import_names(requirement) & set(lambda_package.REQUIRED), requirement


def test_dev_only__covers_every_dev_tool_of_setup_py() -> None:
    # Given the `dev` extra (Zappa aside: its handler ships)
    requires = importlib.metadata.distribution("connection-manager").requires or []
    dev = {re.split(r"[\[<>=!~;]", r)[0].strip() for r in requires if "extra ==" in r}
    # Then each tool's modules are refused in the zip
    for tool in dev - {"zappa"}:
        assert _import_names(tool) & set(lambda_package.DEV_ONLY), tool


@pytest.mark.parametrize("stage", ["dev", "production"])
def test_settings__every_stage_runs_both_hooks(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from zappa.cli import ZappaCLI

    monkeypatch.chdir(ROOT)
    zappa_cli = ZappaCLI()
    zappa_cli.api_stage = stage
    zappa_cli.load_credentials = False
    zappa_cli.load_settings("zappa_settings.json")
    assert zappa_cli.prebuild_script == "connection_manager.lambda_package.check_environment"
    assert zappa_cli.stage_config["callbacks"]["zip"] == "connection_manager.lambda_package.check_zip"
