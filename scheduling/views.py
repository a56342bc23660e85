"""The Schedules page: the scheduled tasks with their next and last runs, the form with its cron
helper, each task's run history, and the system's own schedules (shown, never deleted)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_q.models import Schedule

from scheduling import cron, fire, kinds
from scheduling.forms import ScheduleForm, kind_form, save, typed, zones
from scheduling.models import ScheduledTask
from spoonfeeder.views import HtmxHttpRequest, done

TASKS_PAGE = 100
RUNS_PAGE = 50


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "scheduling/index.html", task_list(request.GET.get("page", "1")) | system())


def task_list(page: str = "1") -> dict[str, Any]:
    """A page of tasks: one query for the page, whatever the number of tasks and runs (a task's
    last run and counts are kept on its row)."""
    shown = Paginator(ScheduledTask.objects.order_by("name", "id"), TASKS_PAGE).get_page(page)
    return {"tasks": shown, "now": timezone.now()}


def system() -> dict[str, Any]:
    """django-q2's own schedules, the engine's upkeep: shown as such, never deleted from here."""
    rows = []
    for s in Schedule.objects.order_by("name"):
        if s.schedule_type == Schedule.CRON:
            every = cron.describe(s.cron or "")
        elif s.schedule_type == Schedule.MINUTES:
            every = f"Every {s.minutes} minute{'s' if (s.minutes or 0) != 1 else ''}"
        else:
            every = s.get_schedule_type_display()
        rows.append({"name": s.name, "func": s.func, "every": every, "next_run": s.next_run})
    return {"system": rows}


def next_scheduled() -> dict[str, Any]:
    """The dashboard's line: the next run of an enabled task."""
    task = ScheduledTask.objects.filter(enabled=True, next_run__isnull=False).order_by("next_run").first()
    return {"task": task, "count": ScheduledTask.objects.filter(enabled=True).count()}


def edit(request: HtmxHttpRequest, code: str | None = None) -> HttpResponse:
    task = get_object_or_404(ScheduledTask, code=code) if code else None
    if request.method == "POST":
        form = ScheduleForm(request.POST, instance=task)
        what = kind_form(form.kind(), request.POST, request.FILES)
        if form.is_valid() and what.is_valid():
            saved = save(form, what)
            messages.success(request, f"Saved {saved.name}: {next_words(saved)}")
            return redirect("scheduling:task", code=saved.code)
    else:
        form = ScheduleForm(instance=task, initial=None if task else {"kind": request.GET.get("kind", "batch")})
        what = kind_form(form.kind(), None, initial=dict(task.settings) if task else None)
    return render(
        request,
        "scheduling/edit.html",
        form_context(form, what, task),
        status=400 if request.method == "POST" else 200,
    )


def refit(request: HtmxHttpRequest) -> HttpResponse:
    """The form again, fitted to the kind or template chosen, keeping what was typed (unchecked:
    nothing is said to be wrong before it is sent)."""
    code = request.GET.get("code", "")
    task = ScheduledTask.objects.filter(code=code).first() if code and len(code) == 36 else None
    initial = {k: v for k, v in request.GET.items() if not k.startswith("k-")}
    form = ScheduleForm(instance=task, initial=initial)
    what = kind_form(form.kind(), None, initial=typed(request.GET))
    return render(request, "scheduling/edit.html#schedule-form", form_context(form, what, task))


def form_context(form: ScheduleForm, what: Any, task: ScheduledTask | None) -> dict[str, Any]:
    kind = form.kind()
    context: dict[str, Any] = {"form": form, "what": what, "task": task, "kind": kind, "presets": cron.PRESETS}
    context["kind_label"] = dict(ScheduledTask.KINDS)[kind].lower()
    context["zones"] = zones()
    context["helper"] = helper(str(form["cron"].value() or ""), str(form["time_zone"].value() or ""))
    if kind == ScheduledTask.CLEANUP:
        days = what["days"].value()
        data = {name: what[name].value() for name in ("renders", "batches", "runs")}
        try:
            data["days"] = int(days)
            context["sweep"] = kinds.preview(data) if 1 <= data["days"] <= 3650 else None
        except (TypeError, ValueError):
            context["sweep"] = None
    return context


def helper(expression: str, zone_name: str) -> dict[str, Any]:
    """The expression in words and its next five runs, or what is wrong with it."""
    if not expression.strip():
        return {}
    try:
        text = cron.check(expression)
        zone_name = zone_name.strip() or timezone.get_default_timezone_name()
        where = cron.zone(zone_name)
    except cron.CronError as e:
        return {"error": str(e)}
    upcoming = [
        timezone.localtime(t, timezone=where).replace(tzinfo=None)
        for t in cron.upcoming(text, zone_name, timezone.now())
    ]
    return {"words": cron.describe(text), "upcoming": upcoming, "zone": zone_name}


def cron_help(request: HttpRequest) -> HttpResponse:
    found = helper(request.GET.get("cron", "")[:10_001], request.GET.get("time_zone", "")[:100])
    return render(request, "scheduling/edit.html#cron-help", {"helper": found})


def next_words(task: ScheduledTask) -> str:
    if not task.enabled:
        return "it is disabled."
    if task.next_run is None:
        return "it never runs again."
    return f"next run {task.shown(task.next_run)} ({task.time_zone})."


def detail(request: HttpRequest, code: str) -> HttpResponse:
    task = get_object_or_404(ScheduledTask, code=code)
    return render(request, "scheduling/task.html", task_context(task, request.GET.get("page", "1")))


def task_context(task: ScheduledTask, page: str = "1") -> dict[str, Any]:
    history = task.runs.select_related("batch", "story", "job").order_by("-due", "-id")
    return {"task": task, "runs": Paginator(history, RUNS_PAGE).get_page(page), "now": timezone.now()}


@require_POST
def action(request: HtmxHttpRequest, code: str, what: str) -> HttpResponse:
    task = get_object_or_404(ScheduledTask, code=code)
    back = request.POST.get("back") == "task"
    to = redirect("scheduling:task", code=task.code).url if back else "scheduling:index"
    if what == "run":
        run, why = fire.run_now(task)
        if run is None:
            return done(request, f"{task.name} did not start: {why}", to, error=True)
        return done(request, f"{task.name} started: see its run history.", to)
    if what in ("enable", "disable"):
        task.set_enabled(what == "enable")
        return done(request, f"{task.name} {'enabled' if task.enabled else 'disabled'}: {next_words(task)}", to)
    return HttpResponse(status=404)


def delete(request: HttpRequest, code: str) -> HttpResponse:
    """What deleting the task would do (GET), and the deletion (POST)."""
    task = get_object_or_404(ScheduledTask, code=code)
    unfinished = task.unfinished().count()
    if request.method != "POST":
        context = {"task": task, "runs": task.runs.count(), "unfinished": unfinished}
        return render(request, "scheduling/delete.html", context)
    with transaction.atomic():
        name = task.name
        task.changed("schedule.deleted")
        task.delete()
    note = (
        f" Its {unfinished} unfinished run{'s' if unfinished != 1 else ''} stopped; what they made runs on."
        if unfinished
        else ""
    )
    messages.success(request, f"Deleted {name} and its run history.{note}")
    return redirect("scheduling:index")


def run_list(request: HttpRequest, code: str) -> HttpResponse:
    task = get_object_or_404(ScheduledTask, code=code)
    return render(request, "scheduling/task.html#runs", task_context(task, request.GET.get("page", "1")))
