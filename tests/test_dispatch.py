"""The render queue against simulated ComfyUI nodes: dispatch, tracking, failures, controls and
crash re-attach, with the cluster's tasks run in this process (and a real `qcluster` where a
worker dies or stops)."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import websocket
from django.db import transaction
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders import dispatch
from renders.dispatch import best_fit
from renders.management.commands.load_templates import load
from renders.models import Queue, RenderJob, Speed, Template
from spoonfeeder import work
from tests.conftest import Cluster, Stack, executions, wait_until
from tests.test_run import children

NET = 33 if os.environ.get("DATABASE_URL") else 32


@pytest.fixture
def node(transactional_db: None, fast: None) -> Iterator[tuple[Node, SimComfyUI]]:
    sim = SimComfyUI(f"127.0.{NET}.1", 0, seconds_per_node=0.05).start()
    gpu = Node.objects.create(name="gpu", host=f"127.0.{NET}.1")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    load()
    yield gpu, sim
    sim.close()


def queue(template: str = "test-still-image", n: int = 1, **fields: Any) -> list[RenderJob]:
    """Jobs queued as the queue's form queues them (the cluster is told once they commit)."""
    t = Template.objects.get(name=template)
    with transaction.atomic():
        start = RenderJob.last_position()
        jobs = [RenderJob.objects.create(template=t, prompt=f"job {i}", position=start + i, **fields) for i in range(n)]
        RenderJob.announce_queued()
    return jobs


def status(job: RenderJob) -> str:
    job.refresh_from_db()
    return job.status


def wait_status(job: RenderJob, wanted: str, timeout: float = 20) -> RenderJob:
    wait_until(
        lambda: status(job) == wanted, timeout, f"job {job.prompt} to be {wanted} (is {job.status}: {job.error})"
    )
    return job


def test_a_queued_job_renders_and_its_output_is_copied_under_our_name(
    cluster: Cluster, node: Any, tmp_path: Path
) -> None:
    _, sim = node
    [job] = queue()
    wait_status(job, "completed")
    out = job.outputs[0]
    assert out["path"] == f"renders/{str(job.code)[:2]}/{job.code}/00.png"
    assert (tmp_path / "media" / out["path"]).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "media" / out["thumbnail"]).exists()
    assert (job.attempts, job.progress, job.node.name, job.error) == (1, 1, "gpu", "")
    assert job.workflow and job.prompt_id and job.seconds is not None
    assert executions(sim, job) == 1
    assert job.capability is None and job.node.capabilities.get().holders() == 0


def started_on(sim: SimComfyUI) -> list[str]:
    """The prompt_ids the node ran, in the order it started them (its history's own times)."""

    def start(entry: dict[str, Any]) -> int:
        return next(m[1]["timestamp"] for m in entry["status"]["messages"] if m[0] == "execution_start")

    history = sim.state.history
    return sorted(history, key=lambda prompt_id: start(history[prompt_id]))


def test_jobs_run_by_priority_then_position(cluster: Cluster, node: Any) -> None:
    _, sim = node
    Queue.set_paused(True)
    low = queue(n=2)
    [high] = queue(priority=5)
    Queue.set_paused(False)
    for job in (high, *low):
        wait_status(job, "completed")
    # The node's order, not the order our side recorded the ends in (a busy machine may note a
    # later end first).
    jobs = {
        p: (name, priority) for p, name, priority in RenderJob.objects.values_list("prompt_id", "prompt", "priority")
    }
    assert [jobs[p] for p in started_on(sim)] == [("job 0", 5), ("job 0", 0), ("job 1", 0)]
    assert [executions(sim, job) for job in (high, *low)] == [1, 1, 1]


def test_a_workflow_comfyui_refuses_fails_at_once_with_its_reasons(cluster: Cluster, node: Any) -> None:
    bad = Template.objects.create(
        name="bad",
        workflow={
            "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
        },
    )
    [job] = queue(bad.name)
    wait_status(job, "failed")
    assert job.attempts == 1
    assert "smaller than min" in job.error and "filename_prefix" in job.error


def test_out_of_memory_is_retried_then_fails_with_attempts_counted(cluster: Cluster, node: Any) -> None:
    _, sim = node
    sim.knobs.fail = "oom"
    [job] = queue()
    wait_status(job, "failed")
    assert job.attempts == job.max_attempts == 3
    assert "OutOfMemory" in job.error


def test_a_node_that_restarts_and_forgets_the_run_renders_it_again(cluster: Cluster, node: Any) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 0.6
    [job] = queue()
    wait_status(job, "rendering")
    sim.restart()  # forgets queue and history: the run is lost, not done
    wait_status(job, "completed", timeout=30)
    assert job.attempts == 2
    assert executions(sim, job) == 1  # the lost run wrote nothing; the second one did


def test_cancelling_a_running_job_interrupts_it_on_the_node(cluster: Cluster, node: Any) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 3
    [job] = queue()
    wait_status(job, "rendering")
    assert job.cancel()
    wait_until(lambda: not job.node.capabilities.get().holders(), 10, "the capacity to be given back")
    wait_until(lambda: sim.state.history, 10, "the node to record the run")  # type: ignore[attr-defined]
    entry = next(iter(sim.state.history.values()))  # type: ignore[attr-defined]
    assert entry["status"]["status_str"] == "error"  # interrupted, not finished
    assert status(job) == "cancelled"


def test_pausing_pulls_back_the_job_waiting_in_the_nodes_queue(cluster: Cluster, node: Any) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 0.8
    first, second = queue(n=2)
    wait_status(first, "rendering")
    wait_status(second, "assigned")  # waiting in ComfyUI's own queue, so the GPU never idles
    Queue.set_paused(True)
    wait_status(second, "queued")
    wait_status(first, "completed")
    assert status(second) == "queued" and second.attempts == 0
    Queue.set_paused(False)
    wait_status(second, "completed")
    assert executions(sim, second) == 1


def test_moving_a_job_to_the_top_pulls_back_the_one_waiting_on_the_node(cluster: Cluster, node: Any) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 0.8
    first, second, third = queue(n=3)
    wait_status(second, "assigned")
    sent = second.prompt_id
    assert third.move("top")
    wait_status(third, "assigned")
    # Back in our queue once the node has shown it never ran it (and soon sent again, as a new run).
    wait_until(
        lambda: (j := RenderJob.objects.get(pk=second.pk)).status == "queued" or j.prompt_id != sent,
        20,
        "the job waiting on the node to come back to the queue",
    )
    wait_status(second, "completed", timeout=30)
    order = list(RenderJob.objects.order_by("finished").values_list("prompt", flat=True))
    assert order == ["job 0", "job 2", "job 1"]
    assert all(executions(sim, job) == 1 for job in (first, second, third))


