"""The render queue's live parts, for the relay and the socket's snapshot (spoonfeeder/live.py):
the Render queue page's partials, and the dashboard's renders section."""

from __future__ import annotations

import uuid

from django.template.loader import render_to_string

from renders import queue
from spoonfeeder import dashboard, live


def fragments() -> str:
    ctx = queue.live()
    names = ("controls", "counts", "rendering", "queued")
    return "".join(render_to_string(f"renders/queue.html#{name}", ctx) for name in names)


def finished_fragments() -> str:
    return render_to_string("renders/queue.html#finished-list", queue.finished())


def batch_list_fragments() -> str:
    from renders import views

    return render_to_string("renders/batches.html#batch-list", views.batch_list())


def batch_fragments(code: str) -> str:
    """A batch's head and the first page of its items (a page further on is not pushed: its
    items keep an id of their own page)."""
    from renders import views
    from renders.models import Batch

    try:
        uuid.UUID(code)
    except ValueError:
        return ""
    batch = Batch.objects.select_related("template").filter(code=code).first()
    if batch is None:
        return ""
    ctx = views.batch_context(batch)
    return "".join(render_to_string(f"renders/batch.html#{name}", ctx) for name in ("head", "items"))


def register() -> None:
    live.TOPICS["renders"] = fragments
    live.TOPICS["renders-done"] = finished_fragments
    live.TOPICS["batches"] = batch_list_fragments
    live.PER_OBJECT["batch-"] = batch_fragments
    live.DRAWN_WITH.setdefault("nodes", set()).add("renders")  # why a queued job waits
    dashboard.SECTIONS["renders"] = queue.counts
