"""The Batches feature in headless chromium against real processes (daphne and the worker cluster on
the test database) and a simulated ComfyUI that renders a still in a second or two: a seed batch
previewed and queued through the form whose thumbnails fill in live, a parameter grid shown with
its rows and columns labelled, and a batch paused, resumed and deleted with its row's controls.

The simulated ComfyUI listens on 127.0.60.x in the SQLite mode and on 127.0.61.x in the PostgreSQL
mode (DATABASE_URL set), so the two modes can run at the same time on one machine.
"""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders import batches
from renders.management.commands.load_templates import load
from renders.models import Batch, RenderJob, Template
from tests import test_browser
from tests.conftest import Stack, executions, free_port, wait_until
from tests.test_browser import SCREENSHOTS, assert_not_reloaded, expect_live, log_in, settled, watch_navigation

# The browser tests' fixtures: headless chromium, and a loopback-only page on the stack's address.
browser, page = test_browser.browser, test_browser.page

SIM_HOST = "127.0.61.2" if os.environ.get("DATABASE_URL") else "127.0.60.2"
# A model-free still that takes a seed and a size: five graph nodes, so at 0.3 s a node an item
# renders in about 1.5 s, long enough to watch a batch fill in, short enough to keep tests fast.
STILL = "test-still-image-slow"
T = TypeVar("T")


@pytest.fixture
def comfyui(transactional_db: None) -> Iterator[SimComfyUI]:
    sim = SimComfyUI(SIM_HOST, free_port(SIM_HOST), seconds_per_node=0.3).start()
    node = Node.objects.create(name="Sim GPU", host=SIM_HOST)
    Capability.objects.create(node=node, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    load()
    yield sim
    sim.close()


def runs(sim: SimComfyUI, batch: Batch) -> dict[int, int]:
    """How many times the node ran each item of the batch (by index), from its own files."""
    return {job.index: executions(sim, job) for job in batch.items.all()}


def stays(value: Callable[[], T], seconds: float, what: str) -> T:
    """`value()` over `seconds`, failing as soon as it differs from what it was at the start."""
    first = value()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = value()
        assert now == first, f"{what} changed: {first!r}, then {now!r}"
        time.sleep(0.1)
    return first


def thumbnails(page: Page) -> int:
    return page.locator("#batch-items-1 img.thumb").count()


def fill_batch_form(page: Page, kind: str, name: str) -> None:
    """Open the form, choose the still template (the form is fetched again, fitted to it), name
    the batch and choose its kind and a small size."""
    page.get_by_text("Queue a batch").click()
    page.get_by_label("Template").select_option(label=STILL)
    expect(page.locator("#batch-form")).to_contain_text(f"Settings start at what {STILL} renders with")
    page.locator("#id_name").fill(name)
    page.locator("#id_prompt").fill(f"{name}, a test")
    page.get_by_label("Kind").select_option(label=kind)
    page.get_by_label("Resolution").select_option("512x512")


def batch_of(page: Page) -> Batch:
    found = re.search(r"/renders/batches/([0-9a-f-]{36})/$", page.url)
    assert found, f"not on a batch page: {page.url}"
    return Batch.objects.get(code=found.group(1))


@pytest.mark.browser
def test_a_seed_batch_is_previewed_queued_and_its_thumbnails_fill_in_live_each_rendered_once(
    page: Page, stack: Stack, user: User, comfyui: SimComfyUI
) -> None:
    """The form previews four seeds before anything is made; queued, the batch page shows each
    thumbnail as its item finishes, without a reload, until it says 4 of 4 done; the node ran
    each item once; the contact sheet is a PNG and the zip holds the four images."""
    stack.web()
    stack.worker()
    log_in(page)
    page.goto("/renders/batches/")
    expect_live(page, "connected", 10)
    expect(page.locator("#batch-list")).to_contain_text("No batches yet")

    fill_batch_form(page, "Seed variations", "Four lighthouses")
    page.get_by_label("How many").fill("4")
    with page.expect_navigation():
        page.get_by_role("button", name="Preview").click()
    preview = page.locator("#batch-preview")
    expect(preview).to_contain_text("4 items · 4 images of one prompt, each with its own seed.")
    expect(preview.locator("li")).to_have_count(4)
    expect(preview.locator("li").first).to_contain_text(re.compile(r"Four lighthouses, a test · seed \d+"))
    assert not Batch.objects.exists()
    page.screenshot(path=str(SCREENSHOTS / "batch-preview.png"), full_page=True)

    with page.expect_navigation():
        page.get_by_role("button", name="Queue batch").click()
    expect(page).to_have_url(re.compile(r"/renders/batches/[0-9a-f-]{36}/$"))
    expect(page.locator("#messages")).to_contain_text("Queued batch Four lighthouses: 4 items.")
    batch = batch_of(page)
    assert (batch.kind, batch.total, batch.template.name) == ("seeds", 4, STILL)
    expect_live(page, "connected", 10)
    navigations = watch_navigation(page)

    started = time.monotonic()
    seen = [thumbnails(page)]
    deadline = started + 60
    while seen[-1] < 4 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        if thumbnails(page) != seen[-1]:
            seen.append(thumbnails(page))
    print(f"thumbnails shown, in turn: {seen}, all four {time.monotonic() - started:.2f} s after queueing")
    assert seen[-1] == 4, f"the batch page showed {seen[-1]} of 4 thumbnails after 60 s"
    assert len([n for n in seen if 0 < n < 4]) >= 1, f"the thumbnails did not come one by one: {seen}"
    row = page.locator(f"#batch-{batch.code}")
    expect(row.locator(".status")).to_have_text("Completed", timeout=30_000)
    expect(row.locator(".batch-counts")).to_have_text("4 of 4 done")
    expect(row.locator("progress.bar")).to_have_attribute("value", "4")
    expect(row.locator("progress.bar")).to_have_attribute("max", "4")
    for img in page.locator("#batch-items-1 img.thumb").all():
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert_not_reloaded(page, navigations)

    assert runs(comfyui, batch) == {0: 1, 1: 1, 2: 1, 3: 1}
    seeds = sorted(batch.items.values_list("settings__seed", flat=True))
    captions = " ".join(page.locator("#batch-items-1 figcaption").all_inner_texts())
    assert sorted(int(seed) for seed in re.findall(r"seed (\d+)", captions)) == seeds

    sheet = page.get_by_role("link", name="Contact sheet")
    expect(sheet).to_have_attribute("href", f"/renders/batches/{batch.code}/sheet.png")
    png = page.request.get(sheet.get_attribute("href") or "")
    assert png.ok and png.body()[:8] == b"\x89PNG\r\n\x1a\n"
    download = page.get_by_role("link", name="Download all (4)")
    got = page.request.get(download.get_attribute("href") or "")
    assert got.ok and got.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(got.body())).namelist()
    assert len(names) == 4 and all(n.endswith(".png") for n in names), names
    page.screenshot(path=str(SCREENSHOTS / "batch-seeds.png"), full_page=True)


