"""The steps of a story as a graph, and what moves a story along it.

story → segments → characters → shots or scenes → visual prompts (one part per shot or scene, in
parallel) → (character references) → renders; narration and music cues need only the segments and
run beside the rest. A step starts when every step it needs has completed; a step whose input
failed does not start. `advance()` is the one place that decides this, from the rows alone, so it
can be called by anyone at any time (after a step ends, after a crash, from a page) and always does
the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from spoonfeeder.tasks import wake
from stories.models import StepRun, Story

ASK, REFERENCES, RENDERS = "ask", "references", "renders"
PLAN = "plan"  # shots or scenes, by the story's mode


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    label: str
    needs: tuple[str, ...]
    kind: str = ASK
    fans_out: bool = False  # one part per shot or scene, run in parallel and gathered


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("story", "Story", ()),
        Step("segments", "Segments", ("story",)),
        Step("characters", "Characters", ("segments",)),
        Step("shots", "Shots", ("characters",)),
        Step("scenes", "HoloCine scenes", ("characters",)),
        Step("prompts", "Visual prompts", (PLAN,), fans_out=True),
        Step("references", "Character references", ("characters",), kind=REFERENCES),
        Step("narration", "Narration", ("segments",)),
        Step("music", "Music cues", ("segments",)),
        Step("renders", "Renders", ("prompts",), kind=RENDERS),
    )
}


def steps_for(story: Story) -> list[Step]:
    """The story's steps in an order where every step comes after the ones it needs."""
    plan = Story.SCENES if story.mode == Story.SCENES else Story.SHOTS
    skip = {Story.SHOTS, Story.SCENES} - {plan}
    if not story.references:
        skip.add("references")
    out = []
    for step in STEPS.values():
        if step.name in skip:
            continue
        needs = tuple(plan if n == PLAN else n for n in step.needs)
        if step.name == "renders" and story.references:
            needs += ("references",)
        out.append(dataclasses.replace(step, needs=needs))
    return out


def downstream(story: Story, name: str) -> list[str]:
    """`name` and every step that needs it, directly or not, in graph order."""
    found = {name}
    ordered = steps_for(story)
    for step in ordered:
        if found & set(step.needs):
            found.add(step.name)
    return [s.name for s in ordered if s.name in found]


def pieces(story: Story) -> list[int]:
    """The numbers of the shots or scenes a fanning-out step makes parts for."""
    return list(story.planned.objects.filter(story=story).order_by("number").values_list("number", flat=True))


# --- moving a story along -------------------------------------------------------------------


def advance(story_id: int, *, wake: bool = True) -> list[StepRun]:
    """Start every step whose inputs are complete, gather fanned-out steps whose parts ended, and
    keep the story's summary (state, progress) up to date. Returns the runs it made pending.
    With `wake`, a story with steps ready to start has them placed once this commits (the step
    tasks and the sweeper, which place what they make ready themselves, say wake=False)."""
    with transaction.atomic():
        # The lock serialises advancers on PostgreSQL; SQLite's write lock does it there.
        story = Story.objects.select_for_update().get(pk=story_id)
        runs = list(story.runs.current())
        whole = {r.step: r for r in runs if r.part == 0}
        parts: dict[str, list[StepRun]] = {}
        for r in runs:
            if r.part:
                parts.setdefault(r.step, []).append(r)
        made: list[StepRun] = []
        ordered = steps_for(story)
        for step in ordered:
            run = whole.get(step.name)
            if run is None:
                if story.stopped or not all(done(whole.get(n)) for n in step.needs):
                    continue
                run, new_parts = start(story, step)
                whole[step.name] = run
                parts[step.name] = new_parts
                made += new_parts or ([run] if run.status == StepRun.PENDING else [])
            elif step.fans_out and run.status == StepRun.RUNNING:
                gather(story, run, parts.get(step.name, []))
            elif step.kind == REFERENCES and run.status == StepRun.RUNNING:
                from stories.rendering import gather_references

                gather_references(story, run)
        summarise(story, ordered, whole, parts)
        if wake and not story.stopped and story.runs.filter(status=StepRun.PENDING, held=False).exists():
            place_ready()
    return made