def test_a_job_waiting_on_the_node_is_not_pulled_back_for_one_that_was_ahead_before_it_was_sent(
    cluster: Cluster, node: Any
) -> None:
    """Only the user puts a job ahead of one already on its node (moving it, queueing it): a job
    that was ahead all along (the plan had left it for another node, or it came back from a
    failed attempt) goes after, and the node's queue is left alone."""
    _, sim = node
    sim.knobs.seconds_per_node = 0.8
    first, second = queue(n=2)
    wait_status(second, "assigned")
    wait_until(lambda: RenderJob.objects.get(pk=second.pk).sent is not None, 10, "the second job to be sent")
    second.refresh_from_db()
    sent_as, claimed = second.prompt_id, second.claimed
    assert claimed is not None
    # Ahead of the second job in the queue, and there since before the second was claimed.
    with transaction.atomic():
        back = RenderJob.objects.create(
            template=second.template,
            prompt="ahead all along",
            position=second.position - 0.5,
            moved=claimed - timedelta(seconds=1),
        )
        RenderJob.announce_queued()
    for job in (first, second, back):
        wait_status(job, "completed", timeout=30)
    assert RenderJob.objects.get(pk=second.pk).prompt_id == sent_as  # never taken off the node
    assert all(executions(sim, job) == 1 for job in (first, second, back))


def test_a_node_that_answers_html_for_a_while_fails_no_job(cluster: Cluster, node: Any) -> None:
    gpu, sim = node
    sim.knobs.garbage = True  # a proxy's error page, or a half-started server
    jobs = queue(n=6)
    wait_until(lambda: "no new jobs for it" in gpu.capabilities.get().last_error, 20, "the node to rest")
    sim.knobs.garbage = False
    for job in jobs:
        wait_status(job, "completed", timeout=60)
    assert all(executions(sim, job) == 1 for job in jobs)


def test_a_node_that_refuses_connections_while_it_restarts_uses_up_no_attempts(cluster: Cluster, node: Any) -> None:
    gpu, sim = node
    sim.stop()  # restarting: nothing listens for a while
    jobs = queue(n=3)
    wait_until(lambda: "connection refused" in gpu.capabilities.get().last_error, 20, "the refusal seen")
    # Back in the queue after each refusal (a claim in flight counts its attempt until then).
    assert all(status(job) in ("queued", "assigned") and job.attempts <= 1 for job in jobs)
    sim.start()
    for job in jobs:
        wait_status(job, "completed", timeout=90)
        assert (job.attempts, executions(sim, job)) == (1, 1)


def test_a_history_entry_seconds_behind_execution_success_is_waited_for_not_rendered_again(
    cluster: Cluster, node: Any
) -> None:
    _, sim = node
    sim.knobs.history_lag = 2.0
    first, second = queue(n=2)
    for job in (first, second):
        wait_status(job, "completed", timeout=30)
        assert (executions(sim, job), job.attempts, job.error) == (1, 1, "")


def stir(action: str, rng: random.Random) -> None:
    """What a user does to the queue in a storm: pause, resume, or move a random queued job to
    the "top" or "bottom"."""
    if action in ("pause", "resume"):
        Queue.set_paused(action == "pause")
        return
    queued = list(RenderJob.objects.filter(status=RenderJob.QUEUED).values_list("pk", flat=True))
    if queued:
        RenderJob.objects.get(pk=rng.choice(queued)).move(action)


def test_pause_resume_and_reorder_storms_over_prefetched_short_jobs_render_each_job_once(
    cluster: Cluster, node: Any
) -> None:
    """Jobs that start and even finish on the node between two looks at its queue (short jobs,
    the next one prefetched, a history entry that comes a moment after the run ends, as on a
    loaded real ComfyUI) are never taken for never started and sent again."""
    _, sim = node
    sim.knobs.seconds_per_node = 0.01
    sim.knobs.history_lag = 0.2
    jobs = queue(n=24)
    rng = random.Random(24)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and RenderJob.objects.exclude(status__in=RenderJob.ENDED).exists():
        action = rng.choice(("pause", "resume", "resume", "top", "bottom"))
        stir(action, rng)
        time.sleep(rng.uniform(0.01, 0.15))  # the storm's pace, not a wait for anything
    Queue.set_paused(False)
    for job in jobs:
        wait_status(job, "completed", timeout=60)
    runs = {job.prompt: executions(sim, job) for job in jobs}
    assert all(n == 1 for n in runs.values()), runs
    assert not RenderJob.objects.exclude(error="").exists()


def test_an_attempt_delivered_twice_is_followed_by_one_worker(cluster: Cluster, node: Any) -> None:
    """The ORM broker redelivers a task after `retry` seconds, and the sweeper queues an attempt
    again while the first copy waits: the row decides, and a second copy does nothing."""
    _, sim = node
    sim.knobs.seconds_per_node = 0.5
    [job] = queue()
    wait_status(job, "rendering")
    assert dispatch.attempt(job.pk, job.prompt_id) == "not this attempt's any more"
    assert dispatch.attempt(job.pk, "an-older-prompt-id") == "not this attempt's any more"
    wait_status(job, "completed")
    assert (job.attempts, job.crashes, executions(sim, job)) == (1, 0, 1)


def worker_of(job: RenderJob) -> int:
    """The pid of the worker process following `job`, as its row says."""
    job.refresh_from_db()
    return int(job.worker.split(":")[1])


def test_a_worker_killed_mid_render_is_replaced_and_its_job_followed_again_exactly_once(
    node: Any, stack: Stack
) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 1.5
    stack.worker(SPOONFEEDER_STALE="30")  # the dead worker is found by its pid, long before
    [job] = queue()
    wait_until(lambda: status(job) == "rendering" and job.worker, 30, "a worker to render the job")
    killed = worker_of(job)
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: status(job) == "completed", 40, f"the job to complete ({job.status}: {job.error})")
    assert (job.crashes, job.attempts, executions(sim, job)) == (1, 1, 1)
    assert worker_of(job) != killed


