"""Scheduled tasks and their runs. A run's row, unique per task and due time, is the claim: a due
time fires once however many worker clusters look at it (scheduling/fire.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings as conf
from django.db import models, transaction
from django.db.models import F, Q
from django.utils import timezone

from scheduling import cron
from spoonfeeder.models import Event


class ScheduledTask(models.Model):
    BATCH, STORY, HEALTH, CLEANUP, RENDER = "batch", "story", "health", "cleanup", "render"
    KINDS = [
        (BATCH, "Batch"),
        (STORY, "Story"),
        (HEALTH, "Health check"),
        (CLEANUP, "Clean-up"),
        (RENDER, "Render"),
    ]
    SKIP, ONCE, ALLOW = "skip", "once", "allow"
    MISSED = [(SKIP, "Skip them"), (ONCE, "Run once when back")]
    OVERLAP = [(SKIP, "Skip while one runs"), (ALLOW, "Run anyway")]

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=10, choices=KINDS)
    # What the run does, as its kind's form was filled in (scheduling/kinds.py checks it again at
    # every run: what it names may be gone since).
    settings = models.JSONField(default=dict, blank=True)
    cron = models.CharField(max_length=cron.MAX_LENGTH, help_text="minute hour day-of-month month day-of-week")
    time_zone = models.CharField(max_length=64, default=conf.TIME_ZONE)
    enabled = models.BooleanField(default=True)
    missed = models.CharField(
        max_length=5,
        choices=MISSED,
        default=SKIP,
        help_text="When Spoon Feeder was not running at a due time.",
    )
    overlap = models.CharField(
        max_length=5,
        choices=OVERLAP,
        default=SKIP,
        help_text="When the previous run (its batch, its story) is still running.",
    )
    only_online = models.BooleanField(
        default=False, help_text="Run only when a ComfyUI node is online: wait for one, then skip."
    )
    wait_minutes = models.PositiveSmallIntegerField(default=10, help_text="How long a run waits for a ComfyUI node.")
    retries = models.PositiveSmallIntegerField(default=0, help_text="Tries again after a failed run (1, 2, 4… min).")
    next_run = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_status = models.CharField(max_length=10, blank=True)
    last_error = models.TextField(blank=True)
    run_count = models.PositiveIntegerField(default=0)
    success_count = models.PositiveIntegerField(default=0)
    failure_count = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        indexes = [
            # Read by the tick every minute: the enabled tasks that are due.
            models.Index(fields=["next_run"], condition=Q(enabled=True), name="scheduledtask_due"),
        ]

    def __str__(self) -> str:
        return self.name

    def changed(self, kind: str = "schedule.changed") -> None:
        Event.objects.bulk_create(
            [Event(topic=t, kind=kind, ref=str(self.code)) for t in ("schedules", f"schedule-{self.code}", "dashboard")]
        )

    def described(self) -> str:
        words = cron.describe(self.cron)
        return words if self.time_zone == conf.TIME_ZONE else f"{words} ({self.time_zone})"

    def in_zone(self, moment: datetime | None) -> datetime | None:
        """A moment as the task's clocks show it, naive (its pages show its times so: the template
        filters would show an aware one in the server's zone)."""
        if moment is None:
            return None
        return timezone.localtime(moment, timezone=cron.zone(self.time_zone)).replace(tzinfo=None)

    def shown(self, moment: datetime) -> str:
        """A moment as the task's clocks show it, in words and notes: "2027-01-01 02:00"."""
        return f"{self.in_zone(moment):%Y-%m-%d %H:%M}"

    @property
    def next_local(self) -> datetime | None:
        return self.in_zone(self.next_run)

    @property
    def last_local(self) -> datetime | None:
        return self.in_zone(self.last_run_at)

    def next_after(self, moment: datetime) -> datetime | None:
        return cron.next_due(self.cron, self.time_zone, moment)

    def plan(self, now: datetime | None = None) -> None:
        """Its next run from now (set when it is saved or enabled: what was missed while it was
        off is not run)."""
        self.next_run = self.next_after(now or timezone.now()) if self.enabled else None

    def set_enabled(self, enabled: bool) -> None:
        with transaction.atomic():
            self.enabled = enabled
            self.plan()
            ScheduledTask.objects.filter(pk=self.pk).update(
                enabled=enabled, next_run=self.next_run, changed_at=timezone.now()
            )
            self.changed()

    def unfinished(self) -> models.QuerySet[ScheduledRun]:
        return self.runs.filter(status__in=ScheduledRun.UNFINISHED)


