"""What each kind of scheduled task does: the form its settings come from (the same form its page
elsewhere uses, so a scheduled batch is checked by the Batches page's own rules), how a run starts
it, and how a run that made something (a batch, a story, renders) learns that it has ended."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.db import transaction
from django.db.models import Q
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from nodes.models import Capability, Node
from renders.forms import BatchForm, RenderForm
from renders.models import Batch, RenderJob, Template
from scheduling import cron
from scheduling.models import ScheduledRun, ScheduledTask


class RunError(Exception):
    """Why a run could not start; `again` if trying later can help."""

    def __init__(self, message: str, again: bool = False) -> None:
        super().__init__(message)
        self.again = again


class HealthForm(forms.Form):
    nodes = forms.ModelMultipleChoiceField(
        queryset=Node.objects.order_by("name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None chosen: every enabled node.",
    )
    full = forms.BooleanField(
        required=False, initial=True, label="Read inventories too", help_text="Models, node classes, checkpoints, VRAM."
    )


class CleanupForm(forms.Form):
    days = forms.IntegerField(
        min_value=1, max_value=3650, initial=30, label="Older than (days)", help_text="Finished this many days ago."
    )
    renders = forms.BooleanField(
        required=False, initial=True, label="Finished renders", help_text="Jobs of no story or batch, with their files."
    )
    batches = forms.BooleanField(
        required=False, initial=True, label="Finished batches", help_text="With their items and files."
    )
    runs = forms.BooleanField(required=False, initial=True, label="This page's run history")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.errors and not any(data.get(k) for k in ("renders", "batches", "runs")):
            raise forms.ValidationError("Choose what to delete: finished renders, batches or run history.")
        return data


FORMS: dict[str, type[forms.Form]] = {
    ScheduledTask.BATCH: BatchForm,
    ScheduledTask.HEALTH: HealthForm,
    ScheduledTask.CLEANUP: CleanupForm,
    ScheduledTask.RENDER: RenderForm,
}
# Kept as the form was filled in, but never from a file: a list of prompts is kept as its text.
FILES = ("prompts_file", "image")


def form_class(kind: str) -> type[forms.Form]:
    if kind == ScheduledTask.STORY:
        from stories.forms import StoryForm

        return StoryForm
    return FORMS[kind]


def kept(form: forms.Form) -> dict[str, Any]:
    """A valid kind form's values as they were filled in (what it is bound to again at each run)."""
    data: Any = form.data
    values: dict[str, Any] = {}
    for name, field in form.fields.items():
        key = form.add_prefix(name)
        if name in FILES:
            continue
        if isinstance(field, forms.MultipleChoiceField | forms.ModelMultipleChoiceField):
            values[name] = data.getlist(key) if hasattr(data, "getlist") else list(data.get(key) or [])
        elif isinstance(field, forms.BooleanField):
            values[name] = bool(form.cleaned_data.get(name))
        elif key in data:
            values[name] = data.get(key)
    upload = form.cleaned_data.get("prompts_file")
    if upload:
        upload.seek(0)
        values["prompts"] = upload.read().decode("utf-8", errors="replace")
    if form.cleaned_data.get("image_kept"):
        values["image_kept"] = form.cleaned_data["image_kept"]
    return values


def bound(task: ScheduledTask) -> forms.Form:
    """The task's settings in its kind's form, checked as they are now."""
    settings = dict(task.settings)
    settings.pop("until", None)
    named = str(settings.get("template") or "")
    if named.isdigit() and not Template.objects.filter(pk=named).exists():
        raise RunError(
            f"The template {task.settings.get('template_name') or named!r} this task renders with was deleted "
            "since it was saved: edit the task and choose another."
        )
    form = form_class(task.kind)(settings)
    if not form.is_valid():
        reasons = "; ".join(f"{name}: {' '.join(map(str, e))}" for name, e in form.errors.items())
        raise RunError(f"Its settings are no longer valid ({reasons}): edit the task.")
    return form


# Kinds whose work is done after the run is marked as running (they call nodes, delete files).
AFTER_COMMIT = (ScheduledTask.HEALTH, ScheduledTask.CLEANUP)

# --- starting a run --------------------------------------------------------------------------------


@dataclass
class Started:
    summary: str
    ended: bool = True  # False: it made something (a batch, a story, renders) that runs on
    failed: str = ""  # ended, and failed with this


