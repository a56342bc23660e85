"""What the Render queue page shows, in a constant number of queries whatever the queue's size."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from nodes.models import PREFETCH, Capability
from renders.dispatch import LACKING, best_fit
from renders.models import JobQuerySet, Queue, RenderJob, Speed

PAGE = 25
QUEUED_SHOWN = 50


def counts(jobs: QuerySet[RenderJob] | None = None) -> dict[str, int]:
    """How many of `jobs` (every job by default) are in each state; "next": sent to a node, or
    being sent, and waiting there behind the one it renders."""
    jobs = RenderJob.objects.all() if jobs is None else jobs
    by_status = dict(jobs.values_list("status").annotate(n=Count("id")).order_by())
    return {
        "queued": by_status.get(RenderJob.QUEUED, 0),
        "next": by_status.get(RenderJob.ASSIGNED, 0),
        "rendering": by_status.get(RenderJob.RENDERING, 0),
        "completed": by_status.get(RenderJob.COMPLETED, 0),
        "failed": by_status.get(RenderJob.FAILED, 0),
        "cancelled": by_status.get(RenderJob.CANCELLED, 0),
    }


def live() -> dict[str, Any]:
    """The parts every visitor of the page sees the same: counts, what renders, what waits."""
    jobs = RenderJob.objects.select_related("template", "node", "pin")
    paused = Queue.get().paused
    queued = list(jobs.filter(status=RenderJob.QUEUED).in_dispatch_order()[:QUEUED_SHOWN])
    why_waiting(queued, paused=paused, ahead=0)
    return {"counts": counts(), "paused": paused, **on_nodes(jobs), "queued": queued}


def on_nodes(jobs: JobQuerySet) -> dict[str, list[RenderJob]]:
    """Of `jobs`, those rendering (with their ETAs) and those next on their node (sent ahead, or
    being sent, waiting there behind the one it renders)."""
    active = list(jobs.active().order_by("started", "created"))
    rendering = [job for job in active if job.status == RenderJob.RENDERING]
    with_etas(rendering)
    return {"rendering": rendering, "next_up": [job for job in active if job.status == RenderJob.ASSIGNED]}


def why_waiting(jobs: list[RenderJob], *, paused: bool | None = None, ahead: int | None = None) -> None:
    """Each queued job's `waiting`: why it has not started, from the pool as it is now (derived,
    never stored). `jobs` in dispatch order; `ahead`: how many queued jobs come before the first,
    when `jobs` are the queue from there on (else each job's place in the whole queue is read).
    A few queries, however many jobs."""
    if not any(job.status == RenderJob.QUEUED for job in jobs):
        return
    if ahead is None:
        order = RenderJob.objects.filter(status=RenderJob.QUEUED).in_dispatch_order().values_list("pk", flat=True)
        place = {pk: i for i, pk in enumerate(order)}
    else:
        place = {job.pk: i for i, job in enumerate(jobs, start=ahead)}
    if paused is None:
        paused = Queue.get().paused
    takes_work = Capability.objects.usable(Capability.COMFYUI).filter(pk=OuterRef("pk"))
    caps: list[Capability] = list(
        Capability.objects.filter(kind=Capability.COMFYUI)
        .with_load()
        .annotate(usable=Exists(takes_work))
        .select_related("node")
    )
    usable = {c.pk for c in caps if getattr(c, "usable", False)}
    room = [c for c in caps if c.pk in usable and c.has_room(PREFETCH)]
    # What each node with room would take now: a job none of them takes waits for a busy one.
    chosen = set() if paused else {j.pk for c in room if (j := best_fit(c, alone=len(usable) == 1)) is not None}
    now = timezone.now()
    for job in jobs:
        job.waiting = waiting_reason(job, place.get(job.pk, 0), paused, caps, usable, room, chosen, now)  # type: ignore[attr-defined]


def waiting_reason(
    job: RenderJob,
    ahead: int,
    paused: bool,
    caps: list[Capability],
    usable: set[int],
    room: list[Capability],
    chosen: set[int],
    now: datetime,
) -> str:
    """Why one queued job has not started (see why_waiting); "" for a job that is not queued."""
    if job.status != RenderJob.QUEUED:
        return ""
    if paused:
        return "the queue is paused"
    if job.not_before and job.not_before > now:
        at = timezone.localtime(job.not_before).strftime("%H:%M:%S")
        return f"retry {job.attempts + 1}/{job.max_attempts} at {at}"
    if job.error.startswith(LACKING):
        return job.error
    if job.pin_id is not None:
        # Its tag says "only on <node>": the reason says how that node is.
        mine = [c for c in caps if c.node_id == job.pin_id]
        if not mine:
            return "its node has no ComfyUI any more: cancel it, or queue it again for another node"
        if mine[0].pk not in usable:
            return f"{mine[0].node.name} {unusable(mine[0], now)}"
        if mine[0] not in room:
            return f"{mine[0].node.name} is busy ({ahead} ahead of it)"
        return "starting"
    if not caps:
        return "no ComfyUI in the pool: add a node on the Nodes page"
    if not usable:
        return "no ComfyUI can take work: " + "; ".join(f"{c.node.name} {unusable(c, now)}" for c in caps)
    if not room:
        return f"every ComfyUI is busy ({ahead} ahead of it)"
    if len(usable) > 1 and all(c.node_id == job.avoid_id for c in room):
        return f"its last attempt failed on {room[0].node.name}: waiting for another node ({ahead} ahead of it)"
    if job.pk in chosen:
        return "starting"
    free = ", ".join(c.node.name for c in room)
    return f"waiting for a faster node: {free} would finish it later than a busy one ({ahead} ahead of it)"


def unusable(cap: Capability, now: datetime) -> str:
    """Why a ComfyUI takes no new work, as "is …"."""
    if not cap.node.enabled:
        return "is disabled"
    if cap.resting_until and cap.resting_until > now:
        return f"is resting after a fault until {timezone.localtime(cap.resting_until):%H:%M:%S}"
    return f"is {cap.get_status_display().lower()}"


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


def finished(status: str = "", story: str = "", page: int = 1, text: str = "") -> dict[str, Any]:
    """A page of ended jobs, newest first: of one status, of one story (its code), or whose prompt
    or story title holds `text`; each knows its story's title (for its downloads' names)."""
    from stories.models import Story  # stories builds on renders, not the other way round

    wanted = (
        [status] if status in (RenderJob.COMPLETED, RenderJob.FAILED, RenderJob.CANCELLED) else list(RenderJob.ENDED)
    )
    jobs = RenderJob.objects.filter(status__in=wanted).select_related("template", "node").order_by("-finished", "-id")
    if story:
        jobs = jobs.filter(Q(story=story))
    text = text.strip()[:200]
    if text:
        titled = [
            str(code) for code in Story.objects.filter(title__icontains=text).values_list("code", flat=True)[:500]
        ]
        jobs = jobs.filter(Q(prompt__icontains=text) | Q(story__in=titled))
    shown = Paginator(jobs, PAGE).get_page(page)
    codes = {job.story for job in shown if job.story}
    titles = {str(c): t for c, t in Story.objects.filter(code__in=valid_codes(codes)).values_list("code", "title")}
    for job in shown:
        job.story_title = titles.get(job.story, "")  # type: ignore[attr-defined]
    return {"finished": shown, "status": status, "story": story, "text": text}


def valid_codes(values: set[str]) -> list[uuid.UUID]:
    """The values that are UUIDs (a job's story field is free text to the database)."""
    codes = []
    for value in values:
        try:
            codes.append(uuid.UUID(value))
        except ValueError:
            continue
    return codes
