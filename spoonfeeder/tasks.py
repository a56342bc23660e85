"""Worker tasks of the project itself. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Task
from django_q.tasks import async_task

from spoonfeeder.models import Event


def enqueue(func: str, *args: Any, **kwargs: Any) -> None:
    """Queue a task so that the worker sees the caller's rows when it starts.

    With the ORM broker the queue row (and its event) joins the caller's transaction; another
    broker is not transactional, so the message is sent once the transaction commits.
    """
    if Conf.ORM:
        with transaction.atomic():
            async_task(func, *args, **kwargs)
    else:
        transaction.on_commit(lambda: async_task(func, *args, **kwargs))


def selftest(seconds: float = 1.0) -> str:
    """A task that does nothing but take a little time: proves the worker cluster is working."""
    time.sleep(min(max(seconds, 0), 60))
    return f"worked for {seconds:g} s"


def prune() -> str:
    """Delete events and task results older than their retention (scheduled hourly)."""
    events = Event.objects.prune()
    cutoff = timezone.now() - timedelta(seconds=settings.TASK_RETENTION)
    tasks, _ = Task.objects.filter(stopped__lt=cutoff).delete()
    return f"pruned {events} events and {tasks} task results"