def test_lost_messages_are_harmless_the_rows_decide(cluster: Cluster, node: Any) -> None:
    """A broker may lose a message (Redis does, when the worker that took it dies): here the feed
    task of the change that queued the jobs, and the attempt of a job claimed for the node's own
    queue. Every job still renders, once: the sweeper feeds what is runnable, and re-drives a
    claim that nobody follows once its heartbeat is stale (2 s here), counting no attempt."""
    _, sim = node
    sim.knobs.seconds_per_node = 0.3
    cluster.lose = {"renders.tasks.feed": 1, "renders.tasks.attempt": 1}
    jobs = queue(n=3)
    for job in jobs:
        wait_status(job, "completed", timeout=30)
    assert cluster.lose == {"renders.tasks.feed": 0, "renders.tasks.attempt": 0}  # both were lost
    assert [(j.attempts, j.crashes, executions(sim, j)) for j in jobs] == [(1, 0, 1)] * 3


def test_a_dropped_websocket_falls_back_to_polling(cluster: Cluster, node: Any) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 0.5
    [job] = queue()
    wait_status(job, "rendering")
    sim.drop_websockets()
    wait_status(job, "completed")
    assert job.attempts == 1 and executions(sim, job) == 1


def test_a_socket_silenced_by_another_with_its_client_id_is_noticed_and_reopened(
    cluster: Cluster, node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Surprise 10: a second socket opened with our clientId, then closed, leaves ours open and
    told nothing. The job's progress goes on showing once the silence is noticed."""
    _, sim = node
    monkeypatch.setattr(dispatch, "SILENCE", 1.0)
    monkeypatch.setattr(dispatch, "POLL", 0.5)
    sim.knobs.seconds_per_node = 1.5
    [job] = queue("test-still-image-slow")
    wait_until(lambda: status(job) == "rendering" and job.progress > 0, 30, "the job's first progress")
    intruder = websocket.create_connection(f"ws://{sim.host}:{sim.port}/ws?clientId={job.client_id}", timeout=5)
    intruder.close()
    job.refresh_from_db()
    silenced_at = job.progress
    wait_until(
        lambda: status(job) == "rendering" and job.progress > silenced_at or job.status == "completed",
        30,
        "progress after the silence",
    )
    assert job.status == "rendering", "no progress was heard after the socket was silenced"
    wait_status(job, "completed")
    assert (job.attempts, executions(sim, job)) == (1, 1)


def test_a_prompt_comfyui_accepts_with_a_branch_dropped_says_so_on_the_job(cluster: Cluster, node: Any) -> None:
    """Surprise 6: one bad branch is answered 200 with node_errors and the good one runs; the job
    completes with what ran and says which outputs were dropped and why."""
    _, sim = node
    workflow = {  # as PROTOCOL.md's validation_partial.json: node 3's width 0 is below its minimum
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "good"}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 32, "batch_size": 1, "color": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad"}},
    }
    Template.objects.create(
        name="two branches, one bad",
        workflow=workflow,
        mapping={"filename_prefix": [["2", "filename_prefix"], ["4", "filename_prefix"]]},
    )
    [job] = queue("two branches, one bad")
    wait_status(job, "completed")
    assert len(job.outputs) == 1
    assert job.error.startswith("ComfyUI dropped part of the workflow: node 3"), job.error
    assert executions(sim, job) == 1


