"""The pool's live parts, for the relay and the socket's snapshot (spoonfeeder/live.py): the Nodes
page's partials, the dashboard's pool section, and the timeline both pages show (its own topic:
jobs and steps starting and ending, and health checks, redraw it; a job's progress does not)."""

from __future__ import annotations

from django.template.loader import render_to_string

from nodes import pool, timeline
from spoonfeeder import dashboard, live


def fragments() -> str:
    ctx = pool.context()
    return "".join(render_to_string(f"nodes/index.html#{name}", ctx) for name in ("node-list", "discoveries"))


def timeline_fragment() -> str:
    return render_to_string("nodes/index.html#timeline", timeline.context())


def summary() -> dict[str, int]:
    return pool.summary(pool.nodes())


def register() -> None:
    live.TOPICS["nodes"] = fragments
    live.TOPICS["timeline"] = timeline_fragment
    dashboard.SECTIONS["pool"] = summary
