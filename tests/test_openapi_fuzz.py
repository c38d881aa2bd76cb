"""The HTTP API against its own OpenAPI document, with every schemathesis check, in process.

Schemathesis reads ``/openapi.json`` from the app and runs what ``schemathesis run
--checks all`` runs: the coverage phase (boundary values, wrong types, undocumented
methods), the fuzzing phase and the stateful phase (following the document's links, so a
``nextToken`` comes from a previous page). Every check counts: status codes and content
types the document lists, valid data accepted, invalid data refused, ``Allow`` headers,
authentication as the document declares it. The run goes through the app's WSGI
interface, is seeded and derandomized (the same cases every time) and bounded. The app
is served as ``serve`` builds it on loopback without a token (no security); with
``ADMIN_TOKEN`` (every API route but ``/health`` needs it): the second is checked by the
document tests in ``test_openapi_agreement.py`` and by the CLI run (schemathesis 4.32's
in-process WSGI transport fails on configured credentials: ``EnvironBuilder`` gets
``max_redirects``).

The same run by hand, against ``connection-manager serve --embedded``, is
``schemathesis run http://127.0.0.1:8080/openapi.json --checks all`` from the repository
root (``schemathesis.toml`` loads the same hooks).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

import tests.support.schemathesis_hooks as hooks
from connection_manager.app import create_app
from connection_manager.server import _LOOPBACK_NAMES
from connection_manager.service import ConnectionService
from tests.support.fixtures import *  # noqa: F403

SEED = 20_240_101


def run_schemathesis(
    app: Any, *, max_examples: int, admin_token: str | None = None
) -> tuple[list[str], Counter[str]]:
    """Run every phase and check, as the CLI's ``--checks all`` does; returns (failures, cases per phase)."""
    hooks.ISSUED.clear()
    # No cache on disk: a run must not depend on what an earlier one learned.
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},
            # The token for the document's `adminToken` scheme: schemathesis sends it where the
            # document asks for it, and leaves it out or spoils it for the auth checks.
            **({"auth": {"openapi": {"adminToken": {"bearer": admin_token}}}} if admin_token else {}),
        }
    )
    project = config.projects.override
    project.checks.update(included_check_names=["all"])
    project.generation.update(max_examples=max_examples, deterministic=True, database="none")
    project.phases.update(phases=["examples", "coverage", "fuzzing", "stateful"])
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)

    failures: set[str] = set()
    cases: Counter[str] = Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            label = event.recorder.label
            cases[event.phase.value] += len(event.recorder.cases)
            for node in (node for nodes in event.recorder.checks.values() for node in nodes):
                if node.status == Status.FAILURE:
                    title = node.failure_info.failure.title if node.failure_info else ""
                    # The request, so a failure says what to reproduce, not only where.
                    request = node.failure_info.code_sample[:300] if node.failure_info else ""
                    failures.add(f"{event.phase.value}: {label}: {node.name}: {title}\n    {request}")
            if event.status == Status.ERROR:
                failures.add(f"{event.phase.value}: {label}: error")
        elif isinstance(event, events.NonFatalError):
            failures.add(f"error in {event.label}: {event.info.title}: {event.info.message[:300]}")
        elif isinstance(event, events.FatalError):
            failures.add(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            failures |= {repr(failure)[:300] for failure in event.failures}
    print(f"\nopenapi fuzz: {sum(cases.values())} cases {dict(cases)}, {len(failures)} distinct failures")
    return sorted(failures), cases


def describe(failures: list[str]) -> str:
    return "\n".join(failures[:40])


@pytest.fixture
def rows(make_connection: Any) -> None:
    """A few rows, so generated ids sometimes hit and the listings have pages to follow."""
    for index in range(4):
        make_connection(f"conn-{index}", user_id="user-1")
    make_connection("conn-gone", user_id="user-2", status="DISCONNECTED")


def test_openapi__loopback_without_token__every_check_passes(service: ConnectionService, rows: None) -> None:
    # Given the app as `serve` runs it on loopback, with no ADMIN_TOKEN: its document declares no security
    app = create_app(service=service, config={"ALLOWED_HOSTS": _LOOPBACK_NAMES})
    # When schemathesis runs every phase with every check against it
    failures, cases = run_schemathesis(app, max_examples=8)
    # Then nothing the server answers disagrees with the document
    assert failures == [], describe(failures)
    assert cases["coverage"] > 100 and cases["fuzzing"] > 20 and cases["stateful"] > 0, cases
