"""The live parts of the story pages, for the relay and the socket's snapshot (spoonfeeder/live.py):
the same partials the pages render."""

from __future__ import annotations

import uuid

from django.template.loader import render_to_string

from spoonfeeder import live
from stories import context
from stories.models import Story


def list_fragments() -> str:
    return render_to_string("stories/index.html#story-list", context.stories())


def detail_fragments(code: str) -> str:
    try:
        uuid.UUID(code)
    except ValueError:
        return ""
    story = Story.objects.select_related("template", "reference_template", "node").filter(code=code).first()
    if story is None:
        return ""
    ctx = context.live(story)
    return "".join(render_to_string(f"stories/detail.html#{name}", ctx) for name in ("head", "steps"))


def pipeline_fragments() -> str:
    return render_to_string("stories/pipelines.html#pipelines", context.pipelines())


def register() -> None:
    live.TOPICS["stories"] = list_fragments
    live.TOPICS["pipelines"] = pipeline_fragments
    live.DRAWN_WITH.setdefault("renders-done", set()).add("pipelines")  # a task of a movie ended
    live.PER_OBJECT["story-"] = detail_fragments
