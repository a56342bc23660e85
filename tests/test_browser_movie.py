"""The Movie tab and the Pipelines page in headless chromium against real processes (daphne, and the
worker cluster that renders and exports) with a simulated ComfyUI: a plan chosen and shown, then
run; the graph filling in and the film appearing on the page without a reload; a failed keyframe
retried from its cell; every task run once on the node.

The simulated node listens on 127.0.72.x in the SQLite mode and on 127.0.73.x in the PostgreSQL
mode (DATABASE_URL set), so the two modes can run at the same time on one machine.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, ViewportSize, expect

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders.management.commands.load_templates import load
from renders.models import RenderJob
from stories import movie
from stories.models import Movie, Shot, Story
from tests import test_browser
from tests.conftest import Stack, executions, wait_until
from tests.test_browser import SCREENSHOTS, assert_not_reloaded, expect_live, log_in, settled, watch_navigation
from tests.test_story_pages import story_with

browser, page = test_browser.browser, test_browser.page

NET = "127.0.73" if os.environ.get("DATABASE_URL") else "127.0.72"
DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)
FILM = 90_000  # ms: every task of the film rendered and the film joined, on a busy 2-core machine


@pytest.fixture
def sim(transactional_db: None) -> Iterator[SimComfyUI]:
    """A simulated ComfyUI, registered and online, and the shipped templates."""
    comfyui = SimComfyUI(f"{NET}.3", 0, seconds_per_node=0.05).start()
    gpu = Node.objects.create(name="Sim GPU", host=f"{NET}.3")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=comfyui.port, status=Capability.ONLINE)
    load()
    yield comfyui
    comfyui.close()


@pytest.fixture
def story(sim: SimComfyUI) -> Story:
    """Three shots of a second each, in one segment with narration, small and quick to render."""
    made = story_with(shots=3, render_settings={"width": 96, "height": 64, "fps": 8})
    Shot.objects.filter(story=made).update(duration=1.0)
    return made


def screenshot(page: Page, name: str) -> None:
    """A full-page screenshot for people to look at, in bench/out/ (the caret kept: the page's
    policy refuses the style Playwright adds to hide it)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / name, full_page=True, caret="initial")


def plan_the_film(page: Page, story: Story) -> None:
    """On the story's Movie tab: keyframe then image to video, upscaled, with the test templates;
    the plan shown."""
    page.goto(f"/stories/{story.code}/")
    expect_live(page, "connected", 10)
    page.get_by_role("link", name="Movie", exact=True).click()
    expect(page.locator("#export-card")).to_have_attribute("open", "")  # no movie yet: the form is open
    expect(page.locator("#movie-plan")).to_contain_text("look at the plan before it runs")
    page.get_by_label("Keyframe, then image to video").check()
    page.get_by_label("Keyframe template").select_option(label="test-still-image")
    page.get_by_label("Video template").select_option(label="test-i2v")
    page.get_by_label("Upscale each shot").check()
    page.get_by_label("Upscale template").select_option(label="test-upscale")
    page.get_by_role("button", name="Show the plan").click()
    counts = page.locator("#plan-counts tbody tr")
    expect(counts).to_have_count(3)
    for row, stage in zip(counts.all(), ("keyframe", "video", "upscale"), strict=True):
        expect(row.locator("td")).to_have_text([re.compile(f"^{stage}$", re.I), "3", "0"])
    expect(page.locator("#movie-plan")).to_contain_text("3 shots in story order · 9 tasks to render, 0 reused")
    assert not Movie.objects.exists() and not RenderJob.objects.exclude(stage="").exists()  # shown, not run


def run_the_plan(page: Page) -> Movie:
    with page.expect_navigation():
        page.get_by_role("button", name="Run this plan").click()
    expect(page.locator("#messages")).to_contain_text("Movie v1 started: 9 tasks queued, 0 reused.")
    expect(page.locator("#movie-status")).to_be_visible()
    return Movie.objects.get()


def cells(page: Page) -> list[str]:
    """Every task's status on the graph, shot by shot in graph order."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll("#story-tab td.task"), td => td.dataset.status)"""
    )


