"""A story and what the pipeline writes of it, and the checkpoints of the steps that wrote it.

Each run of a step is a StepRun row: the checkpoint. A step's objects (segments, characters,
shots, scenes, music cues) are written in the same transaction that marks its run completed, so a
step either happened completely or not at all. Re-running a step marks its run and everything
downstream stale: stale runs are the earlier versions, each with the output it wrote.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models, transaction
from django.db.models import Q
from django.db.models.functions import Concat
from django.utils import timezone

from nodes.models import Node
from spoonfeeder.models import Event


class Story(models.Model):
    SHOTS, SCENES = "shots", "scenes"
    MODES = [(SHOTS, "Shots (Wan / Hunyuan)"), (SCENES, "HoloCine scenes")]
    DRAFT, RUNNING, WAITING, RENDERING, COMPLETED, FAILED, STOPPED = (
        "draft",
        "running",
        "waiting",
        "rendering",
        "completed",
        "failed",
        "stopped",
    )
    STATES = [
        (DRAFT, "Not started"),
        (RUNNING, "Running"),
        (WAITING, "Waiting"),
        # Every step is done and the renders are queued, but not every shot has rendered yet.
        (RENDERING, "Rendering"),
        (COMPLETED, "Completed"),
        (FAILED, "Failed"),
        (STOPPED, "Stopped"),
    ]

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    idea = models.TextField()
    title = models.CharField(max_length=200, blank=True)
    genre = models.CharField(max_length=60, blank=True)
    style = models.CharField(max_length=200, blank=True)
    target_seconds = models.PositiveIntegerField(default=60, help_text="How long the film should be.")
    mode = models.CharField(max_length=10, choices=MODES, default=SHOTS)
    # The language model for every step, and per-step overrides: {"shots": "qwen2.5:7b"}.
    model = models.CharField(max_length=200)
    models_by_step = models.JSONField(default=dict, blank=True)
    auto_render = models.BooleanField(default=True, help_text="Queue the renders as soon as the prompts are written.")
    references = models.BooleanField(default=False, help_text="Render a reference image of each character first.")
    template = models.ForeignKey(
        "renders.Template", on_delete=models.SET_NULL, null=True, blank=True, related_name="stories"
    )
    render_settings = models.JSONField(default=dict, blank=True)
    reference_template = models.ForeignKey(
        "renders.Template", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    text = models.TextField(blank=True, help_text="The story as the model wrote it.")
    # Kept up to date by the pipeline for the list: a summary of the step runs.
    state = models.CharField(max_length=10, choices=STATES, default=DRAFT)
    progress = models.FloatField(default=0)
    stopped = models.BooleanField(default=False)
    # The Ollama node that served the story last: placement prefers it (its model is loaded).
    node = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "stories"

    def __str__(self) -> str:
        return self.title or self.idea[:60]

    @property
    def planned(self) -> type[Shot] | type[Scene]:
        """What the story is planned in: shots (Wan / Hunyuan) or HoloCine scenes."""
        return Scene if self.mode == Story.SCENES else Shot

    @property
    def piece(self) -> str:
        """ "shot" or "scene": one piece of the plan, as render targets (`shot:3`) name it."""
        return str(self.planned._meta.model_name)

    def model_for(self, step: str) -> str:
        return str(self.models_by_step.get(step) or self.model)

    def topic(self) -> str:
        return f"story-{self.code}"

    def changed(self, kind: str = "story.changed") -> None:
        """Tell the pages that show this story (call inside the change's transaction)."""
        Event.objects.bulk_create([Event(topic=self.topic(), kind=kind), Event(topic="stories", kind=kind)])


class Segment(models.Model):
    story = models.ForeignKey(Story, on_delete=models.CASCADE, related_name="segments")
    number = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    summary = models.TextField()
    narration = models.TextField(blank=True)

    class Meta:
        ordering = ["story", "number"]

    def __str__(self) -> str:
        return f"{self.number}. {self.title}"


class Character(models.Model):
    story = models.ForeignKey(Story, on_delete=models.CASCADE, related_name="characters")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=200, blank=True)
    look = models.TextField(blank=True)
    personality = models.TextField(blank=True)
    # The reference image (a media path) when the story renders references.
    reference = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["story", "id"]

    def __str__(self) -> str:
        return self.name


