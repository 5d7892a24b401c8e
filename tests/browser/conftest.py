"""Headless Chromium (Debian's /usr/bin/chromium) driving the dashboard on pytest-django's live server."""
from __future__ import annotations

import os

# Playwright's sync API keeps an event loop in this thread; Django's ORM would refuse to run beside it.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
USERNAME, PASSWORD = "ada", "lovelace-1815"


@dataclass
class PageLog:
    """What a page did: every request URL, failed asset loads, uncaught JS errors, console errors."""

    requests: list[str] = field(default_factory=list)
    bad_assets: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def foreign(self, origin: str) -> list[str]:
        """Requests that went anywhere but the live server (inline data: and blob: URLs never leave the page)."""
        return [url for url in self.requests
                if not (url == origin or url.startswith(origin + "/") or url.startswith(("data:", "blob:")))]

    def assert_clean(self, origin: str) -> None:
        """Every request went to the live server, every asset loaded, and no script failed."""
        assert self.requests, "the page log saw no requests at all"
        assert not self.foreign(origin), f"requests to hosts other than {origin}: {self.foreign(origin)}"
        assert not self.bad_assets, f"assets that failed to load: {self.bad_assets}"
        assert not self.page_errors, f"uncaught JavaScript errors: {self.page_errors}"
        assert not self.console_errors, f"errors in the browser console: {self.console_errors}"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for the whole session; a missing binary fails the tests."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser, live_server) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A fresh browser profile (no cookies) per test."""
    ctx = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(context, page_log, live_server) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A page whose every request is recorded; after the test, none may have left the live server."""
    page = context.new_page()

    def on_response(response) -> None:  # type: ignore[no-untyped-def]
        if response.request.resource_type in ("stylesheet", "script", "font", "image") and response.status >= 400:
            page_log.bad_assets.append(f"{response.status} {response.url}")

    page.on("request", lambda request: page_log.requests.append(request.url))
    page.on("response", on_response)
    page.on("pageerror", lambda error: page_log.page_errors.append(str(error)))
    def on_console(msg) -> None:  # type: ignore[no-untyped-def]
        if msg.type == "error":
            page_log.console_errors.append(f"{msg.text} ({(msg.location or {}).get('url', '')})")

    page.on("console", on_console)
    yield page
    page.close()
    # Also enforced here for any test that forgets to call assert_clean itself.
    foreign = page_log.foreign(live_server.url)
    if foreign:
        pytest.fail(f"the page loaded assets from other hosts: {foreign}")


@pytest.fixture
def screenshots(artifacts) -> Path:  # type: ignore[no-untyped-def]
    folder = artifacts / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
