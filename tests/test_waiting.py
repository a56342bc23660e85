"""Why a queued render has not started (issue 11, point 1): each reason as a user sees it, on the
Render queue page, on the job's own page and from `render --wait`. The pool is built in the
database (no node is contacted): a capability's load is the number of rows holding it."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from nodes.models import Capability, Node
from renders.dispatch import LACKING
from renders.management.commands.load_templates import load
from renders.models import Queue, RenderJob, Speed, Template
from spoonfeeder import relay

NET = 53 if os.environ.get("DATABASE_URL") else 52


@pytest.fixture(autouse=True)
def templates(db: None) -> None:
    load()


def gpu(name: str, *, limit: int = 1, **fields: object) -> Capability:
    node = Node.objects.create(
        name=name, host=f"127.0.{NET}.{Node.objects.count() + 1}", enabled=fields.pop("enabled", True)
    )
    fields.setdefault("status", Capability.ONLINE)
    return Capability.objects.create(node=node, kind=Capability.COMFYUI, port=8188, limit=limit, **fields)


def job(**fields: object) -> RenderJob:
    template = Template.objects.get(name="test-still-image")
    return RenderJob.objects.create(
        template=template, prompt="a lighthouse", position=RenderJob.last_position(), **fields
    )


def fill(cap: Capability) -> None:
    """Every unit of `cap` held: its limit rendering and one more waiting in its own queue."""
    for _ in range(cap.limit + 1):
        job(status=RenderJob.RENDERING, node=cap.node, capability=cap, worker="elsewhere:1:x")


def waiting_shown(client: Client, queued: RenderJob) -> str:
    """The reason beside the job in the queue, and the job page's, which must agree."""
    html = client.get(reverse("renders:index")).content.decode()
    row = re.search(rf'id="job-{queued.code}".*?</div>', html, re.S)
    assert row, "the job is not in the queue"
    beside = re.search(r'<span class="small waiting[^"]*"[^>]*>(.*?)</span>', row.group(0), re.S)
    assert beside, f"no reason beside the job: {row.group(0)}"
    own = client.get(reverse("renders:job", args=[queued.code])).content.decode()
    assert "Waiting: " in own
    reason = beside.group(1).strip()
    assert reason in own.replace("&#x27;", "'") or reason.endswith("…")
    return reason.replace("&#x27;", "'")


def test_a_paused_queue_says_so(logged_in: Client) -> None:
    gpu("gpu")
    queued = job()
    Queue.set_paused(True)
    assert waiting_shown(logged_in, queued) == "the queue is paused"


def test_a_retry_says_which_attempt_and_when(logged_in: Client) -> None:
    gpu("gpu")
    at = timezone.now() + timedelta(minutes=5)
    queued = job(attempts=1, not_before=at, error="ComfyUI said: out of memory")
    reason = waiting_shown(logged_in, queued)
    assert reason == f"retry 2/3 at {timezone.localtime(at):%H:%M:%S}"
    # The last attempt's error is still there to read.
    assert "out of memory" in logged_in.get(reverse("renders:job", args=[queued.code])).content.decode()


def test_a_job_no_node_can_run_names_what_each_lacks(logged_in: Client) -> None:
    gpu("old gpu")
    queued = job(error=LACKING + "old gpu lacks the node class SaveImage")
    assert waiting_shown(logged_in, queued) == LACKING + "old gpu lacks the node class SaveImage"


def test_an_empty_pool_says_to_add_a_node(logged_in: Client) -> None:
    queued = job()
    assert waiting_shown(logged_in, queued) == "no ComfyUI in the pool: add a node on the Nodes page"


def test_a_pool_that_takes_no_work_says_why_of_each_node(logged_in: Client) -> None:
    until = timezone.now() + timedelta(seconds=40)
    gpu("a", status=Capability.OFFLINE)
    gpu("b", enabled=False)
    gpu("c", resting_until=until, faults=2)
    queued = job()
    assert waiting_shown(logged_in, queued) == (
        f"no ComfyUI can take work: a is offline; b is disabled; c is resting after a fault until "
        f"{timezone.localtime(until):%H:%M:%S}"
    )


def test_every_busy_node_says_how_many_are_ahead(logged_in: Client) -> None:
    fill(gpu("a"))
    fill(gpu("b", limit=2))
    first, second = job(), job()
    assert waiting_shown(logged_in, first) == "every ComfyUI is busy (0 ahead of it)"
    assert waiting_shown(logged_in, second) == "every ComfyUI is busy (1 ahead of it)"


def test_a_pinned_job_says_how_its_node_is(logged_in: Client) -> None:
    busy, down = gpu("busy gpu"), gpu("down gpu", status=Capability.OFFLINE)
    fill(busy)
    on_busy, on_down = job(pin=busy.node), job(pin=down.node)
    assert waiting_shown(logged_in, on_busy) == "busy gpu is busy (0 ahead of it)"
    assert waiting_shown(logged_in, on_down) == "down gpu is offline"


def test_a_retry_that_must_avoid_the_only_free_node_says_so(logged_in: Client) -> None:
    fill(gpu("a"))
    b = gpu("b")
    queued = job(attempts=1, avoid=b.node, error="ComfyUI said: out of memory")
    assert waiting_shown(logged_in, queued) == "its last attempt failed on b: waiting for another node (0 ahead of it)"


