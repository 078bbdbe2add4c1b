"""Fixtures of the end-to-end tests: a headless Chromium page (Debian's, driven by Playwright)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.support.jupyterlab_helpers import VIEWPORT, launch_chromium


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser.new_context(viewport=VIEWPORT).new_page()
        finally:
            browser.close()
