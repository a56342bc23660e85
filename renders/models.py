from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import Case, Count, Exists, F, OuterRef, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.text import slugify

from nodes.models import PREFETCH, Capability, Node, Requirements
from nodes.pool import TEST_TARGET
from renders import batches, workflows
from spoonfeeder.models import Event


class Template(models.Model):
    """A ComfyUI API-format workflow and where its parameters go."""

    STILL, T2V, I2V, UPSCALE, INTERP, AUDIO, TEST = "still", "t2v", "i2v", "upscale", "interp", "audio", "test"
    KINDS = [
        (STILL, "Still image"),
        (T2V, "Text to video"),
        (I2V, "Image to video"),
        (UPSCALE, "Upscale a video"),
        (INTERP, "Frame interpolation"),
        (AUDIO, "Sound (speech, music)"),
        (TEST, "Test (no models)"),
    ]
    # The step of a render graph a template does (stories.movie): what it takes and makes.
    KEYFRAME, SPEECH, MUSIC = "keyframe", "speech", "music"
    ROLES = [
        ("", "—"),
        (KEYFRAME, "Keyframe (still image)"),
        (T2V, "Text to video"),
        (I2V, "Image to video"),
        (UPSCALE, "Upscale"),
        (INTERP, "Frame interpolation"),
        (SPEECH, "Text to speech"),
        (MUSIC, "Music"),
    ]

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=10, choices=KINDS, default=STILL)
    role = models.CharField(max_length=10, choices=ROLES, blank=True, help_text="Its step in a movie's render graph.")
    workflow = models.JSONField()
    # parameter -> [[node id, input name], ...], as renders.workflows.detect() finds it
    mapping = models.JSONField(default=dict, blank=True)
    # {"classes": [...], "files": {folder: [file, ...]}, "custom_nodes": [...]}
    needs = models.JSONField(default=dict, blank=True)
    shipped = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def requirements(self) -> Requirements:
        files = tuple((folder, name) for folder, names in self.needs.get("files", {}).items() for name in names)
        return Requirements(classes=tuple(self.needs.get("classes", [])), files=files)

    def takes(self, parameter: str) -> bool:
        """Whether the workflow has a place for this parameter (renders.workflows.PARAMETERS)."""
        return bool(self.mapping.get(parameter))

    def defaults(self) -> dict[str, Any]:
        """The settings the workflow renders with when a job gives none: what it holds at each
        mapped place."""
        return workflows.read(self.workflow, self.mapping)

    def frames_for(self, seconds: float, fps: float) -> int:
        """The frame count nearest `seconds` at `fps` that the template renders: one past a whole
        number of its frame steps (4n + 1 for Wan, Hunyuan and HoloCine), at most its longest
        (needs["frames"], from the model's training; else what any job may ask)."""
        rule = self.needs.get("frames", {})
        step = max(int(rule.get("step", 1)), 1)
        longest = int(rule.get("max", workflows.SETTINGS_LIMITS["frames"][1]))
        wanted = max(1, round(seconds * fps))
        if step > 1:
            wanted = 1 + step * max(0, round((wanted - 1) / step))
            longest = 1 + step * ((longest - 1) // step)
        return max(1, min(wanted, longest))

    def kept_by(self) -> str:
        """Why this template cannot be deleted now, or "" if it can: the render jobs made from it
        keep it (their settings and outputs name it)."""
        jobs = self.jobs.count()
        if jobs:
            return (
                f"{jobs} render job{'s' if jobs != 1 else ''} made from it keep{'s' if jobs == 1 else ''} it "
                "(finished ones too): delete those jobs first, or keep the template"
            )
        return ""


class Queue(models.Model):
    """The render queue's own state: one row. Paused survives restarts because it is a row."""

    paused = models.BooleanField(default=False)
    changed = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return "paused" if self.paused else "running"

    @classmethod
    def get(cls) -> Queue:
        return cls.objects.get_or_create(pk=1)[0]

    @classmethod
    def set_paused(cls, paused: bool) -> None:
        with transaction.atomic():
            cls.get()
            cls.objects.filter(pk=1).update(paused=paused, changed=timezone.now())
            Event.emit("renders", "queue.paused" if paused else "queue.resumed")
            if not paused:
                wake()


# A node's test render: the shipped model-free template, pinned to the node, ahead of every job.
TEST_TEMPLATE = "test-still-image"
TEST_PRIORITY = 1000


# The changes that start or end a job's bar on the pool's timeline (nodes.timeline): it began on
# its node, it ended, or it went back to the queue. Progress and moves in the queue do not.
TIMELINE_KINDS = frozenset({"job.rendering", "job.completed", "job.failed", "job.cancelled", "job.queued"})


def inputs_ready() -> Q:
    """A job none of whose inputs (JobInput) is still to be rendered: it may start. Its inputs are
    looked up by a subquery of the row itself, never a join (see renders.dispatch.fed)."""
    unready = JobInput.objects.filter(job=OuterRef("pk")).exclude(source__status=RenderJob.COMPLETED)
    return ~Q(Exists(unready))


class JobQuerySet(models.QuerySet["RenderJob"]):
    def runnable(self) -> JobQuerySet:
        now = timezone.now()
        waited = Q(not_before=None) | Q(not_before__lte=now)
        return self.filter(status=RenderJob.QUEUED).filter(waited, inputs_ready())

    def in_dispatch_order(self) -> JobQuerySet:
        # Highest priority, then queue position, then age. Positions grow with time, so FIFO
        # within a story holds unless the user reorders.
        return self.order_by("-priority", "position", "created", "id")

    def active(self) -> JobQuerySet:
        return self.filter(status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING))


