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

from nodes import pool
from renders import queue
from spoonfeeder import dashboard


def dashboard_fragments() -> str:
    ctx = dashboard.context()
    return "".join(
        render_to_string(f"spoonfeeder/dashboard.html#{name}", ctx)
        for name in ("worker", "tasks", "pool", "renders", "errors")
    )


def nodes_fragments() -> str:
    ctx = pool.context()
    return "".join(render_to_string(f"nodes/index.html#{name}", ctx) for name in ("node-list", "discoveries"))


def render_queue_fragments() -> str:
    ctx = queue.live()
    names = ("controls", "counts", "rendering", "queued")
    return "".join(render_to_string(f"renders/queue.html#{name}", ctx) for name in names)


def finished_fragments() -> str:
    return render_to_string("renders/queue.html#finished-list", queue.finished())


# Topic name -> renderer of every live fragment of that topic, from the database as it is now.
TOPICS: dict[str, Callable[[], str]] = {
    "dashboard": dashboard_fragments,
    "nodes": nodes_fragments,
    "renders": render_queue_fragments,
    "renders-done": finished_fragments,
}
# Topics whose fragments change with time alone (a heartbeat going stale, "in the last hour"):
# the relay re-renders them every RELAY_TICK seconds and pushes them when they differ.
TICKING = frozenset({"dashboard"})


def story_list_fragments() -> str:
    from stories import live as stories_live

    return stories_live.list_fragments()


TOPICS["stories"] = story_list_fragments
# Topics of one object each: prefix -> renderer given the rest of the topic (a story's code).
PER_OBJECT: dict[str, Callable[[str], str]] = {}


def story_fragments(code: str) -> str:
    from stories import live as stories_live

    return stories_live.detail_fragments(code)


PER_OBJECT["story-"] = story_fragments


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
    if topic in TOPICS:
        return TOPICS[topic]()
    prefix = next(p for p in PER_OBJECT if topic.startswith(p))
    return PER_OBJECT[prefix](topic[len(prefix) :])