@pytest.fixture
def full(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The media disk full (every copy of outputs refused with ENOSPC) until the event is cleared;
    copies tried again every few tenths of a second."""
    monkeypatch.setattr(dispatch, "COPY_RETRY", (0.1, 0.3))
    full = threading.Event()
    full.set()
    collect = dispatch.media.collect

    def copy(*args: Any, **kwargs: Any) -> Any:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return collect(*args, **kwargs)

    monkeypatch.setattr(dispatch.media, "collect", copy)
    return full


def test_a_full_media_disk_for_a_while_is_waited_out_and_nothing_is_rendered_again(
    cluster: Cluster, node: Any, full: threading.Event
) -> None:
    """A copy our disk refuses (ENOSPC) is tried again, with the job still on its attempt: when
    space comes back every job completes, rendered once, none failed or quarantined."""
    _, sim = node
    jobs = queue(n=3)
    wait_until(
        lambda: "could not store the outputs (No space left on device)" in RenderJob.objects.get(pk=jobs[0].pk).error,
        30,
        "the first job to say the disk is full",
    )
    assert status(jobs[0]) in ("assigned", "rendering")  # not failed, not back in the queue
    full.clear()
    for job in jobs:
        wait_status(job, "completed", timeout=30)
        assert (job.attempts, job.crashes, job.error, executions(sim, job)) == (1, 0, "", 1)


def in_queue(sim: Any, prompt_id: str) -> bool:
    """Whether the simulated node holds the prompt in its queue, not started."""
    return any(item[1] == prompt_id for item in list(sim.state.pending))


def test_the_job_handed_on_is_taken_off_the_node_when_cancelled_while_the_copy_before_it_waits_for_disk(
    cluster: Cluster, node: Any, full: threading.Event
) -> None:
    """The worker waiting out a full disk for one job's outputs acts on the user's controls of the
    job it handed on meanwhile: cancelled, that job comes off the node's queue at once, before
    the node gets to it."""
    _, sim = node
    sim.knobs.seconds_per_node = 1.0
    first, *others = queue("test-still-image-slow", n=3)
    wait_until(lambda: "No space left" in RenderJob.objects.get(pk=first.pk).error, 60, "the disk to be full")
    copying = RenderJob.objects.get(pk=first.pk).worker

    def handed_on() -> RenderJob | None:
        jobs = RenderJob.objects.filter(pk__in=[j.pk for j in others], worker=copying).exclude(client_id="")
        return next((j for j in jobs if in_queue(sim, j.prompt_id)), None)

    waiting = wait_until(handed_on, 30, "a job handed on to the worker copying the first, in the node's queue")
    [running] = [j for j in others if j.pk != waiting.pk]
    assert waiting.cancel()

    def taken_off() -> bool:
        on_node = sim.state.running is not None and sim.state.running[1] == waiting.prompt_id
        return not in_queue(sim, waiting.prompt_id) and not on_node

    wait_until(taken_off, 10, "the cancelled job off the node's queue")
    assert status(running) == "rendering" and full.is_set()  # the node had not got to it; the copy still waits
    full.clear()
    for job in (first, running):
        wait_status(job, "completed", timeout=60)
        assert executions(sim, job) == 1
    assert status(waiting) == "cancelled" and waiting.prompt_id not in sim.state.history


def test_a_job_no_node_has_the_classes_for_waits_saying_what_each_lacks(
    cluster: Cluster, node: Any, admin_client: Any
) -> None:
    gpu, sim = node
    cap = gpu.capabilities.get()
    cap.inventory = {"classes": ["EmptyImage"], "files": {}}  # as its health check found it
    cap.save()
    [job] = queue()
    wait_until(
        lambda: "gpu lacks the node class SaveImage" in RenderJob.objects.get(pk=job.pk).error,
        20,
        "the job to say why it waits",
    )
    assert status(job) == "queued" and job.error.startswith("no online ComfyUI has what its template needs")
    assert "gpu lacks the node class SaveImage" in admin_client.get("/renders/").content.decode()
    cap.inventory = {"classes": ["EmptyImage", "SaveImage"], "files": {}}  # the class was installed
    cap.save()
    wait_status(job, "completed")
    assert (job.error, executions(sim, job)) == ("", 1)


def test_a_job_keeps_at_most_so_many_outputs_and_bytes_and_says_what_it_left(
    cluster: Cluster, node: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, sim = node
    sim.knobs.output_files, sim.knobs.output_bytes = 4, 1024**2  # 5 files of 1 MB each
    monkeypatch.setattr(dispatch, "MAX_OUTPUTS", 3)
    [counted] = queue()
    wait_status(counted, "completed")
    assert len(counted.outputs) == 3 and counted.error == "only the first 3 of its 5 outputs were kept"
    monkeypatch.setattr(dispatch, "MAX_OUTPUTS", 200)
    monkeypatch.setattr(dispatch, "MAX_OUTPUT_BYTES", 2.5 * 1024**2)
    [sized] = queue()
    wait_status(sized, "completed")
    assert len(sized.outputs) == 2
    assert sized.error == "3 of its 5 outputs were left on the node: a job keeps at most 2.5 MB of outputs"
    kept = {p.name for p in (tmp_path / "media" / "renders" / str(sized.code)[:2] / str(sized.code)).iterdir()}
    assert not any(name.startswith(".part-") for name in kept)  # nothing half-copied left behind
    assert executions(sim, counted) == 5 and executions(sim, sized) == 5  # one run each, of five files


def test_a_history_too_large_to_read_fails_the_job_once_with_the_reason(cluster: Cluster, node: Any) -> None:
    """An answer over every limit will be the same next time: the job ends, saying why, instead
    of the node being asked for it again and again."""
    _, sim = node
    sim.knobs.history_padding_mb = 80
    [job] = queue()
    wait_status(job, "failed", timeout=60)
    assert job.error.startswith("could not read gpu's record of the job:") and "64 MB" in job.error, job.error
    assert (job.attempts, executions(sim, job)) == (1, 1)


def test_a_job_saving_with_save_image_websocket_keeps_the_images_it_sent_over_the_socket(
    cluster: Cluster, node: Any, tmp_path: Path
) -> None:
    """Surprise 9: SaveImageWebsocket leaves nothing in the history; its images are frames on the
    socket. They are the job's outputs, and the job says where they came from."""
    _, sim = node
    Template.objects.create(
        name="streamed",
        workflow={
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": 1}},
            "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
        },
    )
    [job] = queue("streamed")
    wait_status(job, "completed")
    assert [(o["kind"], o["width"], o["height"]) for o in job.outputs] == [("image", 64, 48)] * 3
    assert all((tmp_path / "media" / o["path"]).read_bytes()[:4] == b"\x89PNG" for o in job.outputs)
    assert job.error == "the 3 images SaveImageWebsocket sent over the socket were kept as its outputs"
    # It writes no file to count its runs by: one attempt, and the node's one entry for it.
    assert (job.attempts, list(sim.state.history)) == (1, [job.prompt_id])


def second_node(seconds_per_node: float) -> SimComfyUI:
    """Another simulated machine in the pool beside the `node` fixture's."""
    sim = SimComfyUI(f"127.0.{NET}.2", 0, seconds_per_node=seconds_per_node).start()
    other = Node.objects.create(name="other", host=f"127.0.{NET}.2")
    Capability.objects.create(node=other, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    return sim


def started_beside_another(node: Any, seconds_per_node: float) -> tuple[RenderJob, SimComfyUI]:
    """A job rendering on the first node, and a second machine that joined meanwhile."""
    first, sim = node
    sim.knobs.seconds_per_node = seconds_per_node
    [job] = queue()
    wait_until(lambda: status(job) == "rendering" and job.node_id == first.pk, 20, "the job to start on gpu")
    return job, second_node(0.05)


def test_a_node_that_restarts_mid_render_has_its_job_rendered_again_on_another(
    cluster: Cluster, node: Any, settings: Any
) -> None:
    settings.RENDER_NODE_TIMEOUT = 1
    _, sim = node
    job, other_sim = started_beside_another(node, 3)
    try:
        sim.stop()  # the first goes away mid-render
        # Gone silent: that proves nothing, so the job waits for the node and says so.
        wait_until(lambda: "has not answered" in RenderJob.objects.get(pk=job.pk).error, 20, "the job to say so")
        assert status(job) == "rendering" and executions(other_sim, job) == 0
        sim.restart()  # back, having forgotten the run: now it is known to be lost
        wait_status(job, "completed", timeout=40)
        assert job.node.name == "other" and job.attempts == 2
        assert job.error == ""  # a success clears the last error
        assert executions(other_sim, job) == 1
    finally:
        other_sim.close()


def test_a_node_that_hangs_but_goes_on_rendering_keeps_its_job(cluster: Cluster, node: Any, settings: Any) -> None:
    settings.RENDER_NODE_TIMEOUT = 1
    first, sim = node
    job, other_sim = started_beside_another(node, 1.5)
    try:
        sim.knobs.hang = True  # its HTTP answers nothing for a while; its GPU goes on
        wait_until(lambda: "has not answered" in RenderJob.objects.get(pk=job.pk).error, 40, "the job to say so")
        sim.knobs.hang = False
        wait_status(job, "completed", timeout=40)
        assert (job.node_id, job.attempts, job.error) == (first.pk, 1, "")
        assert (executions(sim, job), executions(other_sim, job)) == (1, 0)
    finally:
        other_sim.close()


def test_clean_restarts_of_the_cluster_mid_render_count_no_crash(node: Any, stack: Stack) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 1.0
    [job] = queue()
    for _ in range(3):  # three routine restarts (SIGTERM, as `run` stops it) while the node renders
        worker = stack.worker()
        wait_until(lambda: status(job) in ("rendering", "completed") and job.worker, 30, "the job to render")
        if job.status == RenderJob.COMPLETED:
            break
        worker.signal(signal.SIGTERM)
        worker.wait(30)
        job.refresh_from_db()
        if job.status == RenderJob.COMPLETED:
            break
        assert (job.worker, job.crashes) == ("", 0), worker.output()[-6000:]  # handed back, not a crash
    stack.worker()
    wait_status(job, "completed", timeout=40)
    assert (job.crashes, job.attempts, executions(sim, job)) == (0, 1, 1)


def ran(sims: list[SimComfyUI], job: RenderJob) -> int:
    return sum(executions(sim, job) for sim in sims)


def test_ctrl_c_of_run_while_two_jobs_render_then_run_again_follows_them_within_30_s(node: Any, stack: Stack) -> None:
    """As a new user would: Ctrl-C while two jobs render, then start again. The jobs go on on
    their nodes meanwhile; the next start follows them again by itself, none counted as failed."""
    _, sim = node
    sim.knobs.seconds_per_node = 4.0
    other = second_node(4.0)
    try:
        run = stack.run()
        stack.wait_for_http(run)
        jobs = queue(n=2)
        wait_until(lambda: all(status(j) == "rendering" for j in jobs), 30, "both jobs to render")
        run.signal(signal.SIGINT)
        assert run.wait(40) == 0, run.output()[-3000:]
        for job in jobs:
            job.refresh_from_db()
            assert job.status in ("assigned", "rendering", "completed") and job.crashes == 0
        started = time.monotonic()
        again = stack.run()
        wait_until(
            lambda: all(status(j) == "completed" or j.worker for j in jobs),
            30,
            "the next start to follow both jobs again",
            describe=lambda: [(j.status, j.worker, j.error) for j in jobs],
        )
        print(f"followed again {time.monotonic() - started:.1f} s after the second start")
        for job in jobs:
            wait_status(job, "completed", timeout=40)
            assert (job.attempts, job.crashes, ran([sim, other], job)) == (1, 0, 1), job.error
        again.signal(signal.SIGINT)
        assert again.wait(40) == 0
    finally:
        other.close()


def stack_tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            tree += children(tree[i])
        except FileNotFoundError:
            pass
        i += 1
    return tree


def test_a_killed_worker_nobody_has_reaped_yet_is_dead_to_the_sweeper() -> None:
    """A process killed with its parent lingers as a zombie where nothing reaps it (as in a
    container): its rows are orphaned at once, not only when their heartbeat goes stale."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        worker = f"{work.HOST}:{child.pid}:0"
        assert work.alive(worker)
        child.kill()
        wait_until(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z",
            10,
            "the killed process to be a zombie",
        )
        assert not work.alive(worker)
    finally:
        child.wait()


@pytest.mark.django_db(transaction=True)
def test_a_sweeper_on_its_way_is_started_once_and_one_whose_message_was_lost_again(
    monkeypatch: Any, settings: Any
) -> None:
    """The sweeper's row is promised to the task that will run it, when it is queued: changes
    made before that task starts queue no second one. A promise whose message was lost goes
    stale like a dead sweeper, and the next change promises the row to a new task; the lost one,
    delivered late, leaves it to that one."""
    from spoonfeeder import tasks
    from spoonfeeder.models import Sweeper

    queued: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(tasks, "async_task", lambda func, *args, **kwargs: queued.append((func, args)))
    settings.SWEEP_EVERY = 0.05
    tasks.ensure_sweeping()
    tasks.ensure_sweeping()
    [(func, (lost,))] = queued
    assert func == "spoonfeeder.tasks.sweep" and Sweeper.objects.get(pk=1).worker == lost
    Sweeper.objects.filter(pk=1).update(heartbeat=timezone.now() - timedelta(seconds=settings.STALE + 1))
    tasks.ensure_sweeping()
    [_, (func, (promise,))] = queued
    assert func == "spoonfeeder.tasks.sweep" and promise != lost
    assert tasks.sweep(lost) == "another sweeper is running"
    assert Sweeper.objects.get(pk=1).worker == promise
    assert tasks.sweep(promise) == f"swept {tasks.IDLE_PASSES} times; nothing to watch"
    assert Sweeper.objects.get(pk=1).worker == "" and len(queued) == 2


def test_a_sweeper_that_died_with_its_cluster_elsewhere_is_replaced_by_a_working_process(
    cluster: Cluster, node: Any
) -> None:
    """With work already running (nothing queued, so no wake, and the schedule a minute away),
    the processes doing it start a new sweeper once the dead one's lease has gone stale."""
    from spoonfeeder.models import Sweeper

    _, sim = node
    sim.knobs.seconds_per_node = 4.0
    [job] = queue()
    wait_status(job, "rendering")
    # Another machine's cluster took the sweeper, then died (its heartbeat stops).
    Sweeper.objects.update_or_create(pk=1, defaults={"worker": "elsewhere:4242:dead", "heartbeat": timezone.now()})
    wait_until(
        lambda: Sweeper.objects.get(pk=1).worker.startswith(f"{work.HOST}:"),
        20,
        "a working process to start a new sweeper",
        describe=lambda: Sweeper.objects.get(pk=1).worker,
    )
    wait_status(job, "completed", timeout=30)
    assert (job.attempts, executions(sim, job)) == (1, 1)


def test_a_cluster_started_beside_a_promise_that_died_with_the_last_one_sweeps(node: Any, stack: Stack) -> None:
    """The whole stack was killed a moment after it promised the sweeper's row to a task that
    it had already taken (locked, never run): a new cluster finds a fresh promise and nothing
    queued. It looks again once the promise is stale and sweeps: the job a dead worker left on
    the node is followed again, without waiting for the schedule (a minute)."""
    from django_q.models import Schedule

    from spoonfeeder import tasks
    from spoonfeeder.models import Sweeper

    gpu, sim = node
    sim.knobs.seconds_per_node = 0.05
    [job] = queue()
    cap = Capability.objects.get(node=gpu)
    dead = f"{work.HOST}:999999:dead"
    RenderJob.objects.filter(pk=job.pk).update(
        status="assigned", node=gpu, capability=cap, prompt_id="p-dead", attempts=1, worker=dead
    )
    Sweeper.objects.update_or_create(pk=1, defaults={"worker": f"{tasks.PROMISED}lost", "heartbeat": timezone.now()})
    Schedule.objects.filter(func="spoonfeeder.tasks.sweep").update(next_run=timezone.now() + timedelta(hours=1))
    stack.worker(SPOONFEEDER_STALE="2", SPOONFEEDER_BEAT="0.5")
    wait_status(job, "completed", timeout=20)
    assert (job.attempts, executions(sim, job)) == (1, 1)


def test_the_whole_stack_killed_with_100_jobs_then_run_again_renders_each_once(node: Any, stack: Stack) -> None:
    _, sim = node
    sim.knobs.seconds_per_node = 0.05
    other = second_node(0.05)
    try:
        run = stack.run()
        stack.wait_for_http(run)
        jobs = queue(n=100)
        ids = [j.pk for j in jobs]

        def completed() -> int:
            return RenderJob.objects.filter(pk__in=ids, status="completed").count()

        wait_until(lambda: completed() >= 20, 60, "a fifth of the jobs to complete")
        assert run.popen
        for pid in stack_tree(run.popen.pid):  # every process at once, as a power cut would
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait(10)
        left = 100 - completed()
        print(f"killed with {left} jobs not completed")
        stack.run()
        wait_until(
            lambda: completed() == 100,
            120,
            "every job to complete after the restart",
            describe=lambda: dict(
                RenderJob.objects.filter(pk__in=ids).values_list("status").annotate(n=Count("id")).order_by()
            ),
        )
        twice = [j.prompt for j in RenderJob.objects.filter(pk__in=ids) if ran([sim, other], j) != 1]
        assert not twice, f"{len(twice)} jobs did not run exactly once"
    finally:
        other.close()


def test_a_render_longer_than_many_lease_windows_keeps_its_node_and_worker(
    cluster: Cluster, node: Any, admin_client: Any
) -> None:
    """The row is the lease, kept by its heartbeat for as long as the render runs (STALE is 2 s
    here): nobody takes the job over, and the node it runs on cannot be removed."""
    gpu, sim = node
    sim.knobs.seconds_per_node = 5.0
    [job] = queue()
    wait_until(lambda: status(job) == "rendering" and job.worker, 20, "the job to render")
    worker, first_beat = job.worker, job.heartbeat
    assert first_beat is not None
    # Three lease windows, by the database's clock, go by while it renders.
    wait_until(
        lambda: status(job) != "rendering" or (job.heartbeat or first_beat) - first_beat > timedelta(seconds=3 * 2),
        20,
        "the heartbeat to go on for three lease windows",
    )
    assert (job.status, job.worker, job.crashes) == ("rendering", worker, 0)
    answer = admin_client.post(reverse("nodes:remove", args=[gpu.code]), follow=True)
    assert "was not removed: 1 job running on it" in answer.content.decode()
    assert Node.objects.filter(pk=gpu.pk).exists()
    wait_status(job, "completed", timeout=30)
    assert (job.crashes, job.attempts, executions(sim, job)) == (0, 1, 1)


def test_a_job_that_keeps_killing_its_worker_is_quarantined(node: Any) -> None:
    gpu, _ = node
    [job] = queue()
    gone = timezone.now() - timedelta(minutes=1)  # its worker died: the heartbeat stopped
    RenderJob.objects.filter(pk=job.pk).update(
        status="rendering", node=gpu, prompt_id="p-1", crashes=2, heartbeat=gone, worker="elsewhere:1:x"
    )
    dispatch.sweep()
    job.refresh_from_db()
    assert job.status == "failed" and "quarantined: the worker running this job died 3 times" in job.error


def test_a_live_worker_whose_heartbeat_came_late_is_re_driven_but_not_charged(node: Any, monkeypatch: Any) -> None:
    """On a loaded machine a heartbeat can come later than the lease allows: the job is taken
    for orphaned and re-driven (its attempt asks the node), but its worker, a process of this
    machine that still lives, did not die, and no crash is counted: two such and one real death
    do not quarantine a good render. Another machine's worker, silent as long, is taken for dead."""
    gpu, _ = node
    queued: list[tuple[Any, ...]] = []
    monkeypatch.setattr(dispatch, "enqueue", lambda func, *args, **kwargs: queued.append((func, *args)))
    late = timezone.now() - timedelta(minutes=1)
    live, remote = queue(n=2)
    for job, worker in ((live, work.worker_id()), (remote, "elsewhere:1:x")):
        RenderJob.objects.filter(pk=job.pk).update(
            status="rendering", node=gpu, prompt_id=f"p-{job.pk}", crashes=2, heartbeat=late, worker=worker
        )
    dispatch.sweep()
    live.refresh_from_db()
    remote.refresh_from_db()
    assert (live.status, live.worker, live.crashes) == ("rendering", "", 2)
    assert queued == [("renders.tasks.attempt", live.pk, f"p-{live.pk}")]
    assert remote.status == "failed" and "died 3 times" in remote.error


# --- the speed-aware choice: which queued job a free node takes ---------------------------------


@pytest.fixture
def fast_and_slow(db: None) -> tuple[Capability, Capability, Template]:
    """A node 4x faster than the other at one template, both measured; the fast one is busy with
    a job of 1 s left."""
    load()
    template = Template.objects.get(name="test-still-image")
    caps = []
    for name, rate in (("fast", 0.01), ("slow", 0.04)):
        gpu = Node.objects.create(name=name, host=f"127.0.{NET}.{len(caps) + 10}")
        cap = Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=8188, status=Capability.ONLINE)
        Speed.objects.create(capability=cap, template=template, seconds_per_unit=rate)
        caps.append(cap)
    fast, slow = caps
    queue(work=100, status=RenderJob.RENDERING, node=fast.node)
    return fast, slow, template


def test_near_the_end_a_long_job_waits_for_the_fast_node_instead_of_landing_on_the_slow_one(
    fast_and_slow: tuple[Capability, Capability, Template],
) -> None:
    fast, slow, _ = fast_and_slow
    [last] = queue(work=100)  # 4 s on the slow node; 1 s + 1 s on the fast one
    assert best_fit(slow) is None
    assert best_fit(fast) == last


def test_with_plenty_queued_the_slow_node_keeps_busy_too(
    fast_and_slow: tuple[Capability, Capability, Template],
) -> None:
    fast, slow, _ = fast_and_slow
    jobs = queue(n=10, work=100)
    taken = best_fit(slow)
    assert taken in jobs
    assert taken != jobs[0]  # the head of the queue goes to the fast node, free sooner for it
    assert best_fit(fast) == jobs[0]


def test_a_node_takes_a_template_it_has_never_rendered_so_its_speed_gets_measured(
    fast_and_slow: tuple[Capability, Capability, Template],
) -> None:
    fast, slow, template = fast_and_slow
    Speed.objects.filter(capability=slow).delete()
    [last] = queue(work=100)
    assert best_fit(slow) == last


def test_a_job_only_the_slow_node_has_rendered_is_planned_onto_it(
    fast_and_slow: tuple[Capability, Capability, Template],
) -> None:
    fast, slow, template = fast_and_slow
    other = Template.objects.get(name="test-video-mp4")
    Speed.objects.create(capability=slow, template=other, seconds_per_unit=0.04)
    [long] = queue(work=100)
    [only_slow] = queue(template="test-video-mp4", work=100)
    assert best_fit(slow) == only_slow
    assert best_fit(fast) == long


def test_a_pinned_job_goes_to_its_node_however_slow(
    fast_and_slow: tuple[Capability, Capability, Template],
) -> None:
    fast, slow, _ = fast_and_slow
    [pinned] = queue(work=100, pin=slow.node)
    assert best_fit(slow) == pinned
    assert best_fit(fast) is None


def test_an_input_image_is_sent_to_the_node_under_our_name_and_used(
    cluster: Cluster, node: Any, tmp_path: Path
) -> None:
    _, sim = node
    reference = tmp_path / "media" / "renders" / "ab" / "ref" / "00.png"
    reference.parent.mkdir(parents=True)
    Image.new("RGB", (32, 24), (10, 200, 30)).save(reference)
    [job] = queue("test-load-image", settings={"input_image": "renders/ab/ref/00.png"})
    wait_status(job, "completed")
    assert (sim.root / "input" / f"spoonfeeder-{job.code}.png").read_bytes() == reference.read_bytes()
    assert job.workflow and job.workflow["1"]["inputs"]["image"] == f"spoonfeeder-{job.code}.png"
    with Image.open(tmp_path / "media" / job.outputs[0]["path"]) as out:
        assert out.size == (64, 48) and out.convert("RGB").getpixel((0, 0)) == (245, 55, 225)  # scaled, inverted


@pytest.mark.parametrize("path", ["../../../etc/passwd", "/etc/passwd", "renders/missing.png"])
def test_an_input_image_outside_the_media_folder_or_missing_fails_the_job_at_once(
    cluster: Cluster, node: Any, path: str
) -> None:
    _, sim = node
    [job] = queue("test-load-image", settings={"input_image": path})
    wait_status(job, "failed")
    assert job.error == f"the input image {path!r} is not in the media folder (was it deleted?)"
    assert job.attempts == 1 and not list((sim.root / "input").iterdir())


def test_kills_pauses_and_reorders_at_once_render_every_job_exactly_once(node: Any, stack: Stack) -> None:
    """Faults combined, as in real life: 20 SIGKILLs of the worker following a job, over 30 short
    jobs on two nodes with the next job prefetched on each, with pauses, resumes and reorders
    between the kills, and history entries that come a moment after each run ends."""
    first, sim = node
    other_sim = SimComfyUI(f"127.0.{NET}.2", 0, seconds_per_node=0.1).start()
    try:
        other = Node.objects.create(name="other", host=f"127.0.{NET}.2")
        Capability.objects.create(node=other, kind="comfyui", port=other_sim.port, status="online")
        for s in (sim, other_sim):
            s.knobs.seconds_per_node = 0.7  # 2-3 s a job
            s.knobs.history_lag = 0.2
        stack.worker(SPOONFEEDER_WORKERS="6")
        jobs = queue(n=30)
        rng = random.Random(20)
        kills = 0
        deadline = time.monotonic() + 120
        while kills < 20 and time.monotonic() < deadline:
            action = rng.choice(("kill", "kill", "kill", "pause", "resume", "top", "bottom"))
            if action == "kill":
                held = list(RenderJob.objects.active().exclude(worker="").values_list("worker", flat=True))
                pids = [int(w.split(":")[1]) for w in held]
                live = [
                    p for p in pids if Path(f"/proc/{p}").exists() and ") Z " not in Path(f"/proc/{p}/stat").read_text()
                ]
                if live:
                    try:
                        os.kill(rng.choice(live), signal.SIGKILL)
                        kills += 1
                    except (ProcessLookupError, FileNotFoundError):
                        pass  # that worker just ended
            else:
                stir(action, rng)
            time.sleep(rng.uniform(0.1, 0.4))  # the storm's pace, not a wait for anything
        Queue.set_paused(False)
        assert kills == 20, f"only {kills} kills landed"
        left = RenderJob.objects.exclude(status__in=RenderJob.ENDED)
        fields = ("prompt", "status", "worker", "heartbeat", "capability", "client_id", "sent", "error")
        wait_until(lambda: not left.exists(), 180, "every job to end", describe=lambda: list(left.values_list(*fields)))
        ended = list(RenderJob.objects.filter(pk__in=[j.pk for j in jobs]))
        failed = [(j.prompt, j.error) for j in ended if j.status != RenderJob.COMPLETED]
        # A job may be hit three times (quarantined, and it says so); nothing else may fail.
        assert all("quarantined: the worker running this job died 3 times" in e for _, e in failed), failed
        runs = {j.prompt: executions(sim, j) + executions(other_sim, j) for j in ended if j.status == "completed"}
        assert all(n == 1 for n in runs.values()), runs
        assert sum(j.crashes for j in ended) <= kills
    finally:
        other_sim.close()


# --- a node's test render: an ordinary render job, pinned to the node -----------------------------


def test_a_test_render_renders_on_its_node_alone_and_is_shown_on_its_card(
    cluster: Cluster, node: Any, tmp_path: Path
) -> None:
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse

    gpu, sim = node
    other_sim = SimComfyUI(f"127.0.{NET}.2", 0, seconds_per_node=0.01).start()  # faster, and free
    try:
        other = Node.objects.create(name="other", host=f"127.0.{NET}.2")
        Capability.objects.create(node=other, kind="comfyui", port=other_sim.port, status="online")
        first = wait_status(RenderJob.test_render(gpu), "completed")
        assert (first.node_id, first.target, executions(sim, first), executions(other_sim, first)) == (
            gpu.pk,
            "test",
            1,
            0,
        )
        image = tmp_path / "media" / first.outputs[0]["path"]
        assert image.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "media" / first.outputs[0]["thumbnail"]).is_file()

        browser = Client()
        browser.force_login(User.objects.create_user("ada", password="a-long-test-password"))
        card = browser.get(reverse("nodes:index")).content.decode()
        assert f'id="test-render-{gpu.code}"' in card and "Test render: done in" in card
        assert first.outputs[0]["thumbnail"] in card

        # Again: the earlier one (and its files) make way; a failure says why, on the card.
        sim.knobs.fail = "oom"
        again = wait_status(RenderJob.test_render(gpu), "failed", timeout=60)
        assert not RenderJob.objects.filter(pk=first.pk).exists() and not image.exists()
        assert "OutOfMemory" in again.error and again.node_id == gpu.pk
        assert "Test render failed: " in browser.get(reverse("nodes:index")).content.decode()
    finally:
        other_sim.close()