def place_ready() -> None:
    """Once the caller's transaction commits, the cluster places the ready steps (stories.runner.feed)."""
    wake("stories.tasks.feed")


def done(run: StepRun | None) -> bool:
    return run is not None and run.status == StepRun.COMPLETED


def start(story: Story, step: Step, *, keep: bool = True) -> tuple[StepRun, list[StepRun]]:
    """The step's new run (and a fanned-out step's parts); with `keep`, a run or part whose
    question an earlier version answered completes at once with that answer."""
    version = (story.runs.filter(step=step.name, part=0).aggregate(v=Max("version"))["v"] or 0) + 1
    now = timezone.now()
    if not step.fans_out:
        held = step.kind == RENDERS and not story.auto_render
        earlier = answers_kept(story, step.name, [0]).get(0) if step.kind == ASK and keep else None
        run = StepRun.objects.create(
            story=story,
            step=step.name,
            version=version,
            held=held,
            waiting="Waiting for you: press Render to queue the shots." if held else "",
            **kept_fields(earlier, now),
        )
        if earlier is not None:
            keep_answer(story, run)
        story.changed("step.pending")
        return run, []
    numbers = pieces(story)
    run = StepRun.objects.create(
        story=story,
        step=step.name,
        version=version,
        status=StepRun.RUNNING,
        started=now,
        output={"parts": len(numbers)},
    )
    kept = answers_kept(story, step.name, numbers) if keep else {}
    parts = StepRun.objects.bulk_create(
        StepRun(story=story, step=step.name, part=n, version=version, created=now, **kept_fields(kept.get(n), now))
        for n in numbers
    )
    for part in parts:
        if part.part in kept:
            keep_answer(story, part)
    made = [p for p in parts if p.status == StepRun.PENDING]
    if not made:  # nothing to ask: every part kept its answer (or there are none)
        gather(story, run, parts)
    story.changed("step.pending")
    return run, made


# A fanned-out part's answer records the question it answered (steps.question) under this key.
ASKED = "asked"


def answers_kept(story: Story, name: str, numbers: list[int]) -> dict[int, StepRun]:
    """The parts of a step started again (a fanned-out step's by number, else [0]) whose question
    is the one an earlier run answered (the shots planned from the same segments and cast, a shot
    planned again as it was, its characters looking the same): that run, by part number. Their
    answers are kept; the model is not asked again."""
    from stories import steps

    earlier = story.runs.filter(step=name, status=StepRun.STALE, output__has_key=ASKED)
    earlier = earlier.filter(part=0) if numbers == [0] else earlier.exclude(part=0)
    answered = {(r.output or {})[ASKED]: r for r in earlier.order_by("version", "id")}  # the latest answer wins
    if not answered:
        return {}
    kept = {}
    for n in numbers:
        run = answered.get(steps.question(story, StepRun(story=story, step=name, part=n)))
        if run is not None:
            kept[n] = run
    return kept


def kept_fields(earlier: StepRun | None, now: Any) -> dict[str, Any]:
    if earlier is None:
        return {}
    return {
        "status": StepRun.COMPLETED,
        "started": now,
        "finished": now,
        "output": earlier.output,
        "edited": earlier.edited,
        "model": earlier.model,
        "log": f"{now:%H:%M:%S} kept the answer of version {earlier.version}: the question is the same\n",
    }


def keep_answer(story: Story, part: StepRun) -> None:
    """Write a kept answer again where the step writes its answers (the plan was written anew)."""
    from stories import steps

    asking = steps.ASKING[part.step]
    answer = asking.answer.model_validate({k: v for k, v in (part.output or {}).items() if k != ASKED})
    asking.write(story, part, answer)


