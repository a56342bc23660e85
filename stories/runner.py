"""Running the steps of stories on the pool's Ollama nodes, as tasks of the worker cluster.

`feed()` places each ready step run on an Ollama node (the story's last node preferred, the
model required) and claims it there: a guarded update of the run's row, which from then on holds
a unit of the node's capacity (the row is the lease), with its `step` task queued in the same
transaction. Steps that need no node (queueing renders) are claimed the same way, without one.

A step task (`execute`) takes the run for its worker, beats it while the model answers, writes
the step's objects in the transaction that completes it, advances the story, and goes straight
on, on the same node, to the oldest ready step that node can take (often the story's next), so a
node does not idle between steps waiting for another task. A step queued behind busy nodes shows
no reason: it is next in line. One that no node could take (none online, none with its model)
says why.

A worker that dies leaves its run `running` with a heartbeat that stops; the sweeper (`sweep()`)
puts it back to pending (the crash is counted on the run, not as an attempt), and advances any
story left between two steps. A run cut short wrote nothing, and a completed step never runs
again.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from nodes.clients import ServiceError
from nodes.clients.ollama import Ollama
from nodes.models import Capability, Requirements, place_and_claim
from renders.models import RenderJob
from renders.queue import valid_codes
from spoonfeeder import work
from spoonfeeder.tasks import enqueue
from stories import graph, steps
from stories.models import RunQuerySet, StepRun, Story
from stories.rendering import queue_references, queue_renders

log = logging.getLogger(__name__)

ANSWERS = 3  # answers asked of the model per attempt before the step fails
ANSWER_TIMEOUT = 600.0
HAND_ON_LOOK = 20  # ready runs a freed node looks through for one it can take
SCAN = 64  # ready runs one feed looks through, at most
# How long one step task goes on from step to step on its node before it leaves the rest to
# new tasks (within its deadline, STEP_DEADLINE).
HAND_ON_SPAN = 300.0
STEP_DEADLINE = ANSWERS * ANSWER_TIMEOUT + HAND_ON_SPAN + 120
ASKS = [name for name, step in graph.STEPS.items() if step.kind == graph.ASK]


# --- placing -------------------------------------------------------------------------------------


def feed() -> int:
    """Place the ready runs on free nodes and queue their step tasks; the number queued. The pool
    is read once; a model no free node has is tried once, not once a run; and while every node is
    busy only the steps that need no node are looked at."""
    free = [c for c in Capability.objects.usable(Capability.OLLAMA).with_load() if c.busy() < c.limit]
    rows = ready()
    blocked: dict[str, str] = {}  # model -> why no node takes it now ("" when all are busy)
    queued = 0
    for run in rows[:SCAN]:
        if graph.STEPS[run.step].kind != graph.ASK:
            queued += claim(run, None, "")
            continue
        model = run.story.model_for(run.step)
        cap = None
        if model not in blocked and any(model in c.model_names() for c in free):
            cap = place_and_claim(
                Capability.OLLAMA,
                lambda c, run=run, model=model: claim(run, c, model),  # type: ignore[misc]
                Requirements(model=model),
                story_node=run.story.node_id,
            )
        if cap is None:
            if model not in blocked:
                blocked[model] = why_waiting(model)
            waiting(run, blocked[model])
            continue
        queued += 1
    return queued


def claim(run: StepRun, cap: Capability | None, model: str) -> bool:
    """Claim `run` (holding `cap`, inside `cap.room()`) and queue its step task."""
    node = cap.node if cap else None
    with transaction.atomic():
        claimed = run.transition(
            StepRun.RUNNING,
            expect=(StepRun.PENDING,),
            note=f"asked {model} on {node.name} (answer 1 of at most {ANSWERS})" if node else "",
            owner="",
            heartbeat=Now(),
            started=timezone.now(),
            attempts=run.attempts + 1,
            node_id=node.pk if node else None,
            capability=cap,
            model=model,
            waiting="",
        )
        if claimed:
            enqueue("stories.tasks.step", run.pk, timeout=STEP_DEADLINE)
    if claimed and run.story.state == Story.WAITING:
        graph.advance(run.story_id)  # the story showed it waits: now it runs
    return claimed


def waiting(run: StepRun, why: str) -> None:
    if run.waiting != why:
        with transaction.atomic():
            StepRun.objects.filter(pk=run.pk, status=StepRun.PENDING).update(waiting=why)
            run.story.changed("step.waiting")
        graph.advance(run.story_id)


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
    looked at; "" when the nodes that could are busy (the step is queued, and a node goes on to
    it when it is free: not a reason to show)."""
    pool = list(Capability.objects.usable(Capability.OLLAMA))
    if not pool:
        return "No Ollama node is online; the step starts when one is."
    if not any(model in c.model_names() for c in pool):
        return f"No online Ollama node has the model {model}: pull it on a node, or choose another model."
    return ""


