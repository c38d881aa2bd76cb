"""The README is the first thing a newcomer reads: what it points to exists, and it covers the CLI."""
from __future__ import annotations

import re
from pathlib import Path

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