class ScheduledRun(models.Model):
    PENDING, WAITING, RUNNING, SUCCEEDED, FAILED, SKIPPED = (
        "pending",
        "waiting",
        "running",
        "succeeded",
        "failed",
        "skipped",
    )
    STATUSES = [
        (PENDING, "Pending"),
        (WAITING, "Waiting for a node"),
        (RUNNING, "Running"),
        (SUCCEEDED, "Succeeded"),
        (FAILED, "Failed"),
        (SKIPPED, "Skipped"),
    ]
    UNFINISHED = (PENDING, WAITING, RUNNING)
    ENDED = (SUCCEEDED, FAILED, SKIPPED)

    task = models.ForeignKey(ScheduledTask, on_delete=models.CASCADE, related_name="runs")
    # The due time it is the run of (for Run now, the moment it was asked for): the claim.
    due = models.DateTimeField()
    manual = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Not to start before (a retry's backoff, the next look for a ComfyUI node).
    not_before = models.DateTimeField(null=True, blank=True)
    sent = models.DateTimeField(null=True, blank=True)  # when its task was last queued
    worker = models.CharField(max_length=100, blank=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=300, blank=True)  # why it runs late, or why it was skipped
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    batch = models.ForeignKey("renders.Batch", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    story = models.ForeignKey("stories.Story", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    job = models.ForeignKey("renders.RenderJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["-due", "-id"]
        constraints = [models.UniqueConstraint(fields=["task", "due"], name="one_run_per_due_time")]
        indexes = [
            # Read by the tick every minute: runs to start, to follow or to give up on.
            models.Index(fields=["status"], condition=Q(status__in=("pending", "waiting", "running")), name="run_open"),
        ]

    def __str__(self) -> str:
        return f"{self.task} at {self.due:%Y-%m-%d %H:%M}"

    @property
    def due_local(self) -> datetime | None:
        return self.task.in_zone(self.due)

    @property
    def started_local(self) -> datetime | None:
        return self.task.in_zone(self.started)

    @property
    def finished_local(self) -> datetime | None:
        return self.task.in_zone(self.finished)

    def summary(self) -> str:
        return str(self.result.get("summary", "")) if isinstance(self.result, dict) else ""

    def end(
        self, status: str, *, expect: tuple[str, ...], error: str = "", note: str | None = None, **result: Any
    ) -> bool:
        """Guarded: from one of `expect` to an end, the task's counts and last run with it."""
        now = timezone.now()
        fields: dict[str, Any] = {"status": status, "finished": now, "error": error[:5000]}
        if note is not None:
            fields["note"] = note[:300]
        if result:
            fields["result"] = {**(self.result or {}), **result}
        with transaction.atomic():
            if not ScheduledRun.objects.filter(pk=self.pk, status__in=expect).update(**fields):
                return False
            for name, value in fields.items():
                setattr(self, name, value)
            counted: dict[str, Any] = {}
            if status != ScheduledRun.SKIPPED:
                counted["run_count"] = F("run_count") + 1
                counted["success_count" if status == ScheduledRun.SUCCEEDED else "failure_count"] = (
                    F("success_count" if status == ScheduledRun.SUCCEEDED else "failure_count") + 1
                )
            reason = error or (self.note if status == ScheduledRun.SKIPPED else "")
            ScheduledTask.objects.filter(pk=self.task_id).update(
                last_run_at=self.started or self.due, last_status=status, last_error=reason[:5000], **counted
            )
            self.task.changed("schedule.run")
        return True