def test_a_pinned_job_that_failed_on_its_node_runs_there_again_while_another_node_is_online(
    cluster: Cluster, node: Any
) -> None:
    gpu, sim = node
    other_sim = SimComfyUI(f"127.0.{NET}.2", 0, seconds_per_node=0.01).start()
    try:
        other = Node.objects.create(name="other", host=f"127.0.{NET}.2")
        Capability.objects.create(node=other, kind="comfyui", port=other_sim.port, status="online")
        [job] = queue(pin=gpu, avoid=gpu, attempts=1)  # its last attempt failed there
        wait_status(job, "completed")
        assert (job.node_id, executions(sim, job), executions(other_sim, job)) == (gpu.pk, 1, 0)
    finally:
        other_sim.close()


def test_the_nodes_page_says_when_the_pool_has_more_slots_than_the_cluster_has_workers(
    node: Any, settings: Any
) -> None:
    from nodes.models import worker_shortfall

    gpu, _ = node
    settings.Q_WORKERS = 4  # no cluster reports itself: this machine's setting counts
    assert worker_shortfall() == ""  # 1 ComfyUI: its limit and the job waiting in its queue, 2 spare
    Capability.objects.filter(node=gpu).update(limit=4)
    assert worker_shortfall() == (
        "The pool can run 5 jobs at once, but the worker cluster has 4 workers (and keeps 2 for short tasks): "
        "work beyond that waits for a worker. Set SPOONFEEDER_WORKERS=7 and restart, or start another cluster "
        "(manage.py qcluster)."
    )


