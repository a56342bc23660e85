"""Render jobs that take other jobs' outputs (keyframe → image-to-video → upscale →
interpolation) on simulated ComfyUI nodes: a job waits for its input, never starts on a failed
one, runs where its input is (loaded from the node's own output folder) or has it uploaded, and
every job runs exactly once, counted on the nodes' own files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from django.db import transaction

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders.dispatch import PoolView
from renders.management.commands.load_templates import load
from renders.models import JobInput, RenderJob, Speed, Template
from tests.conftest import Cluster, executions, wait_until

NET = 59 if os.environ.get("DATABASE_URL") else 58


def add_node(name: str, last: int, **knobs: Any) -> tuple[Node, SimComfyUI]:
    sim = SimComfyUI(f"127.0.{NET}.{last}", 0, seconds_per_node=0.02, **knobs).start()
    gpu = Node.objects.create(name=name, host=f"127.0.{NET}.{last}")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    return gpu, sim


@pytest.fixture
def pool(transactional_db: None, fast: None) -> Iterator[list[tuple[Node, SimComfyUI]]]:
    load()
    nodes = [add_node("gpu-a", 1), add_node("gpu-b", 2)]
    yield nodes
    for _, sim in nodes:
        sim.close()


@pytest.fixture
def one(transactional_db: None, fast: None) -> Iterator[tuple[Node, SimComfyUI]]:
    load()
    gpu, sim = add_node("gpu", 3)
    yield gpu, sim
    sim.close()


def chain(*names: str, **fields: Any) -> list[RenderJob]:
    """Jobs of these templates, each taking the one before's output, queued at once."""
    jobs: list[RenderJob] = []
    with transaction.atomic():
        position = RenderJob.last_position()
        for i, name in enumerate(names):
            template = Template.objects.get(name=name)
            settings = {"frames": 5, "fps": 8} if template.takes("frames") else {}
            if template.takes("fps") and not template.takes("frames"):
                settings = {"fps": 8}
            job = RenderJob.build(template, settings, prompt=f"step {i}", position=position + i)
            job.save()
            if jobs:
                JobInput.objects.create(job=job, source=jobs[-1], parameter="image" if i == 1 else "video")
            jobs.append(job)
        for job, pin in zip(jobs, fields.get("pins", []), strict=False):
            RenderJob.objects.filter(pk=job.pk).update(pin=pin)
        RenderJob.announce_queued()
    return jobs


def fresh(job: RenderJob) -> RenderJob:
    job.refresh_from_db()
    return job


def wait_status(job: RenderJob, wanted: str, timeout: float = 30) -> RenderJob:
    wait_until(lambda: fresh(job).status == wanted, timeout, f"{job.prompt} to be {wanted} ({job.status}: {job.error})")
    return job


def frames_of(media: Path, job: RenderJob) -> tuple[int, int, int]:
    with av.open(str(media / job.outputs[0]["path"])) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.width, stream.height


def test_a_job_waits_for_its_input_then_loads_it_from_the_node_that_made_it(
    cluster: Cluster, one: tuple[Node, SimComfyUI], tmp_path: Path
) -> None:
    _, sim = one
    sim.knobs.seconds_per_node = 0.3  # the keyframe takes a while: the video must not start meanwhile
    keyframe, video, upscale = chain("test-still-image", "test-i2v", "test-upscale")
    wait_status(keyframe, "rendering")
    assert fresh(video).status == "queued" and fresh(upscale).status == "queued"
    assert not RenderJob.objects.runnable().filter(pk__in=[video.pk, upscale.pk]).exists()
    assert video.inputs.get().waiting().startswith("waiting for its image input")
    sim.knobs.seconds_per_node = 0.02
    wait_status(upscale, "completed")
    for job in (keyframe, video, upscale):
        assert executions(sim, fresh(job)) == 1, job.prompt
    # Each loaded its input from the node's own output folder: nothing was uploaded.
    assert [(i.local, i.uploaded) for i in JobInput.objects.order_by("pk")] == [(True, 0), (True, 0)]
    assert sim.uploaded == []
    assert fresh(video).workflow and any(
        str(n["inputs"].get("image", "")).endswith(" [output]") for n in video.workflow.values()
    )
    media = tmp_path / "media"
    frames, width, height = frames_of(media, video)
    assert frames == 5
    assert frames_of(media, fresh(upscale)) == (5, width * 2, height * 2)


