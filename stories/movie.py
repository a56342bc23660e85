""" "Export the movie": the render graph of a story's film, planned from intent, and its export.

Each shot (or HoloCine scene) becomes a chain of render jobs, each taking the one before's output
(renders.models.JobInput): keyframe → image-to-video, or text-to-video, then an upscale and a
frame interpolation when the story asks for them. A plan reuses every job that would render the
same and has not failed (a shot whose prompt changed is planned again), and says how many tasks of
each kind it queues and reuses, with an estimate from measured speeds. Once every shot's last task
has completed (or, when told, failed: a title card says so), the export joins them into the film
(renders.film) in a task whose row is the Movie: its worker and heartbeat are the lease, and the
sweeper re-drives an export whose worker died (it resumes with the parts already encoded).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.text import slugify

from nodes.models import Capability
from renders.models import JobInput, RenderJob, Speed, Template
from spoonfeeder import work
from spoonfeeder.tasks import enqueue
from stories.models import Movie, MoviePart, Segment, Story

log = logging.getLogger(__name__)

KEYFRAME, VIDEO, UPSCALE, INTERP = "keyframe", "video", "upscale", "interp"
SPEECH, MUSIC = "speech", "music"  # a segment's narration spoken, its music cue played, on the pool
SOUNDS = (SPEECH, MUSIC)
STAGES = (KEYFRAME, VIDEO, UPSCALE, INTERP, *SOUNDS)
STAGE_LABELS = {
    KEYFRAME: "Keyframe",
    VIDEO: "Video",
    UPSCALE: "Upscale",
    INTERP: "Interpolation",
    SPEECH: "Speech",
    MUSIC: "Music",
}
# The template role each step takes (Template.role), by the story's path.
ROLES = {KEYFRAME: Template.KEYFRAME, UPSCALE: Template.UPSCALE, INTERP: Template.INTERP}
SPEECH_PER_CHARACTER = 0.07  # seconds of speech a character of narration takes, for templates told a length
INTERPOLATION = 2  # frames made of each: the interpolated video plays at twice the fps
EXPORT_DEADLINE = 3600.0  # seconds one export task may run
PROGRESS_EVERY = 0.5  # seconds between writes of the export's progress
STOPPED = (RenderJob.FAILED, RenderJob.CANCELLED)  # a task that will not render unless retried


class PlanError(ValueError):
    """A movie that cannot be planned: the message says what to do."""


@dataclasses.dataclass
class Options:
    """What the user chose for the movie (Movie's fields of the same names)."""

    path: str = Movie.T2V
    upscale: bool = False
    interpolate: bool = False
    transition: str = Movie.CUT
    narration_fit: str = Movie.HOLD
    burn_subtitles: bool = False
    leave_out_failed: bool = False
    # stage -> template; "video" is the text- or image-to-video template, by the path
    templates: dict[str, Template] = dataclasses.field(default_factory=dict)
    music: str = ""


@dataclasses.dataclass
class Task:
    stage: str
    job: RenderJob  # saved when reused, else not yet
    reused: bool
    source: Task | None = None  # the task whose output it takes
    parameter: str = ""  # where: image or video


@dataclasses.dataclass
class Plan:
    story: Story
    options: Options
    parts: list[tuple[Any, list[Task]]]  # (shot or scene, its tasks in graph order)
    tracks: list[tuple[int, Task]]  # (segment, its speech or music task)
    counts: dict[str, dict[str, int]]  # stage -> {"new": n, "reused": m}
    estimate: float | None  # seconds until the new tasks are rendered, by measured speeds
    unmeasured: int  # new tasks of templates never measured on any node
    notes: list[str] = dataclasses.field(default_factory=list)  # what the user should know of it

    @property
    def new(self) -> int:
        return sum(c["new"] for c in self.counts.values())

    @property
    def reused(self) -> int:
        return sum(c["reused"] for c in self.counts.values())

    @property
    def rows(self) -> list[tuple[str, int, int]]:
        """(step, new, reused) in graph order, as the plan is shown."""
        return [(STAGE_LABELS[s], c["new"], c["reused"]) for s, c in self.counts.items()]

    def summary(self) -> dict[str, Any]:
        return {"counts": self.counts, "estimate": self.estimate, "unmeasured": self.unmeasured, "notes": self.notes}


def stages_for(options: Options) -> list[str]:
    chosen = [KEYFRAME] if options.path == Movie.I2V else []
    chosen.append(VIDEO)
    if options.upscale:
        chosen.append(UPSCALE)
    if options.interpolate:
        chosen.append(INTERP)
    return chosen


def default_templates(story: Story, path: str) -> dict[str, Template]:
    """The templates a movie uses unless the user picks others: the story's own where it has
    them, else the first shipped one of each role (the model-free test ones last)."""
    by_role: dict[str, list[Template]] = {}
    for t in Template.objects.exclude(role="").order_by("kind", "name"):
        by_role.setdefault(t.role, []).append(t)

    def first(role: str) -> Template | None:
        found = sorted(by_role.get(role, []), key=lambda t: t.kind == Template.TEST)
        return found[0] if found else None

    chosen: dict[str, Template] = {}
    if path == Movie.I2V:
        keyframe = story.reference_template or first(Template.KEYFRAME)
        own = story.template if story.template and story.template.role == Template.I2V else None
        video = own or first(Template.I2V)
        if keyframe:
            chosen[KEYFRAME] = keyframe
    else:
        own = story.template if story.template and story.template.role == Template.T2V else None
        video = own or first(Template.T2V)
    if video:
        chosen[VIDEO] = video
    for stage in (UPSCALE, INTERP):
        template = first(ROLES[stage])
        if template:
            chosen[stage] = template
    return chosen


def plan(story: Story, options: Options) -> Plan:
    """What "Export the movie" would queue and reuse, without saving anything. Three queries and
    one per template, however many shots."""
    stages = stages_for(options)
    missing = [STAGE_LABELS[s] for s in stages if s not in options.templates]
    if missing:
        raise PlanError(f"Choose a template for: {', '.join(missing)}.")
    pieces = list(story.planned.objects.filter(story=story).select_related("segment").order_by("number"))
    if not pieces:
        raise PlanError(f"The story has no {story.piece}s yet: write them first.")
    existing = graph_jobs(story)
    base = dict(story.render_settings)
    fps = float(base.get("fps") or options.templates[VIDEO].defaults().get("fps") or 16)
    parts = []
    for piece in pieces:
        tasks: list[Task] = []
        for stage in stages:
            template = options.templates[stage]
            wanted = build(story, piece, stage, template, base, fps)
            source = tasks[-1] if tasks else None
            parameter = "" if source is None else ("image" if source.stage == KEYFRAME else "video")
            old = reusable(existing.get((piece.target(), stage), []), wanted, source)
            tasks.append(Task(stage, old or wanted, old is not None, source, parameter))
        parts.append((piece, tasks))
    tracks, notes = sound_tasks(story, options, pieces, existing)
    every = [t for _, tasks in parts for t in tasks] + [t for _, t in tracks]
    counts = {s: {"new": 0, "reused": 0} for s in [*stages, *(s for s in SOUNDS if s in options.templates)]}
    for task in every:
        counts[task.stage]["reused" if task.reused else "new"] += 1
    estimate, unmeasured = estimate_seconds([t.job for t in every if not t.reused])
    return Plan(story, options, parts, tracks, counts, estimate, unmeasured, notes)


def sound_tasks(
    story: Story, options: Options, pieces: list[Any], existing: dict[tuple[str, str], list[RenderJob]]
) -> tuple[list[tuple[int, Task]], list[str]]:
    """A segment's narration spoken, and its (first) music cue played for as long as its shots,
    by the speech and music templates the user chose (none: the local voice speaks, and the
    user's track or no music plays); with what the user should know (an empty cue)."""
    lengths: dict[int, float] = {}
    for piece in pieces:
        if piece.segment is not None:
            lengths[piece.segment.number] = lengths.get(piece.segment.number, 0.0) + piece.duration
    wanted: list[tuple[int, str, str, float]] = []  # (segment, stage, prompt, seconds)
    notes: list[str] = []
    if SPEECH in options.templates:
        for segment in story.segments.exclude(narration="").order_by("number"):
            wanted.append((segment.number, SPEECH, segment.narration, len(segment.narration) * SPEECH_PER_CHARACTER))
    if MUSIC in options.templates:
        seen: set[int] = set()
        for cue in story.music_cues.exclude(segment=None).select_related("segment").order_by("number"):
            number = cue.segment.number  # type: ignore[union-attr]
            if number in seen:
                continue
            seen.add(number)
            if not cue.description.strip():
                notes.append(f"Segment {number}'s music cue is empty: it gets no music of its own.")
                continue
            wanted.append((number, MUSIC, f"{cue.mood}: {cue.description}", lengths.get(number, 5.0)))
    tracks = []
    for number, stage, prompt, seconds in wanted:
        template = options.templates[stage]
        settings_: dict[str, Any] = {}
        if template.takes("seconds"):
            longest = float(template.needs.get("seconds", {}).get("max", 600))
            settings_["seconds"] = round(max(1.0, min(seconds, longest)), 1)
        job = RenderJob.build(
            template, settings_, prompt=prompt, story=str(story.code), target=f"segment:{number}", stage=stage
        )
        old = reusable(existing.get((job.target, stage), []), job, None)
        tracks.append((number, Task(stage, old or job, old is not None)))
    return tracks, notes


def build(story: Story, piece: Any, stage: str, template: Template, base: dict[str, Any], fps: float) -> RenderJob:
    """The job of one step of one shot, unsaved. The video: the story's render settings with
    frames for the shot's length, as the renders step queues it (stories.rendering), so that a
    shot it rendered is reused; the others: those settings the template takes, at the story's
    fps (the interpolation at twice that)."""
    if stage == VIDEO:
        settings_ = dict(base)
        if template.takes("frames"):
            settings_["frames"] = template.frames_for(piece.duration, fps)
    else:
        settings_ = {k: v for k, v in base.items() if template.takes(k)}
        if template.takes("fps"):
            settings_["fps"] = fps * INTERPOLATION if stage == INTERP else fps
    prompt = piece.positive if template.takes("positive") or stage in (KEYFRAME, VIDEO) else ""
    return RenderJob.build(
        template,
        settings_,
        prompt=prompt,
        negative=piece.negative if prompt else "",
        story=str(story.code),
        target=piece.target(),
        stage=stage,
    )


def graph_jobs(story: Story) -> dict[tuple[str, str], list[RenderJob]]:
    """The story's jobs that a plan may reuse, by (target, stage), newest first, each with the pk
    of the job whose output it takes (`source_pk`). The renders step's jobs (no stage) count as
    videos."""
    jobs: dict[tuple[str, str], list[RenderJob]] = {}
    rows = (
        RenderJob.objects.filter(story=str(story.code))
        .exclude(status__in=(RenderJob.FAILED, RenderJob.CANCELLED))
        .exclude(target__startswith="reference:")
        .order_by("-created", "-id")
    )
    sources = dict(JobInput.objects.filter(job__story=str(story.code)).values_list("job_id", "source_id"))
    for job in rows:
        job.source_pk = sources.get(job.pk)  # type: ignore[attr-defined]
        jobs.setdefault((job.target, job.stage or VIDEO), []).append(job)
    return jobs


def reusable(candidates: list[RenderJob], wanted: RenderJob, source: Task | None) -> RenderJob | None:
    """A job that renders what `wanted` would, from the same input: a completed one first. A
    step whose input is new is new too."""
    if source is not None and not source.reused:
        return None
    want_source = source.job.pk if source is not None else None
    same = [
        job
        for job in candidates
        if (job.template_id, job.prompt, job.negative, job.settings)
        == (wanted.template_id, wanted.prompt, wanted.negative, wanted.settings)
        and getattr(job, "source_pk", None) == want_source
        and not (job.settings.get("input_image") and want_source is not None)
    ]
    return next((j for j in same if j.status == RenderJob.COMPLETED), same[0] if same else None)


def estimate_seconds(jobs: list[RenderJob]) -> tuple[float | None, int]:
    """How long the pool takes to render `jobs`, by the speeds it measured (each template's
    mean over the nodes that rendered it, the work shared by the usable ComfyUIs); and how many
    are of templates never measured."""
    if not jobs:
        return 0.0, 0
    rates: dict[int, list[float]] = {}
    for template, rate in Speed.objects.values_list("template_id", "seconds_per_unit"):
        rates.setdefault(template, []).append(rate)
    nodes = max(Capability.objects.usable(Capability.COMFYUI).count(), 1)
    total, unmeasured = 0.0, 0
    for job in jobs:
        measured = rates.get(job.template_id)
        if measured:
            total += job.work * sum(measured) / len(measured)
        else:
            unmeasured += 1
    if unmeasured == len(jobs):
        return None, unmeasured
    return total / nodes, unmeasured


def start(story: Story, options: Options) -> Movie:
    """Plan again (the story may have changed since the plan was shown) and run it: the new jobs
    queued in story order, each taking its input, and the movie's row with its parts, in one
    transaction. An earlier movie still running is replaced: its jobs that this plan does not
    use are cancelled."""
    planned = plan(story, options)
    with transaction.atomic():
        Story.objects.select_for_update().get(pk=story.pk)  # one start at a time per story
        version = (story.movies.aggregate(v=Max("version"))["v"] or 0) + 1
        movie = Movie.objects.create(
            story=story,
            version=version,
            path=options.path,
            upscale=options.upscale,
            interpolate=options.interpolate,
            transition=options.transition,
            narration_fit=options.narration_fit,
            burn_subtitles=options.burn_subtitles,
            leave_out_failed=options.leave_out_failed,
            templates={stage: t.name for stage, t in options.templates.items()},
            music=options.music,
            plan=planned.summary(),
        )
        position = RenderJob.last_position()
        used: set[int] = set()
        for piece, tasks in planned.parts:
            for task in tasks:
                if not task.reused:
                    task.job.position = position
                    position += 1
                    task.job.save()
                    if task.source is not None:
                        JobInput.objects.create(job=task.job, source=task.source.job, parameter=task.parameter)
                used.add(task.job.pk)
            MoviePart.objects.create(
                movie=movie,
                number=piece.number,
                segment=piece.segment.number if piece.segment else 0,
                seconds=piece.duration,
                chain=[[t.stage, t.job.pk, t.reused] for t in tasks],
                job=tasks[-1].job,
            )
        for _, task in planned.tracks:
            if not task.reused:
                task.job.position = position
                position += 1
                task.job.save()
            used.add(task.job.pk)
        movie.tracks = [[number, t.stage, t.job.pk, t.reused] for number, t in planned.tracks]
        Movie.objects.filter(pk=movie.pk).update(tracks=movie.tracks)
        for earlier in story.movies.filter(status__in=Movie.ACTIVE).exclude(pk=movie.pk):
            earlier.set_status(
                Movie.CANCELLED, expect=Movie.ACTIVE, finished=timezone.now(), error=f"replaced by v{version}"
            )
        stale = RenderJob.objects.filter(story=str(story.code)).exclude(stage="").exclude(pk__in=used)
        for job in stale.exclude(status__in=RenderJob.ENDED):
            job.cancel()
        if planned.new:
            RenderJob.announce_queued()
        movie.changed("movie.planned")
        ready(movie.pk)
    return movie


# --- following a movie ------------------------------------------------------------------------


@dataclasses.dataclass
class PartState:
    part: MoviePart
    jobs: list[tuple[str, RenderJob | None, bool]]  # (stage, job, reused) in graph order

    @property
    def last(self) -> RenderJob | None:
        return self.jobs[-1][1] if self.jobs else None

    @property
    def done(self) -> bool:
        return self.last is not None and self.last.status == RenderJob.COMPLETED

    @property
    def failed(self) -> RenderJob | None:
        """The first task of its chain that failed or was cancelled (the rest wait on it)."""
        return next(
            (j for _, j, _ in self.jobs if j is None or j.status in (RenderJob.FAILED, RenderJob.CANCELLED)), None
        )

    @property
    def blocked(self) -> bool:
        return any(j is None or j.status in (RenderJob.FAILED, RenderJob.CANCELLED) for _, j, _ in self.jobs)


def states(movie: Movie) -> list[PartState]:
    """Each part with its tasks, in two queries."""
    parts = list(movie.parts.all())
    pks = {pk for p in parts for _, pk, _ in p.chain}
    # One query however many (in_bulk would split it on SQLite), of what the graph shows.
    shown = (
        "code",
        "template_id",
        "stage",
        "target",
        "status",
        "progress",
        "node__name",
        "seconds",
        "outputs",
        "error",
    )
    rows = RenderJob.objects.select_related("node").only(*shown).filter(pk__in=pks)
    jobs = {j.pk: j for j in rows} if pks else {}
    return [PartState(p, [(stage, jobs.get(pk), reused) for stage, pk, reused in p.chain]) for p in parts]


def ready(movie_pk: int) -> bool:
    """A movie whose shots have all rendered (or, when told to leave failed ones out, ended)
    starts its export: guarded, and its task queued in the same transaction. True if it did."""
    movie = Movie.objects.select_related("story").get(pk=movie_pk)
    if movie.status != Movie.RENDERING:
        return False
    parts = states(movie)
    if not all(p.done or (movie.leave_out_failed and p.blocked) for p in parts):
        return False
    # The sound rendered on the pool has ended, however: what failed falls back (the local voice,
    # the user's track or none), and the film says so.
    sounds = [pk for _, _, pk, _ in movie.tracks]
    if RenderJob.objects.filter(pk__in=sounds).exclude(status__in=RenderJob.ENDED).exists():
        return False
    with transaction.atomic():
        queued = {"exporting": timezone.now(), "message": "queued", "worker": "", "heartbeat": Now()}
        if not movie.set_status(Movie.EXPORTING, expect=(Movie.RENDERING,), **queued):
            return False
        enqueue("stories.tasks.export", movie.pk, timeout=EXPORT_DEADLINE)
    return True


def pause(movie: Movie) -> bool:
    """Its queued tasks held (no node claims them), and those claimed for a node but not sent
    yet taken back (guarded: the attempt about to send one finds it no longer its own, and sends
    nothing); those sent finish."""
    with transaction.atomic():
        if not movie.set_status(Movie.PAUSED, expect=(Movie.RENDERING,)):
            return False
        mine = RenderJob.objects.filter(pk__in=movie_jobs(movie), batch=None)
        mine.filter(status=RenderJob.QUEUED).update(status=RenderJob.HELD)
        for job in mine.filter(status=RenderJob.ASSIGNED, client_id=""):
            unsent = RenderJob.objects.filter(pk=job.pk, status=RenderJob.ASSIGNED, client_id="")
            back = {"node": None, "capability": None, "worker": "", "heartbeat": None, **RenderJob.NOT_STARTED}
            if unsent.update(status=RenderJob.HELD, attempts=max(job.attempts - 1, 0), **back):
                job.changed("job.held")
        RenderJob.announce_queued()
    return True


def resume(movie: Movie) -> bool:
    with transaction.atomic():
        if not movie.set_status(Movie.RENDERING, expect=(Movie.PAUSED,)):
            return False
        RenderJob.objects.filter(pk__in=movie_jobs(movie), status=RenderJob.HELD, batch=None).update(
            status=RenderJob.QUEUED
        )
        RenderJob.announce_queued()
    ready(movie.pk)
    return True


def cancel(movie: Movie) -> bool:
    """The movie ends; its unfinished tasks that no other running movie uses are cancelled."""
    with transaction.atomic():
        if not movie.set_status(Movie.CANCELLED, expect=Movie.ACTIVE, finished=timezone.now()):
            return False
        others = Movie.objects.filter(story=movie.story_id, status__in=Movie.ACTIVE).exclude(pk=movie.pk)
        keep = {pk for m in others for pk in movie_jobs(m)}
        for job in RenderJob.objects.filter(pk__in=movie_jobs(movie) - keep).exclude(status__in=RenderJob.ENDED):
            job.cancel()
    return True


def export_again(movie: Movie) -> bool:
    """A movie whose export failed (a full disk, a shot's file gone) tries again, from its parts
    as they are now; what it encoded before is reused."""
    with transaction.atomic():
        if not movie.set_status(Movie.RENDERING, expect=(Movie.FAILED,), error="", finished=None, progress=0):
            return False
    ready(movie.pk)
    return True


def movie_jobs(movie: Movie) -> set[int]:
    """Every task of the movie: its shots' and its sound's."""
    tracks = Movie.objects.filter(pk=movie.pk).values_list("tracks", flat=True).first() or []
    shots = {pk for chain in movie.parts.values_list("chain", flat=True) for _, pk, _ in chain}
    return shots | {pk for _, _, pk, _ in tracks}


def sweep() -> bool:
    """Movies whose shots have rendered start their export; an export whose worker died is
    queued again (it resumes with the parts it encoded). True while a movie has tasks to render
    or an export: not while one only waits for the user to retry a failed task (the retry wakes
    the sweeper again)."""
    rendering = Movie.objects.filter(status=Movie.RENDERING).values_list("pk", flat=True)
    watching = False
    for pk in rendering:  # each looked at: no short cut
        if not ready(pk):
            unfinished = RenderJob.objects.filter(pk__in=movie_jobs(Movie(pk=pk))).exclude(status__in=RenderJob.ENDED)
            watching = watching or unfinished.exists()
    # An export is queued (no worker, a fresh heartbeat: when it was queued), running (its
    # worker's heartbeat) or orphaned: handed back (no heartbeat), its worker dead or silent, or
    # its task lost (queued long ago).
    exporting = Movie.objects.filter(status=Movie.EXPORTING)
    workers = set(exporting.exclude(worker="").values_list("worker", flat=True))
    for movie in exporting.filter(work.orphaned(workers)):
        crashes = movie.crashes + work.crashed(movie.worker, movie.heartbeat)
        with transaction.atomic():
            if crashes >= work.QUARANTINE_AFTER:
                movie.set_status(
                    Movie.FAILED,
                    expect=(Movie.EXPORTING,),
                    worker="",
                    heartbeat=None,
                    finished=timezone.now(),
                    error=f"quarantined: the worker exporting it died {crashes} times",
                )
                continue
            seen = Movie.objects.filter(pk=movie.pk, worker=movie.worker, heartbeat=movie.heartbeat)
            if seen.update(worker="", heartbeat=Now(), crashes=crashes):
                enqueue("stories.tasks.export", movie.pk, timeout=EXPORT_DEADLINE)
    return watching or Movie.objects.filter(status=Movie.EXPORTING).exists()


# --- the export --------------------------------------------------------------------------------


def export(movie_pk: int, media_root: Path | None = None) -> str:
    """Join the movie's shots into the film (the task): nothing if another worker has it."""
    from renders import film

    me = work.worker_id()
    mine = Movie.objects.filter(pk=movie_pk, status=Movie.EXPORTING, worker="")
    if not mine.update(worker=me, heartbeat=Now()):
        return "not this task's any more"
    movie = Movie.objects.select_related("story").get(pk=movie_pk)
    root = Path(media_root or settings.MEDIA_ROOT)
    rows = Movie.objects.filter(pk=movie.pk, worker=me)
    try:
        with work.stop_on_sigterm(), work.beating(rows):
            shots, segments, cut, notes = inputs_of(movie, root)
            folder = f"movies/{str(movie.story.code)[:2]}/{movie.story.code}"
            name = f"{slugify(movie.story.title)[:40] or 'movie'}-v{movie.version}.mp4"
            out = root / folder / name
            out.parent.mkdir(parents=True, exist_ok=True)
            reporter = Reporter(movie, me)
            made = film.export(
                shots,
                segments,
                cut,
                out=out,
                cache=Path(settings.DATA_PATH) / "film-cache" / str(movie.story.code),
                progress=reporter,
                stop=work.STOP.is_set,
            )
    except film.FilmError as e:
        if work.STOP.is_set():
            rows.update(worker="", heartbeat=None)
            work.leave()
            return "stopped: handed back"
        movie.set_status(Movie.FAILED, expect=(Movie.EXPORTING,), worker="", finished=timezone.now(), error=str(e))
        return f"failed: {e}"
    except work.Stopped:
        rows.update(worker="", heartbeat=None)  # the sweeper queues it again, no crash counted
        work.leave()
        return "stopped: handed back"
    except OSError as e:  # our side: a full disk, a folder we may not write
        why = f"the film could not be written ({e.strerror or e}); free some space, then export again"
        movie.set_status(Movie.FAILED, expect=(Movie.EXPORTING,), worker="", finished=timezone.now(), error=why)
        return f"failed: {why}"
    relative = f"{folder}/{name}"
    done = movie.set_status(
        Movie.COMPLETED,
        expect=(Movie.EXPORTING,),
        worker="",
        heartbeat=None,
        finished=timezone.now(),
        progress=1.0,
        message=f"encoded {made.encoded} shot(s), reused {made.reused}",
        video=relative,
        vtt=str(Path(relative).with_suffix(".vtt")),
        srt=str(Path(relative).with_suffix(".srt")),
        seconds=made.seconds,
        chapters=[[t, title] for t, title in made.chapters],
        warnings=movie.plan.get("notes", []) + notes + made.warnings,
        error="",
    )
    return f"exported {made.seconds:.1f} s" if done else "exported, but the movie was cancelled meanwhile"


class Reporter:
    """The export's progress on its row, at most every PROGRESS_EVERY seconds."""

    def __init__(self, movie: Movie, me: str) -> None:
        self.movie, self.me, self.last = movie, me, 0.0

    def __call__(self, share: float, message: str) -> None:
        import time

        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY and share < 1:
            return
        self.last = now
        with transaction.atomic():
            if Movie.objects.filter(pk=self.movie.pk, worker=self.me).update(
                progress=max(0.0, min(share, 1.0)), message=message[:300]
            ):
                self.movie.changed("movie.progress")


def inputs_of(movie: Movie, root: Path) -> tuple[list[Any], list[Any], Any, list[str]]:
    """What renders.film needs: the shots in story order (a title card for one left out), the
    segments with their narration (and their speech and music when the pool rendered them), and
    the cut; with what the user should know of the sound that did not render."""
    from renders import film, media

    sounds, notes = sound_files(movie, root)
    shots = []
    parts = states(movie)
    for state in parts:
        part, last = state.part, state.last
        path: Path | None = None
        card = ""
        if state.done and last is not None and last.outputs:
            path = media.inside(root, str(last.outputs[0].get("path", "")))
            if path is None:
                raise film.FilmError(f"{movie.story.piece} {part.number}: its render's file is not in the media folder")
        else:
            failed = state.failed
            why = failed.error if failed is not None and failed.error else "it did not render"
            card = f"{movie.story.piece.title()} {part.number} is missing: {why}"[:200]
        shots.append(film.Shot(f"{movie.story.piece}:{part.number}", path, part.seconds, part.segment, card))
    segments = [
        film.Segment(s.number, s.title, s.narration, sounds.get((s.number, SPEECH)), sounds.get((s.number, MUSIC)))
        for s in Segment.objects.filter(story=movie.story_id).order_by("number")
    ]
    if not segments:
        segments = [film.Segment(0, movie.story.title or "Film", "")]
    render = movie.story.render_settings
    music = media.inside(root, movie.music) if movie.music else None
    # The film's frame is its shots' (the first that rendered: upscaled ones are larger), at the
    # story's fps, twice that when interpolated.
    first: dict[str, Any] = next((s.last.outputs[0] for s in parts if s.done and s.last and s.last.outputs), {})
    fps = float(render.get("fps") or 16) * (INTERPOLATION if movie.interpolate else 1)
    cut = film.Cut(
        width=int(first.get("width") or render.get("width") or 832),
        height=int(first.get("height") or render.get("height") or 480),
        fps=fps,
        transition=movie.transition,
        narration_fit=movie.narration_fit,
        burn_subtitles=movie.burn_subtitles,
        music=music,
        **local_voice(),
    )
    return shots, segments, cut, notes


KOKORO_VOICE = "kokoro:af_heart"


def local_voice() -> dict[str, Any]:
    """The voice that speaks narration the pool did not: Kokoro when kokoro_onnx is installed and
    its model files are in the data folder's voices/, else eSpeak NG."""
    from renders import voice

    folder = Path(settings.DATA_PATH) / "voices"
    if voice.kokoro_missing(folder) is None:
        return {"voice": KOKORO_VOICE, "voice_models": folder}
    return {"voice": "espeak:en"}


def sound_files(movie: Movie, root: Path) -> tuple[dict[tuple[int, str], Path], list[str]]:
    """The speech and music the pool rendered for the movie, by (segment, stage), as files of the
    media folder; and, for each that did not render, what plays instead."""
    from renders import media

    jobs = RenderJob.objects.in_bulk([pk for _, _, pk, _ in movie.tracks])
    files: dict[tuple[int, str], Path] = {}
    notes = []
    for number, stage, pk, _ in movie.tracks:
        job = jobs.get(pk)
        out = next((o for o in job.outputs if o.get("kind") == "audio"), None) if job else None
        path = media.inside(root, str(out["path"])) if out else None
        if job is not None and job.status == RenderJob.COMPLETED and path is not None and path.is_file():
            files[(number, stage)] = path
            continue
        why = (job.error or job.get_status_display().lower()) if job else "its task was deleted"
        instead = "the local voice speaks it" if stage == SPEECH else "it has no music of its own"
        notes.append(f"Segment {number}'s {STAGE_LABELS[stage].lower()} did not render ({why[:160]}); {instead}.")
    return files, notes