def waits_because(run: StepRun, story: Story) -> str:
    """Why a pending step has not started, as its row and `story show` say it: the reason stored
    by the last look (no node has its model, or the user's turn), its retry's time, or the nodes
    that could take it busy with the steps ahead of it. A few queries."""
    if run.held or run.waiting:
        return run.waiting
    if run.not_before and run.not_before > timezone.now():
        when = timezone.localtime(run.not_before)
        return f"retry {run.attempts + 1}/{run.max_attempts} at {when:%H:%M:%S}"
    model = story.model_for(run.step)
    ahead = ready().filter(Q(created__lt=run.created) | Q(created=run.created, id__lt=run.pk)).count()
    able = [c for c in Capability.objects.usable(Capability.OLLAMA).with_load() if model in c.model_names()]
    if able and not any(c.has_room() for c in able):
        return f"every Ollama node with {model} is busy ({ahead} ahead of it)"
    return f"queued: {ahead} ahead of it" if ahead else "starting: a free node takes it now"


# --- running ---------------------------------------------------------------------------------------


def execute(run_pk: int) -> str:
    """The step task: run the claimed run, then, on the same node, whatever is ready next."""
    me = work.worker_id()
    if (
        not StepRun.objects.filter(pk=run_pk, status=StepRun.RUNNING, owner="")
        .exclude(heartbeat=None)
        .update(owner=me, heartbeat=Now())
    ):
        return "not this task's any more"
    run: StepRun | None = StepRun.objects.select_related("capability__node").get(pk=run_pk)
    assert run is not None
    cap = run.capability
    ends = time.monotonic() + HAND_ON_SPAN
    done = 0
    try:
        with work.stop_on_sigterm(), Ollama(cap.url) if cap else nullcontext() as client:
            while run is not None:
                work.stopping()
                answering, made = one(run, me, cap, client)
                done += 1
                run = hand_on(cap.pk, me) if cap and answering and time.monotonic() < ends else None
                if made > (run is not None):
                    # More became ready than this node took: a feed task places the rest
                    # elsewhere while this one goes on (placing them here first, a claim and a
                    # queued task each, would hold up the step this node was just handed).
                    graph.place_ready()
    except work.Stopped:
        if run is not None:
            run.transition(
                StepRun.PENDING,
                expect=(StepRun.RUNNING,),
                by=me,
                note="the worker was stopped; the step starts again",
                owner="",
                heartbeat=None,
                attempts=max(run.attempts - 1, 0),
            )
        work.leave()
        return f"stopped after {done} step(s)"
    feed()  # what more became ready than this node took, and the unit it frees
    return f"ran {done} step(s)"


