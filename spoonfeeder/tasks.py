"""Worker tasks of the project itself. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Task
from django_q.tasks import async_task

from spoonfeeder import broker, work
from spoonfeeder.models import Event, Sweeper

log = logging.getLogger(__name__)

SWEEP_SPAN = 50.0  # seconds one sweeper task runs before it hands on to a fresh one
IDLE_PASSES = 3  # passes with nothing to watch before the sweeper leaves
# A sweeper row promised to a task not yet running: judged by its heartbeat alone (alive() knows
# no such process), so a promise whose task was lost goes stale like a dead sweeper.
PROMISED = "promised:"


def enqueue(func: str, *args: Any, timeout: float | None = None, routine: bool = False, **kwargs: Any) -> None:
    """Queue a task so that the worker sees the caller's rows when it starts.

    With the ORM broker the queue row (and its event) joins the caller's transaction; another
    broker is not transactional, so the message is sent once the transaction commits.
    """
    if timeout is not None:
        kwargs["timeout"] = int(timeout) + 1  # the cluster's own deadline, behind the task's
    kwargs["broker"] = broker.shared()
    if routine:
        # The engine's own upkeep (feeding the pool, sweeping): no result row or event when it
        # succeeds, so the dashboard counts the work people asked for; a failure is kept.
        kwargs["save"] = False
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


# --- the sweeper ---------------------------------------------------------------------------------


def sweep(promise: str = "") -> str:
    """The sweeper: while the pool has work, every SWEEP_EVERY seconds, each app re-drives its
    orphaned work and feeds the pool what became runnable with time (a retry's wait over, a
    node back from its rest). One at a time; it hands on to a fresh task every SWEEP_SPAN
    seconds (within any task deadline), and leaves when there is nothing to watch.

    The row was promised to this task (`promise`) when it was queued, so nothing starts a second
    one meanwhile; the task takes it only after its first wait, so its start writes nothing
    while the feed task of the change that started it claims and sends (on SQLite every write
    waits for the one before)."""
    me = work.worker_id()
    passes = idle = 0
    ends = time.monotonic() + SWEEP_SPAN
    try:
        with work.stop_on_sigterm():
            while True:
                # Each pass after a wait, the first too: the change that started the sweeper has
                # a feed task of its own, which places the new work without waiting for this one.
                with work.interruptible():
                    time.sleep(settings.SWEEP_EVERY)
                work.stopping()
                if not passes and not take_sweeper(me, promise):
                    return "another sweeper is running"
                passes += 1
                idle = 0 if handle_one_sweep() else idle + 1
                if idle >= IDLE_PASSES:
                    return f"swept {passes} times; nothing to watch"
                if time.monotonic() >= ends:
                    promise_sweeper(Q(worker=me))
                    return f"swept {passes} times; handed on"
                if not Sweeper.objects.filter(pk=1, worker=me).update(heartbeat=Now()):
                    return "another sweeper took over"
    except work.Stopped:
        work.leave()  # the row is let go below, before the process ends
        return f"swept {passes} times; stopped"
    finally:
        release_sweeper(me, promise)


def handle_one_sweep() -> bool:
    """One pass of every app's sweep; True if any has something to watch."""
    busy = False
    for one in work.sweeps():
        try:
            busy = one() or busy
        except Exception:
            log.exception("sweep %s failed", one.__qualname__)
            busy = True  # try again at the next pass
    return busy


def take_sweeper(me: str, promise: str = "") -> bool:
    """The row made this task's: promised to it, or free."""
    free = sweeper_free() | Q(worker=promise) if promise else sweeper_free()
    return bool(Sweeper.objects.filter(free, pk=1).update(worker=me, heartbeat=Now()))


def release_sweeper(me: str, promise: str = "") -> None:
    Sweeper.objects.filter(pk=1, worker__in=[me, promise] if promise else [me]).update(worker="", heartbeat=None)


def sweeper_free() -> Q:
    """No sweeper runs or is promised: the row is empty, or its sweeper (or promise) is dead."""
    current = Sweeper.objects.filter(pk=1).values_list("worker", flat=True).first()
    if current is None:
        Sweeper.objects.get_or_create(pk=1)
    return Q(worker="") | work.orphaned([current or ""])


def promise_sweeper(held: Q) -> None:
    """If the row is `held` (by no one alive, or by the caller), promise it to a new sweeper
    task and queue that task, in the caller's transaction."""
    promise = f"{PROMISED}{uuid.uuid4().hex[:12]}"
    if Sweeper.objects.filter(held, pk=1).update(worker=promise, heartbeat=Now()):
        enqueue("spoonfeeder.tasks.sweep", promise, timeout=SWEEP_SPAN + 30, routine=True)


def wake(feed: str) -> None:
    """Once the caller's transaction commits, the cluster runs `feed` (an app's task that places
    what became runnable), and a sweeper runs: called by every change that makes work runnable."""
    # A feed may go on to follow what it placed (renders.tasks.feed): its deadline is then its own.
    enqueue(feed, timeout=work.DEADLINES.get(feed, 60), routine=True)
    ensure_sweeping()


def ensure_sweeping() -> None:
    """Start a sweeper unless one runs (its heartbeat is fresh and its process, if of this
    machine, is alive) or is promised: called when work is queued, by the schedule every minute
    and when a worker (re)starts (after a crash of the whole machine, the last sweeper's
    heartbeat may still look fresh)."""
    free = sweeper_free()
    if Sweeper.objects.filter(free, pk=1).exists():
        promise_sweeper(free)


_sweeper_looked = [0.0]  # when this process last looked whether a sweeper runs (monotonic)


def look_after_sweeper() -> None:
    """Every STALE seconds, a process doing work makes sure a sweeper runs: when the one running
    died with its cluster, nothing else would start one until work is queued or the schedule
    comes round (up to a minute), and the dead cluster's work would wait."""
    now = time.monotonic()
    if now - _sweeper_looked[0] < settings.STALE:
        return
    _sweeper_looked[0] = now
    ensure_sweeping()


work.BEAT_CHORES.append(look_after_sweeper)  # work that beats is work a sweeper must watch
