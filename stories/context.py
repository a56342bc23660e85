"""What the story pages show, each in a fixed number of queries whatever the story's size: the runs
are read once and summed up per step here, in Python."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.core.paginator import Paginator
from django.db.models import Case, F, Prefetch, TextField, Value, When
from django.utils import timezone

from renders import queue
from renders.models import Queue, RenderJob
from stories import movie, runner
from stories.forms import CharacterForm, MovieForm
from stories.graph import ACTIVE, ASK, STEPS, Costs, Step, edit_cost, not_completed, rerun_cost, steps_for
from stories.models import Movie, MoviePart, Scene, Shot, StepRun, Story
from stories.rendering import rendered

PAGE = 25
TABS = {
    "story": "Story",
    "segments": "Segments",
    "characters": "Characters",
    "shots": "Shots",
    "scenes": "Scenes",
    "narration": "Narration",
    "music": "Music cues",
    "renders": "Renders",
    "gallery": "Gallery",
    "movie": "Movie",
}
ICONS = {
    StepRun.COMPLETED: "✓",
    StepRun.RUNNING: "◐",
    StepRun.PENDING: "○",
    StepRun.FAILED: "✗",
    StepRun.CANCELLED: "■",
    "blocked": "·",
}


def as_number(text: str) -> int | None:
    """A number typed or posted as an id (a run, a part), or None if it is not one: ASCII digits
    only, as `"²".isdigit()` is true yet int() refuses it, and at most 18 of them, as a bigger
    number overflows the database's 64-bit integers instead of matching nothing."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def stories(page: int = 1) -> dict[str, Any]:
    """The list: a page of stories, each with the steps it is busy with."""
    active = StepRun.objects.filter(part=0, status__in=ACTIVE).order_by("created", "id")
    rows = Story.objects.prefetch_related(Prefetch("runs", queryset=active, to_attr="active_runs"))
    shown = Paginator(rows, PAGE).get_page(page)
    for story in shown:
        runs: list[StepRun] = story.active_runs  # type: ignore[attr-defined]
        story.now = ", ".join(STEPS[r.step].label for r in runs)  # type: ignore[attr-defined]
        story.why = next((r.waiting for r in runs if r.waiting), "")  # type: ignore[attr-defined]
    return {"stories": shown}


@dataclass
class StepRow:
    """One step of a story as the Generation Progress card shows it."""

    step: Step
    run: StepRun | None
    earlier: list[StepRun] = field(default_factory=list)
    waits_for: list[str] = field(default_factory=list)  # labels of the steps it needs, not done
    done: int = 0  # parts of a fanned-out step, by status
    failed: int = 0
    total: int = 0
    why: str = ""  # why a pending step has not started

    @property
    def status(self) -> str:
        return self.run.status if self.run else "blocked"

    @property
    def icon(self) -> str:
        return ICONS[self.status]

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0

    @property
    def seconds(self) -> float | None:
        run = self.run
        if run is None or run.started is None:
            return None
        return ((run.finished or timezone.now()) - run.started).total_seconds()


def step_rows(story: Story) -> list[StepRow]:
    """Every step of the story with its current run, earlier versions and parts: two queries."""
    whole = list(story.runs.filter(part=0).select_related("node").order_by("-version", "-id"))
    parts = Counter(
        story.runs.current().exclude(part=0).values_list("step", "status").order_by()  # (step, status) -> n
    )
    current = {r.step: r for r in whole if r.status != StepRun.STALE}
    done = {name for name, r in current.items() if r.status == StepRun.COMPLETED}
    rows = []
    for step in steps_for(story):
        row = StepRow(step, current.get(step.name))
        # Their outputs are fetched when opened (stories:output): they can be long, and the
        # steps card is sent to every watcher at each change.
        row.earlier = [r for r in whole if r.step == step.name and r.status == StepRun.STALE]
        row.waits_for = [STEPS[n].label for n in step.needs if n not in done]
        if row.run is not None and row.run.status == StepRun.PENDING:
            row.why = runner.waits_because(row.run, story)
        if step.fans_out:
            row.done = parts[(step.name, StepRun.COMPLETED)]
            row.failed = parts[(step.name, StepRun.FAILED)]
            row.total = sum(n for (name, _), n in parts.items() if name == step.name)
        rows.append(row)
    return rows