def expect_the_film(page: Page, made: Movie) -> None:
    """The film in the player, with its narration as subtitles, as its viewer gets them."""
    film = page.locator("#film-player")
    expect(film).to_be_visible(timeout=FILM)
    made.refresh_from_db()
    assert made.status == Movie.COMPLETED and made.video.endswith("-v1.mp4"), (made.status, made.error)
    assert film.get_attribute("src") == f"/media/{made.video}"
    track = page.locator("#film-player track")
    expect(track).to_have_attribute("kind", "subtitles")
    expect(track).to_have_attribute("src", f"/media/{made.vtt}")
    # Asked of whichever player the page shows when it looks (a live swap may replace it).
    page.wait_for_function(
        """() => {
            const v = document.querySelector("#film-player");
            if (!v) return false;
            if (!v.dataset.asked) { v.dataset.asked = "1"; v.load(); }
            const t = v.textTracks[0];
            if (t && t.mode === "disabled") t.mode = "hidden";
            return v.readyState >= 1 && v.duration > 2.5 && t && t.cues && t.cues.length > 0;
        }""",
        timeout=15_000,
    )
    said = page.evaluate("""() => Array.from(document.querySelector("#film-player").textTracks[0].cues, c => c.text)""")
    assert "The sea gives back." in " ".join(said), said
    expect(page.locator("#chapters")).to_contain_text("The bottle")


def assert_fits(page: Page) -> None:
    """Nothing makes the page scroll sideways (a wide table scrolls in its own box)."""
    wide, screen = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert wide <= screen, f"the page is {wide} px wide on a {screen} px screen"


def assert_every_task_ran_once(sim: SimComfyUI, made: Movie) -> None:
    jobs = RenderJob.objects.filter(pk__in=movie.movie_jobs(made))
    assert len(jobs) == 9
    ran = {(j.target, j.stage): executions(sim, j) for j in jobs}
    assert ran == {(j.target, j.stage): 1 for j in jobs}, ran


@pytest.mark.browser
def test_a_film_is_planned_run_and_watched_on_the_movie_tab_without_a_reload(
    page: Page, stack: Stack, user: User, sim: SimComfyUI, story: Story
) -> None:
    stack.web()
    stack.worker()
    log_in(page)
    plan_the_film(page, story)
    screenshot(page, "movie-plan.png")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "movie-plan-dark.png")
    page.emulate_media(color_scheme="light")

    # The Pipelines page, open in another tab, lists the movie as soon as it runs.
    pipelines = page.context.new_page()
    errors: list[str] = []
    pipelines.on("pageerror", lambda e: errors.append(str(e)))
    pipelines.goto("/stories/pipelines/")
    expect_live(pipelines, "connected", 10)
    expect(pipelines.locator("#pipelines")).to_contain_text("No movie is being made")

    started = time.monotonic()
    made = run_the_plan(page)
    expect_live(page, "connected", 10)
    navigations = watch_navigation(page)
    expect(page.locator("#story-tab td.task")).to_have_count(9)
    expect(page.locator("#story-tab thead th")).to_have_text(["Shot", "Keyframe", "Video", "Upscale"])
    # Running, then ended: it is listed all along (the page follows it live).
    expect(pipelines.locator(f"#pipeline-{made.code}, #ended-{made.code}")).to_be_visible(timeout=10_000)
    expect(pipelines.locator(f"#pipeline-{made.code}, #ended-{made.code}")).to_contain_text("v1")

    # The graph fills in on the page, from waiting to completed, and the film appears.
    seen: list[list[str]] = []
    part_done = False
    deadline = time.monotonic() + FILM / 1000
    while time.monotonic() < deadline:
        now = cells(page)
        if now and (not seen or seen[-1] != now):
            seen.append(now)
            # Mid-way, for people to look at: the first state seen, then the first with a task done.
            if len(seen) == 1 or (not part_done and "completed" in now and set(now) != {"completed"}):
                screenshot(page, "movie-graph.png")
                part_done = "completed" in now
        if set(now) == {"completed"} and page.locator("#film-player").count():
            break
        page.wait_for_timeout(100)
    print(
        f"run to the film on the page: {time.monotonic() - started:.2f} s; {len(seen)} states of the graph seen"
        f"{', one of them part done' if part_done else ''}"
    )
    # Seen waiting, then changing, then all completed: on the page, with no reload.
    assert set(seen[0]) != {"completed"} and len(seen) >= 2, seen
    expect(page.locator("#story-tab td.task[data-status=completed]")).to_have_count(9)
    expect(page.locator("#movie-status")).to_have_text("Completed")
    expect(page.locator("#story-tab")).to_contain_text("3/3 shots rendered")
    expect_the_film(page, made)
    assert_not_reloaded(page, navigations)
    settled(page)
    screenshot(page, "movie-film.png")

    expect(pipelines.locator(f"#ended-{made.code}")).to_contain_text("Completed", timeout=10_000)
    expect(pipelines.locator("#pipelines")).to_contain_text("No movie is being made")
    screenshot(pipelines, "pipelines.png")
    pipelines.close()
    assert not errors, f"uncaught JavaScript errors on the Pipelines page: {errors}"

    assert_every_task_ran_once(sim, made)

    # Dark, and on a phone with the export form open again.
    page.emulate_media(color_scheme="dark")
    screenshot(page, "movie-film-dark.png")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(PHONE)
    page.locator("#export-card summary").click()
    expect(page.locator("#movie-form")).to_be_visible()
    assert_fits(page)
    screenshot(page, "movie-phone.png")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "movie-phone-dark.png")
    page.set_viewport_size(DESKTOP)


