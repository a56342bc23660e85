"""The Schedules pages in headless chromium against real processes (daphne and, for a run, the worker
cluster on the test database): a health check scheduled through the form, whose kind redraws the
form fitted to it and whose cron helper says the expression in words with its next five runs as it
is typed (and what is wrong with a bad one), a preset followed by the helper; then, on the task's
page, Run now with its run history filled in live, and the Disable button, seen on the task's page
and on the list, whose own button enables it again; and Delete…, which asks first on a page of its
own.

There are no nodes on the test database: a health check's run fails, saying so, which is what the
run history must show.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Locator, Page, expect

from scheduling.models import ScheduledRun, ScheduledTask
from tests import test_browser
from tests.conftest import Stack
from tests.test_browser import SCREENSHOTS, assert_not_reloaded, expect_live, log_in, settled, watch_navigation

# The browser tests' fixtures: headless chromium, and a loopback-only page on the stack's address.
browser, page = test_browser.browser, test_browser.page

# Generous: the machine has two cores and another test suite may be running on it.
QUICK = 15_000
SLOW = 30_000
NO_NODES = "There are no nodes to check: add one on the Nodes page."
# As the helper lists a next run: "Mon 2026-12-07 16:00".
WHEN = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (\d{4}-\d{2}-\d{2} \d{2}:\d{2})$")


def screenshot(page: Page, name: str) -> None:
    """A full-page screenshot for people, in bench/out/, when SPOONFEEDER_SCREENSHOTS is set."""
    if os.environ.get("SPOONFEEDER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        # caret="initial": Playwright hides a focused field's caret with a style of its own, which
        # the page's policy refuses (and the page fixture fails on what the policy refuses).
        page.screenshot(path=SCREENSHOTS / name, full_page=True, caret="initial")


def open_new_form(page: Page) -> None:
    """From the Schedules page, as a person gets there: the menu, then "New scheduled task"."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules").click()
    expect(page).to_have_url(re.compile(r"/schedules/$"), timeout=QUICK)
    expect(page.locator("h1")).to_have_text("Schedules", timeout=QUICK)
    page.get_by_role("link", name="New scheduled task").click()
    expect(page).to_have_url(re.compile(r"/schedules/new/$"), timeout=QUICK)
    expect(page.locator("h1")).to_have_text("New scheduled task", timeout=QUICK)


def kind_select(page: Page) -> Locator:
    """What the task runs (a select of "When"), not the batch form's own Kind."""
    select = page.locator("#schedule-form #id_kind")
    expect(page.locator("#schedule-form label[for=id_kind]")).to_have_text("What it runs")
    return select


def choose_health_check(page: Page) -> None:
    """Choose the kind: the form is drawn again over htmx, fitted to a health check."""
    form = page.locator("#schedule-form")
    expect(form.get_by_role("heading", name="What it runs: batch")).to_be_visible(timeout=QUICK)
    navigations = watch_navigation(page)
    # As a person is never quicker than htmx: it has taken the select in hand.
    page.wait_for_function("() => !!document.querySelector('#schedule-form #id_kind')?.['htmx-internal-data']")
    kind_select(page).select_option(label="Health check")
    expect(form.get_by_role("heading", name="What it runs: health check")).to_be_visible(timeout=QUICK)
    assert_not_reloaded(page, navigations)
    expect(kind_select(page)).to_have_value("health")
    # The health check's own fields are there, the batch's are gone.
    expect(form.get_by_label("Read inventories too")).to_be_visible()
    expect(form.get_by_label("Read inventories too")).to_be_checked()
    expect(form.locator("[name=k-full]")).to_have_count(1)
    for batch_field in ("k-template", "k-count", "k-prompt", "k-kind"):
        expect(form.locator(f"[name={batch_field}]")).to_have_count(0)
    expect(form.get_by_label("How many")).to_have_count(0)