def test_a_job_a_free_node_takes_now_is_starting_and_never_shown_as_rendering(logged_in: Client) -> None:
    gpu("gpu")
    queued = job()
    assert waiting_shown(logged_in, queued) == "starting"
    rendering = logged_in.get(reverse("renders:index")).content.decode().split('id="queued"')[0]
    assert f'id="job-{queued.code}"' not in rendering


def test_a_job_left_to_a_faster_busy_node_says_so(logged_in: Client) -> None:
    fast, slow = gpu("fast"), gpu("slow")
    template = Template.objects.get(name="test-still-image")
    Speed.objects.create(capability=fast, template=template, seconds_per_unit=1.0)
    Speed.objects.create(capability=slow, template=template, seconds_per_unit=100.0)
    fill(fast)  # 2 s of work ahead on the fast node; 100 s for the job on the slow one
    queued = job()
    assert waiting_shown(logged_in, queued) == (
        "waiting for a faster node: slow would finish it later than a busy one (0 ahead of it)"
    )


def test_render_wait_prints_why_it_waits(logged_in: Client) -> None:
    gpu("gpu")
    Queue.set_paused(True)
    out = StringIO()
    with pytest.raises(CommandError, match="still queued"):
        call_command("render", "test-still-image", "--prompt", "x", "--wait", "--timeout", "0.5", stdout=out)
    assert "Queued: the queue is paused" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_queue_pushed_to_its_pages_follows_how_its_nodes_are() -> None:
    cap = gpu("gpu")
    job()
    relay.claim_and_render(frozenset(), {})  # what was written so far
    cap.status = Capability.OFFLINE
    cap.save()
    cap.node.changed()  # what a health check that found it down does: an event of the nodes' topic
    pushed = relay.claim_and_render(frozenset(), {})
    assert "no ComfyUI can take work: gpu is offline" in pushed["renders"]


def test_a_job_sent_ahead_shows_as_next_on_its_node_not_as_rendering(logged_in: Client) -> None:
    cap = gpu("gpu")
    rendering = job(status=RenderJob.RENDERING, node=cap.node, capability=cap, progress=0.5)
    ahead = job(status=RenderJob.ASSIGNED, node=cap.node, capability=cap)
    html = logged_in.get(reverse("renders:index")).content.decode()
    section = re.search(r'<section id="rendering".*?</section>', html, re.S)
    assert section
    shown = re.search(rf'<div class="job next" id="job-{ahead.code}">.*?</div>', section.group(0), re.S)
    assert shown and "next on gpu" in shown.group(0) and "<progress" not in shown.group(0)
    assert f'<div class="job rendering" id="job-{rendering.code}">' in section.group(0)
    assert f'<div class="job rendering" id="job-{ahead.code}">' not in html
    assert '<dd id="renders-next">1</dd>' in html and '<dd id="renders-rendering">1</dd>' in html


def form_data(**changes: object) -> dict[str, object]:
    template = Template.objects.get(name="test-still-image")
    return {
        "template": template.pk,
        "prompt": "a lighthouse",
        "resolution": "512x512",
        "frames": "1",
        "fps": "16",
        "steps": "20",
        "cfg": "5",
        "seed": "random",
        "priority": "0",
        "count": "1",
        **changes,
    }


def test_a_template_no_online_node_can_run_is_flagged_in_the_form_and_can_still_be_queued(logged_in: Client) -> None:
    gpu("old gpu", inventory={"classes": ["EmptyImage"]})
    html = logged_in.get(reverse("renders:index")).content.decode()
    assert "test-still-image (no online node can run it)</option>" in html
    assert "No online ComfyUI can run " in html and "test-still-image (old gpu lacks the node class SaveImage)" in html
    assert "test-video-mp4 (no online node can run it)" in html  # it needs SaveAnimatedWEBP or the like too
    answer = logged_in.post(reverse("renders:index"), form_data(), follow=True).content.decode()
    assert (
        "Queued 1 render job. No online ComfyUI can run it yet (old gpu lacks the node class SaveImage): "
        "it waits until one can." in answer
    )
    assert RenderJob.objects.filter(status=RenderJob.QUEUED).count() == 1


def test_a_template_is_not_flagged_while_a_node_can_run_it_or_its_inventory_is_unknown(logged_in: Client) -> None:
    gpu("able", inventory={"classes": ["EmptyImage", "SaveImage"]})
    gpu("unread")  # no inventory yet: ComfyUI's own validation decides
    html = logged_in.get(reverse("renders:index")).content.decode()
    assert "no online node can run it" not in html and "No online ComfyUI can run" not in html


def test_render_says_when_no_online_node_can_run_its_template() -> None:
    gpu("old gpu", inventory={"classes": ["EmptyImage"]})
    out = StringIO()
    call_command("render", "test-still-image", "--prompt", "x", stdout=out)
    assert "No online ComfyUI can run test-still-image yet (old gpu lacks the node class SaveImage)" in out.getvalue()


def test_the_story_form_flags_templates_no_online_node_can_run(logged_in: Client) -> None:
    gpu("old gpu", inventory={"classes": ["EmptyImage"]})
    html = logged_in.get(reverse("stories:index")).content.decode()
    for name in ("template", "reference_template"):
        select = re.search(rf'<select name="{name}".*?</select>', html, re.S)
        assert select and "test-still-image (no online node can run it)</option>" in select.group(0), name
    assert "test-still-image (old gpu lacks the node class SaveImage)" in html
