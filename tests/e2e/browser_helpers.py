"""What the browser tests share: Debian's Chromium (Playwright cannot download its own browsers here, so it
launches `/usr/bin/chromium`, which `scripts/install-system-deps.sh` installs; `make test` runs it first),
its flags and time limit, and a text expectation. The `browser` fixture is in conftest.py."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 20_000


def require_chromium() -> None:
    """Install Debian's chromium if it is missing; still missing, skip (fail under CI, where it must be there)."""
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "install-system-deps.sh")], timeout=900, check=False)
    if not CHROMIUM.exists():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"no browser: {CHROMIUM} is absent and scripts/install-system-deps.sh could not install "
            "Debian's chromium (it needs apt-get and root or passwordless sudo)")


def expect_text(pg, selector: str, text: str):
    from playwright.sync_api import expect

    expect(pg.locator(selector)).to_contain_text(text, timeout=TIMEOUT_MS)