def test_a_retry_is_planned_onto_another_node_than_the_one_it_failed_on(
    fast_and_slow: tuple[Capability, Capability, Template],
) -> None:
    fast, slow, _ = fast_and_slow
    [retry] = queue(work=100, avoid=fast.node)  # the plan would give it to the fast node
    assert best_fit(fast) is None  # which must not take it
    assert best_fit(slow) == retry  # so the slow one does, not nobody


def cluster_of(worker: str) -> int:
    """The `qcluster` process a worker (as named on a row) belongs to: its parent's parent (the
    worker's parent is the cluster's sentinel)."""
    pid = int(worker.split(":")[1])
    for _ in range(2):
        pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    return pid


@pytest.mark.django_db(transaction=True)
def test_a_task_queued_by_a_machine_whose_clock_runs_ahead_is_taken_at_once_and_once(monkeypatch: Any) -> None:
    """The broker's lock is read and written on the database's clock: a task queued where the
    clock is 20 s fast is not hidden from the other machines for 20 s, and once taken it is not
    taken again. (The PostgreSQL mode queues on Redis; its database is tried here all the same.)"""
    import time_machine
    from django_q.conf import Conf

    from spoonfeeder.broker import Doorbell

    monkeypatch.setattr(Conf, "ORM", "default")
    bell = Doorbell(list_key="clock-skew")
    try:
        with time_machine.travel(time.time() + 20, tick=True):
            pk = bell.enqueue("ahead")
        assert bell.take() == [(pk, "ahead")]
        assert bell.take() == []
        assert (bell.queue_size(), bell.lock_size()) == (0, 1)
    finally:
        bell.purge_queue()


