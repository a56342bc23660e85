"""The pool's live parts, for the relay and the socket's snapshot (spoonfeeder/live.py): the Nodes
page's partials, and the dashboard's pool section."""

from __future__ import annotations

from django.template.loader import render_to_string

from nodes import pool
from spoonfeeder import dashboard, live


def fragments() -> str:
    ctx = pool.context()
    return "".join(render_to_string(f"nodes/index.html#{name}", ctx) for name in ("node-list", "discoveries"))


def summary() -> dict[str, int]:
    return pool.summary(pool.nodes())


def register() -> None:
    live.TOPICS["nodes"] = fragments
    dashboard.SECTIONS["pool"] = summary
