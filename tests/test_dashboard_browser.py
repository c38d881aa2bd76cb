"""The admin dashboard in a real browser, against the embedded demo server.

Starts ``connection-manager serve --embedded --port 0`` as a user would, drives headless
Chromium with Playwright, and checks what a person sees: the counters agree with
``/stats``, live connections are listed, disconnecting a row takes it off the list (and
the API then says DISCONNECTED), and a dry run counts without changing anything before
the real cleanup. A screenshot is kept in ``test-artifacts/dashboard.png``.

The charts are checked against the API they draw (``/stats/history``, ``/stats``): one
mark per sweep, bin and user, carrying the value the API gave. Each filter of the list is
checked against ``GET /connections`` with the same filter, and the CSV export against the
whole filtered listing. Sweep history comes from cleanups run through the API first (the
demo seeds none); the empty state is shown with the API's answers replaced in the browser.

Without ``/usr/bin/chromium`` the tests are skipped locally, but fail in CI (``CI=true``):
a CI run that silently skipped them would prove nothing.
"""
from __future__ import annotations

import csv
import json
import os
import re
import time
import urllib.parse
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
    # A developer's machine without the browser (scripts/test installs it only as root) can still
    # run everything else; CI cannot skip, above.
    pytest.skip(
        f"the dashboard tests drive a real browser and {CHROMIUM} is not installed: run scripts/test "
        "as root, or apt-get install chromium (in CI, CI=true, a missing browser fails instead)"
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def send_json(url: str, body: dict[str, Any], method: str = "POST") -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method=method
    )
    with urllib.request.urlopen(request, timeout=30) as response:
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


# Charts ----------------------------------------------------------------------------------


def wait_for_marks(page: Any, testid: str, names: list[str], expected: list[list[str]]) -> None:
    """Wait until the marks with this test id carry exactly these data-* values, in drawing order."""
    page.wait_for_function(
        """([testid, names, expected]) => JSON.stringify(
             [...document.querySelectorAll(`[data-testid="${testid}"]`)].map(n => names.map(k => n.dataset[k]))
           ) === JSON.stringify(expected)""",
        arg=[testid, names, expected],
    )


def test_dashboard__charts_draw_the_sweeps_idle_times_and_top_users(page: Any, server_url: str) -> None:
    # Given a sweep in the history (the demo seeds none)
    send_json(server_url + "connections/cleanup", {})
    history = get_json(server_url + "stats/history?hours=48")["sweeps"]
    stats = get_json(server_url + "stats")
    assert history and stats["asOf"]

    # When the dashboard refreshes
    page.get_by_test_id("refresh-btn").click()

    # Then each chart draws, as a named image, exactly what the API answered
    wait_for_marks(page, "sweep-point", ["at", "active", "cleaned"], [
        [s["at"], "" if s["activeConnections"] is None else str(s["activeConnections"]), str(s["cleaned"])]
        for s in history
    ])
    wait_for_marks(page, "idle-bar", ["label", "from", "count"], [
        [b["label"], str(b["fromSeconds"]), str(b["count"])] for b in stats["idle"]
    ])
    wait_for_marks(page, "top-user-bar", ["userId", "count"], [
        [u["userId"], str(u["connections"])] for u in stats["topUsers"]
    ])
    for name in ("Active connections and connections cleaned per sweep", "Idle time of live connections",
                 "Users with the most live connections"):
        chart = page.get_by_role("img", name=re.compile(name))
        assert chart.locator("desc").text_content()  # the numbers, in words, for a screen reader
    assert page.get_by_test_id("sweeps-empty").count() == 0

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-charts.png"), full_page=False)


def test_dashboard__charts_say_so_when_there_is_nothing_to_draw(page: Any) -> None:
    # Given an API with no sweep yet and no snapshot (a fresh deployment)
    page.route(
        "**/stats/history?*",
        lambda route: route.fulfill(json={"sweeps": [], "count": 0}),
    )

    def stats_without_snapshot(route: Any) -> None:
        body = route.fetch().json()
        route.fulfill(json={**body, "asOf": None, "idle": [], "topUsers": []})

    page.route("**/stats", stats_without_snapshot)

    # When the dashboard loads
    page.reload()

    # Then each chart says what is missing instead of drawing empty axes
    assert "No sweeps yet" in page.get_by_test_id("sweeps-empty").inner_text()
    assert "No snapshot yet" in page.get_by_test_id("idle-empty").inner_text()
    assert "No snapshot yet" in page.get_by_test_id("top-users-empty").inner_text()
    for chart in ("chart-sweeps", "chart-idle", "chart-top-users"):
        assert page.get_by_test_id(chart).locator("svg").count() == 0