# A cluster on a machine whose clock runs ahead: time-machine started before Django, inherited
# by the workers the cluster forks.
FAST_CLOCK = (
    "import runpy, sys, time, time_machine\n"
    "time_machine.travel(time.time() + {ahead}, tick=True).start()\n"
    "sys.argv = ['manage.py', 'qcluster']\n"
    "runpy.run_path('manage.py', run_name='__main__')\n"
)


@pytest.mark.parametrize("ahead", [0, 20], ids=["same clocks", "one clock 20 s fast"])
def test_a_second_cluster_takes_its_share_and_no_job_runs_twice(node: Any, stack: Stack, ahead: int) -> None:
    """Two clusters of two workers each, three nodes: neither cluster can drive every node at
    once (one of its workers is often the sweeper), so both render; work a busy cluster took
    and cannot start is re-driven for the other within a lease window. With one cluster's clock
    20 s ahead (ten lease windows), nothing changes: staleness is judged by the database's clock,
    so neither takes the other's work for orphaned."""
    from django_q.status import Stat

    _, sim = node
    sim.knobs.seconds_per_node = 0.15
    sims = [sim]
    try:
        for i in (2, 3):
            sims.append(SimComfyUI(f"127.0.{NET}.{i}", 0, seconds_per_node=0.15).start())
            other = Node.objects.create(name=f"other {i}", host=f"127.0.{NET}.{i}")
            Capability.objects.create(node=other, kind="comfyui", port=sims[-1].port, status="online")
        lease = {"SPOONFEEDER_WORKERS": "2", "SPOONFEEDER_BEAT": "0.5", "SPOONFEEDER_STALE": "2"}
        clusters = [stack.worker(**lease)]
        if ahead:
            clusters.append(stack.spawn("worker-fast-clock", "-c", FAST_CLOCK.format(ahead=ahead), **lease))
        else:
            clusters.append(stack.worker(**lease))
        wait_until(lambda: len(Stat.get_all()) >= 2, 30, "both clusters to report")
        jobs = queue(n=30)
        for job in jobs:
            wait_status(job, "completed", timeout=90)
        by = {cluster_of(job.worker) for job in jobs}
        assert by == {c.popen.pid for c in clusters if c.popen}, by  # both did work
        assert all(ran(sims, j) == 1 for j in jobs)
        # Nobody died: no attempt was taken for crashed, none counted twice.
        assert [(j.crashes, j.attempts) for j in jobs] == [(0, 1)] * len(jobs)
    finally:
        for other_sim in sims[1:]:
            other_sim.close()
