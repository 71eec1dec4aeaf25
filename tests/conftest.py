"""Fixtures shared by test files: one Chromium for the whole session (test_browser.py and
test_hub.py both drive it; a second sync Playwright in the same process fails with
"Sync API inside the asyncio loop")."""
import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, INSTALL_HINT


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; install it with: {INSTALL_HINT}")
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()
