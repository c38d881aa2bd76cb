"""A few seconds of concurrent load on the admin API: every request answered, none with an error.

The full run (32 clients, 20 s, requests/s and p99) is ``python benchmarks/load_admin.py``;
this quick variant keeps the same server, workload and error accounting.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration


def _load_admin() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "load_admin.py"
    spec = importlib.util.spec_from_file_location("load_admin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_admin_api__concurrent_clients__no_errors() -> None:
    load_admin = _load_admin()

    with load_admin.AdminServer() as server:
        results = load_admin.run_load(server.url, clients=8, duration=4.0)

    summary = results.summary()
    print(f"\nadmin API load: {summary}")
    assert results.errors == []
    assert set(summary["statuses"]) == {200}
    assert summary["requests"] >= 20
    # Reads and state changes were both exercised, concurrently.
    assert summary["by_endpoint"].get("list", 0) > 0 and summary["by_endpoint"].get("patch", 0) > 0