def gather(story: Story, run: StepRun, parts: list[StepRun]) -> None:
    if any(p.status in (StepRun.PENDING, StepRun.RUNNING) for p in parts):
        return
    failed = [p for p in parts if p.status != StepRun.COMPLETED]
    if not failed:
        run.transition(StepRun.COMPLETED, expect=(StepRun.RUNNING,), finished=timezone.now(), error="")
        return
    first = failed[0]
    run.fail(f"{len(failed)} of {len(parts)} parts did not complete; the first, {first.part}: {first.error}")


def summarise(story: Story, steps: list[Step], whole: dict[str, StepRun], parts: dict[str, list[StepRun]]) -> None:
    total = 0.0
    for step in steps:
        run = whole.get(step.name)
        if done(run):
            total += 1
        elif run is not None and step.fans_out and parts.get(step.name):
            ps = parts[step.name]
            total += sum(p.status == StepRun.COMPLETED for p in ps) / len(ps)
    progress = total / len(steps)
    live = [r for r in [*whole.values(), *(p for ps in parts.values() for p in ps)] if r.status in ACTIVE]
    if story.stopped:
        state = Story.STOPPED
    elif all(done(whole.get(s.name)) for s in steps):
        # Written and queued is not finished: the story completes when its last shot has rendered.
        from stories.rendering import rendered

        renders = rendered(story)
        progress = (total - 1 + renders.progress) / len(steps)
        if renders.done == renders.total:
            state = Story.COMPLETED
        elif renders.active:
            state = Story.RENDERING
        else:
            state = Story.FAILED
    elif any(r.status == StepRun.RUNNING or (r.status == StepRun.PENDING and not r.waiting) for r in live):
        state = Story.RUNNING
    elif live:  # failed or not, the story goes on once a node is free or the user acts
        state = Story.WAITING
    elif any(r.status == StepRun.FAILED for r in whole.values()):
        state = Story.FAILED
    else:
        state = Story.DRAFT
    if (state, round(progress, 4)) != (story.state, round(story.progress, 4)):
        Story.objects.filter(pk=story.pk).update(state=state, progress=progress, updated=timezone.now())
        story.state, story.progress = state, progress
        story.changed("story.state")


ACTIVE = (StepRun.PENDING, StepRun.RUNNING)


# --- what the user can do -------------------------------------------------------------------


def stop(story: Story) -> None:
    """Stop the pipeline: nothing new starts, and what runs now is cancelled (a model answer that
    arrives after this is thrown away). Queued renders stay in the render queue."""
    with transaction.atomic():
        Story.objects.filter(pk=story.pk).update(stopped=True)
        story.runs.filter(status__in=ACTIVE).update(status=StepRun.CANCELLED, owner="", heartbeat=None, capability=None)
        story.changed("story.stopped")
    advance(story.pk)


def resume(story: Story) -> None:
    """Go on from the last good checkpoint: cancelled runs start again; completed ones stay."""
    with transaction.atomic():
        Story.objects.filter(pk=story.pk).update(stopped=False)
        cancelled = story.runs.filter(status=StepRun.CANCELLED)
        fanned = [s.name for s in STEPS.values() if s.fans_out]
        cancelled.filter(part=0, step__in=fanned).update(status=StepRun.RUNNING, finished=None)
        cancelled.update(status=StepRun.PENDING, not_before=None, finished=None)
        story.changed("story.resumed")
    advance(story.pk)


def render_now(story: Story) -> bool:
    """The user pressed Render (auto-render off): the waiting renders step may start."""
    with transaction.atomic():
        released = story.runs.current().filter(step="renders", status=StepRun.PENDING, held=True)
        if not released.update(held=False, waiting=""):
            return False
        story.changed("step.released")
    advance(story.pk)
    return True


