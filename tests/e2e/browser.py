"""A real browser for the page's tests and screenshot: Debian's ``chromium`` driven by Playwright.

Playwright's Python package talks to the browser; it never downloads one here (no ``playwright
install``): Chromium is the system package, found at its Debian paths or ``RESTORE_CHROMIUM``.
Where none is installed the tests skip with the reason, except under ``REQUIRE_BROWSER=1``
(.ci/run sets it after installing the package), where a missing browser fails the run, so CI can
never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

#: Debian's real binary first: /usr/bin/chromium is a shell wrapper around it.
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def find_chromium() -> str | None:
    """The system Chromium's path, or None."""
    override = os.environ.get("RESTORE_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for candidate in CANDIDATES:
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return found
    return None


def require_browser() -> str:
    """Chromium's path; skips the test without one (fails it under REQUIRE_BROWSER=1)."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401, PLC0415 (optional: the dev extra; its absence skips the browser tests)
    except ImportError:
        reason = "the Python package playwright is not installed (pip install -e '.[dev]')"
    path = find_chromium()
    if reason is None and path is None:
        reason = "no system Chromium (apt-get install chromium, or set RESTORE_CHROMIUM to its binary)"
    if reason is not None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    assert path is not None
    return path


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless system Chromium. --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (optional: the dev extra)

    path = require_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def block_outside(page: Page) -> list[str]:
    """Abort every request to a host other than this machine's loopback; returns the list of those
    URLs, which a test asserts empty (an aborted CDN script would otherwise fail quietly)."""
    blocked: list[str] = []

    def handle(route: Route) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("blob:", "data:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", handle)
    return blocked
