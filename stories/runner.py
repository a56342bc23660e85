"""Running the steps of stories on the pool's Ollama nodes.

The pipeline runner lives in the dispatcher process beside the render runners. It claims pending
step runs by a guarded update, places each on an Ollama node (the story's last node preferred, the
model required) with a lease on the node's capacity, and runs it in a thread of its own: a step is
a wait on a language model, and as many run at once as the pool has room for. When a step ends,
the runner wakes, hands the freed slot to the next ready step, then advances the story and starts
what became ready.

A runner that dies leaves its runs `running` with a heartbeat that stops; any runner finds them
and starts them again, and advances any story it left between two steps. A step writes its
objects in the transaction that completes it, so a run cut short wrote nothing, and a completed
step is never run again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from nodes.clients import ServiceError
from nodes.clients.ollama import Ollama
from nodes.models import Capability, Lease, Requirements, place_and_claim
from stories import graph, steps
from stories.models import StepRun, Story
from stories.rendering import queue_references, queue_renders

log = logging.getLogger(__name__)

ANSWERS = 3  # answers asked of the model per attempt before the step fails
BEAT = 2.0  # seconds between heartbeats of running steps (and looks for stale ones)
MAX_PARALLEL = 32  # steps running at once in one runner, at most
ANSWER_TIMEOUT = 600.0


class Pipeline(threading.Thread):
    """Claims and runs ready steps until stopped."""

    def __init__(self, owner: str | None = None, parallel: int = MAX_PARALLEL) -> None:
        super().__init__(name="pipeline", daemon=True)
        self.owner = owner or f"steps-{uuid.uuid4().hex[:12]}"
        self.parallel = parallel
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.active: set[int] = set()
        # Stories whose step ended here, to advance once the freed slots have been handed on.
        self.ended: set[int] = set()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="step")

    def run(self) -> None:
        next_beat = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    if time.monotonic() >= next_beat:
                        self.beat()
                        # Well inside the stale window, or other runners take live runs over.
                        next_beat = time.monotonic() + min(BEAT, settings.RENDER_STALE / 3)
                    self.start_ready()
                    self.advance_ended()
                except Exception:
                    log.exception("pipeline pass failed")
                finally:
                    close_old_connections()
                self.wake.wait(0.25)
                self.wake.clear()
        finally:
            self.pool.shutdown(wait=True)
            close_old_connections()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    # --- keeping runs alive, and taking over dead runners' runs ----------------------------------

    def beat(self) -> None:
        now = timezone.now()
        with self.lock:
            mine = list(self.active)
        if mine:
            StepRun.objects.filter(pk__in=mine, owner=self.owner, status=StepRun.RUNNING).update(heartbeat=now)
            Lease.objects.filter(holder__in=[holder(pk) for pk in mine]).update(heartbeat=now)
        stale = now - timedelta(seconds=settings.RENDER_STALE)
        dead = StepRun.objects.filter(status=StepRun.RUNNING, heartbeat__lt=stale).exclude(owner="")
        for run in dead.exclude(owner=self.owner).select_related("story"):
            Lease.objects.filter(holder=holder(run.pk)).delete()
            if run.transition(StepRun.PENDING, expect=(StepRun.RUNNING,), by=run.owner, owner="", heartbeat=None):
                run.note("the worker running this step stopped; it starts again")
        # Reference images render in the render queue: look whether they are done.
        waiting = StepRun.objects.filter(step="references", status=StepRun.RUNNING, owner="")
        for story_id in waiting.values_list("story_id", flat=True):
            graph.advance(story_id)
        # A runner that died between a step's end and the story's advance left a story that says
        # it runs with nothing live: move it on.
        idle = Story.objects.filter(state=Story.RUNNING, stopped=False).exclude(runs__status__in=graph.ACTIVE)
        for story_id in idle.values_list("pk", flat=True):
            graph.advance(story_id)

    # --- starting ------------------------------------------------------------------------------

    def start_ready(self) -> None:
        now = timezone.now()
        with self.lock:
            busy = set(self.active)
        room = self.parallel - len(busy)
        if room <= 0:
            return
        ready = (
            StepRun.objects.filter(status=StepRun.PENDING, held=False, story__stopped=False)
            .filter(Q(not_before=None) | Q(not_before__lte=now))
            .exclude(pk__in=busy)
            .select_related("story")
            .order_by("created", "id")[: room * 4]
        )
        for run in ready:
            if room <= 0:
                break
            step = graph.STEPS[run.step]
            lease = None
            model = ""
            if step.kind == graph.ASK:
                model = run.story.model_for(run.step)
                lease = place_and_claim(
                    Capability.OLLAMA, holder(run.pk), Requirements(model=model), story_node=run.story.node_id
                )
                if lease is None:
                    self.waiting(run, why_waiting(model))
                    continue
            claimed = run.transition(
                StepRun.RUNNING,
                expect=(StepRun.PENDING,),
                owner=self.owner,
                heartbeat=now,
                started=timezone.now(),
                attempts=run.attempts + 1,
                node_id=lease.capability.node_id if lease else None,
                model=model,
                waiting="",
            )
            if not claimed:
                if lease:
                    lease.release()
                continue
            if run.story.state == Story.WAITING:
                graph.advance(run.story_id)  # the story showed it waits: now it runs
            with self.lock:
                self.active.add(run.pk)
            room -= 1
            self.pool.submit(self.execute, run, lease)

    def advance_ended(self) -> None:
        """Move on the stories whose steps ended here. Called after start_ready() has handed the
        freed slots on, so a story does not look waiting (or failed) between two steps."""
        with self.lock:
            ended, self.ended = self.ended, set()
        for story_id in ended:
            graph.advance(story_id)
        if ended:
            self.wake.set()  # start what became ready at once

    def waiting(self, run: StepRun, why: str) -> None:
        if run.waiting != why:
            with transaction.atomic():
                StepRun.objects.filter(pk=run.pk, status=StepRun.PENDING).update(waiting=why)
                run.story.changed("step.waiting")
            graph.advance(run.story_id)

    # --- running -------------------------------------------------------------------------------

    def execute(self, run: StepRun, lease: Lease | None) -> None:
        try:
            kind = graph.STEPS[run.step].kind
            if kind == graph.ASK:
                assert lease is not None
                self.ask(run, lease)
            elif kind == graph.RENDERS:
                queue_renders(run.story, run)
            else:
                queue_references(run.story, run)
        except Exception as e:
            log.exception("step %s failed", run)
            self.failed(run, f"{type(e).__name__}: {e}")
        finally:
            if lease:
                lease.release()
            with self.lock:
                self.active.discard(run.pk)
                self.ended.add(run.story_id)
            close_old_connections()
            self.wake.set()

    def ask(self, run: StepRun, lease: Lease) -> None:
        story: Story = run.story
        asking = steps.ASKING[run.step]
        cap = Capability.objects.select_related("node").get(pk=lease.capability_id)
        messages = [
            {"role": "system", "content": steps.SYSTEM},
            {"role": "user", "content": asking.prompt(story, run)},
        ]
        schema = asking.schema(story)
        reasons: list[str] = []
        with Ollama(cap.url) as client:
            for number in range(1, ANSWERS + 1):
                run.note(f"asked {run.model} on {cap.node.name} (answer {number} of at most {ANSWERS})")
                try:
                    reply = client.chat(run.model, messages, format=schema, timeout=ANSWER_TIMEOUT)
                except ServiceError as e:
                    self.node_failed(run, cap, e)
                    return
                text = reply["text"]
                try:
                    answer = asking.read(story, text)
                except steps.Unfit as e:
                    reasons = e.reasons
                    cut = " (cut short: the model ran out of tokens)" if reply.get("done_reason") == "length" else ""
                    run.note(f"the answer did not fit{cut}: {e}\n--- the answer ---\n{text[:50_000]}\n---")
                    messages += [
                        {"role": "assistant", "content": text[:50_000]},
                        {"role": "user", "content": f"That answer does not fit: {e}. Answer again, fixing that."},
                    ]
                    continue
                self.complete(run, cap, answer)
                return
        self.failed(run, f"the model's answers did not fit, {ANSWERS} times; the last: {'; '.join(reasons)}")

    def complete(self, run: StepRun, cap: Capability, answer: steps.BaseModel) -> None:
        with transaction.atomic():
            done = run.transition(
                StepRun.COMPLETED,
                expect=(StepRun.RUNNING,),
                by=self.owner,
                finished=timezone.now(),
                output=answer.model_dump(mode="json"),
                error="",
                heartbeat=None,
            )
            if not done:
                run.note("the answer came after the step was stopped or re-run: not used")
                return
            steps.ASKING[run.step].write(run.story, run, answer)
            Story.objects.filter(pk=run.story_id).update(node=cap.node_id)
        run.note("completed")

    def node_failed(self, run: StepRun, cap: Capability, e: ServiceError) -> None:
        """The node did not answer well: try again later (elsewhere if it is down), unless the
        error is permanent or the attempts are used up."""
        error = f"{cap.node.name}: {e}"
        if e.permanent or run.attempts >= run.max_attempts:
            self.failed(run, error)
            return
        wait = settings.RENDER_BACKOFF * 2 ** (run.attempts - 1)
        if run.transition(
            StepRun.PENDING,
            expect=(StepRun.RUNNING,),
            by=self.owner,
            owner="",
            heartbeat=None,
            error=error,
            not_before=timezone.now() + timedelta(seconds=wait),
        ):
            run.note(f"{error}; trying again in {wait:g} s (attempt {run.attempts} of {run.max_attempts} done)")

    def failed(self, run: StepRun, error: str) -> None:
        run.fail(error, self.owner)


def holder(run_pk: int) -> str:
    return f"step:{run_pk}"


def why_waiting(model: str) -> str:
    usable = Capability.objects.usable(Capability.OLLAMA)
    if not usable.exists():
        return "No Ollama node is online; the step starts when one is."
    if not any(model in c.model_names() for c in usable):
        return f"No online Ollama node has the model {model}: pull it on a node, or choose another model."
    return f"Every Ollama node with {model} is busy; the step starts when one is free."
