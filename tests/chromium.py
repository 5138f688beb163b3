"""The page tests' browser: Playwright (PyPI ``playwright``) driving the Debian Chromium through
``executable_path`` (``playwright install`` cannot download browsers here, and need not).

``browser()`` yields a page whose ``problems`` list collects what must not happen on a good page: uncaught
script errors, console errors (Content-Security-Policy violations among them) and dialogs (an XSS would open one).
"""

from __future__ import annotations

import contextlib
import shutil

import pytest


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 1000, timeout_ms: int = 120_000):
    from playwright.sync_api import sync_playwright

    exe = chromium()
    if exe is None:
        pytest.fail("chromium not found: apt-get update && apt-get install -y chromium (make test does this)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
        )
        try:
            page = b.new_context(viewport={"width": width, "height": height}).new_page()
            page.problems = []
            page.on("pageerror", lambda e: page.problems.append(f"pageerror: {e}"))
            page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
            page.on("dialog", lambda d: (page.problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            b.close()


def open_page(page, path) -> None:
    """Load a page file and wait until its script has run to the end (``data-ready`` on the body) or failed
    (``data-js-error``)."""
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-ready], body[data-js-error]", state="attached")
