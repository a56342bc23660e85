"""The live parts of pages, by topic.

A topic is a Channels group. A page subscribes to the topics it shows; for each topic this module
renders the fragments (template partials, each a top-level element with a stable id) that the
browser swaps in. The same partials render the full page, so a page, an htmx swap and a WebSocket
push can never disagree.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.template.loader import render_to_string

from spoonfeeder import dashboard, work

# Topic name -> renderer of every live fragment of that topic, from the database as it is now.
# Each app adds its own topics when it is ready (its live.py); the project has the dashboard's.
TOPICS: dict[str, Callable[[], str]] = {}
# Topics of one object each: prefix -> renderer given the rest of the topic (a story's code).
PER_OBJECT: dict[str, Callable[[str], str]] = {}
# Topic -> the topics drawn again whenever it changes: those whose fragments say how its objects
# stand (the render queue says why a job waits by how its nodes are). Apps add theirs when ready.
DRAWN_WITH: dict[str, set[str]] = {}
# Topics whose fragments change with time alone (a heartbeat going stale, "in the last hour"):
# the relay re-renders them every RELAY_TICK seconds and pushes them when they differ.
TICKING = frozenset({"dashboard"})


def dashboard_fragments() -> str:
    ctx = dashboard.context()
    names = ("worker", "tasks", "errors", *dashboard.SECTIONS)
    return "".join(render_to_string(f"spoonfeeder/dashboard.html#{name}", ctx) for name in names)


TOPICS["dashboard"] = dashboard_fragments


def known(topic: str) -> bool:
    """A topic a page may follow: a fixed one, or an object's (prefix and the object's code)."""
    if topic in TOPICS:
        return True
    for prefix in PER_OBJECT:
        if topic.startswith(prefix):
            try:
                return str(uuid.UUID(topic[len(prefix) :])) == topic[len(prefix) :]
            except ValueError:
                return False
    return False


def render(topic: str) -> str:
    """Every fragment of `topic`, drawn from the database as of one moment."""
    with work.one_moment():
        if topic in TOPICS:
            return TOPICS[topic]()
        prefix = next(p for p in PER_OBJECT if topic.startswith(p))
        return PER_OBJECT[prefix](topic[len(prefix) :])
