"""Take the README's and the guide's picture of the dashboard: ``docs/dashboard.png``.

Starts ``connection-manager serve --embedded`` (the demo rows), runs a few real sweeps
through the API so the sweep chart has points (a tighter threshold each time, so each one
cleans some rows), and photographs the page in headless Chromium at 1280x900.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.serve_process import ServeProcess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}
#: Stale-after thresholds of the demo sweeps: the first ends the demo's stale rows, the
#: next ones the live rows idle for longer than 25 and 20 minutes.
SWEEPS = (3600, 1500, 1200)


def sweep(url: str, stale_after: int) -> dict:
    request = urllib.request.Request(
        url + "connections/cleanup",
        data=json.dumps({"staleAfterSeconds": stale_after}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    env = {key: value for key, value in os.environ.items() if key != "ADMIN_TOKEN"}
    with ServeProcess(env=env) as server:
        url = server.start(timeout=60)
        for stale_after in SWEEPS:
            # A sweep's history record is keyed by its second: start each in a new one.
            time.sleep(1.05 - time.time() % 1)
            print(f"sweep (stale after {stale_after} s): {sweep(url, stale_after)['cleanedCount']} cleaned")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            page.wait_for_selector('[data-testid="sweep-point"]')
            page.wait_for_selector('[data-testid="connection-row"]')
            page.evaluate("document.fonts.ready")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
        server.stop()
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