def one(run: StepRun, me: str, cap: Capability | None, client: Ollama | None) -> tuple[bool, int]:
    """Run one step: whether the node answered (one that did not is handed no more), and how
    many runs became ready."""
    answering = True
    with work.beating(StepRun.objects.filter(pk=run.pk, owner=me)):
        try:
            run.story = Story.objects.get(pk=run.story_id)
            kind = graph.STEPS[run.step].kind
            if kind == graph.ASK:
                assert cap is not None and client is not None
                answering = ask(run, me, cap, client)
            elif kind == graph.RENDERS:
                queue_renders(run.story, run)
            else:
                queue_references(run.story, run)
        except work.Stopped:
            raise
        except Exception as e:
            log.exception("step %s failed", run)
            run.fail(f"{type(e).__name__}: {e}", me)
    return answering, len(graph.advance(run.story_id, wake=False))


def hand_on(cap_id: int, me: str) -> StepRun | None:
    """The oldest ready run the node that just answered can take, claimed there for this task:
    a node that answered goes straight on to the next step."""
    cap = Capability.objects.usable(Capability.OLLAMA).select_related("node").filter(pk=cap_id).first()
    if cap is None:
        return None  # disabled, offline, resting or removed meanwhile
    models = set(cap.model_names())
    for run in ready().filter(step__in=ASKS)[:HAND_ON_LOOK]:
        model = run.story.model_for(run.step)
        if model not in models:
            continue
        with cap.room() as free:
            if not free:
                return None  # another task took the unit it freed
            claimed = run.transition(
                StepRun.RUNNING,
                expect=(StepRun.PENDING,),
                note=f"asked {model} on {cap.node.name} (answer 1 of at most {ANSWERS})",
                owner=me,
                heartbeat=Now(),
                started=timezone.now(),
                attempts=run.attempts + 1,
                node_id=cap.node_id,
                capability=cap,
                model=model,
                waiting="",
            )
        if claimed:
            if run.story.state == Story.WAITING:
                graph.advance(run.story_id)
            run.capability = cap
            return run
    return None


def ask(run: StepRun, me: str, cap: Capability, client: Ollama) -> bool:
    """Ask the model until an answer fits (or the answers run out); False if the node did
    not answer."""
    story: Story = run.story
    asking = steps.ASKING[run.step]
    prompt = asking.prompt(story, run)
    messages = [
        {"role": "system", "content": steps.SYSTEM},
        {"role": "user", "content": prompt},
    ]
    schema = asking.schema(story)
    reasons: list[str] = []
    for number in range(1, ANSWERS + 1):
        if number > 1:
            run.note(f"asked {run.model} on {cap.node.name} (answer {number} of at most {ANSWERS})")
        try:
            with work.interruptible():
                reply = client.chat(run.model, messages, format=schema, timeout=ANSWER_TIMEOUT)
        except ServiceError as e:
            node_failed(run, me, cap, e)
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
        complete(run, me, cap, answer, steps.question(story, run, prompt))
        return True
    run.fail(f"the model's answers did not fit, {ANSWERS} times; the last: {'; '.join(reasons)}", me)
    return True


def complete(run: StepRun, me: str, cap: Capability, answer: steps.BaseModel, asked: str) -> None:
    # What was asked, with the answer: a step (or part) started again with the same question keeps
    # this answer (graph.start).
    output = {**answer.model_dump(mode="json"), graph.ASKED: asked}
    with transaction.atomic():
        done = run.transition(
            StepRun.COMPLETED,
            expect=(StepRun.RUNNING,),
            by=me,
            note="completed",
            finished=timezone.now(),
            output=output,
            error="",
            heartbeat=None,
        )
        if not done:
            run.note("the answer came after the step was stopped or re-run: not used")
            return
        steps.ASKING[run.step].write(run.story, run, answer)
        if run.story.node_id != cap.node_id:
            Story.objects.filter(pk=run.story_id).update(node=cap.node_id)