class Planned(models.Model):
    """What a shot and a HoloCine scene share: a numbered piece of the film with its prompt."""

    story = models.ForeignKey(Story, on_delete=models.CASCADE, related_name="%(class)ss")
    segment = models.ForeignKey(Segment, on_delete=models.SET_NULL, null=True, blank=True, related_name="%(class)ss")
    number = models.PositiveIntegerField()
    description = models.TextField()
    duration = models.FloatField(default=5.0, help_text="Seconds.")
    characters = models.JSONField(default=list, blank=True, help_text="Names of the characters in it.")
    positive = models.TextField(blank=True)
    negative = models.TextField(blank=True)

    class Meta:
        abstract = True
        ordering = ["story", "number"]

    def target(self) -> str:
        return f"{self._meta.model_name}:{self.number}"


class Shot(Planned):
    camera = models.CharField(max_length=200, blank=True)

    class Meta(Planned.Meta):
        pass

    def __str__(self) -> str:
        return f"Shot {self.number}"


class Scene(Planned):
    title = models.CharField(max_length=200, blank=True)
    # A HoloCine scene is several shots rendered together: their descriptions, in order.
    shots = models.JSONField(default=list, blank=True)

    class Meta(Planned.Meta):
        pass

    def __str__(self) -> str:
        return f"Scene {self.number}"


class MusicCue(models.Model):
    story = models.ForeignKey(Story, on_delete=models.CASCADE, related_name="music_cues")
    segment = models.ForeignKey(Segment, on_delete=models.SET_NULL, null=True, blank=True, related_name="cues")
    number = models.PositiveIntegerField()
    mood = models.CharField(max_length=100)
    description = models.TextField()

    class Meta:
        ordering = ["story", "number"]

    def __str__(self) -> str:
        return f"Cue {self.number}: {self.mood}"


class RunQuerySet(models.QuerySet["StepRun"]):
    def current(self) -> RunQuerySet:
        return self.exclude(status=StepRun.STALE)


