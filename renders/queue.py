"""What the Render queue page shows, in a constant number of queries whatever the queue's size."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.db.models import Count, Q

from renders.models import Queue, RenderJob, Speed

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
    jobs = RenderJob.objects.select_related("template", "node", "pin")
    rendering = list(jobs.active().order_by("started", "created"))
    with_etas(rendering)
    return {
        "counts": counts(),
        "paused": Queue.get().paused,
        "rendering": rendering,
        "queued": list(jobs.filter(status=RenderJob.QUEUED).in_dispatch_order()[:QUEUED_SHOWN]),
    }


def with_etas(jobs: list[RenderJob]) -> None:
    """Seconds left for each job, from its node's measured speed on its template (None if the
    node has not rendered that template yet)."""
    rates: dict[tuple[int | None, int], float] = {
        (node_id, template_id): rate
        for node_id, template_id, rate in Speed.objects.filter(
            template_id__in={j.template_id for j in jobs}
        ).values_list("capability__node_id", "template_id", "seconds_per_unit")
    }
    for job in jobs:
        rate = rates.get((job.node_id, job.template_id))
        job.eta = None if rate is None else max(job.work * (1 - job.progress) * rate, 0)  # type: ignore[attr-defined]


def finished(status: str = "", story: str = "", page: int = 1) -> dict[str, Any]:
    wanted = (
        [status] if status in (RenderJob.COMPLETED, RenderJob.FAILED, RenderJob.CANCELLED) else list(RenderJob.ENDED)
    )
    jobs = RenderJob.objects.filter(status__in=wanted).select_related("template", "node").order_by("-finished", "-id")
    if story:
        jobs = jobs.filter(Q(story=story))
    pages = Paginator(jobs, PAGE)
    return {"finished": pages.get_page(page), "status": status, "story": story}
