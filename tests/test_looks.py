"""One look at a job at a time (`Attempt.handle_one_look`), called directly with time travel (the
attempt's clock moved on): what the worker following a job does when a wait runs out, without
waiting for it. No cluster: the job is claimed and sent here as the feed task's first attempt
does; the simulated node renders in real time."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from nodes.clients.comfyui import HISTORY_SETTLE, ComfyUI
from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders import dispatch
from renders.management.commands.load_templates import load
from renders.models import Queue, RenderJob, Template
from tests.conftest import executions, wait_until

NET = 37 if os.environ.get("DATABASE_URL") else 36


class Clock:
    """A monotonic clock that time travel moves on."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead

    def shift(self, seconds: float) -> None:
        self.ahead += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(transactional_db: None, settings: Any, tmp_path: Path) -> Iterator[SimComfyUI]:
    settings.MEDIA_ROOT = tmp_path / "media"
    server = SimComfyUI(f"127.0.{NET}.1", 0, seconds_per_node=0.3).start()
    gpu = Node.objects.create(name="gpu", host=f"127.0.{NET}.1")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=server.port, status=Capability.ONLINE)
    load()
    yield server
    server.close()


def queue(n: int = 1) -> list[RenderJob]:
    template = Template.objects.get(name="test-still-image")
    with transaction.atomic():
        start = RenderJob.last_position()
        return [RenderJob.objects.create(template=template, prompt=f"job {i}", position=start + i) for i in range(n)]


def sent(clock: Clock) -> dispatch.Attempt:
    """The next job claimed for this process and POSTed to the node, on `clock`, with a short
    call deadline (a hanging node answers nothing; each look gives up on it quickly)."""
    run = dispatch.first_attempt()
    assert run is not None, "nothing to claim"
    run.clock = clock
    run.client = ComfyUI(run.cap.url, timeout=0.5)
    assert run.send() == ""
    return run


def to_the_end(run: dispatch.Attempt, timeout: float = 20) -> str:
    """Look after look (listening between them, as `follow` does) until the attempt is over."""

    def over() -> str:
        outcome = run.handle_one_look()
        if not outcome:
            run.listen(0.05)
        return outcome

    try:
        return wait_until(over, timeout, f"the attempt at {run.job.prompt} to end")
    finally:
        run.close_socket()


def test_a_node_that_hangs_is_said_to_be_silent_only_after_its_timeout_and_keeps_its_job(
    sim: SimComfyUI, clock: Clock, settings: Any
) -> None:
    settings.RENDER_NODE_TIMEOUT = 30
    [job] = queue()
    run = sent(clock)
    sim.knobs.hang = True  # it answers nothing, and goes on rendering
    assert run.handle_one_look() == ""
    clock.shift(settings.RENDER_NODE_TIMEOUT - 5)
    assert run.handle_one_look() == ""
    job.refresh_from_db()
    assert job.error == "" and job.status in ("assigned", "rendering")

    clock.shift(10)  # 35 s without an answer
    assert run.handle_one_look() == ""
    job.refresh_from_db()
    assert job.error.startswith("gpu has not answered for 3") and "cancel it to render it elsewhere" in job.error
    assert job.status in ("assigned", "rendering") and (job.worker, job.attempts) == (run.me, 1)
    cap = Capability.objects.get(node__name="gpu")
    assert cap.resting_until is not None and cap.resting_until > timezone.now()

    sim.knobs.hang = False  # it answers again: the job it kept rendering is collected, not rendered again
    assert to_the_end(run) == "completed"
    job.refresh_from_db()
    assert (job.status, job.error, job.attempts, executions(sim, job)) == ("completed", "", 1, 1)


def test_a_job_taken_off_the_node_goes_back_to_our_queue_only_once_the_node_has_settled(
    sim: SimComfyUI, clock: Clock
) -> None:
    """Paused while it waits in the node's queue behind a running job: it is taken off the node
    at once, but goes back to our queue (its attempt not counted) only after HISTORY_SETTLE
    seconds of the node not knowing it; then it renders once, after the queue is resumed."""
    sim.knobs.seconds_per_node = 2.0
    running, waiting = queue(2)
    first, second = sent(clock), sent(clock)
    assert (first.job.pk, second.job.pk) == (running.pk, waiting.pk)
    Queue.set_paused(True)

    assert second.handle_one_look() == ""  # taken off the node's queue
    assert second.pulled is not None
    clock.shift(HISTORY_SETTLE / 2)
    assert second.handle_one_look() == ""
    waiting.refresh_from_db()
    assert (waiting.status, waiting.worker) == ("assigned", second.me)

    clock.shift(HISTORY_SETTLE)
    assert second.handle_one_look() == "pulled back to the queue"
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts, waiting.worker, waiting.node_id) == ("queued", 0, "", None)

    assert to_the_end(first) == "completed"
    Queue.set_paused(False)
    again = sent(clock)
    assert again.job.pk == waiting.pk
    assert to_the_end(again) == "completed"
    for job in (running, waiting):
        job.refresh_from_db()
        assert (job.status, job.attempts, executions(sim, job)) == ("completed", 1, 1)
