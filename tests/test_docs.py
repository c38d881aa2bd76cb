"""The README is the first thing a newcomer reads: what it points to exists, it covers the CLI,
its module table says what each module's docstring says, and the guide in docs/ builds."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connection_manager.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme__every_relative_link__points_to_a_file_in_the_repository() -> None:
    # Given the README's markdown links to repository files
    targets = [t for t in re.findall(r"\]\(([^)#]+)\)", README) if "://" not in t]

    # Then there is at least the contract, and every one exists
    assert "docs/CONTRACT.md" in targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


def test_readme__names_the_contract_only_by_its_path_in_the_repository() -> None:
    # A bare `CONTRACT.md` sent readers looking for a file the repository did not have.
    assert re.findall(r"(?<![/\w])`CONTRACT\.md`", README) == []


def test_contract__is_the_projects_own_document() -> None:
    # Given the contract in the repository's docs
    contract = (ROOT / "docs" / "CONTRACT.md").read_text(encoding="utf-8")

    # Then it covers every front door and the record
    for heading in ("## Raw Lambda events", "## The admin HTTP API (Flask)", "## The CLI", "## The connection record"):
        assert heading in contract


def test_readme__documents_every_cli_command() -> None:
    # Given the console script's commands
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]

    # Then the README shows each of them
    missing = [name for name in commands if f"connection-manager {name}" not in README]
    assert missing == []


# The module table: one row per module, its text the module docstring's summary.
#
# The rule: every `.py` file of `connection_manager/` and `models/` but `__init__.py` has exactly
# one README row `| \`<path>\` | <summary> |`, and <summary> is its docstring's first paragraph
# on one line, with reST's double backticks written as Markdown's single ones. A new module, a
# removed one or a reworded docstring fails until the table says the same; no row names a
# module that does not exist.
_PACKAGES = ("connection_manager", "models")
_ROW = re.compile(r"^\| `((?:connection_manager|models)/\w+\.py)` \| (.*) \|$", re.M)


def _summary(path: Path) -> str:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(docstring.split("\n\n")[0].split()).replace("``", "`")


def test_readme__module_table__one_row_per_module_with_its_docstring_summary() -> None:
    # Given every module of the packages and the README's module table
    modules = {
        path.relative_to(ROOT).as_posix(): _summary(path)
        for package in _PACKAGES
        for path in sorted((ROOT / package).glob("*.py"))
        if path.name != "__init__.py"
    }
    rows = _ROW.findall(README)

    # Then each module has exactly one row, and the row says what its docstring says
    assert sorted(path for path, _ in rows) == sorted(set(path for path, _ in rows))
    assert dict(rows) == modules


def test_module_summaries__every_module_has_a_docstring() -> None:
    # A module without a docstring would give an empty row that says nothing.
    empty = [p.name for package in _PACKAGES for p in (ROOT / package).glob("*.py") if not _summary(p)]
    assert empty == []


# The guide: MkDocs builds it offline, and strict mode turns every warning into a failure.


def _build_guide(site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def built_guide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide built once with `mkdocs build --strict` into a scratch directory, never into the repo."""
    site = tmp_path_factory.mktemp("site")
    result = _build_guide(site)
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def test_guide__builds_strict__a_page_for_every_markdown_file(built_guide: Path) -> None:
    # Given the guide's sources
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))

    # Then each became a page (strict mode fails on a page left out of the nav)
    assert [p for p in pages if not (built_guide / p / "index.html").exists() and p != "index"] == []
    assert (built_guide / "index.html").exists()


def test_guide__broken_link__fails_the_build(tmp_path: Path) -> None:
    # Given a copy of the guide with a link to a page and an anchor that do not exist
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "index.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](nowhere.md), [moved](operating.md#no-such)\n")

    # When it is built the way the suite builds it
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=90)

    # Then strict mode refuses it, naming both
    assert result.returncode != 0
    assert "nowhere.md" in result.stderr and "no-such" in result.stderr


def test_guide__pages_load_nothing_from_another_host(built_guide: Path) -> None:
    # Material's default fonts come from a font service; the guide turns them off, so a page
    # (like the dashboard) loads only its own files.
    loads = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"")
    remote = {url for page in built_guide.rglob("*.html") for url in loads.findall(page.read_text(encoding="utf-8"))}
    assert remote == set()