def about(story: Story) -> dict[str, Any]:
    return {"story": story, "pieces": f"{story.piece}s", "piece_label": story.piece.capitalize()}


def live(story: Story) -> dict[str, Any]:
    """The parts of a story's page that every visitor sees the same: its head and its steps."""
    rows = step_rows(story)
    renders_done = any(r.step.name == "renders" and r.status == StepRun.COMPLETED for r in rows)
    completed = [r for r in rows if r.status == StepRun.COMPLETED]
    costs = Costs.of(story) if completed else Costs(0, 0)
    return {
        **about(story),
        # Written and queued, the renders say how far they are (or which did not render).
        "renders": rendered(story) if renders_done and story.state in (Story.RENDERING, Story.FAILED) else None,
        "steps": rows,
        "completed": completed,
        "reruns": [(r, rerun_cost(story, r.step.name, costs)) for r in completed] if completed else [],
        "held": any(r.run and r.run.held and r.status == StepRun.PENDING for r in rows),
        "busy": story.state not in (Story.COMPLETED, Story.DRAFT) and not story.stopped,
        # A newcomer to the demo should not take its text for what a language model writes.
        "simulated": any(r.run and r.run.node and r.run.node.simulated for r in rows if r.step.kind == ASK),
    }


def tabs(story: Story) -> list[tuple[str, str]]:
    plan = f"{story.piece}s"  # the story's shots or its scenes, not the other
    return [(slug, label) for slug, label in TABS.items() if slug not in ("shots", "scenes") or slug == plan]


def detail(
    story: Story, tab: str, status: str = "", page: int = 1, *, whole: bool = True, text: str = ""
) -> dict[str, Any]:
    """The whole page (the live parts and the one tab shown), or the tab alone."""
    context = {**(live(story) if whole else about(story)), "tab": tab, "tabs": tabs(story)}
    if tab in ("narration", "music"):
        # Corrections by hand are offered once the step has completed (graph.edited's rule).
        context["editable"] = not not_completed(story, tab)
    if tab in ("segments", "narration"):
        context["segments"] = list(story.segments.all())
    elif tab == "characters":
        context["edit_cost"] = edit_cost(story, "characters", Costs.of(story))
        context["characters"] = [
            (c, CharacterForm(instance=c, auto_id=f"character-{c.pk}-%s")) for c in story.characters.all()
        ]
    elif tab in ("shots", "scenes"):
        context["planned"] = planned(story)
    elif tab == "music":
        context["cues"] = list(story.music_cues.select_related("segment"))
    elif tab == "renders":
        context.update(renders(story, status, page, text))
    elif tab == "gallery":
        context["gallery"] = gallery(story)
    elif tab == "movie":
        context.update(movie_tab(story))
        context["in_flight"] = context["movie_active"]  # its tasks' progress: looked at every few seconds
    if tab in ("renders", "gallery"):
        # Render jobs tell only the render queue's topics when they change: while the story's
        # are under way, its Renders and Gallery tabs look again every few seconds.
        unfinished = RenderJob.objects.filter(story=str(story.code)).exclude(status__in=RenderJob.ENDED)
        context["in_flight"] = unfinished.exists()
    return context


def planned(story: Story) -> list[Shot] | list[Scene]:
    """The story's shots or scenes in order, each with the current run that writes its prompt."""
    model = story.planned
    pieces: list[Any] = list(model.objects.filter(story=story).select_related("segment").order_by("number"))
    current = story.runs.current().filter(step="prompts").exclude(part=0).only("part", "status", "error", "story")
    # The log of a failed part (the model's raw answers), and only of those: it can be long.
    failed_log = Case(When(status=StepRun.FAILED, then=F("log")), default=Value(""), output_field=TextField())
    runs = {r.part: r for r in current.annotate(failed_log=failed_log)}
    for piece in pieces:
        piece.run = runs.get(piece.number)
    return pieces


