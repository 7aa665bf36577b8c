"""A real browser for the console tests: Debian's chromium, driven headless by
Playwright for Python.

Why Playwright with the system browser rather than the DevTools protocol by
hand: it waits for selectors with deadlines, exposes the request log
(``page.on("request")``, ``page.on("websocket")``) and console messages, and
takes screenshots, all from a synchronous API; pointed at ``/usr/bin/chromium``
(``executable_path``) it needs none of the browser builds ``playwright
install`` would download from a host these machines cannot reach.
scripts/test.sh installs the ``chromium`` package when it is missing.

Screenshots go to ``test-artifacts/screenshots/`` (gitignored, kept by CI as
artifacts; the README names the folder).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Page, WebSocket, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@contextmanager
def chromium() -> Iterator[Browser]:
    """The system chromium, headless; fails (never skips) when it is missing."""
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run scripts/test.sh, which installs Debian's chromium"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class RequestLog:
    """Every URL a page asked for (HTTP and WebSocket) and its console errors."""

    urls: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("websocket", lambda ws: self._websocket(ws))
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        return page

    def _websocket(self, ws: WebSocket) -> None:
        self.urls.append(ws.url)

    def foreign(self, port: int) -> list[str]:
        """URLs that went anywhere but this daemon on 127.0.0.1."""
        mine = (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/")
        return [url for url in self.urls if not url.startswith(mine)]


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
