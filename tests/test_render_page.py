"""The Render queue page and its actions, without a browser: queueing through the render settings
form, bad settings, cancel, retry, reorder, pause, filters, pagination, a constant number of queries,
escaping, login and CSRF; and the `render` command, down to a real render on a simulated node."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders.management.commands.load_templates import load
from renders.models import Queue, RenderJob, Template
from tests.conftest import Cluster, executions

NET = 51 if os.environ.get("DATABASE_URL") else 50
HTMX = {"HTTP_HX_REQUEST": "true"}
FORM = {
    "prompt": "a lighthouse at dusk",
    "negative": "blurry",
    "resolution": "832x480",
    "frames": "33",
    "fps": "16",
    "steps": "12",
    "cfg": "4.5",
    "seed": "1234",
    "lora": "",
    "priority": "0",
    "count": "1",
}


@pytest.fixture
def templates(db: None) -> None:
    load()


def form(template: str = "wan22-t2v", **changes: Any) -> dict[str, Any]:
    """The render dialog filled in, for a template that takes every setting."""
    return {**FORM, "template": Template.objects.get(name=template).pk, **changes}


def queue(n: int = 1, template: str = "test-still-image", **fields: Any) -> list[RenderJob]:
    t = Template.objects.get(name=template)
    start = RenderJob.last_position()
    return [
        RenderJob.objects.create(template=t, prompt=fields.pop("prompt", f"job {i}"), position=start + i, **fields)
        for i in range(n)
    ]


def output(name: str) -> dict[str, Any]:
    """What the dispatcher records for an output it copied off the node."""
    return {
        "path": f"renders/{name}/00.mp4",
        "kind": "video",
        "mime": "video/mp4",
        "size": 123456,
        "width": 256,
        "height": 256,
        "frames": 24,
        "duration": 1.0,
        "thumbnail": f"renders/{name}/00.mp4.thumb.jpg",
    }


def ended(status: str, n: int = 1, **fields: Any) -> list[RenderJob]:
    """Finished jobs, each a second newer than the one before, so their order on the page is known."""
    t = Template.objects.get(name="test-video-mp4")
    now = timezone.now()
    jobs = []
    for i in range(n):
        extra = {"outputs": [output(f"{status}-{i}")]} if status == "completed" else {}
        jobs.append(
            RenderJob.objects.create(
                template=t,
                prompt=f"{status} {i}",
                status=status,
                finished=now + timedelta(seconds=i),
                **extra,
                **fields,
            )
        )
    return jobs


def section(html: str, name: str) -> str:
    m = re.search(rf'<section id="{name}".*?</section>', html, re.S)
    assert m, f"no #{name} on the page"
    return m.group(0)


def codes(html: str, name: str) -> list[str]:
    """The jobs of one section of the page, in the order shown."""
    return re.findall(r'id="job-([0-9a-f-]{36})"', section(html, name))


def page(client: Client, **query: str) -> str:
    answer = client.get(reverse("renders:index"), query)
    assert answer.status_code == 200
    return answer.content.decode()


def act(client: Client, job: RenderJob, what: str) -> str:
    answer = client.post(reverse("renders:action", args=[job.code, what]), **HTMX)
    assert answer.status_code == 200
    html = answer.content.decode()
    assert 'id="messages"' in html and 'hx-swap-oob="true"' in html
    return html


def test_queueing_through_the_form_creates_jobs_with_the_settings_in_order(logged_in: Client, templates: None) -> None:
    [earlier] = queue()
    answer = logged_in.post(reverse("renders:index"), form(count="3"), follow=True)
    assert "Queued 3 render jobs." in answer.content.decode()

    jobs = list(RenderJob.objects.exclude(pk=earlier.pk).order_by("position"))
    assert len(jobs) == 3
    assert all(job.position > earlier.position for job in jobs)
    assert [job.position for job in jobs] == sorted({job.position for job in jobs})
    for job in jobs:
        assert (job.status, job.prompt, job.negative, job.template.name) == (
            "queued",
            "a lighthouse at dusk",
            "blurry",
            "wan22-t2v",
        )
        assert job.settings == {
            "width": 832,
            "height": 480,
            "frames": 33,
            "fps": 16,
            "steps": 12,
            "cfg": 4.5,
            "seed": 1234,
        }
    assert codes(page(logged_in), "queued") == [str(earlier.code)] + [str(job.code) for job in jobs]


def test_the_dialog_can_pin_jobs_to_one_node_and_the_queue_says_so(logged_in: Client, templates: None) -> None:
    gpu = comfyui_node("big gpu", ("EmptyImage", "SaveImage"))
    comfyui_node("small gpu")
    html = page(logged_in)
    assert "Any node (the best one free)" in html and "big gpu" in html
    logged_in.post(reverse("renders:index"), form("test-still-image", node=gpu.pk, count="2"))
    assert [job.pin for job in RenderJob.objects.all()] == [gpu, gpu]
    assert page(logged_in).count("only on big gpu") == 2


def test_pinning_to_a_node_that_lacks_what_the_template_needs_is_refused(logged_in: Client, templates: None) -> None:
    gpu = comfyui_node("old gpu", ("EmptyImage",))
    answer = logged_in.post(reverse("renders:index"), form("test-still-image", node=gpu.pk))
    assert answer.status_code == 400
    html = answer.content.decode()
    field_html = re.search(r'<div class="field field-node">.*?</div>', html, re.S)
    assert field_html
    assert "old gpu lacks the node class SaveImage: pick another node, or install them there." in field_html.group(0)
    assert not RenderJob.objects.exists()


def test_a_random_seed_is_kept_as_random(logged_in: Client, templates: None) -> None:
    logged_in.post(reverse("renders:index"), form(seed="random"))
    assert RenderJob.objects.get().settings["seed"] == "random"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("resolution", "1001x1000", "Width must be a multiple of 8 (try 1000)."),
        ("resolution", "huge", "Select a valid choice. huge is not one of the available choices."),
        ("frames", "0", "Frames must be between 1 and 1024; got 0."),
        ("steps", "500", "Steps must be between 1 and 200; got 500."),
        ("cfg", "99", "CFG must be between 0 and 30; got 99."),
        ("seed", "abc", "A whole number, or random."),
    ],
)
def test_bad_settings_are_refused_with_the_reason_and_nothing_is_queued(
    logged_in: Client, templates: None, field: str, value: str, message: str
) -> None:
    answer = logged_in.post(reverse("renders:index"), form(**{field: value}))
    assert answer.status_code == 400
    html = answer.content.decode()
    field_html = re.search(rf'<div class="field field-{field}">.*?</div>', html, re.S)
    assert field_html and message in field_html.group(0)
    assert '<details class="card" id="render-card" open>' in html  # the dialog stays open on the user's input
    assert not RenderJob.objects.exists()


def test_cancelling_a_queued_job_takes_it_off_the_queue(logged_in: Client, templates: None) -> None:
    first, second = queue(2)
    assert "Cancelled." in act(logged_in, first, "cancel")
    first.refresh_from_db()
    assert first.status == "cancelled" and first.finished
    html = page(logged_in)
    assert codes(html, "queued") == [str(second.code)]
    assert str(first.code) in codes(html, "finished")
    assert "That job has already ended." in act(logged_in, first, "cancel")


def test_retrying_a_failed_job_resets_its_attempts_and_puts_it_at_the_end(logged_in: Client, templates: None) -> None:
    [failed] = ended("failed", attempts=3, error="torch.OutOfMemoryError: out of memory")
    waiting = queue(2)
    assert "Queued again." in act(logged_in, failed, "retry")
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.error, failed.finished) == ("queued", 0, "", None)
    assert codes(page(logged_in), "queued") == [str(job.code) for job in [*waiting, failed]]
    assert "Only a failed or cancelled job can be retried." in act(logged_in, waiting[0], "retry")


def test_retry_all_failed_queues_every_failed_job_again(logged_in: Client, templates: None) -> None:
    failed = ended("failed", 3, attempts=3, error="lost")
    [done] = ended("completed")
    assert "Retry all failed" in page(logged_in)
    answer = logged_in.post(reverse("renders:retry-failed"), **HTMX)
    assert "Queued 3 failed jobs again." in answer.content.decode()
    assert set(RenderJob.objects.filter(status="queued").values_list("pk", flat=True)) == {j.pk for j in failed}
    assert RenderJob.objects.get(pk=done.pk).status == "completed"
    assert "Retry all failed" not in page(logged_in)


def test_retry_all_failed_of_one_story_leaves_the_others(logged_in: Client, templates: None) -> None:
    [mine] = ended("failed", story="s1")
    [other] = ended("failed", story="s2")
    logged_in.post(reverse("renders:retry-failed"), {"story": "s1"}, **HTMX)
    assert RenderJob.objects.get(pk=mine.pk).status == "queued"
    assert RenderJob.objects.get(pk=other.pk).status == "failed"


def test_moving_jobs_changes_the_order_shown(logged_in: Client, templates: None) -> None:
    a, b, c, d = queue(4)

    def order() -> list[str]:
        by_code = {str(j.code): j.prompt for j in (a, b, c, d)}
        return [by_code[code] for code in codes(page(logged_in), "queued")]

    assert order() == ["job 0", "job 1", "job 2", "job 3"]
    assert "Moved top." in act(logged_in, d, "top")
    assert order() == ["job 3", "job 0", "job 1", "job 2"]
    act(logged_in, a, "bottom")
    assert order() == ["job 3", "job 1", "job 2", "job 0"]
    act(logged_in, c, "up")
    assert order() == ["job 3", "job 2", "job 1", "job 0"]
    act(logged_in, d, "down")
    assert order() == ["job 2", "job 3", "job 1", "job 0"]
    # The first cannot go up, the last cannot go down: the order stays, the message says why.
    assert "Only a queued job can move" in act(logged_in, c, "up")
    assert "Only a queued job can move" in act(logged_in, a, "down")
    assert order() == ["job 2", "job 3", "job 1", "job 0"]


def test_dropping_a_job_onto_another_puts_it_just_before_it(logged_in: Client, templates: None) -> None:
    a, b, c = queue(3)
    urgent = queue(priority=5)[0]

    def order() -> list[str]:
        by_code = {str(j.code): j.prompt for j in (a, b, c, urgent)}
        return [by_code[code] for code in codes(page(logged_in), "queued")]

    def drop(job: RenderJob, before: str) -> str:
        url = reverse("renders:action", args=[job.code, "before"])
        return logged_in.post(url, {"before": before}, headers={"HX-Request": "true"}).content.decode()

    assert order() == ["job 0", "job 0", "job 1", "job 2"]  # the urgent one first
    assert "Moved." in drop(c, str(a.code))
    assert [p for p in order()][1:] == ["job 2", "job 0", "job 1"]
    assert "Moved." in drop(b, str(urgent.code))  # takes the priority of where it lands
    b.refresh_from_db()
    assert b.priority == 5 and order()[0] == "job 1"
    assert "Drop a queued job onto another" in drop(a, "not-a-code")
    assert "Drop a queued job onto another" in drop(a, str(a.code))


def test_an_unknown_action_is_not_found(logged_in: Client, templates: None) -> None:
    [job] = queue()
    assert logged_in.post(reverse("renders:action", args=[job.code, "explode"])).status_code == 404
    assert logged_in.get(reverse("renders:action", args=[job.code, "cancel"])).status_code == 405


def test_pause_and_resume_persist_and_show(logged_in: Client, templates: None) -> None:
    assert '<span class="tag warn">paused</span>' not in page(logged_in)
    answer = logged_in.post(reverse("renders:pause"), {"paused": "1"}, **HTMX)
    assert "Paused" in answer.content.decode()
    assert Queue.objects.get(pk=1).paused
    controls = re.search(r'<div id="queue-controls".*?</div>', page(logged_in), re.S)
    assert controls and '<span class="tag warn">paused</span>' in controls.group(0) and "Resume" in controls.group(0)

    logged_in.post(reverse("renders:pause"), {"paused": "0"}, **HTMX)
    assert not Queue.objects.get(pk=1).paused
    controls = re.search(r'<div id="queue-controls".*?</div>', page(logged_in), re.S)
    assert controls and "tag warn" not in controls.group(0) and ">Pause</button>" in controls.group(0)


def test_finished_jobs_filter_by_status_and_story(logged_in: Client, templates: None) -> None:
    [done] = ended("completed", story="s1")
    [failed] = ended("failed", story="s1", error="boom")
    [cancelled] = ended("cancelled", story="s2")
    [waiting] = queue(story="s1")

    assert set(codes(page(logged_in), "finished")) == {str(j.code) for j in (done, failed, cancelled)}
    assert codes(page(logged_in, status="failed"), "finished") == [str(failed.code)]
    assert codes(page(logged_in, status="completed"), "finished") == [str(done.code)]
    assert set(codes(page(logged_in, story="s1"), "finished")) == {str(done.code), str(failed.code)}
    assert codes(page(logged_in, story="s2", status="cancelled"), "finished") == [str(cancelled.code)]
    html = page(logged_in, story="s2", status="failed")
    assert codes(html, "finished") == [] and "No finished jobs match." in html
    # A queued job is never among the finished, whatever the filter.
    assert str(waiting.code) not in section(page(logged_in, story="s1"), "finished")


def test_finished_jobs_come_25_to_a_page_newest_first(logged_in: Client, templates: None) -> None:
    jobs = ended("completed", 30)
    newest_first = [str(j.code) for j in reversed(jobs)]
    first = page(logged_in)
    assert codes(first, "finished") == newest_first[:25]
    assert "page 1 of 2" in first and "?page=2&" in first
    second = page(logged_in, page="2")
    assert codes(second, "finished") == newest_first[25:]
    assert "page 2 of 2" in second
    assert codes(page(logged_in, page="99"), "finished") == newest_first[25:]
    assert codes(page(logged_in, page="x"), "finished") == newest_first[:25]


def many(n: int) -> None:
    """n jobs spread over every status, with nodes, errors and outputs like real ones."""
    t = Template.objects.get(name="test-still-image")
    gpu = Node.objects.get_or_create(name="gpu", host="127.0.0.1")[0]
    # Three jobs already fill every part of the page: finished, queued and rendering.
    statuses = ["completed", "queued", "rendering", "failed", "assigned", "cancelled"]
    now = timezone.now()
    RenderJob.objects.bulk_create(
        RenderJob(
            template=t,
            prompt=f"job {i}",
            status=statuses[i % len(statuses)],
            position=i,
            node=gpu if statuses[i % len(statuses)] != "queued" else None,
            error="boom" if statuses[i % len(statuses)] == "failed" else "",
            finished=now if statuses[i % len(statuses)] in RenderJob.ENDED else None,
            outputs=[output(f"job-{i}")] if statuses[i % len(statuses)] == "completed" else [],
            story=f"s{i % 3}",
        )
        for i in range(n)
    )


def queries_for(client: Client, **query: str) -> int:
    page(client, **query)  # warm: the Queue row, the session
    with CaptureQueriesContext(connection) as captured:
        page(client, **query)
    return len(captured)


def test_the_page_uses_as_many_queries_with_300_jobs_as_with_3(logged_in: Client, templates: None) -> None:
    many(3)
    few = queries_for(logged_in)
    few_filtered = queries_for(logged_in, status="failed", story="s1")
    many(297)
    assert RenderJob.objects.count() == 300
    assert queries_for(logged_in) == few
    assert queries_for(logged_in, status="failed", story="s1") == few_filtered


def test_the_page_with_300_jobs_stays_under_a_fixed_query_budget(
    logged_in: Client, templates: None, django_assert_max_num_queries: Any
) -> None:
    many(300)
    page(logged_in)
    # Of them: the pool, for why each queued job waits; the pool and the templates, for the form.
    with django_assert_max_num_queries(15):
        page(logged_in)


def test_a_completed_job_shows_its_thumbnail_size_duration_and_download(logged_in: Client, templates: None) -> None:
    [done] = ended("completed")
    row = re.search(rf'<div class="job completed" id="job-{done.code}">.*?</p>', page(logged_in), re.S)
    assert row, "no row for the completed job"
    html = row.group(0)
    assert '<img src="/media/renders/completed-0/00.mp4.thumb.jpg"' in html
    assert "256×256 · 24 frames · 1.0 s · 120.6\xa0KB" in html
    # Downloaded under a name after its prompt and its code, never 00.mp4.
    name = f"completed-0-{str(done.code)[:8]}.mp4"
    assert f'<a href="/media/renders/completed-0/00.mp4" download="{name}">Download</a>' in html
    detail = logged_in.get(reverse("renders:job", args=[done.code])).content.decode()
    assert '<video controls preload="metadata" src="/media/renders/completed-0/00.mp4"' in detail
    assert f'download="{name}">Download</a> <span class="muted">as {name}</span>' in detail


def test_a_completed_job_without_output_files_does_not_break_the_page(logged_in: Client, templates: None) -> None:
    # A workflow whose only output node is PreviewAny or SaveImageWebsocket ends with no files.
    [done] = ended("completed")
    RenderJob.objects.filter(pk=done.pk).update(outputs=[])
    assert str(done.code) in codes(page(logged_in), "finished")


def test_text_from_the_models_is_escaped(logged_in: Client, templates: None) -> None:
    [waiting] = queue(prompt="<script>alert(1)</script>")
    [failed] = ended("failed", error="<script>alert(2)</script>")
    html = page(logged_in)
    assert "<script>alert(" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    for job in (waiting, failed):
        detail = logged_in.get(reverse("renders:job", args=[job.code])).content.decode()
        assert "<script>alert(" not in detail and "&lt;script&gt;alert(" in detail


def test_an_anonymous_visitor_is_sent_to_log_in_and_cannot_act(client: Client, templates: None) -> None:
    [job] = queue()
    url = reverse("renders:index")
    answer = client.get(url)
    assert answer.status_code == 302 and answer["Location"] == f"{reverse('login')}?next={url}"
    for target in (reverse("renders:action", args=[job.code, "cancel"]), reverse("renders:pause")):
        assert client.post(target, {"paused": "1"}).status_code == 302
    assert client.get(reverse("renders:job", args=[job.code])).status_code == 302
    job.refresh_from_db()
    assert job.status == "queued" and not Queue.get().paused


def test_the_actions_need_the_csrf_token(user: Any, templates: None) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    [job] = queue()
    [failed] = ended("failed")
    cancel = reverse("renders:action", args=[job.code, "cancel"])
    for url, data in (
        (cancel, {}),
        (reverse("renders:action", args=[job.code, "top"]), {}),
        (reverse("renders:action", args=[failed.code, "retry"]), {}),
        (reverse("renders:retry-failed"), {}),
        (reverse("renders:pause"), {"paused": "1"}),
        (reverse("renders:index"), form()),
    ):
        assert client.post(url, data, **HTMX).status_code == 403, url
    job.refresh_from_db()
    failed.refresh_from_db()
    assert (job.status, failed.status, Queue.get().paused, RenderJob.objects.count()) == ("queued", "failed", False, 2)

    client.get(reverse("renders:index"))
    token = client.cookies["csrftoken"].value
    assert client.post(cancel, HTTP_X_CSRFTOKEN=token, **HTMX).status_code == 200  # as htmx sends it
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_the_render_command_queues_a_job(templates: None) -> None:
    out = StringIO()
    call_command("render", "test-still-image", "--prompt", "x", stdout=out)
    job = RenderJob.objects.get()
    assert out.getvalue() == f"Queued job {job.code}.\n"
    assert (job.status, job.prompt, job.template.name, job.pin) == ("queued", "x", "test-still-image", None)
    # The template's own settings, and only those it takes (it has no seed).
    assert job.settings == {"width": 512, "height": 512}


def comfyui_node(name: str, classes: tuple[str, ...] = ()) -> Node:
    gpu = Node.objects.create(name=name, host=f"127.0.{NET}.{Node.objects.count() + 20}")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=8188, inventory={"classes": list(classes)})
    return gpu


def test_the_render_command_pins_a_job_to_a_node(templates: None) -> None:
    gpu = comfyui_node("gpu")
    call_command("render", "test-still-image", "--prompt", "x", "--node", "gpu", stdout=StringIO())
    assert RenderJob.objects.get().pin == gpu


def test_the_render_command_names_the_templates_when_one_is_unknown(templates: None) -> None:
    with pytest.raises(CommandError) as e:
        call_command("render", "nope", "--prompt", "x")
    assert "no template named 'nope'" in str(e.value)
    assert "test-still-image" in str(e.value) and "test-video-mp4" in str(e.value)
    assert not RenderJob.objects.exists()


def test_the_render_command_refuses_an_unknown_node(templates: None) -> None:
    comfyui_node("gpu")
    with pytest.raises(CommandError, match="no ComfyUI node named 'nope'; there are: gpu"):
        call_command("render", "test-still-image", "--prompt", "x", "--node", "nope")
    assert not RenderJob.objects.exists()


def test_the_render_command_refuses_bad_settings(templates: None) -> None:
    with pytest.raises(CommandError, match="steps: Steps must be between 1 and 200; got 500."):
        call_command("render", "wan22-t2v", "--prompt", "x", "--steps", "500")
    # A setting the template has no place for is refused, not silently dropped.
    with pytest.raises(CommandError, match="test-still-image takes no steps; it takes resolution."):
        call_command("render", "test-still-image", "--prompt", "x", "--steps", "20")
    assert not RenderJob.objects.exists()


@pytest.fixture
def sim_node(transactional_db: None, settings: Any, tmp_path: Path) -> Iterator[tuple[Node, SimComfyUI]]:
    settings.STALE = 2
    settings.BEAT = 0.3
    settings.RENDER_BACKOFF = 0.05
    settings.MEDIA_ROOT = tmp_path / "media"
    sim = SimComfyUI(f"127.0.{NET}.1", 0, seconds_per_node=0.05).start()
    gpu = Node.objects.create(name="gpu", host=f"127.0.{NET}.1")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    load()
    yield gpu, sim
    sim.close()


def test_render_wait_follows_a_job_to_its_output(sim_node: Any, cluster: Cluster, tmp_path: Path) -> None:
    out = StringIO()
    call_command("render", "test-still-image", "--prompt", "x", "--wait", "--timeout", "30", stdout=out)
    job = RenderJob.objects.get()
    assert job.status == "completed"
    lines = out.getvalue().splitlines()
    assert lines[0] == f"Queued job {job.code}."
    assert "Completed" in lines
    path = job.outputs[0]["path"]
    assert f"  {path} ({job.outputs[0]['size']} bytes)" in lines
    assert (tmp_path / "media" / path).read_bytes()[:4] == b"\x89PNG"


def test_a_finished_job_shows_the_seed_it_rendered_with_and_its_settings_can_be_reused(
    sim_node: Any, cluster: Cluster, logged_in: Client
) -> None:
    _, sim = sim_node
    call_command("render", "test-video-mp4", "--prompt", "a paper boat", "--frames", "12", "--wait", stdout=StringIO())
    job = RenderJob.objects.get()
    assert (job.status, job.settings["seed"], executions(sim, job)) == ("completed", "random", 1)
    # The node's own record of what it ran: the seed "random" became.
    sent = requests.get(f"{sim.url}/history/{job.prompt_id}", timeout=5).json()[job.prompt_id]["prompt"][2]
    seed = sent["2"]["inputs"]["seed"]
    assert isinstance(seed, int)
    html = logged_in.get(reverse("renders:job", args=[job.code])).content.decode()
    settings = re.search(r'<dl class="settings" id="job-settings">.*?</dl>', html, re.S)
    assert settings
    shown = dict(re.findall(r"<dt>([^<]+)</dt><dd>(?:<a [^>]+>)?([^<]+)", settings.group(0)))
    assert shown == {
        "Template": "test-video-mp4",
        "Seed": str(seed),
        "Width": "256",
        "Height": "256",
        "Frames": "12",
        "FPS": "24.0",
        "Priority": "0",
    }
    reuse = re.search(r'<a class="button" id="reuse-settings" href="([^"]+)">Reuse settings</a>', html)
    assert reuse
    page = logged_in.get(reuse.group(1).split("#")[0]).content.decode()
    assert '<details class="card" id="render-card" open>' in page
    form = re.search(
        r'<form method="post" action="/renders/" class="render-form" id="render-form".*?</form>', page, re.S
    )
    assert form
    html = form.group(0)
    assert f'<option value="{job.template.pk}" selected>test-video-mp4</option>' in html
    assert re.search(r'<textarea name="prompt"[^>]*>\s*a paper boat</textarea>', html)
    for name, value in (("frames", "12"), ("fps", "24"), ("seed", str(seed))):
        assert re.search(rf'<input type="[a-z]+" name="{name}" value="{value}"', html), name
    assert '<option value="256x256" selected>' in html
    # Queued again from the form as it is filled in, it renders the same picture with the same seed.
    logged_in.post(
        reverse("renders:index"),
        {"template": job.template.pk, "prompt": "a paper boat", "resolution": "256x256", "frames": "12"}
        | {"fps": "24", "seed": str(seed), "priority": "0", "count": "1"},
    )
    again = RenderJob.objects.exclude(pk=job.pk).get()
    assert again.settings["seed"] == seed


def test_the_finished_list_filters_by_prompt_text_and_story_title(logged_in: Client, templates: None) -> None:
    from stories.models import Story

    story = Story.objects.create(idea="x", title="The Lighthouse", target_seconds=30)
    lamp, boat, other = ended("completed", 3)
    RenderJob.objects.filter(pk=lamp.pk).update(story=str(story.code), target="shot:3", prompt="a lamp in fog")
    RenderJob.objects.filter(pk=boat.pk).update(prompt="a paper boat on a pond")
    assert codes(page(logged_in, q="paper BOAT"), "finished") == [str(boat.code)]
    html = page(logged_in, q="lighthouse")
    assert codes(html, "finished") == [str(lamp.code)]
    assert f'download="the-lighthouse-shot-03-{str(lamp.code)[:8]}.mp4"' in html
    assert codes(page(logged_in, q="nothing like it"), "finished") == []
    assert 'value="lighthouse"' in page(logged_in, q="lighthouse")  # the search stays in its box
    assert len(codes(page(logged_in), "finished")) == 3 and other
