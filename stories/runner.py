"""Running the steps of stories on the pool's Ollama nodes.

The pipeline runner lives in the dispatcher process beside the render runners. It claims pending
step runs by a guarded update, places each on an Ollama node (the story's last node preferred, the
model required), the run's row taking a unit of the node's capacity, and runs it in a thread of
its own: a step is a wait on a language model, and as many run at once as the pool has room for.
When a step ends, its thread advances the story and goes straight on, on the same node, to the
oldest ready step that node can take (often the story's next), so a node does not idle between
steps waiting for a pass of the runner; what more became ready wakes the runner to place it
elsewhere.
A step queued behind busy nodes shows no reason: it is next in line. One that no node could take
(none online, none with its model) says why.

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
from contextlib import nullcontext
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from nodes.clients import ServiceError
from nodes.clients.ollama import Ollama
from nodes.models import Capability, Requirements, place_and_claim
from stories import graph, steps
from stories.models import RunQuerySet, StepRun, Story
from stories.rendering import queue_references, queue_renders

log = logging.getLogger(__name__)

ANSWERS = 3  # answers asked of the model per attempt before the step fails
BEAT = 2.0  # seconds between heartbeats of running steps (and looks for stale ones)
MAX_PARALLEL = 32  # steps running at once in one runner, at most
ANSWER_TIMEOUT = 600.0
LOOK = 0.2  # seconds between looks for ready steps when nothing wakes the runner
HAND_ON_LOOK = 20  # ready runs a freed node looks through for one it can take
SCAN = 64  # ready runs a pass of the runner looks through, at most
REASONS = 1.0  # seconds between updates of why steps no node can take wait, while every node is busy
ASKS = [name for name, step in graph.STEPS.items() if step.kind == graph.ASK]


class Pipeline(threading.Thread):
    """Claims and runs ready steps until stopped."""

    def __init__(self, owner: str | None = None, parallel: int = MAX_PARALLEL) -> None:
        super().__init__(name="pipeline", daemon=True)
        self.owner = owner or f"steps-{uuid.uuid4().hex[:12]}"
        self.parallel = parallel
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.active: set[int] = set()
        self.lock = threading.Lock()
        self.next_reasons = 0.0
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
                except Exception:
                    log.exception("pipeline pass failed")
                finally:
                    close_old_connections()
                self.wake.wait(LOOK)
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
        stale = now - timedelta(seconds=settings.RENDER_STALE)
        # A runner that died leaves its runs' heartbeats stale: they start again, and the capacity
        # they held comes back with the transition.
        dead = StepRun.objects.filter(status=StepRun.RUNNING, heartbeat__lt=stale).exclude(owner="")
        for run in dead.exclude(owner=self.owner).select_related("story"):
            run.transition(
                StepRun.PENDING,
                expect=(StepRun.RUNNING,),
                by=run.owner,
                note="the worker running this step stopped; it starts again",
                owner="",
                heartbeat=None,
            )
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
        """Place the ready runs on free nodes and start them. The pool is read once a pass; a
        model no free node has is tried once a pass, not once a run; and while every node is
        busy only the steps that need no node are looked at (with the reasons of the others
        brought up to date every REASONS seconds)."""
        with self.lock:
            busy = set(self.active)
        room = self.parallel - len(busy)
        if room <= 0:
            return
        free = [c for c in Capability.objects.usable(Capability.OLLAMA).with_load() if c.busy() < c.limit]
        rows = ready().exclude(pk__in=busy)
        if free or time.monotonic() >= self.next_reasons:
            self.next_reasons = time.monotonic() + REASONS
        else:
            rows = rows.exclude(step__in=ASKS)
        blocked: dict[str, str] = {}  # model -> why no node takes it now ("" when all are busy)
        for run in rows[: min(room * 4, SCAN)]:
            if room <= 0:
                break
            cap = None
            model = ""
            if graph.STEPS[run.step].kind == graph.ASK:
                model = run.story.model_for(run.step)
                if model not in blocked and any(model in c.model_names() for c in free):
                    cap = place_and_claim(
                        Capability.OLLAMA,
                        lambda c, run=run, model=model: self.claim(run, c, model),  # type: ignore[misc]
                        Requirements(model=model),
                        story_node=run.story.node_id,
                    )
                if cap is None:
                    if model not in blocked:
                        blocked[model] = why_waiting(model)
                    self.waiting(run, blocked[model])
                    continue
            elif not self.claim(run, None, ""):
                continue
            self.started(run)
            room -= 1
            self.pool.submit(self.execute, run, cap)

    def claim(self, run: StepRun, cap: Capability | None, model: str) -> bool:
        """Take `run` for this runner, its row holding `cap` (called inside `cap.room()`)."""
        now = timezone.now()
        node = cap.node if cap else None
        return run.transition(
            StepRun.RUNNING,
            expect=(StepRun.PENDING,),
            note=f"asked {model} on {node.name} (answer 1 of at most {ANSWERS})" if node else "",
            owner=self.owner,
            heartbeat=now,
            started=now,
            attempts=run.attempts + 1,
            node_id=node.pk if node else None,
            capability=cap,
            model=model,
            waiting="",
        )

    def started(self, run: StepRun) -> None:
        if run.story.state == Story.WAITING:
            graph.advance(run.story_id)  # the story showed it waits: now it runs
        with self.lock:
            self.active.add(run.pk)

    def hand_on(self, cap_id: int) -> StepRun | None:
        """The oldest ready run the node that just answered can take, claimed there: a node that
        answered goes straight on to the next step, without a pass of the runner."""
        cap = Capability.objects.usable(Capability.OLLAMA).select_related("node").filter(pk=cap_id).first()
        if cap is None or self.stopping.is_set():
            return None  # disabled, offline or removed meanwhile
        models = set(cap.model_names())
        with self.lock:
            busy = set(self.active)
        for run in ready().filter(step__in=ASKS).exclude(pk__in=busy)[:HAND_ON_LOOK]:
            model = run.story.model_for(run.step)
            if model not in models:
                continue
            with cap.room() as free:
                if not free:
                    return None  # another runner took the unit it freed
                claimed = self.claim(run, cap, model)
            if claimed:
                self.started(run)
                return run
        return None

    def waiting(self, run: StepRun, why: str) -> None:
        if run.waiting != why:
            with transaction.atomic():
                StepRun.objects.filter(pk=run.pk, status=StepRun.PENDING).update(waiting=why)
                run.story.changed("step.waiting")
            graph.advance(run.story_id)

    # --- running -------------------------------------------------------------------------------

    def execute(self, run: StepRun, cap: Capability | None) -> None:
        """Run `run`, then, on the same node, whatever is ready next, until nothing is."""
        next_run: StepRun | None = run
        try:
            with Ollama(cap.url) if cap else nullcontext() as client:
                answering = True  # the node answered the last request (well or not)
                while next_run is not None:
                    run, next_run = next_run, None
                    try:
                        run.story = Story.objects.get(pk=run.story_id)
                        kind = graph.STEPS[run.step].kind
                        if kind == graph.ASK:
                            assert cap is not None and client is not None
                            answering = self.ask(run, cap, client)
                        elif kind == graph.RENDERS:
                            queue_renders(run.story, run)
                        else:
                            queue_references(run.story, run)
                    except Exception as e:
                        log.exception("step %s failed", run)
                        self.failed(run, f"{type(e).__name__}: {e}")
                    finally:
                        with self.lock:
                            self.active.discard(run.pk)
                    made = graph.advance(run.story_id)
                    if cap and answering:  # a node that failed to answer is not handed more
                        next_run = self.hand_on(cap.pk)
                    if len(made) > (next_run is not None and next_run.story_id == run.story_id):
                        self.wake.set()  # more became ready than this node took: place the rest
        except Exception:
            log.exception("step %s: handing the node on failed", run)
        finally:
            if cap:
                self.wake.set()  # a node is free
            close_old_connections()

    def ask(self, run: StepRun, cap: Capability, client: Ollama) -> bool:
        """Ask the model until an answer fits (or the answers run out); False if the node did
        not answer."""
        story: Story = run.story
        asking = steps.ASKING[run.step]
        messages = [
            {"role": "system", "content": steps.SYSTEM},
            {"role": "user", "content": asking.prompt(story, run)},
        ]
        schema = asking.schema(story)
        reasons: list[str] = []
        for number in range(1, ANSWERS + 1):
            if number > 1:
                run.note(f"asked {run.model} on {cap.node.name} (answer {number} of at most {ANSWERS})")
            try:
                reply = client.chat(run.model, messages, format=schema, timeout=ANSWER_TIMEOUT)
            except ServiceError as e:
                self.node_failed(run, cap, e)
                return False
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
            return True
        self.failed(run, f"the model's answers did not fit, {ANSWERS} times; the last: {'; '.join(reasons)}")
        return True

    def complete(self, run: StepRun, cap: Capability, answer: steps.BaseModel) -> None:
        with transaction.atomic():
            done = run.transition(
                StepRun.COMPLETED,
                expect=(StepRun.RUNNING,),
                by=self.owner,
                note="completed",
                finished=timezone.now(),
                output=answer.model_dump(mode="json"),
                error="",
                heartbeat=None,
            )
            if not done:
                run.note("the answer came after the step was stopped or re-run: not used")
                return
            steps.ASKING[run.step].write(run.story, run, answer)
            if run.story.node_id != cap.node_id:
                Story.objects.filter(pk=run.story_id).update(node=cap.node_id)

    def node_failed(self, run: StepRun, cap: Capability, e: ServiceError) -> None:
        """The node did not answer well: try again later (elsewhere if it is down), unless the
        error is permanent or the attempts are used up."""
        error = f"{cap.node.name}: {e}"
        if e.permanent or run.attempts >= run.max_attempts:
            self.failed(run, error)
            return
        wait = settings.RENDER_BACKOFF * 2 ** (run.attempts - 1)
        run.transition(
            StepRun.PENDING,
            expect=(StepRun.RUNNING,),
            by=self.owner,
            note=f"{error}; trying again in {wait:g} s (attempt {run.attempts} of {run.max_attempts} done)",
            owner="",
            heartbeat=None,
            error=error,
            not_before=timezone.now() + timedelta(seconds=wait),
        )

    def failed(self, run: StepRun, error: str) -> None:
        run.fail(error, self.owner)


def ready() -> RunQuerySet:
    """Pending runs that may start now, oldest first (without their stories' long texts: a run
    that starts loads its story again)."""
    return (
        StepRun.objects.filter(status=StepRun.PENDING, held=False, story__stopped=False)
        .filter(Q(not_before=None) | Q(not_before__lte=timezone.now()))
        .select_related("story")
        .defer("log", "output", "story__idea", "story__text")
        .order_by("created", "id")
    )


def why_waiting(model: str) -> str:
    """Why no usable Ollama takes a step for `model` now, read as the pool is when the step is
    looked at (not as it was at the start of the pass: a node added meanwhile is not reported
    missing); "" when the nodes that could are busy (the step is queued, and a node goes on to
    it when it is free: not a reason to show)."""
    pool = list(Capability.objects.usable(Capability.OLLAMA))
    if not pool:
        return "No Ollama node is online; the step starts when one is."
    if not any(model in c.model_names() for c in pool):
        return f"No online Ollama node has the model {model}: pull it on a node, or choose another model."
    return ""
