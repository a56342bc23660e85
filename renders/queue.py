"""What the Render queue page shows, in a constant number of queries whatever the queue's size."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.db.models import Count, Q

from renders.models import Queue, RenderJob

PAGE = 25
QUEUED_SHOWN = 50


def counts() -> dict[str, int]:
    by_status = dict(RenderJob.objects.values_list("status").annotate(n=Count("id")).order_by())
    return {
        "queued": by_status.get(RenderJob.QUEUED, 0),
        "rendering": by_status.get(RenderJob.RENDERING, 0) + by_status.get(RenderJob.ASSIGNED, 0),
        "completed": by_status.get(RenderJob.COMPLETED, 0),
        "failed": by_status.get(RenderJob.FAILED, 0),
        "cancelled": by_status.get(RenderJob.CANCELLED, 0),
    }


def live() -> dict[str, Any]:
    """The parts every visitor of the page sees the same: counts, what renders, what waits."""
    jobs = RenderJob.objects.select_related("template", "node")
    return {
        "counts": counts(),
        "paused": Queue.get().paused,
        "rendering": list(jobs.active().order_by("started", "created")),
        "queued": list(jobs.filter(status=RenderJob.QUEUED).in_dispatch_order()[:QUEUED_SHOWN]),
    }


def finished(status: str = "", story: str = "", page: int = 1) -> dict[str, Any]:
    wanted = (
        [status] if status in (RenderJob.COMPLETED, RenderJob.FAILED, RenderJob.CANCELLED) else list(RenderJob.ENDED)
    )
    jobs = RenderJob.objects.filter(status__in=wanted).select_related("template", "node").order_by("-finished", "-id")
    if story:
        jobs = jobs.filter(Q(story=story))
    pages = Paginator(jobs, PAGE)
    return {"finished": pages.get_page(page), "status": status, "story": story}
