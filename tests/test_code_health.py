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


#: One room per job: past these sizes a module, class or function holds more than one.
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 400, 300, 60
#: Known to be over, each with its reason; the list only shrinks.
OVERSIZE = {
    "connection_manager/api.py": "the route table is one declaration",
    "connection_manager/schemas.py": "one msgspec Struct per request and response shape",
    "connection_manager/config.py::Settings.from_env": "one line per setting",
    "connection_manager/cli.py::build_parser": "one parser per command",
    "connection_manager/fanout.py::merged": "",
    "connection_manager/reads.py::Reads.get_all_connections": "",
}


def _sizes(path: Path, root: Path = ROOT) -> list[tuple[str, int, int]]:
    """(name, lines, limit) of the module and of every class and function in it."""
    relative = str(path.relative_to(root))
    tree = ast.parse(path.read_text(encoding="utf-8"))
    sizes = [(relative, len(path.read_text(encoding="utf-8").splitlines()), MAX_MODULE_LINES)]

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                limit = MAX_CLASS_LINES if isinstance(child, ast.ClassDef) else MAX_FUNCTION_LINES
                sizes.append((f"{relative}::{name}", child.end_lineno - child.lineno + 1, limit))
                visit(child, f"{name}.")

    visit(tree, "")
    return sizes


def test_source__modules_classes_functions__within_their_size() -> None:
    # Given every module of the package
    paths = sorted(path for path in (ROOT / "connection_manager").glob("*.py"))

    # Then none is over its size but the known ones
    over = [f"{name} ({lines} > {limit})" for path in paths for name, lines, limit in _sizes(path)
            if lines > limit and name not in OVERSIZE]
    assert over == []


def test_source__size_limit__catches_an_oversized_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    probe = tmp_path / "probe.py"
    probe.write_text(f"class C:\n    def f(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n", encoding="utf-8")

    over = [name for name, lines, limit in _sizes(probe, tmp_path) if lines > limit]

    assert over == ["probe.py::C.f"]
