"""Code that cannot run, and helpers nothing uses, are read as if they mattered: keep neither.

These checks read the source (no imports, no DynamoDB), so they take milliseconds.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("connection_manager", "models")
_TERMINAL = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def _sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def _unreachable(tree: ast.AST) -> list[int]:
    """Line numbers of statements that follow a return/raise/continue/break in the same block."""
    lines = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for before, after in zip(block, block[1:]):
                if isinstance(before, _TERMINAL):
                    lines.append(after.lineno)
    return lines


@pytest.mark.parametrize("path", _sources(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_source__any_module__has_no_unreachable_statements(path: Path) -> None:
    # Given a module of the package
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # When its blocks are read
    unreachable = _unreachable(tree)
    # Then nothing follows a statement that leaves the block
    assert unreachable == [], f"{path.name}: unreachable code at lines {unreachable}"


def test_test_support__every_helper_module__is_used() -> None:
    # Given the helper modules of the test suite
    helpers = {path.stem for path in (ROOT / "tests" / "support").glob("*.py") if path.stem != "__init__"}
    # When every test, conftest, benchmark and helper is searched for imports of them
    used: set[str] = set()
    for path in _sources("tests", "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                used.update(parts)
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                used.update(part for alias in node.names for part in alias.name.split("."))
    # Then each one is imported somewhere (a helper nobody imports is a second, untested copy)
    assert helpers - used == set()