def start(run: ScheduledRun) -> Started:
    """Do what the run's task does; RunError if it cannot. Called inside the transaction that
    marks the run as running, so that what it makes and the run's link to it commit together
    (health checks and clean-ups run after it: they call nodes and delete files)."""
    task = run.task
    form = bound(task)
    stamp = task.shown(run.due)
    if task.kind == ScheduledTask.BATCH:
        from renders.views import make_batch

        form.cleaned_data["name"] = f"{task.name}, {stamp}"
        run.batch = make_batch(form)  # type: ignore[arg-type]
        return Started(f"Queued batch {run.batch.name}: {run.batch.total:,} items.", ended=False)
    if task.kind == ScheduledTask.RENDER:
        from renders.views import queue_jobs

        jobs = queue_jobs(form)  # type: ignore[arg-type]
        run.job = jobs[0]
        run.result = {**run.result, "jobs": [str(j.code) for j in jobs]}
        return Started(f"Queued {len(jobs)} render job{'s' if len(jobs) != 1 else ''}.", ended=False)
    if task.kind == ScheduledTask.STORY:
        run.story = form.start()  # type: ignore[attr-defined]
        return Started(f"Started the story {run.story}.", ended=False)
    return Started("", ended=False)  # it says what it did when it has done it


def work(run: ScheduledRun) -> Started:
    """The part of a health check or a clean-up done outside any transaction."""
    form = bound(run.task)
    if run.task.kind == ScheduledTask.HEALTH:
        return health_check(form.cleaned_data["nodes"], form.cleaned_data["full"], run)
    if run.task.kind == ScheduledTask.CLEANUP:
        return cleanup(form.cleaned_data, run)
    raise RunError(f"Nothing to do for a {run.task.kind} task after it started.")


def health_check(nodes: Any, full: bool, run: ScheduledRun) -> Started:
    from nodes import health

    chosen = list(nodes) if nodes else list(Node.objects.filter(enabled=True))
    if not chosen:
        raise RunError("There are no nodes to check: add one on the Nodes page.")
    caps = list(Capability.objects.filter(node__in=chosen).select_related("node"))
    health.check(caps, full=full)
    per_node: dict[str, list[str]] = {}
    down = []
    for cap in Capability.objects.filter(pk__in=[c.pk for c in caps]).select_related("node").order_by("node__name"):
        state = cap.get_status_display().lower()
        per_node.setdefault(cap.node.name, []).append(
            f"{cap.get_kind_display()} {state}" + (f": {cap.last_error}" if cap.last_error else "")
        )
        if cap.status not in Capability.ANSWERING:
            down.append(f"{cap.node.name} ({cap.get_kind_display()})")
    run.result = {**run.result, "nodes": per_node}
    answering = sum(len(v) for v in per_node.values()) - len(down)
    summary = f"{answering} of {answering + len(down)} services answering."
    return Started(summary, failed=f"Not answering: {', '.join(down)}." if down else "")


# --- clean-up ----------------------------------------------------------------------------------------


@dataclass
class Sweep:
    renders: int = 0
    batches: int = 0
    items: int = 0
    files: int = 0
    bytes: int = 0
    runs: int = 0

    def words(self) -> str:
        parts = []
        if self.renders:
            parts.append(f"{self.renders:,} finished render{'s' if self.renders != 1 else ''}")
        if self.batches:
            parts.append(f"{self.batches:,} batch{'es' if self.batches != 1 else ''} ({self.items:,} items)")
        if self.files:
            size = filesizeformat(self.bytes).replace("\xa0", " ")
            parts.append(f"{self.files:,} file{'s' if self.files != 1 else ''} ({size})")
        if self.runs:
            parts.append(f"{self.runs:,} schedule run{'s' if self.runs != 1 else ''}")
        return ", ".join(parts) or "nothing"


def swept(data: dict[str, Any], now: datetime) -> tuple[Any, Any, Any]:
    """What a clean-up of `data` deletes at `now`: standalone finished jobs, ended batches, and
    finished runs of schedules (its own run is never finished while it deletes)."""
    cutoff = now - timedelta(days=int(data["days"]))
    jobs = RenderJob.objects.filter(
        status__in=RenderJob.ENDED, finished__lt=cutoff, batch__isnull=True, story="", target=""
    )
    batch_list = Batch.objects.filter(status__in=Batch.ENDED, finished__lt=cutoff).exclude(
        items__status__in=RenderJob.ON_NODE
    )
    runs = ScheduledRun.objects.filter(status__in=ScheduledRun.ENDED, finished__lt=cutoff)
    none = RenderJob.objects.none()
    return (
        jobs if data.get("renders") else none,
        batch_list if data.get("batches") else Batch.objects.none(),
        runs if data.get("runs") else ScheduledRun.objects.none(),
    )


