"""The layout as a person sees it, in headless chromium against the web process (no worker: what
the pages show stays put): at 390 px wide no page is wider than the screen and the main menu
folds behind a Menu button, while at 1440 px its links show; the theme follows the system's light
or dark setting, with readable text in both; a form's buttons are of one height, a grid of fields
lines up its labels and controls, and the prompt editor is wide, tall and can be made taller.

One web process and one browser page serve every check: the page is resized and its colour
scheme switched between them.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from nodes.models import Capability, Node
from renders.management.commands.load_templates import load
from renders.models import RenderJob, Template
from stories.models import Story
from tests import test_browser
from tests.conftest import Stack
from tests.test_browser import expect_live, log_in, settled
from tests.test_story_pages import rendered, story_with

browser, page = test_browser.browser, test_browser.page

WIDE, NARROW = 1440, 390
# Nothing listens there and nothing probes it (no worker runs): the hosts are only shown.
GPU_HOST, WRITER_HOST = "127.0.90.3", "127.0.90.2"
UNBROKEN = "https://models.example.invalid/loras/" + "a-very-long-file-name-without-any-break" * 3 + ".safetensors"

# Every element's own text colour against the first opaque background behind it, as WCAG reckons it.
CONTRAST = """selectors => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  const lum = c => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const behind = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  return selectors.map(sel => {
    const el = [...document.querySelectorAll(sel)].find(e => e.getClientRects().length);
    if (!el) return [sel, null];
    const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(behind(el))];
    return [sel, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  });
}"""
LUMINANCE = """el => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const l = c => 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  const s = getComputedStyle(el);
  return [l(rgb(s.backgroundColor)), l(rgb(s.color))];
}"""
# What sticks out past the right edge of the screen (the outermost such elements), to say why a page is too wide.
STICKING_OUT = """() => {
  const edge = document.documentElement.clientWidth + 1;
  return [...document.querySelectorAll("body *")]
    .filter(e => e.getBoundingClientRect().right > edge && !(e.parentElement.getBoundingClientRect().right > edge))
    .slice(0, 5).map(e => e.outerHTML.slice(0, 120));
}"""


@pytest.fixture
def content(transactional_db: None) -> dict[str, str]:
    """A pool, a story with its shots written and rendered, and render jobs in every state, some
    with long unbroken text; the pages that show them, by name."""
    load()
    gpu = Node.objects.create(name="Lab GPU", host=GPU_HOST)
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=8188, status=Capability.ONLINE)
    writer = Node.objects.create(name="Lab writer", host=WRITER_HOST)
    Capability.objects.create(
        node=writer,
        kind=Capability.OLLAMA,
        port=11434,
        status=Capability.ONLINE,
        inventory={"models": [{"name": "llama3.2:3b"}]},
    )
    story = story_with(shots=2, node=writer)
    job = rendered(story, range(1, 3))[0]
    Story.objects.create(idea=f"A second idea about {UNBROKEN}", model="llama3.2:3b")
    template = Template.objects.get(name="test-video-mp4")
    RenderJob.objects.create(
        template=template, prompt=f"a boat, {UNBROKEN}", status=RenderJob.RENDERING, node=gpu, progress=0.4
    )
    RenderJob.objects.create(template=template, prompt=f"a pond, lora {UNBROKEN}", position=1, priority=2)
    RenderJob.objects.create(template=template, prompt="a storm", status=RenderJob.FAILED, error=f"missing {UNBROKEN}")
    code = story.code
    return {
        "dashboard": "/",
        "stories": "/stories/",
        "story": f"/stories/{code}/",
        "shots": f"/stories/{code}/shots/",
        "characters": f"/stories/{code}/characters/",
        "music": f"/stories/{code}/music/",
        "story renders": f"/stories/{code}/renders/",
        "render queue": "/renders/",
        "job": f"/renders/{job.code}/",
        "templates": "/renders/templates/",
        "template": f"/renders/templates/{template.code}/",
        "nodes": "/nodes/",
        "node form": "/nodes/add/",
        "schedules": "/schedules/",
    }


def heights(page: Page, selector: str) -> list[float]:
    return page.locator(selector).evaluate_all("els => els.map(e => e.getBoundingClientRect().height)")


def tops(page: Page, selector: str) -> list[float]:
    return page.locator(selector).evaluate_all("els => els.map(e => Math.round(e.getBoundingClientRect().top))")


def contrast(page: Page, selectors: list[str]) -> list[Any]:
    return page.evaluate(CONTRAST, selectors)


@pytest.mark.browser
def test_pages_fit_a_phone_follow_the_system_theme_and_line_up(
    page: Page, stack: Stack, user: User, content: dict[str, str]
) -> None:
    stack.web()
    log_in(page)
    main_menu = page.get_by_role("navigation", name="Main")
    menu_button = page.get_by_role("button", name="Menu")

    # Wide: the menu's links are in the top bar, and there is no Menu button.
    page.set_viewport_size({"width": WIDE, "height": 900})
    for link in ("Dashboard", "Stories", "Render queue", "Nodes", "Schedules"):
        expect(main_menu.get_by_role("link", name=link)).to_be_visible()
    expect(page.get_by_role("button", name="Log out ada")).to_be_visible()
    expect(menu_button).to_be_hidden()

    # A form's buttons, and a row of buttons and button-like links, are of one height.
    checks = heights(page, "form:has(#run-test-task) button")
    assert len(checks) == 2 and len(set(checks)) == 1, f"the dashboard's two buttons differ in height: {checks}"
    page.goto(content["nodes"])
    actions = heights(page, f"#node-{Node.objects.get(name='Lab GPU').code} .actions > *")
    assert len(actions) == 5 and len(set(actions)) == 1, f"a node's buttons and links differ in height: {actions}"
    discover = heights(page, ".inline-form input:not([type=hidden]), .inline-form button")
    assert len(set(discover)) == 1, f"the Discover form's fields and button differ in height: {discover}"

    # The render form lines up the labels, and the controls, of a row of fields (one with help
    # text under it, one a select); its prompt is as wide as the form.
    page.goto(content["render queue"])
    page.get_by_text("Queue a render").click()
    row = ("resolution", "frames", "fps", "steps")
    assert len(set(tops(page, ", ".join(f".field-{f} > label" for f in row)))) == 1
    assert len(set(tops(page, ", ".join(f"#id_{f}" for f in row)))) == 1
    assert len(set(heights(page, ", ".join(f"#id_{f}" for f in row)))) == 1
    form_width = page.locator(".render-form").bounding_box()["width"]  # type: ignore[index]
    assert page.locator("#id_prompt").bounding_box()["width"] >= form_width - 1  # type: ignore[index]

    # The prompt editor of a shot: the whole width of its card, tall, and taller if the user drags.
    page.goto(content["shots"])
    expect_live(page, "connected", 10)
    settled(page)  # the tab reloads itself after a live push, closing what was opened in it
    page.wait_for_load_state("networkidle")
    page.locator("#piece-1").get_by_text("Edit this prompt by hand").click()
    editor = page.locator("#prompt-1-positive")
    box, card = editor.bounding_box(), page.locator("#piece-1").bounding_box()
    assert box and card and box["width"] >= card["width"] - 1 and box["height"] >= 120, (box, card)
    assert editor.evaluate("e => getComputedStyle(e).resize") in ("vertical", "both")

    # Narrow: no page is wider than the screen: long words wrap, tables scroll in their own box.
    page.set_viewport_size({"width": NARROW, "height": 800})
    too_wide = {}
    for name, url in content.items():
        page.goto(url)
        if page.evaluate("document.documentElement.scrollWidth") > NARROW:
            too_wide[name] = page.evaluate(STICKING_OUT)
    assert not too_wide, f"wider than {NARROW} px: {too_wide}"

    # The menu folds behind the Menu button, which opens it; its links work from there.
    page.goto(content["dashboard"])
    stories = main_menu.get_by_role("link", name="Stories")
    expect(stories).to_be_hidden()
    expect(page.get_by_role("button", name="Log out ada")).to_be_hidden()
    expect(page.locator("#live-status")).to_be_visible()
    menu_button.click()
    expect(stories).to_be_visible()
    expect(page.get_by_role("button", name="Log out ada")).to_be_visible()
    stories.click()
    expect(page).to_have_url(f"{stack.url}/stories/")
    expect(stories).to_be_hidden()

    # The theme follows the system setting: dark on dark systems, light on light ones; text and
    # the controls' labels keep at least 4.5:1 against what is behind them in both.
    readable = {
        "dashboard": ["main h1", "#tasks dt", ".muted", "main a", "button.primary", "button:not(.primary)"],
        "nodes": [".status.online", ".node-head .muted", "a.button.danger", "input"],
        "render queue": [".waiting", ".tag", "pre.error", ".counts .bad dd", "select", ".job a"],
        "story": ["#story-head .status", ".step-info", ".tabs a[aria-current]", ".tabs a:not([aria-current])"],
    }
    schemes: list[tuple[Literal["dark", "light"], bool]] = [("dark", True), ("light", False)]
    for scheme, dark in schemes:
        page.emulate_media(color_scheme=scheme)
        page.set_viewport_size({"width": WIDE, "height": 900})
        page.goto(content["dashboard"])
        background, text = page.locator("body").evaluate(LUMINANCE)
        if dark:
            assert background < 0.05 and text > 0.6, f"not a dark theme: luminance {background:.2f} on {text:.2f}"
        else:
            assert background > 0.8 and text < 0.05, f"not a light theme: luminance {background:.2f} on {text:.2f}"
        card, field = page.locator(".card").first.evaluate(LUMINANCE), None
        assert (card[0] < 0.05) == dark, f"the cards are not {scheme}: {card}"
        for name, selectors in readable.items():
            page.goto(content[name])
            if name == "nodes":
                field = page.locator("input[name=targets]").evaluate(LUMINANCE)
            for selector, ratio in contrast(page, selectors):
                assert ratio is not None, f"nothing matches {selector} on the {name} page"
                assert ratio >= 4.5, f"{scheme}: {selector} on the {name} page has a contrast of {ratio:.2f}"
        assert field and (field[0] < 0.05) == dark and (field[1] > 0.6) == dark, f"the fields are not {scheme}"