# Filters -----------------------------------------------------------------------------------


def listed_ids(server_url: str, path: str = "connections", **query: Any) -> set[str]:
    url = server_url + path + "?" + urllib.parse.urlencode({"limit": 50, **query})
    return {record["connectionId"] for record in get_json(url)["connections"]}


def shown_ids(page: Any) -> set[str]:
    return set(page.eval_on_selector_all('[data-testid="connection-row"]', "rows => rows.map(r => r.dataset.connectionId)"))


def wait_for_rows(page: Any, expected: set[str]) -> None:
    page.wait_for_function(
        "ids => { const shown = [...document.querySelectorAll('[data-testid=connection-row]')]"
        ".map(r => r.dataset.connectionId).sort(); return JSON.stringify(shown) === JSON.stringify(ids); }",
        arg=sorted(expected),
    )


def wait_for_listing(page: Any, server_url: str, **query: Any) -> None:
    """Wait until the page lists what the API lists for ``query``, compared at the same moment.

    The demo's rows age in real time, so an idle filter's answer grows while a test runs
    (a row crosses the threshold). It only grows: whatever the page shows must hold every
    row the API listed before and no row the API does not list now.
    """

    before = listed_ids(server_url, limit=1000, **query)
    deadline = time.monotonic() + 30
    while True:
        shown = shown_ids(page)
        now = listed_ids(server_url, limit=1000, **query)
        if before <= shown <= now:
            return
        assert time.monotonic() < deadline, f"the page shows {sorted(shown)}, the API lists {sorted(now)}"
        page.wait_for_timeout(200)


def fill_filters(page: Any, **fields: str) -> None:
    for testid, value in fields.items():
        control = page.get_by_test_id(testid.replace("_", "-"))
        if control.evaluate("n => n.tagName") == "SELECT":
            control.select_option(value)
        else:
            control.fill(value)
    page.get_by_test_id("filter-apply").click()


def a_listed_record(server_url: str) -> dict[str, Any]:
    return get_json(server_url + "connections?limit=1")["connections"][0]


FILTER_CASES = {
    "idle": lambda url: ({"idle_filter": "15", "idle_unit": "60"}, {"idleMoreThan": 900}),
    "source ip": lambda url: (
        {"ip_filter": a_listed_record(url)["metadata"]["sourceIp"]},
        {"sourceIp": a_listed_record(url)["metadata"]["sourceIp"]},
    ),
    "user agent": lambda url: ({"ua_filter": "okhttp"}, {"userAgent": "okhttp"}),
    "user": lambda url: (
        {"user_filter": get_json(url + "stats")["topUsers"][0]["userId"]},
        {"userId": get_json(url + "stats")["topUsers"][0]["userId"]},
    ),
    "user agent and idle": lambda url: (
        {"ua_filter": "Mozilla", "idle_filter": "10", "idle_unit": "60"}, {"userAgent": "Mozilla", "idleMoreThan": 600}
    ),
}


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_dashboard__each_filter_narrows_the_list_as_the_api_does(page: Any, server_url: str, case: str) -> None:
    # Given the filter's value, and what the API lists with it
    fields, query = FILTER_CASES[case](server_url)
    expected = listed_ids(server_url, **query)
    everything = listed_ids(server_url, limit=1000)
    assert expected and len(expected) < len(everything), "the case must narrow the list to be a test"

    # When it is applied in the filter form
    fill_filters(page, **fields)

    # Then the list holds exactly what the API lists, and the page's address keeps the filter
    wait_for_listing(page, server_url, **query)
    assert page.get_by_test_id("empty-state").count() == 0
    fragment = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).fragment))
    names = {"userId": "user", "idleMoreThan": "idle", "sourceIp": "ip", "userAgent": "ua"}
    assert fragment == {names[key]: str(value) for key, value in query.items()}


