"""The pool's timeline on the Nodes page and the dashboard: a lane per service, the last hour's
jobs and steps as bars placed by time, the free VRAM the health checks read, and live redraws."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from nodes import health, timeline
from nodes.models import Capability, Node, Sample
from nodes.sim.comfyui import SimComfyUI, cuda_device
from renders.models import RenderJob, Template
from spoonfeeder import relay
from spoonfeeder.models import Event
from stories.models import StepRun, Story
from tests.conftest import communicator, session_for

PAGES = ("nodes:index", "dashboard")
BAR = re.compile(
    r'<a href="[^"]*" class="tl-bar (?P<status>\w+)"><title>(?P<title>.*?)</title>'
    r'<svg x="(?P<x>[\d.]+)%" y="\d+" width="(?P<width>[\d.]+)%"'
)


def node(name: str, *, comfyui: bool = True, ollama: bool = True, host: str = "") -> Node:
    n = Node.objects.create(name=name, host=host or f"{name}.lab")
    for kind, wanted in ((Capability.COMFYUI, comfyui), (Capability.OLLAMA, ollama)):
        if wanted:
            Capability.objects.create(node=n, kind=kind, port=Capability.DEFAULT_PORTS[kind], status=Capability.ONLINE)
    return n


def template() -> Template:
    return Template.objects.get_or_create(
        name="still", defaults={"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}
    )[0]


def job(on: Node, began: float, ended: float | None, status: str = RenderJob.COMPLETED, **fields: Any) -> RenderJob:
    """A render job that ran on `on` from `began` minutes ago to `ended` minutes ago (None: still
    rendering)."""
    now = timezone.now()
    return RenderJob.objects.create(
        template=template(),
        node=on,
        status=status if ended is not None else RenderJob.RENDERING,
        started=now - timedelta(minutes=began),
        finished=None if ended is None else now - timedelta(minutes=ended),
        **fields,
    )


def step(on: Node, began: float, ended: float, status: str = StepRun.COMPLETED, **fields: Any) -> StepRun:
    now = timezone.now()
    story = Story.objects.create(idea="a lighthouse keeper", title="The Keeper", model="m")
    return StepRun.objects.create(
        story=story,
        status=status,
        node=on,
        started=now - timedelta(minutes=began),
        finished=now - timedelta(minutes=ended),
        **fields,
    )


def lanes(html: str) -> dict[str, str]:
    """Each lane of the timeline, by its id, as HTML."""
    found = re.findall(r'<div class="tl-lane \w+" id="(lane-[\w-]+)">(.*?)</div>', html, re.S)
    return dict(found)


def bars(lane: str) -> list[dict[str, Any]]:
    return [{**m.groupdict(), "x": float(m["x"]), "width": float(m["width"])} for m in BAR.finditer(lane)]


@pytest.mark.django_db
def test_each_service_has_a_lane_with_the_last_hours_jobs_and_steps(logged_in: Client) -> None:
    gpu, cpu = node("gpu"), node("cpu", comfyui=False)
    job(gpu, 30, 25, prompt="a <b>red</b> fox at dawn")
    job(gpu, 10, None, prompt="a heron")
    job(gpu, 50, 45, status=RenderJob.FAILED, prompt="a storm")
    job(gpu, 150, 70, prompt="from long ago")  # ended before the hour: not drawn
    step(gpu, 20, 18, step="segments")
    step(cpu, 40, 39, step="story")
    for page in PAGES:
        html = logged_in.get(reverse(page)).content.decode()
        assert 'id="timeline"' in html and "ws-connect" in html and "timeline" in html.split("ws-connect")[1][:80]
        shown = lanes(html)
        assert list(shown) == [f"lane-{cpu.code}-ollama", f"lane-{gpu.code}-comfyui", f"lane-{gpu.code}-ollama"]
        assert "<strong>gpu</strong> ComfyUI" in shown[f"lane-{gpu.code}-comfyui"]
        assert "<strong>cpu</strong> Ollama" in shown[f"lane-{cpu.code}-ollama"]

        renders = bars(shown[f"lane-{gpu.code}-comfyui"])
        assert [(b["status"], b["title"].split(":")[0]) for b in renders] == [
            ("failed", f"{str(RenderJob.objects.get(prompt='a storm').code)[:8]} a storm"),
            (
                "completed",
                f"{str(RenderJob.objects.get(prompt__contains='fox').code)[:8]} a &lt;b&gt;red&lt;/b&gt; fox at dawn",
            ),
            ("running", f"{str(RenderJob.objects.get(prompt='a heron').code)[:8]} a heron"),
        ]
        assert "<b>red" not in html and "from long ago" not in html
        running = renders[-1]
        assert running["x"] == pytest.approx(100 * 50 / 60, abs=0.5) and running["x"] + running[
            "width"
        ] == pytest.approx(100, abs=0.5)
        assert [b["title"].split(":")[0] for b in bars(shown[f"lane-{gpu.code}-ollama"])] == ["Segments · The Keeper"]
        assert [b["status"] for b in bars(shown[f"lane-{cpu.code}-ollama"])] == ["completed"]
        assert "busy 33%" in shown[f"lane-{gpu.code}-comfyui"]  # 5 + 5 + 10 minutes of the hour...
        # ... and a tick every ten minutes, then "now"
        assert len(re.findall(r'<text x="[\d.]+%" y="13" text-anchor="middle">\d\d:\d0</text>', html)) in (5, 6)


@pytest.mark.django_db
def test_an_idle_gap_between_two_jobs_shows_between_their_bars(logged_in: Client) -> None:
    gpu = node("gpu", ollama=False)
    job(gpu, 40, 35, prompt="first")
    job(gpu, 20, 15, prompt="second")
    html = logged_in.get(reverse("nodes:index")).content.decode()
    first, second = bars(lanes(html)[f"lane-{gpu.code}-comfyui"])
    assert first["x"] == pytest.approx(100 * 20 / 60, abs=0.2)
    assert first["x"] + first["width"] == pytest.approx(100 * 25 / 60, abs=0.2)
    assert second["x"] - (first["x"] + first["width"]) == pytest.approx(100 * 15 / 60, abs=0.2)  # idle


@pytest.mark.django_db
def test_work_running_at_once_on_one_service_is_drawn_in_rows_of_its_own(logged_in: Client) -> None:
    cpu = node("cpu", comfyui=False)
    step(cpu, 30, 10, step="story")
    step(cpu, 25, 20, step="segments")
    step(cpu, 5, 2, step="music")
    html = logged_in.get(reverse("nodes:index")).content.decode()
    rows = re.findall(r'class="tl-bar \w+"><title>[^<]*</title><svg x="[\d.]+%" y="(\d+)"', html)
    assert rows == ["2", "24", "2"]


@pytest.mark.django_db
def test_a_jobs_bar_ends_when_its_node_was_done_with_it_not_when_its_outputs_were_copied(logged_in: Client) -> None:
    gpu = node("gpu", ollama=False)
    job(gpu, 30, 19, seconds=9 * 60)  # 9 minutes on the GPU, then 2 copying while the next began
    job(gpu, 21, 10)
    lane = lanes(logged_in.get(reverse("nodes:index")).content.decode())[f"lane-{gpu.code}-comfyui"]
    first, second = bars(lane)
    assert first["x"] + first["width"] == pytest.approx(100 * 39 / 60, abs=0.2)
    assert second["x"] == pytest.approx(100 * 39 / 60, abs=0.2)
    assert re.findall(r'<svg x="[\d.]+%" y="(\d+)"', lane) == ["2", "2"]  # one after the other: one row


@pytest.mark.django_db
def test_a_health_check_keeps_a_vram_sample_that_the_lane_draws_and_old_ones_go(logged_in: Client) -> None:
    with SimComfyUI("127.0.0.1", 0) as sim:
        gpu = node("gpu", ollama=False, host="127.0.0.1")
        Capability.objects.filter(node=gpu).update(port=sim.port)
        with time_machine.travel(timezone.now() - timedelta(hours=3)):
            health.check_node(gpu)
        assert Sample.objects.count() == 1
        with time_machine.travel(timezone.now() - timedelta(minutes=4)):
            health.check_node(gpu)
        assert Sample.objects.count() == 1  # the one of three hours ago is past the keep period
        sim.knobs.devices = [cuda_device(vram_gb=24, free_gb=6)]
        health.check_node(gpu)

    samples = list(Sample.objects.order_by("taken").values_list("vram_free", "vram_total"))
    assert samples == [(int(22.5 * 1024**3), 24 * 1024**3), (6 * 1024**3, 24 * 1024**3)]  # the 3-hour-old went
    html = logged_in.get(reverse("nodes:index")).content.decode()
    lane = lanes(html)[f"lane-{gpu.code}-comfyui"]
    assert "VRAM 6.0\xa0GB free of 24.0\xa0GB" in lane
    line = re.search(r'class="tl-vram-line" d="([^"]+)"', lane)
    assert line
    points = [tuple(map(float, p.split())) for p in line.group(1).lstrip("M").split(" L")]
    # 4 minutes ago 22.5 of 24 GB free (high), now 6 GB (low): y grows downwards in a 1000 x 100 box
    assert points[0] == pytest.approx((1000 * 56 / 60, 100 - 100 * 22.5 / 24), abs=1)
    assert points[-1] == pytest.approx((1000, 75), abs=1)


@pytest.mark.django_db
def test_a_lane_draws_its_newest_bars_and_says_how_many_it_left_out(logged_in: Client) -> None:
    gpu = node("gpu", ollama=False)
    now = timezone.now()
    RenderJob.objects.bulk_create(
        RenderJob(
            template=template(),
            node=gpu,
            status=RenderJob.COMPLETED,
            started=now - timedelta(seconds=3000 - i * 10),
            finished=now - timedelta(seconds=2995 - i * 10),
        )
        for i in range(timeline.BARS_PER_LANE + 40)
    )
    lane = lanes(logged_in.get(reverse("nodes:index")).content.decode())[f"lane-{gpu.code}-comfyui"]
    assert len(bars(lane)) == timeline.BARS_PER_LANE
    assert "(and 40 earlier, not drawn)" in lane
    oldest = min(b["x"] for b in bars(lane))
    assert oldest == pytest.approx(100 * (600 + 10 * 40) / 3600, abs=0.1)  # the oldest 40 are left out


@pytest.mark.django_db
def test_the_pages_read_the_timeline_in_a_bounded_number_of_queries(
    logged_in: Client, django_assert_max_num_queries: Any
) -> None:
    gpu = node("gpu")
    job(gpu, 10, 5)
    step(gpu, 10, 5)
    logged_in.get(reverse("nodes:index"))  # warm the session
    few = {}
    for page in PAGES:
        with django_assert_max_num_queries(30) as counted:
            logged_in.get(reverse(page))
        few[page] = len(counted.captured_queries)

    nodes = [gpu] + [node(f"n{i}") for i in range(9)]
    now = timezone.now()
    story = Story.objects.create(idea="busy", model="m")
    RenderJob.objects.bulk_create(
        RenderJob(
            template=template(),
            node=nodes[i % 10],
            status=RenderJob.COMPLETED,
            prompt=f"job {i}",
            started=now - timedelta(seconds=3500 - i * 7),
            finished=now - timedelta(seconds=3496 - i * 7),
        )
        for i in range(500)
    )
    StepRun.objects.bulk_create(
        StepRun(
            story=story,
            step="prompts",
            part=i,
            status=StepRun.COMPLETED,
            node=nodes[i % 10],
            started=now - timedelta(seconds=3500 - i * 30),
            finished=now - timedelta(seconds=3490 - i * 30),
        )
        for i in range(100)
    )
    for page in PAGES:
        with django_assert_max_num_queries(few[page]):
            html = logged_in.get(reverse(page)).content.decode()
        assert len(lanes(html)) == 20
        assert len(BAR.findall(html)) == 500 + 100 + 2


@pytest.mark.django_db
def test_only_starts_and_ends_redraw_the_timeline_not_progress() -> None:
    gpu = node("gpu")
    running = job(gpu, 1, None)
    running.changed("job.progress")
    assert not Event.objects.filter(topic="timeline").exists()
    assert running.transition(RenderJob.COMPLETED, expect=(RenderJob.RENDERING,), finished=timezone.now())
    assert Event.objects.filter(topic="timeline", kind="job.completed").count() == 1
    run = step(gpu, 1, 0, status=StepRun.PENDING, step="story")
    assert run.transition(StepRun.RUNNING, expect=(StepRun.PENDING,), started=timezone.now())
    assert Event.objects.filter(topic="timeline", kind="step.running").count() == 1


@pytest.mark.django_db(transaction=True)
async def test_a_job_that_ends_redraws_the_timeline_on_a_connected_page(user: User) -> None:
    gpu = await sync_to_async(node)("gpu")
    running = await sync_to_async(job)(gpu, 3, None, prompt="a lantern <script>")
    ws = communicator(await sync_to_async(session_for)(user), topics="nodes,timeline")
    assert (await ws.connect())[0]

    async def until(check: Any) -> str:
        while True:
            html = await ws.receive_from(timeout=10)
            if 'id="timeline"' in html and check(html):
                return html

    snapshot = await until(lambda html: True)
    assert [b["status"] for b in bars(lanes(snapshot)[f"lane-{gpu.code}-comfyui"])] == ["running"]

    def finish() -> None:
        running.transition(RenderJob.COMPLETED, expect=(RenderJob.RENDERING,), finished=timezone.now())

    await sync_to_async(finish)()
    html = await until(lambda html: 'class="tl-bar completed"' in html)
    assert html.lstrip().startswith('<section id="timeline"')
    assert "a lantern &lt;script&gt;" in html and "<script>" not in html
    await ws.disconnect()
    await relay.stop()


def test_ticks_fall_on_the_clock_every_ten_minutes() -> None:
    now = timezone.make_aware(datetime(2026, 12, 4, 18, 47, 30))
    since = now - timeline.WINDOW
    drawn = timeline.ticks(since, now, lambda t: (t - since) / timeline.WINDOW * 1000)
    assert [t.label for t in drawn] == ["17:50", "18:00", "18:10", "18:20", "18:30", "18:40"]
    soon, before = now - timedelta(minutes=5, seconds=30), since - timedelta(minutes=5, seconds=30)  # 18:42
    near = timeline.ticks(before, soon, lambda t: (t - before) / timeline.WINDOW * 1000)
    assert near[-1].label == "18:30"  # 18:40 would collide with "now"
    assert drawn[0].x == pytest.approx(1000 * 2.5 / 60)