def retry(run: StepRun) -> bool:
    """Run a failed step again (a fanned-out step: its failed parts); its dependents follow."""
    with transaction.atomic():
        if run.part == 0 and STEPS[run.step].fans_out:
            failed = run.story.runs.current().filter(step=run.step, status=StepRun.FAILED).exclude(part=0)
            failed.update(status=StepRun.PENDING, attempts=0, not_before=None, finished=None)
            ok = run.transition(StepRun.RUNNING, expect=(StepRun.FAILED,), finished=None, error="")
        else:
            ok = run.transition(
                StepRun.PENDING, expect=(StepRun.FAILED, StepRun.CANCELLED), attempts=0, not_before=None, finished=None
            )
            if ok and run.part:
                # The step failed when this part did; it gathers its parts again once this one ends.
                parent = run.story.runs.current().filter(step=run.step, part=0, status=StepRun.FAILED)
                parent.update(status=StepRun.RUNNING, finished=None, error="")
        if ok:
            run.note("retried by the user")
    advance(run.story_id)
    return ok


def rerun_from(story: Story, name: str) -> list[str]:
    """Do `name` and everything downstream of it again; upstream work stays. The runs they
    replace stay as earlier versions (stale), each with its output. Returns the steps marked."""
    marked = downstream(story, name)
    with transaction.atomic():
        Story.objects.select_for_update().get(pk=story.pk)  # as advance() holds it
        make_stale(story, marked)
        # Asked for by name, the step asks again, however alike the question; what follows it
        # keeps the answers whose questions come out the same.
        start(story, next(s for s in steps_for(story) if s.name == name), keep=False)
    advance(story.pk)
    return marked


def rerun_part(run: StepRun) -> None:
    """Write one shot's or scene's prompt again (and queue its render again if it changes)."""
    with transaction.atomic():
        new_part(run)
        parent = run.story.runs.current().get(step=run.step, part=0)
        StepRun.objects.filter(pk=parent.pk).update(status=StepRun.RUNNING, finished=None, error="")
    advance(run.story_id)


def edited_part(run: StepRun, output: dict[str, Any], who: str) -> None:
    """The user wrote one shot's or scene's prompt by hand (the caller saves it on the piece in
    the same transaction): the part's new version, and its render queued again. NotNow unless
    the part has completed."""
    with transaction.atomic():
        if not StepRun.objects.filter(pk=run.pk, status=StepRun.COMPLETED).exists():
            raise NotNow(f"Its prompt is {run.get_status_display().lower()}: it can be edited once it is written.")
        from stories import steps

        asked = steps.question(run.story, run)  # a plan that comes back the same keeps this prompt too
        new_part(run, **by_hand({**output, ASKED: asked}, who))
    advance(run.story_id)


def by_hand(output: object, who: str) -> dict[str, Any]:
    """The fields of a run that is a correction by hand: completed as it is made."""
    now = timezone.now()
    return {
        "status": StepRun.COMPLETED,
        "started": now,
        "finished": now,
        "output": output,
        "edited": True,
        "log": f"{now:%H:%M:%S} edited by hand by {who}\n",
    }


def new_part(run: StepRun, **fields: Any) -> StepRun:
    """A new version of a fanned-out step's part in place of `run` (kept as the earlier one);
    what follows the step runs again."""
    StepRun.objects.filter(pk=run.pk).update(status=StepRun.STALE, owner="", capability=None)
    made = StepRun.objects.create(
        story_id=run.story_id, step=run.step, part=run.part, version=run.version + 1, **fields
    )
    make_stale(run.story, [s for s in downstream(run.story, run.step) if s != run.step])
    run.story.changed("step.pending")
    return made


@dataclasses.dataclass(frozen=True)
class Costs:
    """What a story has that running steps again would redo: read once for all the questions."""

    pieces: int  # shots or scenes planned
    rendered: int  # of them with a finished render

    @classmethod
    def of(cls, story: Story) -> Costs:
        from renders.models import RenderJob  # renders does not know stories; stories builds on it

        done = RenderJob.objects.filter(story=str(story.code), status=RenderJob.COMPLETED)
        return cls(
            story.planned.objects.filter(story=story).count(),
            done.filter(target__startswith=f"{story.piece}:").values("target").distinct().count(),
        )