class RenderJob(models.Model):
    HELD, QUEUED, ASSIGNED, RENDERING, COMPLETED, FAILED, CANCELLED = (
        "held",
        "queued",
        "assigned",
        "rendering",
        "completed",
        "failed",
        "cancelled",
    )
    STATUSES = [
        # An item of a batch, not yet in the queue: its batch feeds a few at a time (Batch.feed).
        (HELD, "Waiting in its batch"),
        (QUEUED, "Queued"),
        (ASSIGNED, "Waiting on node"),
        (RENDERING, "Rendering"),
        (COMPLETED, "Completed"),
        (FAILED, "Failed"),
        (CANCELLED, "Cancelled"),
    ]
    ENDED = (COMPLETED, FAILED, CANCELLED)
    WAITING = (HELD, QUEUED)  # not on a node: nothing follows it
    ON_NODE = (ASSIGNED, RENDERING)
    # What a job that goes back to the queue forgets of its last run.
    NOT_STARTED: dict[str, Any] = {"progress": 0, "step": 0, "steps": 0, "current": ""}
    IMAGE, VIDEO = "image", "video"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=10, choices=[(IMAGE, "Image"), (VIDEO, "Video")], default=IMAGE)
    # Its step in a story's render graph (stories.movie): "" for a job of its own or the story's
    # renders step, else keyframe, video, upscale or interp.
    stage = models.CharField(max_length=10, blank=True)
    # What the render is for: empty for a standalone job; "story:<code>/shot:<n>" for story jobs.
    target = models.CharField(max_length=200, blank=True)
    story = models.CharField(max_length=64, blank=True, db_index=True)
    # The batch it is an item of, and its place there (fixed when the batch is made).
    batch = models.ForeignKey("Batch", on_delete=models.SET_NULL, null=True, blank=True, related_name="items")
    index = models.PositiveIntegerField(default=0)
    # A grid item's place on the grid: axis -> the value as typed, for the rows and columns.
    labels = models.JSONField(default=dict, blank=True)
    prompt = models.TextField(blank=True)
    negative = models.TextField(blank=True)
    settings = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0)
    position = models.FloatField(default=0)
    status = models.CharField(max_length=10, choices=STATUSES, default=QUEUED)
    progress = models.FloatField(default=0)
    step = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0)
    current = models.CharField(max_length=120, blank=True, help_text="The ComfyUI node executing now.")
    node = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="render_jobs")
    # The node's ComfyUI while this job holds a unit of it: from its claim until it has finished
    # there (the GPU is free while its outputs are copied). The job's row is its lease.
    capability = models.ForeignKey(
        Capability, on_delete=models.SET_NULL, null=True, blank=True, related_name="held_renders"
    )
    # Render only on this node (the user asked for it); None: wherever fits best.
    pin = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="pinned_jobs")
    # The node its last attempt failed on: a retry goes elsewhere if another node can take it.
    avoid = models.ForeignKey(Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # Chosen by us and stored before the workflow is sent, so a crash can be re-attached.
    prompt_id = models.CharField(max_length=64, blank=True)
    client_id = models.CharField(max_length=100, blank=True)
    workflow = models.JSONField(null=True, blank=True, help_text="Exactly what was sent, to reproduce it.")
    outputs = models.JSONField(default=list, blank=True)
    preview = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # The worker following this job (spoonfeeder.work.worker_id), "" while none has taken it, and
    # times a worker died while running it: past a limit it is quarantined.
    worker = models.CharField(max_length=100, blank=True)
    crashes = models.PositiveSmallIntegerField(default=0)
    not_before = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    # When it took its place in the queue: queued, or moved there by the user (not when it went
    # back by itself); and when its node was claimed for it, this attempt. A job waiting in a
    # node's queue is pulled back for a better one only if that one was moved after this one's
    # claim: the plan changing its mind is not enough. Both by the database's clock.
    moved = models.DateTimeField(db_default=Now())
    claimed = models.DateTimeField(null=True, blank=True)
    # When its node accepted the workflow (this attempt), when it began there, when it ended.
    sent = models.DateTimeField(null=True, blank=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    # Seconds the node spent on it and units of work (frames x steps x megapixels), for speed.
    seconds = models.FloatField(null=True, blank=True)
    work = models.FloatField(default=1)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-priority", "position", "created"]
        indexes = [
            # Read by dispatch (renders.dispatch.next_job) many times a second.
            models.Index(fields=["-priority", "position", "created"], condition=Q(status="queued"), name="job_queued"),
            models.Index(fields=["status", "-created"], name="job_status_created"),
            models.Index(fields=["node", "status"], name="job_node_status"),
            # A batch's items in order (its page, its feeding: Batch.feed), and its counts.
            models.Index(fields=["batch", "index"], name="job_batch_index"),
            models.Index(fields=["batch", "status"], name="job_batch_status"),
            # The History page: every finished output, newest first.
            models.Index(fields=["-finished", "-id"], condition=Q(status="completed"), name="job_history"),
        ]

    def __str__(self) -> str:
        return f"{self.template} job {str(self.code)[:8]}"

    def changed(self, kind: str = "job.changed", *, finished: bool = False) -> None:
        topics = ["renders"]
        if finished:  # the list of finished jobs changes only when one ends or is retried
            topics.append("renders-done")
        if self.target == TEST_TARGET:
            topics.append("nodes")  # a node's test render is shown on its card
        if kind in TIMELINE_KINDS:
            topics.append("timeline")
        if kind != "job.progress":
            topics.append("dashboard")
            if self.story:  # the story's page shows its renders (progress it polls for)
                topics.append(f"story-{self.story}")
            if self.batch_id:
                topics += ["batches", f"batch-{self.batch_code()}"]
        Event.objects.bulk_create([Event(topic=t, kind=kind, ref=str(self.code)) for t in topics])

    def batch_code(self) -> str:
        """Its batch's code (a query the first time): the batch's live topic."""
        if "_batch_code" not in self.__dict__:
            code = Batch.objects.filter(pk=self.batch_id or 0).values_list("code", flat=True).first()
            self.__dict__["_batch_code"] = str(code or "")
        return str(self.__dict__["_batch_code"])

    def transition(self, to: str, *, expect: tuple[str, ...], **fields: Any) -> bool:
        """Guarded state change: only from one of `expect`; False if another process moved it. A
        job that leaves the node (queued again, or ended) no longer holds its capacity."""
        if to not in (self.ASSIGNED, self.RENDERING):
            fields.setdefault("capability", None)
        status: Any = to
        if to == self.QUEUED and self.batch_id:
            # An item of a paused batch goes back to it, not to the queue: decided by the row of
            # the batch as the update finds it, so a pause committed meanwhile is never missed.
            held_back = Batch.objects.filter(pk=self.batch_id, status__in=Batch.HELD_BACK)
            status = Case(When(Exists(held_back), then=Value(self.HELD)), default=Value(to))
        with transaction.atomic():
            done = RenderJob.objects.filter(pk=self.pk, status__in=expect).update(status=status, **fields)
            if done:
                self.changed(f"job.{to}", finished=to in self.ENDED or any(e in self.ENDED for e in expect))
                if to == self.QUEUED or (to == self.COMPLETED and JobInput.objects.filter(source=self.pk).exists()):
                    wake()  # it may run now; or the jobs that take its output may
        if done:  # the row now holds exactly these values: no need to read it back
            self.status = to
            for name, value in fields.items():
                setattr(self, name, value)
        return bool(done)

    def retry(self) -> bool:
        """A failed or cancelled job back to the end of the queue, with its attempts reset; an
        item of a batch back to its batch, which feeds it again (Batch.feed)."""
        if self.batch_id:
            return Batch.objects.get(pk=self.batch_id).retry([self.pk]) > 0
        return self.transition(
            self.QUEUED,
            expect=(self.FAILED, self.CANCELLED),
            attempts=0,
            crashes=0,
            error="",
            not_before=None,
            node_id=None,
            position=RenderJob.last_position(),
            moved=Now(),
            finished=None,
            **self.NOT_STARTED,
        )

    def cancel(self) -> bool:
        """Rows first: the job's attempt task interrupts it on the node or takes it off the node's queue."""
        return self.transition(
            self.CANCELLED, expect=(self.HELD, self.QUEUED, self.ASSIGNED, self.RENDERING), finished=timezone.now()
        )

    def release(self) -> None:
        """The node's capacity back: this job no longer occupies its GPU."""
        RenderJob.objects.filter(pk=self.pk).update(capability=None)
        self.capability_id = None

    def fail(self, error: str, *, permanent: bool) -> None:
        """A failed attempt: retried later (on another node if possible) unless permanent or out of
        attempts."""
        if permanent or self.attempts >= self.max_attempts:
            done = self.transition(
                self.FAILED,
                expect=(self.ASSIGNED, self.RENDERING, self.QUEUED),
                error=error[:5000],
                finished=timezone.now(),
                heartbeat=None,
            )
        else:
            delay = settings.RENDER_BACKOFF * 2 ** max(self.attempts - 1, 0)
            done = self.transition(
                self.QUEUED,
                expect=(self.ASSIGNED, self.RENDERING),
                error=error[:5000],
                not_before=timezone.now() + timedelta(seconds=delay),
                heartbeat=None,
                avoid_id=self.node_id,
                **self.NOT_STARTED,
            )
        if not done:  # cancelled meanwhile: whatever it held goes back all the same
            self.release()

    def used(self) -> dict[str, Any]:
        """The settings the job rendered with, as its last attempt sent them to the node (the
        seed a "random" became included); nothing before it was first sent."""
        return workflows.read(self.workflow, self.template.mapping) if self.workflow else {}

    def download_name(self, index: int = 0, title: str = "") -> str:
        """The file name a download of output `index` gets: after the story's title and its shot
        or scene, else the prompt, and the job (lighthouse-shot-03-1a2b3c4d.mp4), never 00.mp4."""
        suffix = PurePosixPath(str(self.outputs[index].get("path", ""))).suffix.lower()
        kind, _, which = self.target.partition(":")
        parts = [slugify(title)[:40]] if title else []
        if kind in ("shot", "scene") and which.isdigit():
            parts.append(f"{kind}-{int(which):02d}")
        elif kind == "reference":
            parts.append(f"reference-{slugify(which)[:30]}")
        if not parts:
            parts.append(slugify(self.prompt)[:40] or "render")
        parts.append(str(self.code)[:8])
        if len(self.outputs) > 1:
            parts.append(f"{index + 1:02d}")
        return "-".join(p for p in parts if p) + suffix

    @property
    def downloads(self) -> list[str]:
        """download_name() of each output; the story's title is story_title when the page set it."""
        title = getattr(self, "story_title", "")
        return [self.download_name(i, title) for i in range(len(self.outputs))]

    def rendered_with(self) -> dict[str, Any]:
        """The job's settings as asked, with what its last attempt sent over them (used())."""
        return {**self.settings, **self.used()}

    @classmethod
    def build(cls, template: Template, settings: dict[str, Any], **fields: Any) -> RenderJob:
        """An unsaved job of `template` with these settings: its kind and units of work follow."""
        classes = {node.get("class_type") for node in template.workflow.values() if isinstance(node, dict)}
        # Video when the workflow writes a video or an animation, whatever the template says.
        kind = cls.VIDEO if classes & workflows.VIDEO_OUTPUT_CLASSES else cls.IMAGE
        return cls(template=template, settings=settings, kind=kind, work=work_of(settings), **fields)

    @classmethod
    def test_render(cls, node: Node) -> RenderJob:
        """Queue the shipped model-free test template on `node` alone, ahead of every other job:
        an ordinary render job, shown on the node's card. The node's earlier ended test renders
        (and their files) go."""
        from renders import media

        template = Template.objects.filter(name=TEST_TEMPLATE).first()
        if template is None:
            raise Template.DoesNotExist(
                f"the test template {TEST_TEMPLATE!r} is not loaded: run `manage.py load_templates`"
            )
        with transaction.atomic():
            old = cls.objects.filter(pin=node, target=TEST_TARGET, status__in=cls.ENDED)
            for job in old:
                media.forget(job.outputs)
            old.delete()
            job = cls.build(
                template,
                {},
                prompt=f"Spoon Feeder test render on {node.name}",
                target=TEST_TARGET,
                pin=node,
                priority=TEST_PRIORITY,
                position=cls.last_position(),
            )
            job.save()
            cls.announce_queued()
            node.changed("node.test_render")
        return job

    @staticmethod
    def announce_queued() -> None:
        """New jobs were saved (call inside their transaction): the pages are told, and the
        pool is fed once it commits."""
        Event.emit("renders", "job.queued")
        Event.emit("dashboard", "job.queued")
        wake()

    @classmethod
    def last_position(cls) -> float:
        last = cls.objects.filter(status=cls.QUEUED).aggregate(m=models.Max("position"))["m"]
        return (last or 0) + 1

    def move_before(self, other: RenderJob) -> bool:
        """Drag and drop: put this queued job just before `other` (taking its priority)."""
        if other.pk == self.pk or other.status not in (self.QUEUED, self.ASSIGNED):
            return False
        earlier = (
            RenderJob.objects.filter(
                status__in=(self.QUEUED, self.ASSIGNED), priority=other.priority, position__lt=other.position
            )
            .exclude(pk=self.pk)
            .order_by("-position")
            .values_list("position", flat=True)
            .first()
        )
        new = (other.position + earlier) / 2 if earlier is not None else other.position - 1
        with transaction.atomic():
            moved = RenderJob.objects.filter(pk=self.pk, status=self.QUEUED).update(
                position=new, priority=other.priority, moved=Now()
            )
            if moved:
                self.changed("job.moved")
        return bool(moved)

    def move(self, where: str) -> bool:
        """Move a queued job: "up", "down", "top" or "bottom" among queued jobs of its priority."""
        # Jobs sent to a node but not started there count: moving past one pulls it back.
        peers = RenderJob.objects.filter(status__in=(self.QUEUED, self.ASSIGNED), priority=self.priority).exclude(
            pk=self.pk
        )
        if where == "top":
            first = peers.order_by("position").values_list("position", flat=True).first()
            new = (first if first is not None else self.position) - 1
        elif where == "bottom":
            last = peers.order_by("-position").values_list("position", flat=True).first()
            new = (last if last is not None else self.position) + 1
        elif where in ("up", "down"):
            side = (
                peers.filter(position__lt=self.position) if where == "up" else peers.filter(position__gt=self.position)
            )
            ordered = side.order_by("-position" if where == "up" else "position")
            pair = list(ordered.values_list("position", flat=True)[:2])
            if not pair:
                return False
            beyond = pair[1] if len(pair) > 1 else pair[0] + (-1 if where == "up" else 1)
            new = (pair[0] + beyond) / 2
        else:
            raise ValueError(where)
        with transaction.atomic():
            moved = RenderJob.objects.filter(pk=self.pk, status=self.QUEUED).update(position=new, moved=Now())
            if moved:
                self.changed("job.moved")
        return bool(moved)


class JobInput(models.Model):
    """A job takes another job's output as an input (a keyframe's image for an image-to-video
    job, a video for an upscale): it stays queued, and no node claims it, until the source has
    completed (inputs_ready). How the file reached the node is kept for the figures: from the
    node's own output folder (local) or uploaded (its bytes)."""

    job = models.ForeignKey(RenderJob, on_delete=models.CASCADE, related_name="inputs")
    # A deleted source leaves the job waiting, saying so, rather than rendering without it.
    source = models.ForeignKey(RenderJob, on_delete=models.SET_NULL, null=True, related_name="feeds")
    parameter = models.CharField(max_length=20, help_text="Where it goes: image or video.")
    local = models.BooleanField(null=True, help_text="Loaded from the node's own output folder on the last send.")
    uploaded = models.PositiveBigIntegerField(default=0, help_text="Bytes uploaded to the node on the last send.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "parameter"], name="one_input_per_parameter")]

    def __str__(self) -> str:
        return f"{self.parameter} of job {self.job_id} from job {self.source_id}"

    @property
    def file(self) -> dict[str, Any] | None:
        """The source's output this input takes: its first of the right kind."""
        outputs = self.source.outputs if self.source else []
        wanted = ("image",) if self.parameter == "image" else ("video", "animation")
        return next((o for o in outputs if o.get("kind") in wanted), outputs[0] if outputs else None)

    def waiting(self) -> str:
        """Why the job waits for this input, in words ("" when it is ready)."""
        source = self.source
        if source is None:
            return f"its {self.parameter} input was deleted: plan it again"
        if source.status == RenderJob.COMPLETED:
            return ""
        what = f"its {self.parameter} input ({source.stage or source.template.name} {source.target})".replace(" )", ")")
        if source.status in (RenderJob.FAILED, RenderJob.CANCELLED):
            reason = f": {source.error}" if source.error else ""
            return f"{what} {source.get_status_display().lower()}{reason}; retry it to go on"
        return f"waiting for {what} to render"


class BatchQuerySet(models.QuerySet["Batch"]):
    def with_counts(self) -> BatchQuerySet:
        """Each batch with how many of its items are done, failed, cancelled, on a node and
        waiting, counted from the items in the same query (never stored: the rows say it)."""

        def items(*statuses: str) -> Count:
            return Count("items", filter=Q(items__status__in=statuses))

        return self.annotate(
            done=items(RenderJob.COMPLETED),
            failed=items(RenderJob.FAILED),
            cancelled=items(RenderJob.CANCELLED),
            on_node=items(*RenderJob.ON_NODE),
            rendering=items(RenderJob.RENDERING),
            waiting=items(*RenderJob.WAITING),
        )


class Batch(models.Model):
    """A set of render jobs made at once: seed variations, a prompt list or a parameter grid.
    Every item's prompt, seed and settings are fixed when it is made (renders.batches), so any
    item renders again exactly. Its items wait as HELD jobs and it feeds a few at a time into
    the queue (Batch.feed), so other work and other batches interleave by priority, and one
    batch can be paused alone."""

    SEEDS, PROMPTS, GRID = "seeds", "prompts", "grid"
    KINDS = [(SEEDS, "Seed variations"), (PROMPTS, "Prompt list"), (GRID, "Parameter grid")]
    PENDING, RUNNING, PAUSING, PAUSED, COMPLETED, FAILED, CANCELLED = (
        "pending",
        "running",
        "pausing",
        "paused",
        "completed",
        "failed",
        "cancelled",
    )
    STATUSES = [
        (PENDING, "Pending"),
        (RUNNING, "Running"),
        # Paused by the user, while its items waiting in nodes' queues are taken back.
        (PAUSING, "Pausing"),
        (PAUSED, "Paused"),
        (COMPLETED, "Completed"),
        (FAILED, "Completed with failures"),
        (CANCELLED, "Cancelled"),
    ]
    FED = (PENDING, RUNNING)  # its items may be claimed
    ENDED = (COMPLETED, FAILED, CANCELLED)
    HELD_BACK = (PAUSING, PAUSED)

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=KINDS)
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="batches")
    prompt = models.TextField(blank=True)
    negative = models.TextField(blank=True)
    settings = models.JSONField(default=dict, blank=True)
    # A grid's axes in order, each {"name": ..., "values": [as typed]}: its rows and columns.
    axes = models.JSONField(default=list, blank=True)
    priority = models.IntegerField(default=0)
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    # Paused with its running items interrupted (they go back to it), not left to finish.
    interrupt = models.BooleanField(default=False)
    total = models.PositiveIntegerField(default=0)  # its items, fixed when it is made
    error = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(default=timezone.now)

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            # Read by Batch.feed at every feed of the pool: the batches that may have work.
            models.Index(
                fields=["status"], condition=Q(status__in=("pending", "running", "pausing")), name="batch_live"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def changed(self, kind: str = "batch.changed") -> None:
        """Its page, the Batches page, and the queue (its items waiting there) are told."""
        Event.objects.bulk_create(
            [Event(topic=t, kind=kind, ref=str(self.code)) for t in ("batches", f"batch-{self.code}", "renders")]
        )

    def fixed_settings(self) -> dict[str, Any]:
        """Its settings that every item has: those no axis of its grid varies."""
        varied = {name for a in self.axes for name in batches.SETS.get(a["name"], (a["name"],))}
        return {k: v for k, v in self.settings.items() if k not in varied}

    def set_status(self, to: str, *, expect: tuple[str, ...], **fields: Any) -> bool:
        """Guarded: only from one of `expect`; False if it stood otherwise (another process, or
        the user, moved it)."""
        with transaction.atomic():
            done = Batch.objects.filter(pk=self.pk, status__in=expect).update(
                status=to, changed_at=timezone.now(), **fields
            )
            if done:
                self.status = to
                for name, value in fields.items():
                    setattr(self, name, value)
                self.changed(f"batch.{to}")
        return bool(done)

    # --- making it -------------------------------------------------------------------------------

    @classmethod
    def make(
        cls,
        *,
        name: str,
        kind: str,
        template: Template,
        items: list[batches.Item],
        prompt: str = "",
        negative: str = "",
        settings: dict[str, Any] | None = None,
        axes: list[dict[str, Any]] | None = None,
        priority: int = 0,
        pin: Node | None = None,
    ) -> Batch:
        """The batch and all its items (as held jobs), in one transaction; the pool is fed once
        it commits. `items` come from renders.batches, checked."""
        templates = {t.name: t for t in Template.objects.filter(name__in={i.template for i in items if i.template})}
        kinds: dict[int, str] = {}
        with transaction.atomic():
            batch = cls.objects.create(
                name=name[:200] or f"{cls(kind=kind).get_kind_display()} of {template.name}",
                kind=kind,
                template=template,
                prompt=prompt,
                negative=negative,
                settings=settings or {},
                axes=axes or [],
                priority=priority,
                total=len(items),
            )
            jobs = []
            for item in items:
                t = templates.get(item.template, template)
                if t.pk not in kinds:
                    kinds[t.pk] = RenderJob.build(t, {}).kind
                jobs.append(
                    RenderJob(
                        template=t,
                        kind=kinds[t.pk],
                        batch=batch,
                        index=item.index,
                        labels=item.labels,
                        prompt=item.prompt,
                        negative=negative,
                        settings=item.settings,
                        work=work_of(item.settings),
                        priority=priority,
                        pin=pin,
                        status=RenderJob.HELD,
                    )
                )
            RenderJob.objects.bulk_create(jobs, batch_size=500)
            batch.changed("batch.created")
            wake()
        return batch

    # --- feeding the queue -----------------------------------------------------------------------

    @staticmethod
    def feed() -> int:
        """Keep each batch that runs WINDOW of its items in the queue or on a node (the next in
        its order, at the end of the queue at its priority), hold again what a paused batch has
        in the queue, settle pauses and finish batches whose items have all ended; the number of
        items put in the queue. Called at every feed of the pool (renders.dispatch.feed) and by
        the sweeper: one query when no batch may have work."""
        live = list(Batch.objects.filter(status__in=(*Batch.FED, Batch.PAUSING)).values_list("pk", "status"))
        if not live:
            return 0
        if any(status == Batch.PAUSING for _, status in live):
            Batch.settle_pauses()
        fed = [pk for pk, status in live if status in Batch.FED]
        if not fed:
            return 0
        window = Batch.window()
        # Per batch: its items held, and those in the queue or on a node (one query for all).
        counts = {
            pk: (held, out)
            for pk, held, out in RenderJob.objects.filter(batch__in=fed)
            .exclude(status__in=RenderJob.ENDED)
            .values_list("batch")
            .annotate(
                held=Count("id", filter=Q(status=RenderJob.HELD)),
                out=Count("id", filter=Q(status__in=(RenderJob.QUEUED, *RenderJob.ON_NODE))),
            )
            .values_list("batch", "held", "out")
        }
        released = 0
        for batch in Batch.objects.filter(pk__in=fed).order_by("-priority", "created", "id"):
            held, out = counts.get(batch.pk, (0, 0))
            if not held and not out:
                batch.finish()
            elif held and out < window:  # else nothing to let in: no lock taken, no query more
                released += batch.release(window)
        return released

    @staticmethod
    def window() -> int:
        """Items of one batch in the queue or on a node at once: twice what the pool's ComfyUIs
        take (each its limit plus the one waiting in its queue), so the batch alone keeps every
        node busy (a node with room finds one of its items in the queue, whichever node freed
        the last one), and work queued behind it waits for no more than that."""
        caps = Capability.objects.usable(Capability.COMFYUI).values_list("limit", flat=True)
        return max(2 * sum(limit + PREFETCH for limit in caps), 1)

    def release(self, window: int) -> int:
        """Its next held items into the queue, at its end at the batch's priority, until `window`
        of its items are in the queue or on a node; how many."""
        with transaction.atomic():
            # One feeder at a time per batch (the row locked on PostgreSQL; SQLite's write lock is
            # taken as the transaction begins): two that counted at once would both fill the window.
            Batch.objects.select_for_update().filter(pk=self.pk).values_list("pk").first()
            out = self.items.filter(status__in=(RenderJob.QUEUED, *RenderJob.ON_NODE)).count()
            if out >= window:
                return 0
            ids = list(
                self.items.filter(status=RenderJob.HELD).order_by("index").values_list("pk", "index")[: window - out]  # type: ignore[misc]
            )
            if not ids:
                return 0
            base = RenderJob.last_position() - ids[0][1]
            done = RenderJob.objects.filter(pk__in=[pk for pk, _ in ids], status=RenderJob.HELD).update(
                status=RenderJob.QUEUED, position=F("index") + base, priority=self.priority, moved=Now()
            )
            if done:
                Event.emit("renders", "job.queued")
                if self.status == Batch.PENDING:
                    self.set_status(Batch.RUNNING, expect=(Batch.PENDING,), started=timezone.now())
                else:
                    self.changed("batch.fed")
        return done

    def finish(self) -> bool:
        """Every item has ended: completed, or completed with failures (a failed item never stops
        its batch; "retry failed" takes it up again)."""
        failed = self.items.filter(status=RenderJob.FAILED).count()
        error = f"{failed} of its {self.total} items failed: retry them, or look at each" if failed else ""
        to = Batch.FAILED if failed else Batch.COMPLETED
        busy = self.items.exclude(status__in=RenderJob.ENDED)
        with transaction.atomic():
            done = (
                Batch.objects.filter(pk=self.pk, status__in=Batch.FED)
                .filter(~Exists(busy))
                .update(status=to, error=error, finished=timezone.now(), changed_at=timezone.now())
            )
            if done:
                self.status = to
                self.changed(f"batch.{to}")
        return bool(done)

    @staticmethod
    def settle_pauses() -> None:
        """A pausing batch is paused once none of its items waits in a node's queue (each taken
        back by its attempt: renders.dispatch.Attempt.controls): from then on nothing of it
        starts on any node."""
        waiting = RenderJob.objects.filter(batch=OuterRef("pk"), status=RenderJob.ASSIGNED, capability__isnull=False)
        for batch in Batch.objects.filter(status=Batch.PAUSING).filter(~Exists(waiting)):
            with transaction.atomic():
                # Sent back to the queue meanwhile (a retry, a node's fault): held again.
                batch.items.filter(status=RenderJob.QUEUED).update(status=RenderJob.HELD)
                batch.set_status(Batch.PAUSED, expect=(Batch.PAUSING,))

    # --- the user's controls ---------------------------------------------------------------------

    def pause(self, *, interrupt: bool = False) -> str:
        """Nothing more of it starts: its queued items are held, those waiting in a node's queue
        taken back; the running ones finish, or are interrupted and go back to it. "" if it
        paused, else why not."""
        if self.status not in (*Batch.FED, Batch.PAUSING):
            return f"{self.name} is {self.get_status_display().lower()}: there is nothing to pause."
        from renders.dispatch import take_back  # the dispatcher builds on this module

        # Its items waiting in nodes' queues come off them just before the pause is committed,
        # and again just after (any sent meanwhile): a node whose running job ends at that moment
        # starts none of them after the pause. Their attempts find them gone and give them back
        # to it, uncounted. Briefly: a node slow to answer is left to the task queued below.
        take_back(self.pk, timeout=1.0)
        with transaction.atomic():
            if not self.set_status(Batch.PAUSING, expect=(*Batch.FED, Batch.PAUSING), interrupt=interrupt):
                return f"{self.name} changed meanwhile: look again."
            if self.items.filter(status=RenderJob.QUEUED).update(status=RenderJob.HELD):
                Event.emit("renders", "job.held")
            if self.items.filter(status=RenderJob.ASSIGNED, capability__isnull=False).exclude(client_id="").exists():
                from spoonfeeder.tasks import enqueue

                enqueue("renders.tasks.take_back", self.pk, timeout=30, routine=True)
        take_back(self.pk, timeout=1.0)
        Batch.settle_pauses()
        return ""

    def resume(self) -> str:
        if self.status not in Batch.HELD_BACK:
            if self.status == Batch.CANCELLED:
                return f"{self.name} was cancelled: retry its items to render them after all."
            return f"{self.name} is {self.get_status_display().lower()}, not paused: there is nothing to resume."
        with transaction.atomic():
            to = Batch.RUNNING if self.started else Batch.PENDING
            if not self.set_status(to, expect=Batch.HELD_BACK, interrupt=False):
                return f"{self.name} changed meanwhile: look again."
            wake()
        return ""

    def cancel(self) -> str:
        """Its waiting items cancelled, those on a node taken off or interrupted there (by their
        attempts); what has finished stays."""
        if self.status in Batch.ENDED:
            return f"{self.name} has ended ({self.get_status_display().lower()}): there is nothing to cancel."
        now = timezone.now()
        with transaction.atomic():
            if not self.set_status(Batch.CANCELLED, expect=(*Batch.FED, *Batch.HELD_BACK), finished=now):
                return f"{self.name} changed meanwhile: look again."
            waiting = self.items.filter(status__in=RenderJob.WAITING)
            if waiting.update(status=RenderJob.CANCELLED, finished=now, capability=None):
                Event.emit("renders", "job.cancelled")
                Event.emit("renders-done", "job.cancelled")
        for job in self.items.filter(status__in=RenderJob.ON_NODE):
            job.cancel()
        return ""

    def retry(self, only: list[int] | None = None) -> int:
        """Its failed items (or those of `only` that failed or were cancelled) back to it, their
        attempts reset, and the batch running again; how many."""
        again = self.items.filter(status=RenderJob.FAILED)
        if only is not None:
            again = self.items.filter(pk__in=only, status__in=(RenderJob.FAILED, RenderJob.CANCELLED))
        with transaction.atomic():
            n = again.update(
                status=RenderJob.HELD,
                attempts=0,
                crashes=0,
                error="",
                not_before=None,
                node=None,
                finished=None,
                outputs=[],
                **RenderJob.NOT_STARTED,
            )
            if n:
                Batch.objects.filter(pk=self.pk, status__in=(*Batch.ENDED,)).update(
                    status=Batch.RUNNING if self.started else Batch.PENDING,
                    error="",
                    finished=None,
                    changed_at=timezone.now(),
                )
                self.refresh_from_db(fields=["status", "error", "finished"])
                self.changed("batch.retried")
                Event.emit("renders-done", "job.retried")
                wake()
        return n

    def set_priority(self, priority: int) -> None:
        """Its items waiting take the new priority (those on a node go on)."""
        with transaction.atomic():
            Batch.objects.filter(pk=self.pk).update(priority=priority, changed_at=timezone.now())
            self.items.filter(status__in=RenderJob.WAITING).update(priority=priority, moved=Now())
            self.priority = priority
            self.changed("batch.priority")
            wake()

    def delete_with(self, *, outputs: bool) -> str:
        """Delete it once nothing of it is on a node: its unfinished items go; its finished ones
        go too with their files (`outputs`), or stay as jobs of their own, in the History. "" if
        deleted, else why not."""
        on_node = self.items.filter(status__in=RenderJob.ON_NODE).count()
        if on_node:
            return (
                f"{on_node} of its items {'are' if on_node != 1 else 'is'} on a node: cancel the batch first, "
                "then delete it once they have come off."
            )
        from renders import media

        with transaction.atomic():
            gone = self.items.all() if outputs else self.items.exclude(status=RenderJob.COMPLETED)
            files = [job_outputs for job_outputs in gone.values_list("outputs", flat=True)] if outputs else []
            gone.delete()
            code = str(self.code)
            self.delete()
            Event.objects.bulk_create(
                [Event(topic=t, kind="batch.deleted", ref=code) for t in ("batches", "renders", "renders-done")]
            )
        for listed in files:  # after the commit: a file gone is never a row left pointing at it
            media.forget(listed)
        return ""

    # --- what its pages show ---------------------------------------------------------------------

    def progress(self) -> float:
        done = getattr(self, "done", 0) + getattr(self, "failed", 0) + getattr(self, "cancelled", 0)
        return done / self.total if self.total else 0.0


def wake() -> None:
    """Once the caller's transaction commits, the cluster feeds the pool its runnable jobs."""
    from spoonfeeder.tasks import wake as feed_soon

    feed_soon("renders.tasks.feed")


class Speed(models.Model):
    """How fast a node renders a template: a moving average of seconds per unit of work."""

    capability = models.ForeignKey("nodes.Capability", on_delete=models.CASCADE, related_name="speeds")
    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="speeds")
    seconds_per_unit = models.FloatField()
    samples = models.PositiveIntegerField(default=1)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["capability", "template"], name="one_speed_per_pair")]

    def __str__(self) -> str:
        return f"{self.seconds_per_unit:.4g} s per unit"

    @classmethod
    def record(cls, capability_id: int, template_id: int, seconds: float, work: float) -> None:
        rate = seconds / max(work, 1e-9)
        with transaction.atomic():
            # Two jobs of one template may end on one node at once: get_or_create makes one row.
            row, made = cls.objects.select_for_update().get_or_create(
                capability_id=capability_id, template_id=template_id, defaults={"seconds_per_unit": rate}
            )
            if not made:
                row.seconds_per_unit = 0.7 * row.seconds_per_unit + 0.3 * rate
                row.samples += 1
                row.save(update_fields=["seconds_per_unit", "samples"])


def work_of(settings: dict[str, Any]) -> float:
    """Units of work of a job: frames x steps x megapixels, so speeds compare across sizes."""
    frames = max(int(settings.get("frames") or 1), 1)
    steps = max(int(settings.get("steps") or 1), 1)
    pixels = int(settings.get("width") or 512) * int(settings.get("height") or 512) / 1e6
    return frames * steps * pixels
