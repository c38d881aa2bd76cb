"""The admin dashboard in a real browser, against the embedded demo server.

Starts ``connection-manager serve --embedded --port 0`` as a user would, drives headless
Chromium with Playwright, and checks what a person sees: the counters agree with
``/stats``, live connections are listed, disconnecting a row takes it off the list (and
the API then says DISCONNECTED), and a dry run counts without changing anything before
the real cleanup. A screenshot is kept in ``test-artifacts/dashboard.png``.

Without ``/usr/bin/chromium`` the tests are skipped locally, but fail in CI (``CI=true``):
a CI run that silently skipped them would prove nothing.
"""
from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve_process import ServeProcess

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_TIMEOUT_S = 60
UI_TIMEOUT_MS = 15_000


def _require_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI; scripts/test installs it (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); browser tests skipped outside CI")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The embedded demo server, started the way the README starts it; stopped with Ctrl-C."""
    _require_chromium()
    env = {key: value for key, value in os.environ.items() if key != "ADMIN_TOKEN"}
    with ServeProcess(env=env) as server:
        url = server.start(timeout=STARTUP_TIMEOUT_S)
        yield url
        assert server.stop() == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any, server_url: str) -> Iterator[Any]:
    """A fresh page on the dashboard; any JavaScript error on it fails the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server_url)
    page.wait_for_selector('[data-testid="connection-row"]')
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def kpi(page: Any, name: str) -> int:
    text = page.get_by_test_id(f"kpi-{name}").inner_text()
    return int(re.sub(r"[^\d]", "", text))


def wait_for_kpi(page: Any, name: str, expected: int) -> None:
    page.wait_for_function(
        "([id, expected]) => (document.getElementById(id)?.textContent || '').replace(/\\D/g, '') === String(expected)",
        arg=[f"kpi-{name}", expected],
    )


def test_dashboard__counters_match_stats_and_rows_are_listed(page: Any, server_url: str) -> None:
    stats = get_json(server_url + "stats")
    assert (stats["activeConnections"], stats["staleConnections"]) == (75, 15)  # the seeded demo
    wait_for_kpi(page, "active", stats["activeConnections"])
    assert kpi(page, "users") == stats["distinctUsers"]
    assert kpi(page, "stale") == stats["staleConnections"]
    assert page.get_by_test_id("table-name").inner_text() == stats["table"]

    rows = page.locator('[data-testid="connection-row"]')
    shown = rows.first.get_attribute("data-connection-id")
    listed = get_json(server_url + "connections?limit=1000")["connections"]
    assert shown in {record["connectionId"] for record in listed}
    assert rows.first.get_attribute("data-status") == "CONNECTED"
    assert rows.first.locator(".col-user").inner_text().strip().startswith("user-")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_dashboard__disconnecting_a_row_takes_it_off_the_list(page: Any, server_url: str) -> None:
    before = get_json(server_url + "stats")["activeConnections"]
    row = page.locator('[data-testid="connection-row"][data-status="CONNECTED"]').first
    connection_id = row.get_attribute("data-connection-id")
    selector = f'[data-testid="connection-row"][data-connection-id="{connection_id}"]'

    row.get_by_test_id("disconnect-btn").click()
    # The row is marked DISCONNECTED at once, and gone from the live list after a refresh.
    page.wait_for_function(
        "sel => { const r = document.querySelector(sel); return !r || r.dataset.status === 'DISCONNECTED'; }",
        arg=selector,
    )
    page.get_by_test_id("refresh-btn").click()
    page.wait_for_selector(selector, state="detached")
    wait_for_kpi(page, "active", before - 1)

    record = get_json(server_url + f"connections/{connection_id}")["connection"]
    assert (record["status"], record["disconnectReason"]) == ("DISCONNECTED", "admin")
    assert get_json(server_url + "stats")["activeConnections"] == before - 1


def test_dashboard__dry_run_counts_then_cleanup_sweeps(page: Any, server_url: str) -> None:
    stale = get_json(server_url + "stats")["staleConnections"]
    assert stale > 0
    run = page.get_by_test_id("cleanup-run")
    assert run.is_disabled()  # the real sweep is offered only after a dry run

    page.get_by_test_id("cleanup-dry-run").click()
    result = page.get_by_test_id("cleanup-result")
    page.wait_for_function("el => /would be marked stale/.test(el.textContent)", arg=result.element_handle())
    assert re.search(rf"\b{stale}\b", result.inner_text()), result.inner_text()
    assert get_json(server_url + "stats")["staleConnections"] == stale  # nothing changed

    page.wait_for_function("el => !el.disabled", arg=run.element_handle())
    run.click()
    page.wait_for_function("el => /marked DISCONNECTED/.test(el.textContent)", arg=result.element_handle())
    assert re.search(rf"\b{stale}\b", result.inner_text()), result.inner_text()
    wait_for_kpi(page, "stale", 0)
    assert get_json(server_url + "stats")["staleConnections"] == 0