@pytest.mark.browser
def test_a_failed_keyframe_is_retried_from_its_cell_and_the_film_is_exported(
    page: Page, stack: Stack, user: User, sim: SimComfyUI, story: Story
) -> None:
    stack.web()
    log_in(page)
    plan_the_film(page, story)
    made = run_the_plan(page)
    expect(page.locator("#story-tab td.task[data-status=queued]")).to_have_count(9)

    # Shot 1's keyframe, the first to render, fails on the node: out of memory, its attempts used
    # up (one, here, so that no other task waits for its turns of backing off).
    keyframe = RenderJob.objects.get(story=str(story.code), target="shot:1", stage=movie.KEYFRAME)
    RenderJob.objects.filter(pk=keyframe.pk).update(max_attempts=1)
    sim.knobs.fail = "oom"
    stack.worker()
    try:
        wait_until(lambda: RenderJob.objects.get(pk=keyframe.pk).status == RenderJob.FAILED, 30, "the keyframe to fail")
    finally:
        sim.knobs.fail = None
    navigations = watch_navigation(page)

    # On the page: the failure, the tasks after it waiting and saying why, and Retry. The other
    # shots render; the film waits for shot 1.
    failed = page.locator("#part-1 td[data-stage=keyframe]")
    expect(failed).to_have_attribute("data-status", "failed", timeout=10_000)
    expect(failed.locator(".error")).to_contain_text("OutOfMemory")
    expect(page.locator("#part-1")).to_have_class("blocked")
    for stage in ("video", "upscale"):
        cell = page.locator(f"#part-1 td[data-stage={stage}]")
        expect(cell).to_have_attribute("data-status", "queued")
        expect(cell).to_contain_text("waits for a task before it that did not render")
    for n in (2, 3):
        expect(page.locator(f"#part-{n} td[data-stage=upscale]")).to_have_attribute(
            "data-status", "completed", timeout=60_000
        )
    expect(page.locator("#story-tab")).to_contain_text("2/3 shots rendered")
    expect(page.locator("#movie-status")).to_have_text("Rendering its shots")
    settled(page)
    screenshot(page, "movie-failed.png")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "movie-failed-dark.png")
    page.emulate_media(color_scheme="light")
    made.refresh_from_db()
    assert made.status == Movie.RENDERING

    # The Pipelines page says how far it is, and that a task failed.
    pipelines = page.context.new_page()
    errors: list[str] = []
    pipelines.on("pageerror", lambda e: errors.append(str(e)))
    pipelines.goto("/stories/pipelines/")
    expect_live(pipelines, "connected", 10)
    row = pipelines.locator(f"#pipeline-{made.code}")
    expect(row).to_contain_text("Rendering its shots")
    expect(row).to_contain_text("1 failed")
    expect(row).to_contain_text("2/3 shots")
    expect(row).to_contain_text("6/9 rendered")
    screenshot(pipelines, "pipelines-running.png")
    pipelines.set_viewport_size(PHONE)
    assert_fits(pipelines)
    screenshot(pipelines, "pipelines-phone.png")

    failed.get_by_role("button", name="Retry").click()
    expect(page.locator("#messages")).to_contain_text("queued again")
    expect(page.locator("#part-1")).not_to_have_class("blocked", timeout=10_000)
    expect(page.locator("#story-tab td.task[data-status=completed]")).to_have_count(9, timeout=60_000)
    expect(page.locator("#story-tab td.task .waiting")).to_have_count(0)
    expect_the_film(page, made)
    expect(page.locator("#movie-status")).to_have_text("Completed")
    assert_not_reloaded(page, navigations)
    # The Pipelines page, left open, follows it to its end.
    expect(pipelines.locator(f"#ended-{made.code}")).to_contain_text("Completed", timeout=10_000)
    expect(row).to_have_count(0)
    pipelines.close()
    assert not errors, f"uncaught JavaScript errors on the Pipelines page: {errors}"
    assert_every_task_ran_once(sim, made)
    assert RenderJob.objects.get(pk=keyframe.pk).status == RenderJob.COMPLETED
