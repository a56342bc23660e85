"""The render queue's live parts, for the relay and the socket's snapshot (spoonfeeder/live.py):
the Render queue page's partials, and the dashboard's renders section."""

from __future__ import annotations

from django.template.loader import render_to_string

from renders import queue
from spoonfeeder import dashboard, live


def fragments() -> str:
    ctx = queue.live()
    names = ("controls", "counts", "rendering", "queued")
    return "".join(render_to_string(f"renders/queue.html#{name}", ctx) for name in names)


def finished_fragments() -> str:
    return render_to_string("renders/queue.html#finished-list", queue.finished())


def register() -> None:
    live.TOPICS["renders"] = fragments
    live.TOPICS["renders-done"] = finished_fragments
    live.DRAWN_WITH.setdefault("nodes", set()).add("renders")  # why a queued job waits
    dashboard.SECTIONS["renders"] = queue.counts
