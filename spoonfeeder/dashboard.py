"""What the dashboard shows: the worker cluster's heartbeat, task counts and recent errors, and
the sections the apps add (the pool, the render queue)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django_q.humanhash import humanize
from django_q.models import Task
from django_q.status import Stat

from spoonfeeder.broker import shared
from spoonfeeder.models import Event

# Section name (a partial of spoonfeeder/dashboard.html, and its context variable) -> what it
# shows. Each app adds its own when it is ready.
SECTIONS: dict[str, Callable[[], Any]] = {}


broker = shared


@dataclass(frozen=True)
class Cluster:
    name: str
    host: str
    pid: int
    status: str
    workers: int
    started: datetime
    heartbeat: datetime


def clusters() -> list[Cluster]:
    """The worker clusters whose heartbeat is fresh. django-q2's sentinel saves one to the cache
    every half second with a 3-second expiry, so a killed cluster drops out within seconds."""
    fresh_after = timezone.now() - timedelta(seconds=settings.WORKER_STALE_AFTER)
    found = []
    for stat in Stat.get_all(broker=broker()):
        if stat.timestamp < fresh_after:
            continue
        found.append(
            Cluster(
                name=humanize(stat.cluster_id.hex),
                host=stat.host,
                pid=stat.pid,
                status=str(stat.status),
                workers=len(stat.workers),
                started=stat.tob,
                heartbeat=stat.timestamp,
            )
        )
    return sorted(found, key=lambda c: c.started)


def task_counts(since: datetime) -> dict[str, int]:
    results = Task.objects.filter(stopped__gte=since)
    started = Event.objects.filter(kind="task.started", created__gte=since)
    return {
        "queued": broker().queue_size() or 0,
        "running": started.exclude(ref__in=Task.objects.values("id")).values("ref").distinct().count(),
        "done": results.filter(success=True).count(),
        "failed": results.filter(success=False).count(),
    }


@dataclass(frozen=True)
class Failure:
    name: str
    func: str
    stopped: datetime
    message: str


def recent_errors(limit: int = 5) -> list[Failure]:
    failures = Task.objects.filter(success=False).order_by("-stopped")[:limit]
    # django-q2 stores a failure as "<error> : <traceback>"; the error is what people read first.
    return [Failure(t.name, t.func, t.stopped, str(t.result).split(" : Traceback")[0].strip()[:300]) for t in failures]


def context() -> dict[str, Any]:
    now = timezone.now()
    return {
        "clusters": clusters(),
        "counts": task_counts(now - timedelta(hours=1)),
        "errors": recent_errors(),
        "now": now,
    } | {name: section() for name, section in SECTIONS.items()}