class StepRun(models.Model):
    """One run of one step of one story (or one part of a step that fans out): the checkpoint."""

    PENDING, RUNNING, COMPLETED, FAILED, STALE, CANCELLED = (
        "pending",
        "running",
        "completed",
        "failed",
        "stale",
        "cancelled",
    )
    STATUSES = [
        (PENDING, "Pending"),
        (RUNNING, "Running"),
        (COMPLETED, "Completed"),
        (FAILED, "Failed"),
        (STALE, "Stale (an earlier version)"),
        (CANCELLED, "Cancelled"),
    ]
    ENDED = (COMPLETED, FAILED, CANCELLED)

    story = models.ForeignKey(Story, on_delete=models.CASCADE, related_name="runs")
    step = models.CharField(max_length=20)
    # "" for a whole step; the number of the shot or scene for a part of a step that fans out.
    part = models.PositiveIntegerField(default=0)
    version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    # A pending run that waits for the user (renders without auto-render).
    held = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    not_before = models.DateTimeField(null=True, blank=True)
    # Why a pending run has not started (no node online with its model, …).
    waiting = models.CharField(max_length=300, blank=True)
    node = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="step_runs")
    # The node's Ollama while this run asks its model there (its load counts this row): set by
    # the claim, cleared by the transition that ends the run. The run's row is its lease.
    capability = models.ForeignKey(
        "nodes.Capability", on_delete=models.SET_NULL, null=True, blank=True, related_name="held_steps"
    )
    model = models.CharField(max_length=200, blank=True)
    # The worker running it (spoonfeeder.work.worker_id); "" while its task is on the way. Its
    # heartbeat, and times a worker died while running it (not attempts: past a limit it is
    # quarantined).
    owner = models.CharField(max_length=100, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    crashes = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    output = models.JSONField(null=True, blank=True)
    edited = models.BooleanField(default=False, help_text="Its output was corrected by hand.")

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["story", "created", "id"]
        constraints = [
            # One current run per step (and part) of a story; stale ones are its earlier versions.
            models.UniqueConstraint(
                fields=["story", "step", "part"], condition=~Q(status="stale"), name="one_current_run"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "created"], condition=Q(status="pending"), name="run_pending"),
            models.Index(fields=["status", "heartbeat"], condition=Q(status="running"), name="run_running"),
        ]

    def __str__(self) -> str:
        return f"{self.step}{f' {self.part}' if self.part else ''} v{self.version} of {self.story_id}"

    @property
    def seconds(self) -> float | None:
        if self.started and self.finished:
            return (self.finished - self.started).total_seconds()
        return None

    def note(self, line: str) -> None:
        """Append a line to the log (on the row in the database, whatever else changed)."""
        stamped = f"{timezone.now():%H:%M:%S} {line}\n"
        if "log" not in self.get_deferred_fields():
            self.log += stamped
        StepRun.objects.filter(pk=self.pk).update(log=Concat("log", models.Value(stamped)))

    def transition(
        self, to: str, *, expect: tuple[str, ...], by: str | None = None, note: str = "", **fields: Any
    ) -> bool:
        """Guarded: move to `to` if the run is still in one of `expect` (and still `by`'s, its
        owner's, when given), with `note` added to the log and the story's pages told in the same
        transaction."""
        if to != StepRun.RUNNING:  # a run that stops running no longer holds its node's capacity
            fields.setdefault("capability", None)
        rows = StepRun.objects.filter(pk=self.pk, status__in=expect)
        if by is not None:
            rows = rows.filter(owner=by)
        line = f"{timezone.now():%H:%M:%S} {note}\n" if note else ""
        logged = {"log": Concat("log", models.Value(line))} if note else {}
        with transaction.atomic():
            if not rows.update(status=to, **fields, **logged):
                return False
            for key, value in fields.items():
                setattr(self, key, value)
            self.status = to
            if "log" not in self.get_deferred_fields():
                self.log += line
            self.story.changed(f"step.{to}")
            if to == StepRun.RUNNING or StepRun.RUNNING in expect:  # its bar on the pool's timeline
                Event.emit("timeline", f"step.{to}", str(self.pk))
        return True

    def fail(self, error: str, by: str | None = None) -> bool:
        """Guarded: a running run ends failed with `error` (shown on the step, kept in its log)."""
        return self.transition(
            StepRun.FAILED,
            expect=(StepRun.RUNNING,),
            by=by,
            note=f"failed: {error}",
            finished=timezone.now(),
            error=error,
            heartbeat=None,
        )