def next_runs(helper: Locator) -> list[datetime]:
    """The five next runs the helper lists, once it lists five, as naive datetimes."""
    items = helper.locator("ol li")
    expect(items).to_have_count(5, timeout=QUICK)
    shown = []
    for text in items.all_inner_texts():
        found = WHEN.match(text.strip())
        assert found, f"a next run the helper shows is not a day and a time: {text!r}"
        moment = datetime.strptime(found.group(2), "%Y-%m-%d %H:%M")
        assert found.group(1) == moment.strftime("%a"), f"{text!r}: the day of the week is wrong"
        shown.append(moment)
    return shown


def assert_every(shown: list[datetime], step: timedelta) -> None:
    """Runs `step` apart, the first of them within `step` from now (the zone is UTC)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    assert now - timedelta(minutes=1) < shown[0] <= now + step + timedelta(minutes=1), (shown[0], now)
    assert [b - a for a, b in zip(shown, shown[1:], strict=False)] == [step] * 4, shown


def save(page: Page) -> ScheduledTask:
    """Save the form: the task's page opens, saying it was saved and when it runs next."""
    page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(re.compile(r"/schedules/[0-9a-f-]{36}/$"), timeout=QUICK)
    code = re.search(r"/schedules/([0-9a-f-]{36})/$", page.url)
    assert code
    return ScheduledTask.objects.get(code=code.group(1))


def assert_saved_page(page: Page, task: ScheduledTask, name: str) -> None:
    expect(page.locator("#messages")).to_contain_text(
        re.compile(rf"Saved {re.escape(name)}: next run \d{{4}}-\d{{2}}-\d{{2}} \d{{2}}:00 \(UTC\)\."), timeout=QUICK
    )
    head = page.locator("#schedule-head")
    expect(head.locator("h1")).to_contain_text(name)
    expect(head.locator("h1")).to_contain_text("Health check")
    expect(head).to_contain_text("Every hour")
    expect(head.locator("code")).to_have_text("0 * * * *")
    expect(head).to_contain_text("UTC")
    expect(head).to_contain_text(re.compile(r"Next run \d{4}-\d{2}-\d{2} \d{2}:00 \(in "))
    expect(page.locator("#schedule-runs")).to_contain_text("No runs yet.")
    assert (task.name, task.kind, task.cron, task.time_zone, task.enabled) == (name, "health", "0 * * * *", "UTC", True)
    assert task.settings == {"nodes": [], "full": True}, task.settings


@pytest.mark.browser
def test_a_health_check_is_scheduled_through_the_form_its_cron_said_in_words_as_it_is_typed(
    page: Page, stack: Stack, user: User
) -> None:
    """Health check chosen, the form is fitted to it; the cron helper follows what is typed, a
    character at a time: what is missing, then the expression in words with its next five runs;
    a bad minute is said in words; a preset fills the field and the helper follows it; saved, the
    task's page says so and says when it runs in words."""
    stack.web()
    log_in(page)
    open_new_form(page)
    choose_health_check(page)
    page.get_by_label("Name", exact=True).fill("Hourly check")
    expect(page.get_by_label("Time zone")).to_have_value("UTC")

    helper = page.locator("#cron-help")
    expect(helper).to_contain_text("Type a cron expression")
    schedule = page.get_by_label("Schedule", exact=True)
    navigations = watch_navigation(page)

    # Typed a character at a time, as a person types: the helper says what is still missing...
    schedule.press_sequentially("0 2", delay=60)
    expect(helper.locator(".message.error")).to_contain_text(
        "That has 2 fields; a cron expression has five", timeout=QUICK
    )
    expect(helper.locator("ol")).to_have_count(0)
    # ...and, once it is whole, what it means and its next five runs.
    schedule.press_sequentially(" * * *", delay=60)
    expect(helper.locator("strong")).to_have_text("At 02:00", timeout=QUICK)
    expect(helper).to_contain_text("(UTC)")
    expect(helper.locator(".message.error")).to_have_count(0)
    nightly = next_runs(helper)
    assert all((t.hour, t.minute) == (2, 0) for t in nightly), nightly
    assert_every(nightly, timedelta(days=1))
    screenshot(page, "schedule-form.png")

    # A minute that does not exist: said in words, and no next runs.
    schedule.fill("")
    schedule.press_sequentially("61 * * * *", delay=60)
    expect(helper.locator(".message.error")).to_contain_text(
        "the minute field '61' must be * or numbers from 0 to 59", timeout=QUICK
    )
    expect(helper.locator("ol")).to_have_count(0)
    expect(helper.locator("strong")).to_have_count(0)
    screenshot(page, "schedule-form-error.png")

    # A preset fills the field, and the helper follows.
    page.get_by_role("button", name="Every hour", exact=True).click()
    expect(schedule).to_have_value("0 * * * *", timeout=QUICK)
    expect(helper.locator("strong")).to_have_text("Every hour", timeout=QUICK)
    expect(helper.locator(".message.error")).to_have_count(0)
    hourly = next_runs(helper)
    assert all(t.minute == 0 for t in hourly), hourly
    assert_every(hourly, timedelta(hours=1))
    assert_not_reloaded(page, navigations)
    screenshot(page, "schedule-form-preset.png")

    task = save(page)
    assert_saved_page(page, task, "Hourly check")