def preview(data: dict[str, Any], now: datetime | None = None) -> Sweep:
    jobs, batch_list, runs = swept(data, now or timezone.now())
    found = Sweep(renders=jobs.count(), batches=batch_list.count(), runs=runs.count())
    items = RenderJob.objects.filter(Q(pk__in=jobs.values("pk")) | Q(batch__in=batch_list.values("pk")))
    found.items = RenderJob.objects.filter(batch__in=batch_list.values("pk")).count()
    for outputs in items.exclude(outputs=[]).values_list("outputs", flat=True).iterator(chunk_size=2000):
        for out in outputs or []:
            found.files += 1
            found.bytes += int(out.get("size") or 0)
    return found


def cleanup(data: dict[str, Any], run: ScheduledRun) -> Started:
    from renders import media
    from spoonfeeder.models import Event

    found = preview(data)
    jobs, batch_list, runs = swept(data, timezone.now())
    for batch in batch_list.iterator():
        batch.delete_with(outputs=True)
    while True:  # in slices: a long transaction would hold up the workers
        with transaction.atomic():
            chunk = list(jobs.values_list("pk", "outputs")[:1000])
            RenderJob.objects.filter(pk__in=[pk for pk, _ in chunk]).delete()
            if chunk:
                Event.emit("renders-done", "job.deleted")
        for _, outputs in chunk:
            media.forget(outputs or [])
        if len(chunk) < 1000:
            break
    runs.exclude(pk=run.pk).delete()
    return Started(f"Deleted {found.words()}.")


# --- following what a run made -----------------------------------------------------------------


def settle(run: ScheduledRun, now: datetime) -> Started | None:
    """How a running run that made something stands: None while that runs on; else ended. A
    batch run past its "only until" time pauses the batch's unfinished items and ends."""
    if run.batch_id:
        batch: Any = Batch.objects.with_counts().filter(pk=run.batch_id).first()
        if batch is None:
            return Started("", failed="Its batch was deleted before it finished.")
        counts = f"{batch.done:,} of {batch.total:,} items done" + (
            f", {batch.failed:,} failed" if batch.failed else ""
        )
        if batch.status in Batch.ENDED:
            bad = batch.status != Batch.COMPLETED
            return Started(f"Batch {batch.get_status_display().lower()}: {counts}.", failed=counts if bad else "")
        until = until_instant(run, now)
        if until is not None and now >= until and batch.status in Batch.FED:
            batch.pause()
            left = batch.total - batch.done - batch.failed - getattr(batch, "cancelled", 0)
            return Started(f"Paused at {run.task.settings['until']} (only until then): {counts}, {left:,} left.")
        return None
    if run.story_id:
        from stories.models import Story

        story = Story.objects.filter(pk=run.story_id).first()
        if story is None:
            return Started("", failed="Its story was deleted before it finished.")
        if story.state == Story.COMPLETED:
            return Started(f"The story {story} completed.")
        if story.state in (Story.FAILED, Story.STOPPED):
            return Started("", failed=f"The story {story} {story.get_state_display().lower()}: see its page.")
        return None
    codes = run.result.get("jobs") or []
    if codes:
        jobs = list(RenderJob.objects.filter(code__in=codes).values_list("status", flat=True))
        if any(status not in RenderJob.ENDED for status in jobs):
            return None
        done = jobs.count(RenderJob.COMPLETED)
        summary = f"{done} of {len(codes)} render job{'s' if len(codes) != 1 else ''} completed."
        return Started(summary, failed=summary if done < len(codes) else "")
    return Started("", failed="It made nothing to follow.")


def until_instant(run: ScheduledRun, now: datetime) -> datetime | None:
    """The first time the task's clocks show its "only until" HH:MM after the run started."""
    text = str(run.task.settings.get("until") or "")
    if not text or run.started is None:
        return None
    hours, minutes = (int(x) for x in text.split(":"))
    where = cron.zone(run.task.time_zone)
    local = timezone.localtime(run.started, timezone=where)
    candidate = local.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    return cron.instants(candidate.replace(tzinfo=None), where)[0]