class Movie(models.Model):
    """One export of a story's film ("Export the movie"): the render graph it planned (its
    settings, its parts), how far it is, and the film it made. Earlier exports are kept as
    versions. Its export runs as a task whose row is this one: `worker` and `heartbeat` are its
    lease, re-driven by the sweeper when the worker dies (stories.movie.sweep)."""

    RENDERING, PAUSED, EXPORTING, COMPLETED, FAILED, CANCELLED = (
        "rendering",
        "paused",
        "exporting",
        "completed",
        "failed",
        "cancelled",
    )
    STATUSES = [
        (RENDERING, "Rendering its shots"),
        (PAUSED, "Paused"),
        (EXPORTING, "Joining the film"),
        (COMPLETED, "Completed"),
        (FAILED, "Failed"),
        (CANCELLED, "Cancelled"),
    ]
    ENDED = (COMPLETED, FAILED, CANCELLED)
    ACTIVE = (RENDERING, PAUSED, EXPORTING)
    T2V, I2V = "t2v", "i2v"
    PATHS = [(T2V, "Text to video"), (I2V, "Keyframe, then image to video")]
    CUT, CROSSFADE = "cut", "crossfade"
    TRANSITIONS = [(CUT, "Cuts"), (CROSSFADE, "Crossfades")]
    HOLD, SPEED = "hold", "speed"
    FITS = [(HOLD, "Hold the shot until the narration ends"), (SPEED, "Speed the speech up (up to 1.5×)")]

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    story = models.ForeignKey(Story, on_delete=models.CASCADE, related_name="movies")
    version = models.PositiveIntegerField()
    path = models.CharField(max_length=10, choices=PATHS, default=T2V)
    upscale = models.BooleanField(default=False)
    interpolate = models.BooleanField(default=False)
    transition = models.CharField(max_length=10, choices=TRANSITIONS, default=CUT)
    narration_fit = models.CharField(max_length=10, choices=FITS, default=HOLD)
    burn_subtitles = models.BooleanField(default=False)
    # A shot whose render failed: wait for it (retry it), or leave it out with a title card.
    leave_out_failed = models.BooleanField(default=False)
    # The templates of each step of the graph, as chosen when it was planned.
    templates = models.JSONField(default=dict, blank=True)
    music = models.CharField(max_length=300, blank=True, help_text="A track the user uploaded (a media path).")
    status = models.CharField(max_length=10, choices=STATUSES, default=RENDERING)
    # What was planned: tasks of each kind, new and reused, and the estimate in seconds.
    plan = models.JSONField(default=dict, blank=True)
    # The sound rendered on the pool, by segment: [[segment, "speech" or "music", job pk, reused], …]
    tracks = models.JSONField(default=list, blank=True)
    progress = models.FloatField(default=0)  # of the export itself, 0..1
    message = models.CharField(max_length=300, blank=True)  # what the export does now
    worker = models.CharField(max_length=100, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    crashes = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)
    exporting = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    # The film (media paths), once completed.
    video = models.CharField(max_length=300, blank=True)
    vtt = models.CharField(max_length=300, blank=True)
    srt = models.CharField(max_length=300, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    chapters = models.JSONField(default=list, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["story", "-version"]
        constraints = [models.UniqueConstraint(fields=["story", "version"], name="one_movie_per_version")]
        indexes = [models.Index(fields=["status"], name="movie_status")]

    def __str__(self) -> str:
        return f"{self.story} movie v{self.version}"

    def set_status(self, to: str, *, expect: tuple[str, ...], **fields: Any) -> bool:
        """Guarded: move to `to` only from one of `expect`, the pages told in the same transaction."""
        with transaction.atomic():
            if not Movie.objects.filter(pk=self.pk, status__in=expect).update(status=to, **fields):
                return False
            self.status = to
            for key, value in fields.items():
                setattr(self, key, value)
            self.changed()
        return True

    def changed(self, kind: str = "movie.changed") -> None:
        Event.objects.bulk_create(
            [Event(topic=self.story.topic(), kind=kind), Event(topic="pipelines", kind=kind, ref=str(self.code))]
        )


class MoviePart(models.Model):
    """One shot (or HoloCine scene) of a movie: its tasks in graph order (render job pks,
    keyframe → video → upscale → interpolation) and the one whose output is the shot's clip."""

    movie = models.ForeignKey(Movie, on_delete=models.CASCADE, related_name="parts")
    number = models.PositiveIntegerField()
    segment = models.PositiveIntegerField(default=0)
    seconds = models.FloatField()
    chain = models.JSONField(default=list)  # [[stage, job pk, reused], …] in graph order
    job = models.ForeignKey(
        "renders.RenderJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="movie_parts"
    )

    class Meta:
        ordering = ["movie", "number"]
        constraints = [models.UniqueConstraint(fields=["movie", "number"], name="one_part_per_shot")]

    def __str__(self) -> str:
        return f"part {self.number} of {self.movie}"