@pytest.mark.browser
def test_a_parameter_grid_batch_shows_its_items_on_rows_and_columns_labelled_with_the_axes(
    page: Page, stack: Stack, user: User, comfyui: SimComfyUI
) -> None:
    """Two seeds by two sizes: the preview says 2 × 2 = 4, and once done the batch page's grid
    view has the seeds down the side, the sizes across the top, and each cell the item of that
    seed and size, its thumbnail shown."""
    stack.web()
    stack.worker()
    log_in(page)
    page.goto("/renders/batches/")
    expect_live(page, "connected", 10)

    fill_batch_form(page, "Parameter grid", "Seeds by sizes")
    page.get_by_label("Rows").fill("seed=1,2")
    page.get_by_label("Columns").fill("size=512x512,768x768")
    with page.expect_navigation():
        page.get_by_role("button", name="Preview").click()
    expect(page.locator("#batch-preview")).to_contain_text("4 items · 2 seed × 2 size = 4 items.")
    with page.expect_navigation():
        page.get_by_role("button", name="Queue batch").click()
    batch = batch_of(page)
    expect_live(page, "connected", 10)

    row = page.locator(f"#batch-{batch.code}")
    expect(row.locator(".status")).to_have_text("Completed", timeout=60_000)
    expect(row.locator(".batch-counts")).to_have_text("4 of 4 done")
    grid = page.locator("table.grid-view")
    expect(grid.locator("img.thumb")).to_have_count(4)
    expect(grid.locator("thead th")).to_have_text(["seed \\ size", "512x512", "768x768"])
    expect(grid.locator("tbody th[scope=row]")).to_have_text(["1", "2"])
    for r, seed in enumerate(("1", "2")):
        for c, size in enumerate(("512x512", "768x768")):
            cell = grid.locator("tbody tr").nth(r).locator("td").nth(c)
            expect(cell.locator("figcaption")).to_contain_text(f"seed {seed} · size {size}")
    for img in grid.locator("img.thumb").all():
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    sizes = {
        (job.labels["seed"], job.labels["size"]): (job.settings["seed"], job.settings["width"])
        for job in batch.items.all()
    }
    assert sizes == {
        ("1", "512x512"): (1, 512),
        ("1", "768x768"): (1, 768),
        ("2", "512x512"): (2, 512),
        ("2", "768x768"): (2, 768),
    }
    assert runs(comfyui, batch) == {0: 1, 1: 1, 2: 1, 3: 1}
    page.screenshot(path=str(SCREENSHOTS / "batch-grid.png"), full_page=True)


