"""Real pages in headless chromium against real processes (daphne + qcluster on the test database):
logging in, the dashboard changing live without a reload, a page that rides out a server restart,
and an anonymous visitor sent to the login page.

The browser is Debian's chromium (`make chromium` installs it); it is never downloaded. Only
loopback traffic is allowed: any request a page makes to another host is aborted and fails the
test.

Playwright's sync API keeps its own event loop "running" in this thread between calls, so Django's
async-safety check would refuse every ORM call in this module (the test body's and pytest-django's
own flush at teardown) with SynchronousOnlyOperation, although nothing runs concurrently. The
module therefore sets DJANGO_ALLOW_ASYNC_UNSAFE for the test process only, while its browser is
up, and keeps it out of the processes the stack starts, which keep the check.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from django_q.models import Task
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from spoonfeeder.tasks import enqueue
from tests.conftest import PASSWORD, ROOT, Stack, wait_until

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"
# Where a screenshot for people goes when SPOONFEEDER_SCREENSHOTS is set.
SCREENSHOTS = ROOT / "bench" / "out"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"{CHROMIUM} is not installed: the browser tests drive Debian's chromium; "
            "run `make chromium` (apt-get install chromium), never `playwright install`",
            pytrace=False,
        )
    with pytest.MonkeyPatch.context() as env, sync_playwright() as pw:
        env.setenv(ASYNC_UNSAFE, "true")
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the stack's address, loopback only."""
    stack.env.pop(ASYNC_UNSAFE, None)
    context = browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    blocked: list[str] = []

    def loopback_only(route: Route, request: Request) -> None:
        if urlsplit(request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    context.route("**/*", loopback_only)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Every page runs under the content security policy: a script, style or connection it
    # refuses is a page that breaks for its users.
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    policies: list[str] = []
    page.on(
        "response",
        lambda r: (
            policies.append(r.headers.get("content-security-policy", ""))
            if r.request.resource_type == "document"
            else None
        ),
    )
    yield page
    context.close()
    assert not blocked, f"the page tried to reach other hosts: {blocked}"
    assert not errors, f"uncaught JavaScript errors: {errors}"
    assert not refused, f"the content security policy refused: {refused}"
    assert all("script-src 'self'" in p for p in policies), f"a page came without its policy: {policies}"


def log_in(page: Page) -> None:
    page.goto("/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in", exact=True).click()
    expect(page).to_have_url(re.compile(r"/$"))


def expect_live(page: Page, state: str | re.Pattern[str], timeout: float) -> None:
    expect(page.locator("#live-status")).to_have_attribute("data-state", state, timeout=timeout * 1000)


def shown(page: Page, name: str) -> int:
    return int(page.locator(f"#count-{name}").inner_text())


def settled(page: Page, quiet_ms: int = 500) -> None:
    """Wait until the page has had no live push for `quiet_ms`, as a person waits for what they
    are about to click to stop changing: a press and release that straddle a live swap of the
    element land on two elements and make no click."""
    page.evaluate(
        """() => {
          if (window.__pushed !== undefined) return;
          window.__pushed = performance.now();
          window.__pushes = 0;
          document.addEventListener("htmx:wsAfterMessage", () => {
            window.__pushed = performance.now();
            window.__pushes++;
          });
        }"""
    )
    page.wait_for_function("quiet => performance.now() - window.__pushed > quiet", arg=quiet_ms, timeout=20_000)


def watch_navigation(page: Page) -> list[str]:
    """Every main-frame navigation from now on, and a marker that a reload would wipe."""
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)
    page.evaluate("window.__marker = 1")
    return navigations


def assert_not_reloaded(page: Page, navigations: list[str]) -> None:
    assert navigations == [], f"the page navigated: {navigations}"
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"


def done_tasks() -> int:
    return Task.objects.filter(success=True).count()


@pytest.mark.browser
def test_dashboard_counts_change_live_without_a_reload(page: Page, stack: Stack, user: User, tmp_path: Path) -> None:
    stack.web()
    stack.worker()
    log_in(page)
    expect_live(page, "connected", 10)
    expect(page.locator("#worker")).to_contain_text("Running", timeout=30_000)
    before = shown(page, "done")
    navigations = watch_navigation(page)

    started = time.monotonic()
    page.get_by_role("button", name="Run a test task").click()
    expect(page.locator("#count-done")).to_have_text(str(before + 1), timeout=20_000)
    print(f"click to done count shown: {time.monotonic() - started:.2f} s (task takes 0.5 s)")

    assert_not_reloaded(page, navigations)
    assert page.url == f"{stack.url}/"
    expect_live(page, "connected", 1)
    expect(page.locator("#count-failed")).to_have_text("0")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SPOONFEEDER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)