def renders(story: Story, status: str, page: int, text: str = "") -> dict[str, Any]:
    """The render queue's parts, for this story's jobs only."""
    jobs = RenderJob.objects.filter(story=str(story.code)).select_related("template", "node", "pin")
    counts = queue.counts(jobs)
    finished = queue.finished(status, str(story.code), page, text)
    paused = Queue.get().paused
    queued = list(jobs.filter(status=RenderJob.QUEUED).in_dispatch_order()[: queue.QUEUED_SHOWN])
    queue.why_waiting(queued, paused=paused)
    return {
        # Not "story": the template's include gives the queue's partial the story's code as that.
        "finished": finished["finished"],
        "status": finished["status"],
        "text": finished["text"],
        **queue.on_nodes(jobs),
        "queued": queued,
        "counts": counts,
        "paused": paused,
    }


@dataclass
class GalleryItem:
    """One shot or scene in the gallery: its latest finished render, else its latest job as it
    stands (waiting, rendering, failed), else nothing yet."""

    number: int
    planned: float = 0.0  # seconds
    out: dict[str, Any] | None = None  # the finished render's first output
    job: RenderJob | None = None  # the finished job, else the latest one
    newer: RenderJob | None = None  # a newer job on its way after the finished one

    @property
    def code(self) -> Any:
        return self.job.code if self.job else None

    @property
    def shorter(self) -> str:
        """How much shorter than planned its render is (the template caps its frames), or ""."""
        if self.job is None:
            return ""
        values = self.job.rendered_with()
        frames, fps = values.get("frames"), values.get("fps")
        if not frames or not fps:
            return ""
        seconds = float(frames) / float(fps)
        if self.planned - seconds <= 0.5:
            return ""
        name = self.job.template.name
        return f"{seconds:.1f} s of the {self.planned:g} s planned: {name} renders at most {frames} frames"


def gallery(story: Story) -> list[GalleryItem]:
    """Every planned shot or scene, in story order: the latest finished render of each, or a
    placeholder saying where its render is (with its progress, or why it failed)."""
    kind = f"{story.piece}:"
    # A story planned again may have fewer than it rendered before.
    planned = dict(story.planned.objects.filter(story=story).order_by("number").values_list("number", "duration"))
    numbers = list(planned)
    jobs = (
        RenderJob.objects.filter(story=str(story.code), target__startswith=kind)
        .select_related("template", "pin")
        .order_by("-created", "-id")
    )
    items = {n: GalleryItem(n, planned[n]) for n in numbers}
    for job in jobs:
        _, _, tail = job.target.partition(":")
        item = items.get(as_number(tail) or 0)
        if item is None or item.out is not None:
            continue
        job.story_title = story.title  # type: ignore[attr-defined]
        if job.status == RenderJob.COMPLETED and job.outputs:
            item.newer = item.job if item.job and item.job.status not in RenderJob.ENDED else None
            item.job, item.out = job, job.outputs[0]
        elif item.job is None:
            item.job = job
    waiting = [i.job for i in items.values() if i.out is None and i.job and i.job.status == RenderJob.QUEUED]
    queue.why_waiting(waiting)
    return [items[n] for n in numbers]


@dataclass
class Cell:
    """One task of a shot on the Movie tab, as it is shown: worked out here, once, so that a
    graph of hundreds of shots renders fast."""

    stage: str
    job: RenderJob | None
    reused: bool
    status: str = "none"
    badge: str = ""  # its status in words, with its progress while it renders
    meta: str = ""  # its node and time
    thumbnail: str = ""
    note: str = ""  # why it waits
    error: str = ""  # why it failed, when it did (then it can be retried)


@dataclass
class GraphRow:
    """One shot of a movie on its Movie tab: a cell per step of the graph, and the first of its
    tasks that failed, if any (the ones after it wait)."""

    part: MoviePart
    cells: list[Cell]
    failed: RenderJob | None


