"""The Render queue page in headless chromium against real processes (daphne and the worker
cluster on the test database) and a simulated ComfyUI that takes about a second per graph node:
queueing test videos through the render settings form, reordering and cancelling, a progress bar
that moves without a reload, finished jobs with thumbnails, and a finished video that plays.

The simulated ComfyUI listens on 127.0.50.x in the SQLite mode and on 127.0.51.x in the PostgreSQL
mode (DATABASE_URL set), so the two modes can run at the same time on one machine.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders.management.commands.load_templates import load
from renders.models import RenderJob
from tests import test_browser
from tests.conftest import Stack, executions, free_port, wait_until
from tests.test_browser import SCREENSHOTS, assert_not_reloaded, expect_live, log_in, settled, watch_navigation

# The browser tests' fixtures: headless chromium, and a loopback-only page on the stack's address.
browser, page = test_browser.browser, test_browser.page

SIM_HOST = "127.0.51.2" if os.environ.get("DATABASE_URL") else "127.0.50.2"


@pytest.fixture
def comfyui(transactional_db: None) -> Iterator[SimComfyUI]:
    # About a second per graph node, so a render lasts long enough to watch it move.
    sim = SimComfyUI(SIM_HOST, free_port(SIM_HOST), seconds_per_node=1.5).start()
    node = Node.objects.create(name="Sim GPU", host=SIM_HOST)
    Capability.objects.create(node=node, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    load()
    yield sim
    sim.close()


def queued_codes(page: Page) -> list[str]:
    ids = page.locator("#queued .job").evaluate_all("rows => rows.map(r => r.id)")
    return [i.removeprefix("job-") for i in ids]


def bar_width(page: Page, code: str) -> str | None:
    bar = page.locator(f"#rendering #job-{code} progress.bar")
    if not bar.count():
        return None
    return f"{bar.evaluate('e => e.value')}%"


@pytest.mark.browser
def test_videos_queued_in_the_browser_render_live_reorder_cancel_and_play(
    page: Page, stack: Stack, user: User, comfyui: SimComfyUI, tmp_path: Path
) -> None:
    stack.web()
    stack.worker()
    log_in(page)
    page.goto("/renders/")
    expect_live(page, "connected", 10)

    # Paused, the three jobs wait where the user can see and reorder all of them.
    page.get_by_role("button", name="Pause", exact=True).click()
    expect(page.locator("#queue-controls .tag")).to_have_text("paused", timeout=10_000)
    # (The "Paused" message may not show: if the live snapshot replaced the button while the click
    # was in flight, htmx drops the answer of a detached element. The tag above is what counts.)

    page.get_by_text("Queue a render").click()
    page.get_by_label("Template").select_option(label="test-video-mp4")
    # The form is fetched again, fitted to the template: its own settings, and only those it takes.
    expect(page.locator("#render-form-template")).to_contain_text("test-video-mp4")
    expect(page.get_by_label("Frames")).to_have_value("24")
    expect(page.get_by_label("Steps")).to_have_count(0)
    page.get_by_label("Name", exact=True).fill("a paper boat on a pond")  # the template takes no prompt
    page.get_by_label("Resolution").select_option("512x512")
    page.get_by_label("Frames").fill("24")
    page.get_by_label("Count").fill("3")
    with page.expect_navigation():
        page.get_by_role("button", name="Queue", exact=True).click()
    expect(page.locator("#messages")).to_contain_text("Queued 3 render jobs.")
    jobs = list(RenderJob.objects.order_by("position"))
    assert [(j.status, j.template.name, j.settings["frames"]) for j in jobs] == [("queued", "test-video-mp4", 24)] * 3
    first, second, third = (str(j.code) for j in jobs)
    expect(page.locator("#queued .job")).to_have_count(3)
    assert queued_codes(page) == [first, second, third]
    expect(page.locator("#render-counts #renders-queued")).to_have_text("3")
    # Each says why it waits.
    expect(page.locator("#queued .job .waiting")).to_have_text(["the queue is paused"] * 3)
    expect_live(page, "connected", 10)
    navigations = watch_navigation(page)

    settled(page)
    page.locator(f"#job-{third}").get_by_title("To the top").click()
    expect(page.locator("#messages")).to_contain_text("Moved top.")
    expect(page.locator("#queued .job").first).to_have_id(f"job-{third}", timeout=10_000)
    assert queued_codes(page) == [third, first, second]

    started = time.monotonic()
    page.get_by_role("button", name="Resume", exact=True).click()
    expect(page.locator("#queue-controls .tag")).to_have_count(0, timeout=10_000)
    # Rendering, with its progress bar (sent ahead, it is first shown as next on its node).
    expect(page.locator(f"#rendering #job-{third} progress.bar")).to_be_visible(timeout=20_000)
    print(f"resume to the moved job shown rendering: {time.monotonic() - started:.2f} s")
    # The node renders one and holds the next in its own queue: the last one waits for it, and says so.
    expect(page.locator(f"#queued #job-{second} .waiting")).to_have_text(
        "every ComfyUI is busy (0 ahead of it)", timeout=10_000
    )
    page.screenshot(path=str(SCREENSHOTS / "queue-waiting.png"), full_page=True)

    # The progress bar moves while the job renders, without a reload.
    widths: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(set(widths)) < 2:
        width = bar_width(page, third)
        if width is None:
            break  # it left #rendering
        if not widths or widths[-1] != width:
            widths.append(width)
        page.wait_for_timeout(100)
    print(f"progress bar widths seen: {widths}")
    assert len(set(widths)) >= 2, f"the progress bar never moved while the job rendered: {widths}"
    expect(page.locator(f"#rendering #job-{third}")).to_contain_text(re.compile(r"\d+%"))

    # One job renders, the next may already wait in the node's queue; cancel the last one still queued.
    expect(page.locator("#queued .job")).not_to_have_count(0)
    cancelled = queued_codes(page)[-1]
    assert cancelled in (first, second)
    page.locator(f"#queued #job-{cancelled}").get_by_role("button", name="Cancel").click()
    expect(page.locator("#messages")).to_contain_text("Cancelled.")
    expect(page.locator(f"#queued #job-{cancelled}")).to_have_count(0, timeout=10_000)
    expect(page.locator(f"#finished #job-{cancelled}")).to_contain_text("cancelled", timeout=10_000)
    rendered = [third] + [c for c in (first, second) if c != cancelled]

    for code in rendered:
        thumb = page.locator(f"#finished #job-{code} img.thumb")
        expect(thumb).to_be_visible(timeout=60_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
        expect(page.locator(f"#finished #job-{code}")).to_contain_text("Download")
    print(f"resume to both videos shown finished: {time.monotonic() - started:.2f} s")
    expect(page.locator("#renders-completed")).to_have_text("2")
    expect(page.locator("#rendering")).to_contain_text("Nothing is rendering.")
    assert_not_reloaded(page, navigations)
    assert {j.code.hex: j.status for j in RenderJob.objects.all()} == {
        code.replace("-", ""): "cancelled" if code == cancelled else "completed" for code in (first, second, third)
    }
    # Each rendered once on the node, the cancelled one never finished there.
    assert {j.code.hex: executions(comfyui, j) for j in RenderJob.objects.all()} == {
        code.replace("-", ""): 0 if code == cancelled else 1 for code in (first, second, third)
    }

    shot = tmp_path / "renders.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SPOONFEEDER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "renders.png", full_page=True)

    # A video's thumbnail plays under the pointer and opens full size in a lightbox.
    thumb = page.locator(f"#finished #job-{third} a.lightbox")
    thumb.hover()
    expect(thumb.locator("video.hover-play")).to_have_count(1)
    page.mouse.move(0, 0)
    expect(thumb.locator("video.hover-play")).to_have_count(0)
    thumb.click()
    expect(page.locator("dialog#lightbox video")).to_be_visible()
    page.wait_for_function(
        "() => { const v = document.querySelector('dialog#lightbox video'); return v && v.readyState >= 1; }",
        timeout=15_000,
    )
    page.screenshot(path=str(SCREENSHOTS / "lightbox.png"))
    page.keyboard.press("Escape")
    expect(page.locator("dialog#lightbox")).not_to_be_visible()

    page.locator(f"#finished #job-{third} a[href='/renders/{third}/']").first.click()
    expect(page).to_have_url(f"{stack.url}/renders/{third}/")
    video = page.locator("video")
    expect(video).to_have_count(1)
    page.wait_for_function("v => v.readyState >= 1 && v.duration > 0", arg=video.element_handle(), timeout=15_000)
    duration = video.evaluate("v => v.duration")
    print(f"the finished video plays: {duration:.2f} s, {video.evaluate('v => v.videoWidth')} px wide")
    assert 0.5 < duration < 3  # 24 frames at 24 fps
    job = RenderJob.objects.get(code=third)
    expect(page.locator("#job-settings")).to_contain_text(f"Seed{job.used()['seed']}")
    expect(page.get_by_role("link", name="Download")).to_have_attribute(
        "download", f"a-paper-boat-on-a-pond-{third[:8]}.mp4"
    )
    # Reuse settings: the form, open, filled in with what the job rendered with.
    page.get_by_role("link", name="Reuse settings").click()
    expect(page.locator("#render-card")).to_have_attribute("open", "")
    expect(page.get_by_label("Seed")).to_have_value(str(job.used()["seed"]))
    expect(page.get_by_label("Frames")).to_have_value("24")
    expect(page.get_by_label("Name", exact=True)).to_have_value("a paper boat on a pond")


@pytest.mark.browser
def test_dragging_a_queued_job_onto_another_reorders_the_queue(page: Page, stack: Stack, user: User) -> None:
    from renders.models import Queue, Template

    load()
    Queue.set_paused(True)
    template = Template.objects.get(name="test-still-image")
    jobs = [RenderJob.objects.create(template=template, prompt=f"drag {i}", position=i) for i in range(3)]
    stack.web()
    log_in(page)
    page.goto("/renders/")
    expect_live(page, "connected", 10)
    expect(page.locator("#queued .job")).to_have_count(3)
    navigations = watch_navigation(page)

    page.locator(f"#job-{jobs[2].code}").drag_to(page.locator(f"#job-{jobs[0].code}"))

    expect(page.locator("#queued .job").first).to_have_id(f"job-{jobs[2].code}", timeout=10_000)
    assert queued_codes(page) == [str(jobs[2].code), str(jobs[0].code), str(jobs[1].code)]
    assert_not_reloaded(page, navigations)


def eta_shown(page: Page, code: str) -> str:
    line = page.locator(f"#rendering #job-{code} > p").inner_text()
    found = re.search(r"about \d+ s left|finishing…", line)
    assert found, f"no time left on the job's line: {line!r}"
    return found.group(0)


def seconds_shown(page: Page, code: str) -> int:
    said = eta_shown(page, code)
    return 0 if said == "finishing…" else int(said.split()[1])


def pushes(page: Page) -> int:
    return int(page.evaluate("window.__pushes"))


@pytest.mark.browser
def test_a_rendering_jobs_time_left_counts_down_between_progress_reports(page: Page, stack: Stack, user: User) -> None:
    """No worker and no node: the job's row says it renders half done on a node that takes a
    second per unit of its 40, so 20 s are left until a progress report says otherwise."""
    from renders.models import Speed, Template

    template = Template.objects.create(name="slow video", workflow={"1": {"class_type": "SaveImage", "inputs": {}}})
    gpu = Node.objects.create(name="Slow GPU", host=SIM_HOST)
    cap = Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=8188, status=Capability.ONLINE)
    Speed.objects.create(capability=cap, template=template, seconds_per_unit=1.0)
    job = RenderJob.objects.create(
        template=template, status=RenderJob.RENDERING, node=gpu, capability=cap, work=40, progress=0.5
    )
    code = str(job.code)
    stack.web()
    log_in(page)
    page.goto("/renders/")
    expect_live(page, "connected", 10)
    settled(page)  # the snapshot is in; from here on, pushes are counted
    quiet = pushes(page)
    first = seconds_shown(page, code)
    assert 18 <= first <= 20, eta_shown(page, code)

    # It counts down by itself, a second at a time: nothing came from the server meanwhile.
    wait_until(lambda: seconds_shown(page, code) <= first - 3, 6, "the time left to count down 3 s")
    assert pushes(page) == quiet, "the server pushed something: the count is not the page's own"

    # A live update that draws the job again without new progress (something else changed):
    # the count goes on where it was, not back to the 20 s the row still says.
    before = seconds_shown(page, code)
    job.changed()
    wait_until(lambda: pushes(page) > quiet, 10, "the live update to arrive")
    assert seconds_shown(page, code) <= before

    # A progress report with a fresh figure: the count starts again from it.
    RenderJob.objects.filter(pk=job.pk).update(progress=0.25)  # 30 s left
    job.changed("job.progress")
    wait_until(lambda: seconds_shown(page, code) >= 28, 10, "the fresh figure to show")
    wait_until(lambda: seconds_shown(page, code) <= 27, 5, "the fresh figure to count down")

    # Near the end, it says it is finishing rather than a time in the past.
    RenderJob.objects.filter(pk=job.pk).update(progress=0.95)  # 2 s left
    job.changed("job.progress")
    expect(page.locator(f"#rendering #job-{code} > p")).to_contain_text("about 2 s left", timeout=10_000)
    expect(page.locator(f"#rendering #job-{code} > p")).to_contain_text("finishing…", timeout=5_000)
    page.screenshot(path=str(SCREENSHOTS / "queue-finishing.png"), full_page=True)
