"""What the dashboard shows: the worker cluster's heartbeat, task counts and recent errors, and
the sections the apps add (the pool, the render queue)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django_q.conf import Conf
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

    @property
    def phase(self) -> str:
        """ "starting" or "stopping"; "" while it takes work. django-q2's "Idle" and "Working" say
        only whether its in-process queues are empty, which they are while its workers run
        tasks: whether it is busy is what the task rows say (task_counts)."""
        return "" if self.status in (str(Conf.IDLE), str(Conf.WORKING)) else self.status.lower()


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


def task_counts(since: datetime, alive: list[Cluster]) -> dict[str, int]:
    """Tasks queued, running, done and failed since `since`. A task runs from its start until
    its result, but only while a cluster that can be running it lives: one started before every
    live cluster did was cut off with its own (killed, or stopped while it ran: django-q2 saves no
    result then), and with no cluster alive nothing runs."""
    results = Task.objects.filter(stopped__gte=since)
    running = 0
    if alive:
        # Both times are by the clock of the machine that runs the clusters and their workers.
        up = min(c.started for c in alive)
        started = Event.objects.filter(kind="task.started", created__gte=max(since, up))
        running = started.exclude(ref__in=Task.objects.values("id")).values("ref").distinct().count()
    return {
        "queued": broker().queue_size() or 0,
        "running": running,
        "done": results.filter(success=True).count(),
        "failed": results.filter(success=False).count(),
    }


def last_result(now: datetime) -> datetime | None:
    """When a worker last saved a task's result, if it did so lately (within the heartbeat's
    staleness): proof that a worker lives, whatever its heartbeat says."""
    recent = Task.objects.filter(stopped__gte=now - timedelta(seconds=settings.WORKER_STALE_AFTER))
    return recent.order_by("-stopped").values_list("stopped", flat=True).first()


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
    alive = clusters()
    return {
        "clusters": alive,
        "counts": task_counts(now - timedelta(hours=1), alive),
        # No heartbeat, yet a result just now: its heartbeat is late, it is not gone.
        "late": None if alive else last_result(now),
        "errors": recent_errors(),
        "now": now,
    } | {name: section() for name, section in SECTIONS.items()}