def movie_tab(story: Story, form: Any = None) -> dict[str, Any]:
    """The Movie tab: the export form, the latest movie's graph by shot and its film, and the
    earlier versions. A fixed number of queries however many shots."""
    movies = list(story.movies.all()[:20])
    current = movies[0] if movies else None
    rows: list[GraphRow] = []
    stages: list[str] = []
    if current is not None:
        stages = movie.stages_for(
            movie.Options(path=current.path, upscale=current.upscale, interpolate=current.interpolate)
        )
        for state in movie.states(current):
            by_stage = {stage: (job, reused) for stage, job, reused in state.jobs}
            cells = [cell(stage, *by_stage.get(stage, (None, False)), blocked=state.blocked) for stage in stages]
            rows.append(GraphRow(state.part, cells, state.failed))
    done = sum(1 for r in rows if r.cells and r.cells[-1].job and r.cells[-1].job.status == RenderJob.COMPLETED)
    sounds: dict[int, dict[str, Cell]] = {}
    if current is not None and current.tracks:
        jobs = RenderJob.objects.select_related("node").in_bulk([pk for _, _, pk, _ in current.tracks])
        for number, stage, pk, reused in current.tracks:
            sounds.setdefault(number, {})[stage] = cell(stage, jobs.get(pk), reused)
    sound_stages = [s for s in movie.SOUNDS if any(s in by for by in sounds.values())]
    return {
        "sounds": [(n, [by.get(s) for s in sound_stages]) for n, by in sorted(sounds.items())],
        "sound_stages": [(s, movie.STAGE_LABELS[s]) for s in sound_stages],
        "movie_form": form or MovieForm(story),
        "movie": current,
        "graph": rows,
        "stages": [(s, movie.STAGE_LABELS[s]) for s in stages],
        "shots_done": done,
        "versions": [m for m in movies[1:] if m.status == Movie.COMPLETED],
        "movie_active": current is not None and current.status in Movie.ACTIVE,
    }


STATUS_LABELS = dict(RenderJob.STATUSES)


def cell(stage: str, job: RenderJob | None, reused: bool, *, blocked: bool = False) -> Cell:
    """A task as its cell on the Movie tab shows it."""
    shown = Cell(stage, job, reused)
    if job is None:
        return shown
    shown.status = job.status
    shown.badge = STATUS_LABELS.get(job.status, job.status).lower()
    if job.status == RenderJob.RENDERING:
        shown.badge += f" {job.progress:.0%}"
    node = job.node.name if job.node else ""
    shown.meta = " · ".join(filter(None, (node, f"{job.seconds:.1f} s" if job.seconds else "")))
    shown.thumbnail = str(job.outputs[0].get("thumbnail", "")) if job.outputs else ""
    if job.status == RenderJob.QUEUED:
        shown.note = "waits for a task before it that did not render" if blocked else job.error[:120]
    elif job.status in (RenderJob.FAILED, RenderJob.CANCELLED):
        shown.error = job.error or shown.badge
    return shown


def pipelines() -> dict[str, Any]:
    """The Pipelines page: every movie being made (and the last ones to end), with how far each is."""
    active = list(Movie.objects.filter(status__in=Movie.ACTIVE).select_related("story").order_by("-created")[:100])
    ended = list(Movie.objects.filter(status__in=Movie.ENDED).select_related("story").order_by("-finished")[:20])
    chains = {m.pk: [c for c in m.parts.values_list("chain", flat=True)] for m in active}
    pks = {pk for chain_list in chains.values() for chain in chain_list for _, pk, _ in chain}
    status = dict(RenderJob.objects.filter(pk__in=pks).values_list("pk", "status")) if pks else {}
    rows = []
    for m in active:
        tasks = [pk for chain in chains[m.pk] for _, pk, _ in chain]
        finished = sum(1 for pk in tasks if status.get(pk) == RenderJob.COMPLETED)
        failed = sum(1 for pk in tasks if status.get(pk) in (RenderJob.FAILED, RenderJob.CANCELLED))
        shots = sum(1 for chain in chains[m.pk] if chain and status.get(chain[-1][1]) == RenderJob.COMPLETED)
        share = (finished / len(tasks) if tasks else 1.0) * 0.8 + m.progress * 0.2
        rows.append(
            {
                "movie": m,
                "tasks": len(tasks),
                "finished": finished,
                "failed": failed,
                "shots": shots,
                "parts": len(chains[m.pk]),
                "share": share,
            }
        )
    return {"running": rows, "ended": ended, "labels": movie.STAGE_LABELS}
