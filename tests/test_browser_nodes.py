"""The Nodes page in headless chromium against real processes (daphne + qcluster on the test
database) and a simulated Ollama and ComfyUI on a loopback address of their own: adding a node,
its statuses turning online live, a test render whose image appears on the card, a service going
offline after repeated failed checks, disabling and removing the node.

The simulated services listen on 127.0.40.x in the SQLite mode and on 127.0.41.x in the PostgreSQL
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
from django_q.models import Task
from playwright.sync_api import Locator, Page, expect

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from nodes.sim.ollama import SimOllama
from renders.models import RenderJob
from tests import test_browser
from tests.conftest import Stack, executions, free_port, wait_until
from tests.test_browser import SCREENSHOTS, assert_not_reloaded, expect_live, log_in, settled, watch_navigation

# The browser tests' fixtures: headless chromium, and a loopback-only page on the stack's address.
browser, page = test_browser.browser, test_browser.page

SIM_HOST = "127.0.41.2" if os.environ.get("DATABASE_URL") else "127.0.40.2"


@pytest.fixture
def sims() -> Iterator[tuple[SimOllama, SimComfyUI]]:
    ollama = SimOllama(SIM_HOST, free_port(SIM_HOST))
    comfyui = SimComfyUI(SIM_HOST, free_port(SIM_HOST), seconds_per_node=0.05)
    ollama.start()
    try:
        comfyui.start()
        yield ollama, comfyui
    finally:
        ollama.stop()
        comfyui.close()


def badge(page: Page, code: str, kind: str) -> Locator:
    return page.locator(f"#cap-{code}-{kind} .status")


def checks_done() -> int:
    return Task.objects.filter(func="nodes.tasks.check_node", success=True).count()


def wait_for_checks(done: int, what: str) -> None:
    wait_until(lambda: checks_done() >= done, 30, what)


@pytest.mark.browser
def test_a_node_added_in_the_browser_goes_online_renders_goes_offline_and_is_removed(
    page: Page,
    stack: Stack,
    user: User,
    sims: tuple[SimOllama, SimComfyUI],
    tmp_path: Path,
) -> None:
    from renders.management.commands.load_templates import load

    load()  # as `run` does: the shipped test template a test render renders
    ollama, comfyui = sims
    stack.web()
    stack.worker()
    log_in(page)

    page.goto("/nodes/")
    expect(page.locator("#node-list")).to_contain_text("No machines yet")
    page.get_by_role("link", name="Add a node").click()
    page.get_by_label("Name", exact=True).fill("Lab GPU")
    page.get_by_label("Host", exact=True).fill(SIM_HOST)
    page.get_by_label("Ollama port").fill(str(ollama.port))
    page.get_by_label("ComfyUI port").fill(str(comfyui.port))  # not exact: the label reads "Comfyui port" today
    started = time.monotonic()
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(f"{stack.url}/nodes/")
    expect(page.locator("#messages")).to_contain_text("Added Lab GPU; checking it now.")

    node = Node.objects.get(name="Lab GPU")
    code = str(node.code)
    card = page.locator(f"#node-{code}")
    expect(card).to_contain_text(SIM_HOST)
    expect_live(page, "connected", 10)
    navigations = watch_navigation(page)

    # The worker checks the new node; the page hears of it over the socket.
    expect(badge(page, code, "ollama")).to_have_text("online", timeout=30_000)
    expect(badge(page, code, "comfyui")).to_have_text("online", timeout=30_000)
    print(f"added to both online: {time.monotonic() - started:.2f} s")
    # A full check came with it: the inventories are on the card.
    expect(page.locator(f"#cap-{code}-ollama")).to_contain_text(re.compile(r"[1-9]\d* models?"))
    expect(page.locator(f"#cap-{code}-comfyui")).to_contain_text(re.compile(r"[1-9]\d* node classes"))

    started = time.monotonic()
    card.get_by_role("button", name="Test render").click()
    expect(page.locator("#messages")).to_contain_text("Test render queued on Lab GPU")
    image = page.locator(f"#test-render-{code} img")
    expect(image).to_be_visible(timeout=30_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=10_000)
    print(f"test render click to image shown: {time.monotonic() - started:.2f} s")
    expect(page.locator(f"#test-render-{code}")).to_contain_text("Test render: done")
    run = RenderJob.objects.get(pin=node, target="test")
    assert (run.status, run.node_id, len(run.outputs), executions(comfyui, run)) == ("completed", node.pk, 1, 1), (
        run.status,
        run.error,
    )

    # The Ollama goes away. One failed check is a blip; the third in a row marks it offline.
    ollama.stop()
    for n in range(1, 4):
        done = checks_done() + 1
        page.evaluate("document.getElementById('messages').replaceChildren()")  # this click's own message
        settled(page)  # click once the card has stopped changing, as a person would
        pushes = page.evaluate("window.__pushes")
        card.get_by_role("button", name="Check now").click()
        expect(page.locator("#messages")).to_contain_text("Checking Lab GPU")
        # One check at a time, as a person waiting for each answer would click: the check done,
        # and the page told of it.
        wait_for_checks(done, f"check {n} to finish")
        page.wait_for_function("seen => window.__pushes > seen", arg=pushes, timeout=10_000)
        if n < 3:
            expect(badge(page, code, "ollama")).to_have_text("online")
            expect(page.locator(f"#cap-{code}-ollama .error")).to_be_visible()
    expect(badge(page, code, "ollama")).to_have_text("offline", timeout=10_000)
    expect(page.locator(f"#cap-{code}-ollama .error")).not_to_be_empty()
    error = Capability.objects.get(node=node, kind="ollama").last_error
    assert error
    expect(page.locator(f"#cap-{code}-ollama .error")).to_have_text(error)
    expect(badge(page, code, "comfyui")).to_have_text("online")
    expect(page.locator(f"#test-render-{code} img")).to_be_visible()

    shot = tmp_path / "nodes.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SPOONFEEDER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "nodes.png", full_page=True)

    card.get_by_role("button", name="Disable").click()
    expect(card.locator(".tag", has_text="disabled")).to_be_visible(timeout=10_000)
    expect(card.get_by_role("button", name="Enable")).to_be_visible()
    expect(page.locator("#messages")).to_contain_text("Lab GPU is disabled.")
    assert not Node.objects.get(pk=node.pk).enabled
    assert_not_reloaded(page, navigations)

    card.get_by_role("link", name="Remove").click()
    expect(page).to_have_url(f"{stack.url}/nodes/{code}/remove/")
    expect(page.get_by_role("heading", name="Remove Lab GPU?")).to_be_visible()
    with page.expect_navigation():
        page.get_by_role("button", name="Remove Lab GPU").click()
    expect(page).to_have_url(f"{stack.url}/nodes/")
    expect(page.locator("#messages")).to_contain_text("Removed Lab GPU.")
    expect(page.locator(f"#node-{code}")).to_have_count(0)
    expect(page.locator("#node-list")).to_contain_text("No machines yet")
    assert not Node.objects.filter(pk=node.pk).exists()
    assert not Capability.objects.filter(node_id=node.pk).exists()