def node_failed(run: StepRun, me: str, cap: Capability, e: ServiceError) -> None:
    """The node did not answer well: try again later (elsewhere if it is down), unless the
    error is permanent or the attempts are used up. A node that did not answer at all (down,
    refused) is the node's fault: the attempt is not counted, and the node rests."""
    error = f"{cap.node.name}: {e}"
    if e.reached and (e.permanent or run.attempts >= run.max_attempts):
        run.fail(error, me)
        return
    if e.reached:
        wait = settings.RENDER_BACKOFF * 2 ** (run.attempts - 1)
        note = f"{error}; trying again in {wait:g} s (attempt {run.attempts} of {run.max_attempts} done)"
        again: dict[str, Any] = {"not_before": timezone.now() + timedelta(seconds=wait)}
    else:
        cap.rest(f"a step could not reach it: {e}")
        note = f"{error}; it waits for a node (not counted as an attempt)"
        again = {"attempts": max(run.attempts - 1, 0)}
    run.transition(
        StepRun.PENDING, expect=(StepRun.RUNNING,), by=me, note=note, owner="", heartbeat=None, error=error, **again
    )


# --- the sweeper's part ----------------------------------------------------------------------------


def sweep() -> bool:
    """Runs whose worker died go back to pending (the crash counted on the run, not as an
    attempt; quarantined after work.QUARANTINE_AFTER); stories waiting on their reference images and
    stories left between two steps move on; ready runs are placed. True while any story has a
    run pending (and not held for the user) or running."""
    # Running with a heartbeat: a worker runs it, or its task is on the way (parts of a step and
    # a step waiting on its reference images run with none, followed by graph.advance).
    running = StepRun.objects.filter(status=StepRun.RUNNING).exclude(heartbeat=None)
    workers = running.exclude(owner="").values_list("owner", flat=True)
    for run in running.filter(work.orphaned(workers, field="owner")).select_related("story"):
        crashes = run.crashes + work.crashed(run.owner, run.heartbeat)
        if crashes >= work.QUARANTINE_AFTER:
            run.fail(f"quarantined: the worker running this step died {crashes} times", run.owner)
            continue
        run.transition(
            StepRun.PENDING,
            expect=(StepRun.RUNNING,),
            by=run.owner,
            note="the worker running this step stopped; it starts again" if run.owner else "",
            owner="",
            heartbeat=None,
            crashes=crashes,
            attempts=max(run.attempts - 1, 0),
        )
    # Reference images render in the render queue: look whether they are done.
    waiting_refs = StepRun.objects.filter(step="references", status=StepRun.RUNNING, owner="", heartbeat=None)
    for story_id in waiting_refs.values_list("story_id", flat=True):
        graph.advance(story_id, wake=False)
    # Shots render in the render queue: a story whose renders are on their way, or that has one
    # queued again since it ended (a retry from the queue), is summed up again.
    for story_id in rendering_stories():
        graph.advance(story_id, wake=False)
    # A worker that died between a step's end and the story's advance left a story that says it
    # runs with nothing live: move it on.
    idle = Story.objects.filter(state=Story.RUNNING, stopped=False).exclude(runs__status__in=graph.ACTIVE)
    for story_id in idle.values_list("pk", flat=True):
        graph.advance(story_id, wake=False)
    feed()
    # A run held for the user (renders without auto-render) needs no watching: releasing it
    # wakes the pipeline.
    return (
        StepRun.objects.filter(status__in=graph.ACTIVE, held=False, story__stopped=False).exists()
        or Story.objects.filter(state=Story.RENDERING).exists()
    )


def rendering_stories() -> set[int]:
    """The stories whose summary follows their renders: those rendering, and those ended whose
    jobs are not all ended (queued again from the render queue)."""
    following = set(Story.objects.filter(state=Story.RENDERING).values_list("pk", flat=True))
    busy = (
        RenderJob.objects.exclude(story="")
        .filter(stage="")
        .exclude(status__in=RenderJob.ENDED)
        .exclude(target__startswith="reference:")
    )
    codes = valid_codes(set(busy.values_list("story", flat=True).distinct()))
    ended = Story.objects.filter(code__in=codes, state__in=(Story.COMPLETED, Story.FAILED))
    return following | set(ended.values_list("pk", flat=True))
