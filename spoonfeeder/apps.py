from __future__ import annotations

import logging
import threading
from typing import Any

from django.apps import AppConfig
from django.conf import settings

log = logging.getLogger(__name__)


class SpoonfeederConfig(AppConfig):
    name = "spoonfeeder"
    verbose_name = "Spoon Feeder"

    def ready(self) -> None:
        from django_q.signals import post_execute, post_spawn, pre_enqueue, pre_execute

        from spoonfeeder import checks  # noqa: F401 - registers the system checks

        # django-q2 owns its task rows; its signals are the only place to see a task change
        # state, so they write our event rows (in the enqueuer's transaction where it has one).
        pre_enqueue.connect(task_queued, dispatch_uid="spoonfeeder.task_queued")
        pre_execute.connect(task_started, dispatch_uid="spoonfeeder.task_started")
        post_execute.connect(task_finished, dispatch_uid="spoonfeeder.task_finished")
        # A worker (re)started: the one before it may have died with work; the sweeper finds it.
        post_spawn.connect(worker_started, dispatch_uid="spoonfeeder.worker_started")


def task_queued(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
    task_event("task.queued", task)


def task_started(sender: Any, func: Any, task: dict[str, Any], **kwargs: Any) -> None:
    task_event("task.started", task)


def task_finished(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
    # Sent by the cluster's monitor after it saved the result row.
    task_event("task.done" if task.get("success") else "task.failed", task)


def task_event(kind: str, task: dict[str, Any]) -> None:
    from spoonfeeder.models import Event

    if task.get("save") is False and kind != "task.failed":
        return  # the engine's routine upkeep (spoonfeeder.tasks.enqueue): shown only if it fails

    try:
        Event.emit("dashboard", kind, task["id"])
    except Exception:
        # An event is a notification; the relay's periodic re-render covers a lost one.
        # Raising here would kill django-q2's monitor or fail the enqueue.
        log.exception("could not record %s for task %s", kind, task.get("id"))


def worker_started(sender: Any, **kwargs: Any) -> None:
    from django.db import connections

    from spoonfeeder.tasks import ensure_sweeping

    # A worker runs one task after another on one thread: its connection is kept from task to
    # task (checked before each reuse), where CONN_MAX_AGE=0 would open one for every task, and
    # on PostgreSQL each opening starts a server process: most of a short task's time. The web
    # process keeps 0 (STACK-NOTES.md: under ASGI a kept connection is never reused).
    for alias in connections:
        connections.settings[alias].update(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)

    try:
        ensure_sweeping()
    except Exception:
        log.exception("could not start the sweeper")
    # After the whole stack was killed, the row may hold a promise made a moment before, judged by
    # its heartbeat alone, whose task died locked in the killed cluster's hands: with nothing
    # running, nothing else would look again until the schedule comes round. Once more, when
    # that promise would be stale.
    again = threading.Timer(settings.STALE + settings.BEAT, look_again)
    again.daemon = True
    again.start()


def look_again() -> None:
    from django.db import connection

    from spoonfeeder.tasks import ensure_sweeping

    try:
        ensure_sweeping()
    except Exception:
        log.exception("could not start the sweeper")
    finally:
        connection.close()  # this thread's own