def consequences(story: Story, steps: list[str], costs: Costs) -> str:
    """What running these steps again redoes, in words: how many shots are planned again, and that
    a shot whose prompt comes out the same keeps its finished render."""
    out = []
    if "shots" in steps or "scenes" in steps:
        out.append(f"the {costs.pieces} {story.piece}s are planned again")
    if "prompts" in steps:
        out.append(f"their prompts are written again (a {story.piece} planned as before keeps its prompt)")
    if "renders" in steps and costs.rendered:
        n = costs.rendered
        out.append(
            f"{'the finished render is' if n == 1 else f'the {n} finished renders are'} redone, "
            "except where the prompt comes out the same"
        )
    if "references" in steps:
        out.append("the character references are rendered again")
    for name in ("narration", "music"):
        if name in steps:
            out.append(f"the {STEPS[name].label.lower()} are written again")
    return "; ".join(out)


def rerun_cost(story: Story, name: str, costs: Costs) -> str:
    """The question a re-run from `name` asks first: the steps that run again (those, and only
    those), what that redoes, and the steps that stay."""
    again = downstream(story, name)
    stay = [s.label for s in steps_for(story) if s.name not in again]
    labels = ", ".join(STEPS[n].label for n in again)
    what = consequences(story, again, costs)
    return (
        f"Re-run from {STEPS[name].label}? {labels} run again"
        + (f": {what}" if what else "")
        + (f". {', '.join(stay)} stay as they are." if stay else ".")
    )


def edit_cost(story: Story, name: str, costs: Costs) -> str:
    """The question a correction by hand of step `name` asks before it is saved, or "" when
    nothing else runs again."""
    again = [n for n in downstream(story, name) if n != name]
    if not again:
        return ""
    labels = ", ".join(STEPS[n].label for n in again)
    what = consequences(story, again, costs)
    return f"Saving this re-runs what depends on the {STEPS[name].label.lower()}: {labels}" + (
        f" ({what}). Save?" if what else ". Save?"
    )


class NotNow(Exception):
    """What the user asked cannot be done in the story's present state: the reason, in words."""


def not_completed(story: Story, name: str) -> str:
    """Why step `name` cannot be run again or corrected by hand now; "" when it can (its
    current run has completed, so everything it needs has too)."""
    if story.runs.current().filter(step=name, part=0, status=StepRun.COMPLETED).exists():
        return ""
    label = STEPS[name].label
    return f"{label} has not completed (it is being written, waits, or failed): that can be done once it has."


def edited(story: Story, name: str, output: object, who: str) -> None:
    """The user corrected a step's objects by hand: that becomes the step's new version, and
    only what depends on it runs again. NotNow unless the step has completed (a correction of
    objects the step is writing again, or of a step whose inputs are being redone, would be
    lost or would not match them): call it in the transaction that saved the objects."""
    with transaction.atomic():
        why = not_completed(Story.objects.select_for_update().get(pk=story.pk), name)
        if why:
            raise NotNow(why)
        old = story.runs.current().filter(step=name, part=0).first()
        version = (old.version if old else 0) + 1
        make_stale(story, downstream(story, name))
        StepRun.objects.create(story=story, step=name, version=version, **by_hand(output, who))
    advance(story.pk)


def make_stale(story: Story, names: Iterable[str]) -> None:
    names = list(names)
    with transaction.atomic():
        story.runs.current().filter(step__in=names).update(
            status=StepRun.STALE, owner="", heartbeat=None, capability=None
        )
        story.changed("step.stale")
        if "renders" in names:
            from stories.rendering import cancel_outdated

            cancel_outdated(story)