@pytest.mark.browser
def test_an_actions_message_shows_when_a_live_update_replaced_its_form_on_the_way(
    page: Page, stack: Stack, user: User
) -> None:
    """A live push that re-renders the part of the page holding a form (a story's steps around its
    Re-run button) can land between the press and the answer, on a slow machine most of all: the
    answer's message still shows where messages show."""
    stack.web()
    log_in(page)
    expect_live(page, "connected", 10)
    # As a push would, the form's section is replaced by a copy the moment its request leaves.
    page.evaluate(
        """() => document.addEventListener("htmx:beforeRequest", e => {
          const section = e.detail.elt.closest("section");
          section.replaceWith(section.cloneNode(true));
        }, {once: true})"""
    )
    page.get_by_role("button", name="Run a test task").click()
    expect(page.locator("#messages")).to_contain_text("A test task was queued")
    assert page.url == f"{stack.url}/"


@pytest.mark.browser
def test_a_page_reconnects_after_the_server_restarts_and_catches_up(page: Page, stack: Stack, user: User) -> None:
    web = stack.web()
    stack.worker()
    log_in(page)
    expect_live(page, "connected", 10)
    wait_until(lambda: shown(page, "done") == done_tasks(), 10, "the page to show the tasks done")
    page.evaluate(
        """() => {
          window.__closes = [];
          document.addEventListener("htmx:wsClose", (e) => window.__closes.push(e.detail.event.code));
        }"""
    )
    navigations = watch_navigation(page)

    started = time.monotonic()
    web.stop()
    expect_live(page, re.compile("reconnecting|offline"), 10)
    closes = page.evaluate("window.__closes")
    print(f"server stopped: page showed it after {time.monotonic() - started:.2f} s; close codes {closes}")
    assert closes, "the page saw no close event"
    assert page.locator("#live-status").get_attribute("data-state") == "reconnecting", (
        f"the page gave up on the server: close code {closes[0]}, which htmx does not retry "
        f"(it retries 1006, 1011, 1012, 1013); title: {page.locator('#live-status').get_attribute('title')}"
    )

    # Until its socket closed the page heard of the tasks that ended meanwhile (the cluster's own,
    # the sweeper's, on a busy machine the server takes seconds to stop): from here it hears nothing.
    frozen = shown(page, "done")
    # While the server is down, the worker does work the page cannot hear about.
    finished = done_tasks()
    enqueue("spoonfeeder.tasks.selftest", 0)
    wait_until(lambda: done_tasks() >= finished + 1, 30, "the worker to finish the task")
    expect(page.locator("#count-done")).to_have_text(str(frozen))

    restarted = time.monotonic()
    stack.web()  # the same port: Stack.web() binds stack.port
    print(f"web restarted (listening) in {time.monotonic() - restarted:.2f} s")
    # The page retries every second or so (static/js/live.js), then gets a fresh snapshot.
    expect_live(page, "connected", 5)
    print(f"page reconnected {time.monotonic() - restarted:.2f} s after the restart began")
    wait_until(lambda: shown(page, "done") == done_tasks() > frozen, 5, "the count to catch up")
    print(f"the count caught up {time.monotonic() - restarted:.2f} s after the restart began")
    assert_not_reloaded(page, navigations)
    assert all(code in (1006, 1011, 1012, 1013) for code in page.evaluate("window.__closes"))


@pytest.mark.browser
def test_the_badge_is_live_within_5_s_of_the_server_coming_back_however_long_it_was_away(
    page: Page, stack: Stack, user: User
) -> None:
    web = stack.web()
    log_in(page)
    expect_live(page, "connected", 10)
    expect(page.locator("#live-status")).to_have_text("live")
    page.evaluate(
        """() => {
          window.__tries = 0;
          document.addEventListener("htmx:wsConnecting", () => window.__tries++);
        }"""
    )

    web.stop()
    expect_live(page, "reconnecting", 10)
    expect(page.locator("#live-status")).to_have_text("reconnecting…")
    # Away long enough for a doubling backoff to wait tens of seconds before its next try: the
    # page keeps trying about every second instead.
    started = time.monotonic()
    page.wait_for_function("() => window.__tries >= 8", timeout=15_000)
    print(f"8 tries in {time.monotonic() - started:.1f} s while the server was away")
    expect_live(page, "reconnecting", 1)

    stack.web()  # the same port; returns once the server answers
    back = time.monotonic()
    expect_live(page, "connected", 5)
    print(f"live again {time.monotonic() - back:.2f} s after the server was back")
    expect(page.locator("#live-status")).to_have_text("live")


@pytest.mark.browser
def test_an_anonymous_browser_is_sent_to_the_login_page(page: Page, stack: Stack) -> None:
    stack.web()
    page.goto("/")
    expect(page).to_have_url(f"{stack.url}/login/?next=/")
    expect(page.get_by_role("button", name="Log in", exact=True)).to_be_visible()
    # Nobody is logged in: no live socket and no live status on the page.
    expect(page.locator("#live-status")).to_have_count(0)
    expect(page.locator("[ws-connect]")).to_have_count(0)
