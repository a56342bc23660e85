"""The steps that render: character reference images, and the story's shots or scenes.

Both queue ordinary render jobs (the render queue drives them), marked with the story's code and
what they are for (`shot:3`, `scene:2`, `reference:<character>`), in story order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from renders.models import RenderJob
from stories.models import Character, StepRun, Story

REFERENCE_SETTINGS = {"width": 768, "height": 768, "frames": 1, "steps": 20, "cfg": 5.0, "seed": "random"}


def story_jobs(story: Story, prefix: str) -> dict[str, list[RenderJob]]:
    """The story's jobs whose target starts with `prefix`, by target, newest first: those of its
    steps, not of a movie's render graph (stories.movie)."""
    jobs: dict[str, list[RenderJob]] = {}
    mine = RenderJob.objects.filter(story=str(story.code), target__startswith=prefix, stage="")
    for job in mine.order_by("-created", "-id"):
        jobs.setdefault(job.target, []).append(job)
    return jobs


@dataclass
class Rendered:
    """How far the renders of a story's planned shots (or scenes) are: the latest job of each."""

    piece: str
    total: int = 0
    done: int = 0
    active: int = 0  # queued or on a node
    failed: list[tuple[int, RenderJob]] = field(default_factory=list)  # failed or cancelled, by number
    progress: float = 0.0  # the share done (the story's page shows each running one's own progress)

    def __str__(self) -> str:
        if self.failed:
            number, job = self.failed[0]
            why = job.error or job.get_status_display().lower()
            return f"{len(self.failed)} of {self.total} {self.piece}s did not render; {self.piece} {number}: {why}"
        return f"Rendering {self.done}/{self.total} {self.piece}s"


def rendered(story: Story) -> Rendered:
    """The renders of the shots (or scenes) the story plans now: two queries."""
    numbers = list(story.planned.objects.filter(story=story).values_list("number", flat=True))
    jobs = story_jobs(story, f"{story.piece}:")
    summary = Rendered(story.piece, total=len(numbers))
    for number in sorted(numbers):
        job = next(iter(jobs.get(f"{story.piece}:{number}", [])), None)
        if job is None or job.status not in RenderJob.ENDED:
            summary.active += 1
        elif job.status == RenderJob.COMPLETED:
            summary.done += 1
        else:
            summary.failed.append((number, job))
    summary.progress = summary.done / summary.total if summary.total else 1.0
    return summary


def queue_renders(story: Story, run: StepRun) -> None:
    """One job per shot (or HoloCine scene) in story order. A piece whose render would come out
    the same (prompt, template, settings, reference image) keeps the job it has (queued, running
    or done); one that changed has its unfinished job cancelled and a new one queued, and its
    finished renders stay as earlier versions. Pieces the plan no longer has lose their
    unfinished jobs."""
    if story.template is None:
        run.fail("The story has no render template: choose one in the story's render settings, then retry.", run.owner)
        return
    references = {c.name: c.reference for c in story.characters.exclude(reference="")}
    takes_image = bool(story.template.mapping.get("image"))
    fps = float(story.render_settings.get("fps") or story.template.defaults().get("fps") or 16)
    wanted = []
    capped = []
    for piece in story.planned.objects.filter(story=story).order_by("number"):
        settings = dict(story.render_settings)
        if story.template.takes("frames"):
            # Each shot renders for as long as it is planned, as far as the template goes.
            settings["frames"] = story.template.frames_for(piece.duration, fps)
            if abs(settings["frames"] / fps - piece.duration) > 0.5:
                capped.append(f"{piece.target()} {settings['frames'] / fps:.1f} s of {piece.duration:g} s")
        image = next((references[n] for n in piece.characters if n in references), "")
        if takes_image and image:
            settings["input_image"] = image
        wanted.append(
            RenderJob.build(
                story.template,
                settings,
                prompt=piece.positive,
                negative=piece.negative,
                story=str(story.code),
                target=piece.target(),
            )
        )
    with transaction.atomic():
        queued, kept = replace_jobs(story, f"{story.piece}:", wanted)
        done = run.transition(
            StepRun.COMPLETED,
            expect=(StepRun.RUNNING,),
            by=run.owner,
            finished=timezone.now(),
            output={"queued": queued, "kept": kept},
            error="",
        )
        if not done:
            transaction.set_rollback(True)  # stopped or re-run meanwhile: queue nothing
            return
        RenderJob.announce_queued()
    run.note(f"queued {queued} render job{'s' if queued != 1 else ''}; kept {kept} that would render the same")
    if capped:
        run.note(f"{story.template.name} renders shorter than planned: " + "; ".join(capped[:10]))


