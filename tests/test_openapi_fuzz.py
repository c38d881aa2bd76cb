"""Property-based fuzzing of the HTTP API, driven by its own OpenAPI document.

Schemathesis reads ``/openapi.json`` from the app and generates requests for every
documented operation: valid ones, invalid ones, and the undocumented methods on each path.
Whatever it sends, the app must not answer with a server error, and every error must be
the project's JSON error body (never an HTML page). The number of examples is bounded so
the whole run stays within seconds; the count of generated cases is printed at the end.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from connection_manager.api import EXTENSION, ServiceHolder
from connection_manager.app import create_app
from tests.support.fixtures import *  # noqa: F403

#: Examples per operation and phase; about 200-250 cases (most from the coverage phase) over the whole document.
MAX_EXAMPLES = 5

CASES: Counter[str] = Counter()


def _no_service() -> Any:
    raise RuntimeError("the fuzzed app's service is set by the `served` fixture")


# Loaded at import so pytest can parametrize over the operations; serving the document
# needs no service, and each operation's test then gets a fresh table (see `served`).
APP = create_app(service_factory=_no_service)
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def report_case_count(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    total = sum(CASES.values())
    line = f"openapi fuzz: {total} generated cases over {len(CASES)} method/path pairs"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\n{line}")
    else:  # pragma: no cover - only with capturing switched off entirely
        print(line)
    assert total >= len(CASES) > 0, "the fuzzer generated no cases"


@pytest.fixture
def served(service: Any, make_connection: Any) -> None:
    """A table with a few rows, so generated ids sometimes hit and sometimes miss."""
    make_connection("conn-1", user_id="user-1")
    make_connection("conn-2", user_id="user-1")
    make_connection("conn-3", user_id="user-2", status="DISCONNECTED")
    APP.extensions[EXTENSION] = ServiceHolder(service, lambda: service)


def errors_are_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is ``{"error": ..., "message": ...}`` as JSON."""
    if response.status_code < 400:
        return None
    headers = {name.lower(): value for name, value in response.headers.items()}
    content_type = headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"error answered as {content_type!r}"
    body = json.loads(response.content)
    assert set(body) >= {"error", "message"}, body
    assert "Traceback" not in body["message"]
    return None


def test_schema__is_valid_openapi() -> None:
    schema.validate()
    assert schema.raw_schema["openapi"] == "3.1.0"


@schema.parametrize()
@hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api__no_server_error(case: Any, served: None) -> None:
    CASES[f"{case.method} {case.path}"] += 1
    case.call_and_validate(checks=[not_a_server_error, errors_are_json])
