"""The Schedules pages' live parts, for the relay and the socket's snapshot (spoonfeeder/live.py),
and the dashboard's line on the next scheduled run."""

from __future__ import annotations

from django.template.loader import render_to_string

from spoonfeeder import dashboard, live


def list_fragments() -> str:
    from scheduling import views

    return render_to_string("scheduling/index.html#task-list", views.task_list())


def task_fragments(code: str) -> str:
    """A task's head and the first page of its runs (a page further on is not pushed)."""
    from scheduling import views
    from scheduling.models import ScheduledTask

    task = ScheduledTask.objects.filter(code=code).first()
    if task is None:
        return ""
    ctx = views.task_context(task)
    return "".join(render_to_string(f"scheduling/task.html#{name}", ctx) for name in ("head", "runs"))


def next_scheduled() -> object:
    from scheduling import views

    return views.next_scheduled()


def register() -> None:
    live.TOPICS["schedules"] = list_fragments
    live.PER_OBJECT["schedule-"] = task_fragments
    dashboard.SECTIONS["schedules"] = next_scheduled