def queue_references(story: Story, run: StepRun) -> None:
    """A still image of each character, from its look; the step ends when they have rendered.
    A character whose image is queued, rendering or done already (a resumed or retried step)
    keeps it."""
    template = story.reference_template
    if template is None:
        run.fail(
            "The story has no template for reference images: choose a still-image template, then retry.", run.owner
        )
        return
    characters = list(story.characters.all())
    wanted = [
        RenderJob.build(
            template,
            dict(REFERENCE_SETTINGS),
            prompt=f"character reference sheet, full body, plain background: {c.name}, {c.look}",
            negative="blurry, cropped, several people",
            priority=1,  # the shots wait for these
            story=str(story.code),
            target=f"reference:{c.pk}",
        )
        for c in characters
    ]
    with transaction.atomic():
        queued, kept = replace_jobs(story, "reference:", wanted)
        # Queued: from now on advance() follows the step (owner cleared), not this worker.
        mine = StepRun.objects.filter(pk=run.pk, status=StepRun.RUNNING, owner=run.owner)
        if not mine.update(output={"characters": len(characters)}, owner="", heartbeat=None):
            transaction.set_rollback(True)  # stopped or re-run meanwhile: queue nothing
            return
        RenderJob.announce_queued()
    run.note(f"queued {queued} reference image{'s' if queued != 1 else ''}; kept {kept} already queued or done")


def replace_jobs(story: Story, prefix: str, wanted: list[RenderJob]) -> tuple[int, int]:
    """Queue the unsaved `wanted` jobs (one per target, in order) unless the story has a job for
    the target that renders exactly the same and has not failed; cancel the story's other
    unfinished jobs under `prefix` (their piece changed or is gone). Returns (queued, kept)."""
    existing = story_jobs(story, prefix)
    position = RenderJob.last_position()
    queued = kept = 0
    for job in wanted:
        earlier = existing.pop(job.target, [])
        if any(same_render(old, job) for old in earlier):
            kept += 1
            continue
        for old in earlier:
            old.cancel()  # only unfinished ones change; finished renders are earlier versions
        job.position = position + queued
        job.save()
        queued += 1
    for earlier in existing.values():
        for old in earlier:
            old.cancel()
    return queued, kept


def cancel_outdated(story: Story) -> int:
    """Cancel the story's queued renders of the shots (or scenes) whose prompts are being written
    again, so the queue does not spend a GPU on a prompt that is about to change; the renders
    step queues them anew. Renders already on a node go on (kept if the prompt comes out the
    same). Returns how many were cancelled."""
    name = story.piece
    written = story.runs.current().filter(step="prompts", status=StepRun.COMPLETED).exclude(part=0)
    fresh = {f"{name}:{n}" for n in written.values_list("part", flat=True)}
    queued = RenderJob.objects.filter(story=str(story.code), target__startswith=f"{name}:", status=RenderJob.QUEUED)
    return sum(job.cancel() for job in queued if job.target not in fresh)


def same_render(old: RenderJob, new: RenderJob) -> bool:
    return old.status not in (RenderJob.FAILED, RenderJob.CANCELLED) and (
        old.template_id,
        old.prompt,
        old.negative,
        old.settings,
    ) == (new.template_id, new.prompt, new.negative, new.settings)


def gather_references(story: Story, run: StepRun) -> None:
    """Called by advance(): the step completes when every character's reference has rendered."""
    if run.owner:
        return  # still queueing them
    characters = list(story.characters.all())
    jobs = story_jobs(story, "reference:")
    latest = {c.pk: next(iter(jobs.get(f"reference:{c.pk}", [])), None) for c in characters}
    if any(j is None or j.status not in RenderJob.ENDED for j in latest.values()):
        return
    failed = [j for j in latest.values() if j is not None and j.status != RenderJob.COMPLETED]
    if failed:
        run.fail(f"{len(failed)} reference image(s) did not render: {failed[0].error or failed[0].status}")
        return
    for c in characters:
        job = latest[c.pk]
        if job is not None and job.outputs:
            Character.objects.filter(pk=c.pk).update(reference=job.outputs[0]["path"])
    run.transition(StepRun.COMPLETED, expect=(StepRun.RUNNING,), finished=timezone.now(), error="")
