"""What the browser tests share: Debian's Chromium, screenshots kept as artifacts, signing in as a
person does, and an axe-core accessibility check.

Chromium is Debian's (/usr/bin/chromium); Playwright's own browser downloads are never used. Where
it is missing the browser tests are skipped, except under CI (environment variable CI), where that
fails. The `chromium` fixture (tests/conftest.py) launches it once per test module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STATIC_DIR = Path(settings.BASE_DIR) / "tasks_app" / "static"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts" / "browser"
# The two widths every page is checked at: a laptop and a phone.
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


@contextmanager
def launched_chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread while it runs; Django would then
    # refuse ORM calls from the tests (and the database teardown), although they are synchronous.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Shots:
    """Numbered screenshots of one test under test-artifacts/browser/."""

    def __init__(self, prefix: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.count = 0
        self.paths: list[Path] = []

    def __call__(self, page, name: str, *, full_page: bool = True) -> Path:
        self.count += 1
        path = ARTIFACTS / f"{self.prefix}-{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.paths.append(path)
        return path


def sign_in(page, username: str, password: str, *, next_url: str = "/") -> None:
    """Through the login page, as a person does."""
    page.goto(f"/accounts/login/?next={next_url}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_test_id("login-submit").click()


# axe-core's impact levels that fail a test; "minor" and "moderate" findings are reported only.
BLOCKING_IMPACTS = ("serious", "critical")


def assert_accessible(page, name: str) -> list[dict]:
    """Run axe-core (the copy axe-playwright-python ships) on the page as it is now; fail on any
    serious or critical violation, naming the rule and the elements. Returns every violation, so
    a test may look at the minor ones too."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    violations: list[dict] = results.response["violations"]
    blocking = [v for v in violations if v.get("impact") in BLOCKING_IMPACTS]
    report = "\n".join(
        f"- {v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        for v in blocking
    )
    assert not blocking, f"axe-core on {name}:\n{report}"
    return violations
