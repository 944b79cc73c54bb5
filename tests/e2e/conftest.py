"""Browser tests: Debian's Chromium, driven by Playwright, against the session's real Serve app.

Playwright's own browser download cannot run offline, so the tests launch the system Chromium
(`apt-get install chromium`) and skip, saying so, when it or the playwright package is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# The docs' screenshot (docs/client.md) is rewritten only on request, so a test run leaves tracked files alone.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
UPDATE_DOCS_ENV = "UPDATE_DOCS_SCREENSHOT"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
RUN_TIMEOUT_MS = 90_000  # a cold replica on a 2-core machine; a warm one answers in milliseconds


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in the main
# thread while it is open, which would break every later test that runs a loop of its own.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless system Chromium for the session; requested before the cluster, so a skip is cheap."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); browser tests need it")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Playground:
    """The playground page, driven the way a person would: pick, drop, set, run, read."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url

    def open(self, model: str) -> None:
        """Load the page, wait for the model list, and pick `model`."""
        self.page.goto(f"{self.url}/ui/")
        self.page.wait_for_function(
            "() => document.getElementById('model').value !== '' || !document.getElementById('error').hidden"
        )
        if self.page.get_by_test_id("error").is_visible():
            raise AssertionError(f"the model list did not load: {self.page.get_by_test_id('error').inner_text()}")
        offered = self.page.locator("#model option").evaluate_all("options => options.map(o => o.value)")
        if model not in offered:
            raise AssertionError(f"model {model!r} is not offered; the page lists {offered}")
        self.page.get_by_label("Model", exact=True).select_option(model)

    def upload(self, name: str, mime: str, data: bytes) -> None:
        self.page.get_by_test_id("file").set_input_files({"name": name, "mimeType": mime, "buffer": data})

    def fill(self, label: str, value: str) -> None:
        self.page.get_by_label(label, exact=True).fill(value)

    def run(self, expect_state: str = "done") -> None:
        """Click Run and wait for the answer; fail with the page's error box when it differs."""
        from playwright.sync_api import expect

        self.page.get_by_role("button", name="Run").click()
        output = self.page.get_by_test_id("output")
        expect(output).to_have_attribute("data-state", re.compile("^(done|error)$"), timeout=RUN_TIMEOUT_MS)
        state = output.get_attribute("data-state")
        if state != expect_state:
            error = self.page.get_by_test_id("error")
            shown = error.inner_text() if error.is_visible() else "(no error shown)"
            raise AssertionError(f"the run ended {state!r}, expected {expect_state!r}: {shown}")

    def items(self, testid: str) -> list[dict[str, Any]]:
        """The data-* attributes of every result element with this test id."""
        locator: Locator = self.page.get_by_test_id(testid)
        found: list[dict[str, Any]] = locator.evaluate_all("nodes => nodes.map(n => ({...n.dataset}))")
        return found

    def screenshot(self, path: Path) -> Path:
        """Save a full-page screenshot at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def docs_screenshot(self) -> None:
        """Rewrite the docs' picture of the playground (docs/playground.png), when UPDATE_DOCS_SCREENSHOT=1."""
        if os.environ.get(UPDATE_DOCS_ENV) == "1":
            self.screenshot(DOCS_SCREENSHOT)


@pytest.fixture
def playground(request: pytest.FixtureRequest, browser: Browser, base_url: str) -> Iterator[Playground]:
    """A fresh page on the served playground; fails on uncaught script errors or off-site requests.

    Every test leaves a screenshot of the page as it ended in artifacts/, failing or not.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    script_errors: list[str] = []
    off_site: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))

    def only_this_server(route: Any) -> None:
        # The page must work offline: anything but the server itself is refused and reported.
        url = route.request.url
        if url.startswith(base_url):
            route.continue_()
        else:
            off_site.append(url)
            route.abort()

    page.route("**/*", only_this_server)
    driver = Playground(page, base_url)
    try:
        yield driver
        assert not script_errors, f"uncaught script errors: {script_errors}"
        assert not off_site, f"the page requested other sites: {off_site}"
    finally:
        try:
            driver.screenshot(ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name)}.png")
        finally:
            context.close()
