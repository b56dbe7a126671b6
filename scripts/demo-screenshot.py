"""Take the demo page's screenshots for the docs: docs/demo.png (the page as it
opens: the survey example) and docs/demo-optimiser.png (Rosenbrock with a
Newton-CG run streamed onto the contours).

    .venv/bin/python scripts/demo-screenshot.py

Starts its own server on a free port and drives Debian's /usr/bin/chromium with
Playwright, as tests/e2e/test_demo_browser.py does.
"""

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from server_process import running_server  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    with tempfile.TemporaryDirectory() as home, \
            running_server(Path(home) / "server.log", env={"ADSERVE_CACHE_DIR": home}) as server, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        # a viewport as tall as the page, rather than full_page, so every panel is drawn as on screen
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
        page.goto(server.url + "/")
        page.wait_for_selector("#trace-adjoint")
        page.set_viewport_size({"width": 1440, "height": page.evaluate("document.body.scrollHeight")})
        page.wait_for_timeout(800)
        page.screenshot(path=ROOT / "docs" / "demo.png")

        page.set_viewport_size({"width": 1440, "height": 1000})
        page.select_option("#example", "rosenbrock")
        page.wait_for_function("document.getElementById('plot').data?.[0]?.type === 'contour'")
        page.select_option("#method", "newton-cg")
        page.click("#run-opt")
        page.wait_for_selector("#opt-status[data-state=done]")
        page.wait_for_timeout(500)
        page.locator("#plot-panel").screenshot(path=ROOT / "docs" / "demo-optimiser.png")
        browser.close()


if __name__ == "__main__":
    main()