@pytest.mark.browser
def test_run_now_fills_the_run_history_live_and_disable_shows_on_the_task_and_the_list(
    page: Page, stack: Stack, user: User
) -> None:
    """A health check saved from the form (its schedule typed); on its page, Run now with a worker
    cluster running: the run shows in the history without a reload, failed for want of nodes, in
    words. Disable: the page says the task is disabled, and so does the list."""
    stack.web()
    stack.worker()
    log_in(page)
    open_new_form(page)
    choose_health_check(page)
    page.get_by_label("Name", exact=True).fill("Node check")
    page.get_by_label("Schedule", exact=True).press_sequentially("0 * * * *", delay=30)
    expect(page.locator("#cron-help strong")).to_have_text("Every hour", timeout=QUICK)
    task = save(page)
    assert_saved_page(page, task, "Node check")

    expect_live(page, "connected", 10)
    head = page.locator("#schedule-head")
    history = page.locator("#schedule-runs")
    navigations = watch_navigation(page)

    settled(page)
    head.get_by_role("button", name="Run now").click()
    expect(page.locator("#messages")).to_contain_text("Node check started: see its run history.", timeout=QUICK)
    # The run this press made: "run now", in the history, failed for want of nodes to check.
    manual = history.locator("tbody tr", has=page.locator(".tag", has_text="run now"))
    expect(manual).to_have_count(1, timeout=QUICK)
    expect(manual.locator(".status")).to_have_text("Failed", timeout=SLOW)
    expect(manual).to_contain_text(NO_NODES)
    expect(manual.locator(".bad")).to_have_text(NO_NODES)
    expect(manual.locator("td").nth(2)).to_have_text(re.compile(r"^\d{2}:\d{2}:\d{2}$"))
    expect(manual.locator("td").nth(3)).to_have_text(re.compile(r"^\d{2}:\d{2}:\d{2}$"))
    # Every run of it fails so (a run due on the hour may have come in meanwhile).
    expect(head).to_contain_text(re.compile(r"(\d+) runs?: 0 succeeded, \1 failed\."), timeout=QUICK)
    expect(history.locator("h2")).to_contain_text(re.compile(r"Run history \d+"))
    assert_not_reloaded(page, navigations)
    run = ScheduledRun.objects.get(task=task, manual=True)
    assert (run.status, run.error) == (ScheduledRun.FAILED, NO_NODES)
    screenshot(page, "schedule-task.png")

    settled(page)
    head.get_by_role("button", name="Disable", exact=True).click()
    expect(page.locator("#messages")).to_contain_text("Node check disabled: it is disabled.", timeout=QUICK)
    expect(head.locator("h1 .tag")).to_have_text("disabled", timeout=QUICK)
    expect(head).to_contain_text("Disabled: it does not run until enabled.")
    expect(head.get_by_role("button", name="Enable", exact=True)).to_be_visible()
    expect(head.get_by_role("button", name="Disable", exact=True)).to_have_count(0)
    expect(head).not_to_contain_text("Next run")
    assert_not_reloaded(page, navigations)
    task.refresh_from_db()
    assert (task.enabled, task.next_run) == (False, None)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules").click()
    expect(page).to_have_url(re.compile(r"/schedules/$"), timeout=QUICK)
    row = page.locator(f"#schedule-{task.code}")
    expect(row).to_have_class(re.compile(r"\bdisabled\b"), timeout=QUICK)
    expect(row.locator("td").nth(0)).to_have_text("Node check")
    expect(row.locator("td").nth(1)).to_have_text("Health check")
    expect(row.locator("td").nth(2)).to_contain_text("Every hour")
    expect(row.locator("td").nth(3)).to_have_text("disabled")
    expect(row.locator(".status")).to_have_text("Failed")
    expect(row).to_contain_text(NO_NODES)
    expect(row.get_by_role("button", name="Enable", exact=True)).to_be_visible()
    screenshot(page, "schedules-list.png")

    # The list's own button: enabled again from there, the row says when it runs next.
    expect_live(page, "connected", 10)
    settled(page)
    row.get_by_role("button", name="Enable", exact=True).click()
    expect(page.locator("#messages")).to_contain_text(
        re.compile(r"Node check enabled: next run \d{4}-\d{2}-\d{2} \d{2}:00 \(UTC\)\."), timeout=QUICK
    )
    expect(row).not_to_have_class(re.compile(r"\bdisabled\b"), timeout=QUICK)
    expect(row.locator("td").nth(3)).to_contain_text(re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:00 in "), timeout=QUICK)
    expect(row.get_by_role("button", name="Disable", exact=True)).to_be_visible(timeout=QUICK)
    task.refresh_from_db()
    assert task.enabled and task.next_run is not None


@pytest.mark.browser
def test_a_task_is_deleted_from_its_page_only_once_the_question_is_answered(
    page: Page, stack: Stack, user: User
) -> None:
    """Delete… asks first, on a page of its own: kept, nothing happens; confirmed, the list says
    the task and its history are gone. The task's page is live (its parts have come over the
    socket) when Delete… is pressed, as it is for anyone who reads the page before deleting."""
    task = ScheduledTask(name="Weekly check", kind="health", cron="0 0 * * 0", settings={"nodes": [], "full": True})
    task.plan()
    task.save()
    stack.web()
    log_in(page)
    page.goto(f"/schedules/{task.code}/")
    expect(page.locator("#schedule-head h1")).to_contain_text("Weekly check", timeout=QUICK)
    expect(page.locator("#schedule-head")).to_contain_text("At 00:00, only on Sunday")
    page.get_by_role("link", name="Delete…").click()
    expect(page.locator("h1")).to_have_text("Delete the scheduled task Weekly check?", timeout=QUICK)
    expect(page.locator("main")).to_contain_text("What its runs made (batches, stories, renders) stays.")
    page.get_by_role("link", name="Keep it").click()
    expect(page.locator("#schedule-head h1")).to_contain_text("Weekly check", timeout=QUICK)
    assert ScheduledTask.objects.filter(pk=task.pk).exists()

    expect_live(page, "connected", 10)
    settled(page)  # the head has come over the socket: its Delete… still leads to the question
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete the task").click()
    expect(page).to_have_url(re.compile(r"/schedules/$"), timeout=QUICK)
    expect(page.locator("#messages")).to_contain_text("Deleted Weekly check and its run history.", timeout=QUICK)
    expect(page.locator("#task-list")).to_contain_text("No scheduled tasks yet.")
    assert not ScheduledTask.objects.exists()