def test_dashboard__a_users_history_lists_their_disconnected_rows(page: Any, server_url: str) -> None:
    # Given a user one of whose connections was just disconnected
    record = a_listed_record(server_url)
    user, connection_id = record["userId"], record["connectionId"]
    send_json(server_url + "connections/" + urllib.parse.quote(connection_id, safe=""),
              {"status": "DISCONNECTED"}, method="PATCH")
    expected = listed_ids(server_url, f"users/{urllib.parse.quote(user, safe='')}/connections", status="DISCONNECTED")
    assert connection_id in expected

    # When the history of that user is asked for
    fill_filters(page, user_filter=user, status_filter="DISCONNECTED")

    # Then the list holds the user's DISCONNECTED rows, and the live-only filters are off
    wait_for_rows(page, expected)
    statuses = page.eval_on_selector_all('[data-testid="connection-row"]', "rows => rows.map(r => r.dataset.status)")
    assert set(statuses) == {"DISCONNECTED"}
    assert page.get_by_test_id("ip-filter").is_disabled()
    assert page.get_by_test_id("export-csv").get_attribute("aria-disabled") == "true"
    # And whether the user is online, as GET /users/{userId}/presence says, next to their rows
    presence = get_json(server_url + f"users/{urllib.parse.quote(user, safe='')}/presence")
    badge = page.get_by_test_id("user-presence")
    expected_text = "online" if presence["online"] else "offline"
    page.wait_for_function("want => document.querySelector('[data-testid=user-presence]').textContent.startsWith(want)",
                           arg=expected_text)
    if presence["online"]:
        assert f"{presence['connections']} connection" in badge.inner_text()


def test_dashboard__clicking_a_chart_filters_the_list(page: Any, server_url: str) -> None:
    # Given the charts of the latest snapshot
    top = get_json(server_url + "stats")["topUsers"][0]["userId"]
    page.wait_for_selector('[data-testid="top-user-bar"]')

    # When the heaviest user's bar is clicked, then the list is that user's live connections
    page.locator(f'[data-testid="top-user-bar"][data-user-id="{top}"]').click()
    wait_for_rows(page, listed_ids(server_url, userId=top))
    assert page.get_by_test_id("user-filter").input_value() == top

    # When an idle bin is clicked, then the list is what has been idle at least that long
    page.locator('[data-testid="idle-bar"][data-from="300"]').click()
    wait_for_listing(page, server_url, idleMoreThan=300)
    assert (page.get_by_test_id("idle-filter").input_value(), page.get_by_test_id("idle-unit").input_value()) == ("5", "60")
    assert page.get_by_test_id("user-filter").input_value() == ""


def test_dashboard__export_carries_the_filters(page: Any, server_url: str, tmp_path: Path) -> None:
    # Given filters applied in the form
    fill_filters(page, ua_filter="Mozilla", idle_filter="5", idle_unit="60")
    wait_for_listing(page, server_url, userAgent="Mozilla", idleMoreThan=300)
    expected = listed_ids(server_url, userAgent="Mozilla", idleMoreThan=300, limit=1000)

    # Then the export link names them
    link = page.get_by_test_id("export-csv")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link.get_attribute("href")).query))
    assert query == {"userAgent": "Mozilla", "idleMoreThan": "300"}

    # When it is clicked, the file is the whole filtered listing as CSV
    with page.expect_download() as download:
        link.click()
    target = tmp_path / "connections.csv"
    download.value.save_as(target)
    rows = list(csv.DictReader(target.open(newline="")))
    # Rows age in real time: the export holds what was idle enough before it, and nothing the API would not list now.
    assert expected <= {row["connectionId"] for row in rows} <= listed_ids(
        server_url, userAgent="Mozilla", idleMoreThan=300, limit=1000
    )
    assert all("Mozilla" in row["userAgent"] and row["status"] == "CONNECTED" for row in rows)


def test_dashboard__the_admin_token_goes_with_every_request(page: Any, server_url: str) -> None:
    # Given a token typed into the header's box
    sent: list[tuple[str, str | None]] = []

    def record(route: Any) -> None:
        if "/static/" not in route.request.url and route.request.resource_type in ("fetch", "xhr"):
            sent.append((route.request.url, route.request.headers.get("authorization")))
        route.continue_()

    page.route("**/*", record)
    page.get_by_test_id("admin-token").fill("s3cret")

    # When the page reads stats, history and a filtered list, and exports
    page.get_by_test_id("refresh-btn").click()
    fill_filters(page, ua_filter="curl")
    wait_for_rows(page, listed_ids(server_url, userAgent="curl"))
    with page.expect_download():
        page.get_by_test_id("export-csv").click()

    # Then every one of those requests carried it
    paths = {urllib.parse.urlsplit(url).path for url, _ in sent}
    assert {"/stats", "/stats/history", "/connections"} <= paths
    assert {auth for _, auth in sent} == {"Bearer s3cret"}
