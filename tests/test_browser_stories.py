"""StoryDetail in headless chromium against real processes (daphne, and the worker cluster that runs
story steps and renders) with a simulated Ollama and a simulated ComfyUI: a story made through the
form, its steps completing on the page without a reload, and its first shot in the gallery.

The simulated nodes listen on 127.0.70.x in the SQLite mode and on 127.0.71.x in the PostgreSQL
mode (DATABASE_URL set), so the two modes can run at the same time on one machine.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from nodes.sim.ollama import SimOllama
from renders.management.commands.load_templates import load
from renders.models import RenderJob
from stories.models import Story
from tests import test_browser
from tests.conftest import Stack, executions
from tests.test_browser import SCREENSHOTS, assert_not_reloaded, expect_live, log_in, settled, watch_navigation

browser, page = test_browser.browser, test_browser.page

NET = "127.0.71" if os.environ.get("DATABASE_URL") else "127.0.70"
MODEL = "llama3.2:3b"
SCREENSHOT = Path("/tmp/story-detail.png")


@pytest.fixture
def pool(transactional_db: None) -> Iterator[SimComfyUI]:
    """A simulated Ollama and a simulated ComfyUI, registered and online."""
    ollama = SimOllama(f"{NET}.2", 0, models=[MODEL], answer_seconds=0.2).start()
    comfyui = SimComfyUI(f"{NET}.3", 0, seconds_per_node=0.05).start()
    writer = Node.objects.create(name="Sim writer", host=f"{NET}.2")
    Capability.objects.create(
        node=writer,
        kind=Capability.OLLAMA,
        port=ollama.port,
        status=Capability.ONLINE,
        inventory={"models": [{"name": MODEL}]},
    )
    gpu = Node.objects.create(name="Sim GPU", host=f"{NET}.3")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=comfyui.port, status=Capability.ONLINE)
    load()
    yield comfyui
    ollama.close()
    comfyui.close()


def status(page: Page, step: str) -> str:
    return str(page.locator(f"#step-{step}").get_attribute("data-status"))


@pytest.mark.browser
def test_a_story_written_and_rendered_live_on_its_page(page: Page, stack: Stack, user: User, pool: SimComfyUI) -> None:
    stack.web()
    log_in(page)
    page.goto("/stories/")
    expect_live(page, "connected", 10)

    page.get_by_label("Idea").fill("A lighthouse keeper finds a message in a bottle, written by her future self.")
    page.get_by_label("Length (seconds)").fill("10")
    page.get_by_label("Language model").select_option(MODEL)
    page.get_by_label("Render template").select_option(label="test-video-mp4")
    page.get_by_label("Resolution").select_option("512x512")
    with page.expect_navigation():
        page.get_by_role("button", name="Start the story").click()
    story = Story.objects.get()
    expect(page).to_have_url(f"{stack.url}/stories/{story.code}/")
    expect(page.locator("#messages")).to_contain_text("Story started")

    # Nothing runs the steps yet: the first waits, the rest wait for it.
    expect(page.locator("#step-story")).to_have_attribute("data-status", "pending")
    expect(page.locator("#step-renders")).to_contain_text("waits for Visual prompts")
    page.get_by_role("link", name="Gallery").click()
    expect(page.locator("#story-tab")).to_contain_text("No shots planned yet")
    expect_live(page, "connected", 10)
    navigations = watch_navigation(page)

    started = time.monotonic()
    stack.worker()
    seen: dict[str, list[str]] = {}
    pictured = False
    deadline = time.monotonic() + 60
    steps = ["story", "segments", "characters", "shots", "prompts", "narration", "music", "renders"]
    while time.monotonic() < deadline:
        for s in steps:
            now = status(page, s)
            if not seen.get(s) or seen[s][-1] != now:
                seen.setdefault(s, []).append(now)
        if all(seen[s][-1] == "completed" for s in steps):
            break
        if seen["characters"][-1] == "completed" and not pictured:
            page.screenshot(path=SCREENSHOT, full_page=True)  # mid-way, for a person to look at
            pictured = True
        page.wait_for_timeout(50)
    print(f"worker start to every step completed: {time.monotonic() - started:.2f} s; seen: {seen}")
    for s in steps:
        expect(page.locator(f"#step-{s}")).to_have_attribute("data-status", "completed", timeout=1)
    # Each step was seen waiting on the page, then completed, without a reload.
    assert seen["story"][0] == "pending" and seen["renders"][0] == "blocked"
    assert all(len(seen[s]) >= 2 for s in steps), seen
    # The story completes once its shots have rendered: video renders that take seconds each on a
    # machine running both suites at once, so it is waited for as long as the first shot is below.
    expect(page.locator("#story-head .status")).to_have_text("Completed", timeout=60_000)
    print(f"worker start to the story head saying Completed: {time.monotonic() - started:.2f} s")
    expect(page.locator("#step-prompts")).to_contain_text(re.compile(r"(\d+)/\1 shots"))
    expect(page.locator("#step-story")).to_contain_text("Sim writer")

    # The first shot's render appears in the gallery, on the same page.
    first = page.locator("#gallery-1 video")
    expect(first).to_be_visible(timeout=60_000)
    print(f"worker start to the first shot in the gallery: {time.monotonic() - started:.2f} s")
    job = RenderJob.objects.get(story=str(story.code), target="shot:1", status=RenderJob.COMPLETED)
    expect(page.locator("#gallery-1")).to_contain_text("Download")
    # Once every render has landed the gallery stops changing (and so is no longer swapped): the
    # first shot's video plays from its file.
    expect(page.locator("#story-tab")).not_to_have_attribute("data-in-flight", "true", timeout=60_000)
    # Asked of whichever element the page shows when it looks: a live update that lands meanwhile
    # (the same gallery again, fetched before the last one was seen) replaces the element, and a
    # handle to the old one would wait on a video no longer in the page.
    page.wait_for_function(
        """() => {
            const v = document.querySelector("#gallery-1 video");
            if (!v) return false;
            if (!v.dataset.asked) { v.dataset.asked = "1"; v.preload = "metadata"; v.load(); }
            return v.readyState >= 1 && v.duration > 0;
        }""",
        timeout=15_000,
    )
    assert first.get_attribute("src") == f"/media/{job.outputs[0]['path']}"
    assert_not_reloaded(page, navigations)

    page.screenshot(path=SCREENSHOT.with_name("story-gallery.png"), full_page=True)

    # Re-run from the characters: after a confirmation, they and what follows run again, live,
    # and the run they replace is listed as an earlier version.
    # A correction by hand that would re-run other steps asks first, naming them; declined, it
    # saves nothing.
    asked: list[str] = []
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.get_by_role("link", name="Characters").click()
    first = page.locator("form.character-form").first
    first.locator("textarea[name=look]").fill("a red raincoat")
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    first.get_by_role("button", name=re.compile("^Save ")).click()
    expect(page.locator("#story-tab")).to_be_visible()
    assert asked and asked[0].startswith("Saving this re-runs what depends on the characters: Shots, Visual prompts")
    page.get_by_role("link", name="Gallery").click()

    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    settled(page)
    page.locator("#story-steps select[name=step]").select_option("characters")
    page.get_by_role("button", name="Re-run", exact=True).click()
    expect(page.locator("#messages")).to_contain_text("Re-running from Characters")
    # The question named the steps that run again, and only those.
    assert asked[1].startswith("Re-run from Characters? Characters, Shots, Visual prompts, Renders run again: ")
    assert asked[1].endswith("Story, Segments, Narration, Music cues stay as they are."), asked[1]
    # The declined correction was never sent (requests come in order: the re-run's came after).
    assert [u for u in posts if "/characters/" in u] == [] and any("/actions/rerun/" in u for u in posts)
    expect(page.locator("#step-characters")).to_contain_text("1 earlier version", timeout=10_000)
    expect(page.locator("#step-characters")).to_have_attribute("data-status", "completed", timeout=30_000)
    expect(page.locator("#step-story .step-info")).to_contain_text("attempt 1/3")  # upstream left alone

    # A reload mid-way keeps what is done and goes on following the rest live.
    page.reload()
    expect_live(page, "connected", 10)
    navigations = watch_navigation(page)
    for s in ("story", "segments", "characters", "narration", "music"):
        expect(page.locator(f"#step-{s}")).to_have_attribute("data-status", "completed")
    expect(page.locator("#step-characters")).to_contain_text("1 earlier version")
    for s in steps:
        expect(page.locator(f"#step-{s}")).to_have_attribute("data-status", "completed", timeout=30_000)
    expect(page.locator("#story-head .status")).to_have_text("Completed", timeout=60_000)  # rendered again
    # An action the story no longer allows (a page left open elsewhere) says why, and changes nothing.
    page.evaluate(
        "url => htmx.ajax('POST', url, {source: document.body, swap: 'none'})",
        f"/stories/{story.code}/actions/resume/",
    )
    expect(page.locator("#messages")).to_contain_text("The story is not stopped.")
    assert_not_reloaded(page, navigations)
    # Every render that completed, before and after the re-run, ran exactly once on the node.
    done = RenderJob.objects.filter(story=str(story.code), status=RenderJob.COMPLETED)
    assert done and {j.code: executions(pool, j) for j in done} == {j.code: 1 for j in done}
    if os.environ.get("SPOONFEEDER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(SCREENSHOT, SCREENSHOTS / "story-detail.png")


@pytest.mark.browser
def test_an_editor_the_user_opened_stays_open_when_the_tab_follows_the_story(
    page: Page, stack: Stack, user: User
) -> None:
    from stories.models import Shot
    from tests.test_story_pages import story_with

    load()
    story = story_with(2)
    stack.web()
    log_in(page)
    page.goto(f"/stories/{story.code}/shots/")
    expect_live(page, "connected", 10)
    settled(page)
    editor = page.locator("#edit-prompt-1")
    editor.locator("summary").click()
    expect(editor).to_have_attribute("open", "")
    # The story changes, and the tab asks for itself again (as when news of it comes over the socket).
    Shot.objects.filter(story=story, number=2).update(positive="a gull over the pier")
    page.evaluate("() => htmx.trigger(document.getElementById('story-tab'), 'story:changed')")
    expect(page.locator("#piece-2")).to_contain_text("a gull over the pier")  # swapped in
    expect(page.locator("#edit-prompt-1")).to_have_attribute("open", "")
    expect(page.locator("#edit-prompt-2")).not_to_have_attribute("open", "")