def test_a_job_whose_input_failed_waits_saying_so_and_runs_once_the_input_is_retried(
    cluster: Cluster, one: tuple[Node, SimComfyUI]
) -> None:
    _, sim = one
    sim.knobs.fail = "oom"
    keyframe, video = chain("test-still-image", "test-i2v")
    wait_status(keyframe, "failed")
    assert fresh(video).status == "queued" and video.attempts == 0
    reason = video.inputs.select_related("source").get().waiting()
    assert "failed" in reason and "OutOfMemory" in reason and "retry it to go on" in reason
    sim.knobs.fail = None
    assert fresh(keyframe).retry()
    wait_status(video, "completed")
    assert executions(sim, fresh(keyframe)) == 1 and executions(sim, video) == 1
    assert fresh(video).attempts == 1


def test_an_input_made_on_another_node_is_uploaded_and_its_bytes_counted(
    cluster: Cluster, pool: list[tuple[Node, SimComfyUI]]
) -> None:
    (a, sim_a), (b, sim_b) = pool
    keyframe, video = chain("test-still-image", "test-i2v", pins=[a, b])
    wait_status(video, "completed")
    taken = JobInput.objects.get(job=video)
    size = fresh(keyframe).outputs[0]["size"]
    assert (taken.local, taken.uploaded) == (False, size)
    assert [u.size for u in sim_b.uploaded] == [size] and sim_a.uploaded == []
    assert executions(sim_a, keyframe) == 1 and executions(sim_b, fresh(video)) == 1


def test_a_node_that_lost_the_file_it_made_gets_it_uploaded_instead(
    cluster: Cluster, one: tuple[Node, SimComfyUI]
) -> None:
    _, sim = one
    keyframe, video = chain("test-still-image", "test-i2v")
    wait_status(keyframe, "completed")
    wait_status(video, "completed")
    made = executions(sim, fresh(video))
    # The node's output folder cleaned, then the same step asked again from the same keyframe.
    for path in sim.output_dir.rglob(f"{keyframe.code}*"):
        path.unlink()
    again = RenderJob.build(video.template, video.settings, prompt="again", position=RenderJob.last_position())
    with transaction.atomic():
        again.save()
        JobInput.objects.create(job=again, source=keyframe, parameter="image")
        RenderJob.announce_queued()
    wait_status(again, "completed")
    taken = JobInput.objects.get(job=again)
    assert taken.local is False and taken.uploaded == keyframe.outputs[0]["size"]
    assert made == 1 and executions(sim, fresh(again)) == 1


# --- placement by where the input is ----------------------------------------------------------


@pytest.fixture
def measured(db: None, settings: Any) -> tuple[Capability, Capability, Template]:
    """Two nodes equally fast at the image-to-video test template, measured; 1 MB/s between them."""
    settings.RENDER_UPLOAD_RATE = 1
    load()
    template = Template.objects.get(name="test-i2v")
    caps = []
    for name in ("a", "b"):
        gpu = Node.objects.create(name=name, host=f"127.0.{NET}.{len(caps) + 10}")
        cap = Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=8188, status=Capability.ONLINE)
        Speed.objects.create(capability=cap, template=template, seconds_per_unit=1.0)
        caps.append(cap)
    return caps[0], caps[1], template


def made_on(node: Node, size: int = 10_000_000) -> RenderJob:
    """A finished job of `node` whose output (10 s to upload at 1 MB/s) another job takes."""
    template = Template.objects.get(name="test-still-image")
    out = {"path": "x.png", "size": size}
    return RenderJob.objects.create(template=template, status=RenderJob.COMPLETED, node=node, outputs=[out])


def test_a_job_is_planned_onto_the_node_that_has_its_input_when_it_is_free_soon_enough(
    measured: tuple[Capability, Capability, Template],
) -> None:
    a, b, template = measured
    job = RenderJob.objects.create(template=template, work=5, position=1)
    JobInput.objects.create(job=job, source=made_on(b.node), parameter="image")
    # b is busy for a little while: a would finish sooner, but by less than the upload takes.
    RenderJob.objects.create(template=template, status=RenderJob.RENDERING, node=b.node, work=5)
    view = PoolView.read()
    assert job.pk in view.plan(b) and job.pk not in view.plan(a)


def test_a_job_goes_elsewhere_when_the_node_with_its_input_is_busy_for_longer_than_the_upload_takes(
    measured: tuple[Capability, Capability, Template],
) -> None:
    a, b, template = measured
    job = RenderJob.objects.create(template=template, work=5, position=1)
    JobInput.objects.create(job=job, source=made_on(b.node), parameter="image")
    RenderJob.objects.create(template=template, status=RenderJob.RENDERING, node=b.node, work=30)
    view = PoolView.read()
    assert job.pk in view.plan(a) and job.pk not in view.plan(b)