@pytest.mark.browser
def test_a_batch_paused_from_its_row_starts_nothing_until_resumed_then_is_deleted_after_confirming(
    page: Page, stack: Stack, user: User, comfyui: SimComfyUI
) -> None:
    """The row's Pause shows Pausing or Paused live; once paused, the node runs nothing of it
    (its count there stays put); Resume makes it finish, every item rendered once; Delete asks
    on a page of its own, and the batch leaves the list while its finished renders stay."""
    template = Template.objects.get(name=STILL)
    items = batches.seed_variations("a lighthouse", {"width": 512, "height": 512}, template, count=6)
    stack.web()
    stack.worker()
    log_in(page)
    page.goto("/renders/batches/")
    expect_live(page, "connected", 10)
    batch = Batch.make(name="Six lighthouses", kind=Batch.SEEDS, template=template, items=items, prompt="a lighthouse")
    row = page.locator(f"#batch-{batch.code}")
    expect(row.locator(".status")).to_have_text("Running", timeout=30_000)
    expect(row.locator(".batch-counts")).to_contain_text("1 rendering", timeout=30_000)
    navigations = watch_navigation(page)

    settled(page)
    row.get_by_role("button", name="Pause", exact=True).click()
    expect(row.locator(".status")).to_have_text(re.compile("Pausing|Paused"), timeout=10_000)
    expect(row.locator(".status")).to_have_text("Paused", timeout=30_000)
    expect(row.get_by_role("button", name="Resume")).to_be_visible()
    expect(row.get_by_role("button", name="Pause", exact=True)).to_have_count(0)
    wait_until(
        lambda: not batch.items.filter(status__in=RenderJob.ON_NODE).exists(),
        60,
        "the item running at the pause to finish",
        describe=lambda: list(batch.items.values_list("status", flat=True)),
    )
    expect(row.locator(".batch-counts")).not_to_contain_text("rendering")
    ran = stays(lambda: runs(comfyui, batch), 4, "what the node ran of the paused batch")
    done = sum(ran.values())
    assert 0 < done < 6 and set(ran.values()) <= {0, 1}, ran
    expect(row.locator(".batch-counts")).to_have_text(f"{done} of 6 done · {6 - done} waiting")
    page.screenshot(path=str(SCREENSHOTS / "batches-paused.png"), full_page=True)

    settled(page)
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".status")).to_have_text(re.compile("Running|Completed"), timeout=10_000)
    expect(row).to_contain_text(re.compile(r"about \d+ s left"), timeout=10_000)
    expect(row.locator(".status")).to_have_text("Completed", timeout=60_000)
    expect(row.locator(".batch-counts")).to_have_text("6 of 6 done")
    assert_not_reloaded(page, navigations)
    assert runs(comfyui, batch) == {i: 1 for i in range(6)}

    row.get_by_role("link", name="Delete…").click()
    expect(page).to_have_url(f"{stack.url}/renders/batches/{batch.code}/delete/")
    expect(page.locator("h1")).to_have_text("Delete batch Six lighthouses?")
    expect(
        page.get_by_text("It has 6 items: 6 finished, 0 failed, 0 cancelled, 0 on a node, 0 waiting.")
    ).to_be_visible()
    expect(page.get_by_label("Keep them, as renders of their own (in the History)")).to_be_checked()
    with page.expect_navigation():
        page.get_by_role("button", name="Delete the batch").click()
    expect(page).to_have_url(f"{stack.url}/renders/batches/")
    expect(page.locator("#messages")).to_contain_text("Deleted batch Six lighthouses.")
    expect(page.locator(f"#batch-{batch.code}")).to_have_count(0)
    expect(page.locator("#batch-list")).to_contain_text("No batches yet")
    assert not Batch.objects.exists()
    assert RenderJob.objects.filter(status=RenderJob.COMPLETED, batch=None).count() == 6
