"""Firing scheduled tasks.

A django-q2 cron schedule runs the tick at the start of every minute (django-q2 looks at its
schedules about every 30 s, so a due task's run is queued within a minute of its due time). The
tick starts every enabled task whose next run has come: the guarded move of its `next_run` and the
run's row, unique per task and due time, make each due time fire once however many clusters tick.
After downtime a task's missed due times follow its rule (skipped, or run once); django-q2's own
cron schedules never catch up. Each run is a task of its own (`scheduling.tasks.run`), thin and
idempotent: it re-reads its row and claims it by a guarded update. The tick also follows the runs
that made something (a batch, a story, renders) until that has ended, sends again runs whose time
to retry has come, and gives up on runs whose worker died.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from nodes.models import Capability
from scheduling import cron, kinds
from scheduling.models import ScheduledRun, ScheduledTask
from spoonfeeder import work

log = logging.getLogger(__name__)

MISSED_COUNTED = 1000  # missed due times counted one by one; past this, "1,000 or more"
RESEND_AFTER = timedelta(seconds=60)  # a run queued this long ago and not started: its message was lost


def tick(now: datetime | None = None) -> str:
    """Fire what is due, follow what runs; what it did, in words."""
    now = now or timezone.now()
    fired = 0
    for task in ScheduledTask.objects.filter(enabled=True, next_run__lte=now).order_by("next_run"):
        try:
            fired += fire_due(task, now)
        except Exception as e:  # one task's fault (a time zone gone from this machine since) stops no other
            log.exception("scheduled task %s could not fire: %s", task.name, e)
    followed = follow(now)
    return f"fired {fired} run(s); {followed}"


def fire_due(task: ScheduledTask, now: datetime) -> int:
    """Start the task's due time(s) up to `now` by its rules; how many runs were started."""
    due = task.next_run
    assert due is not None
    latest = max(cron.last_due(task.cron, task.time_zone, now) or due, due)
    dues = cron.due_between(task.cron, task.time_zone, due - timedelta(microseconds=1), latest, MISSED_COUNTED)
    if latest not in dues:  # down for longer than MISSED_COUNTED due times: the count stops there
        dues.append(latest)
    grace = timedelta(seconds=settings.SCHEDULE_GRACE)
    on_time = [t for t in dues if now - t <= grace]
    late = [t for t in dues if now - t > grace]
    following = task.next_after(now)
    with transaction.atomic():
        # The claim of the tick: only one cluster moves next_run from what it read.
        if not ScheduledTask.objects.filter(pk=task.pk, enabled=True, next_run=due).update(next_run=following):
            return 0
        task.next_run = following
        runs = 0
        if late and task.missed == ScheduledTask.ONCE and not on_time:
            note = f"Caught up: {missed_words(late)} missed ({spanned(task, late)}) while Spoon Feeder was down."
            runs += claim(task, late[-1], note=note)[0] is not None
        elif late:
            note = f"Missed {missed_words(late)} ({spanned(task, late)}): Spoon Feeder was not running."
            record_skipped(task, late[0], note)
        for t in on_time:  # a tick a little late (a busy minute) runs each due time it finds
            runs += claim(task, t)[0] is not None
        task.changed("schedule.fired")
    return runs


def missed_words(missed: list[datetime]) -> str:
    count = f"{len(missed):,}" + (" or more" if len(missed) >= MISSED_COUNTED else "")
    return f"{count} run{'s' if len(missed) != 1 else ''}"


def spanned(task: ScheduledTask, missed: list[datetime]) -> str:
    return task.shown(missed[0]) + (f" to {task.shown(missed[-1])}" if len(missed) > 1 else "")


def record_skipped(task: ScheduledTask, due: datetime, note: str) -> None:
    try:
        with transaction.atomic():
            run = ScheduledRun.objects.create(task=task, due=due, status=ScheduledRun.PENDING, note=note)
    except IntegrityError:
        return  # another cluster recorded it
    run.task = task
    run.end(ScheduledRun.SKIPPED, expect=(ScheduledRun.PENDING,))


def claim(
    task: ScheduledTask, due: datetime, *, note: str = "", manual: bool = False
) -> tuple[ScheduledRun | None, str]:
    """The run of `task` for `due`, queued; or (None, why not). Under the skip rule for overlap a
    run due while an earlier one is unfinished is recorded as skipped (Run now is refused)."""
    now = timezone.now()
    with transaction.atomic():
        # One claimer of a task at a time (PostgreSQL's row lock; SQLite's transactions are
        # IMMEDIATE), so that two claims never both see the other's run as absent.
        locked = ScheduledTask.objects.select_for_update().get(pk=task.pk)
        busy = locked.unfinished().order_by("due").first()
        if busy is not None and locked.overlap == ScheduledTask.SKIP:
            why = (
                f"The run due {locked.shown(busy.due)} is still {busy.get_status_display().lower()} "
                "(this task skips a run while the previous one runs)."
            )
            if manual:
                return None, why
            record_skipped(locked, due, why)
            return None, why
        try:
            with transaction.atomic():
                run = ScheduledRun.objects.create(task=locked, due=due, manual=manual, note=note, sent=now)
        except IntegrityError:
            return None, "That due time has already run."
        send(run)
        locked.changed("schedule.run")
    return run, ""


def run_now(task: ScheduledTask) -> tuple[ScheduledRun | None, str]:
    return claim(task, timezone.now(), manual=True, note="Run now.")


def send(run: ScheduledRun) -> None:
    from spoonfeeder.tasks import enqueue

    enqueue("scheduling.tasks.run", run.pk, timeout=settings.Q_TIMEOUT - 1)


# --- a run ---------------------------------------------------------------------------------------


def execute(pk: int) -> str:
    """Run one scheduled run: the body of `scheduling.tasks.run`."""
    run = ScheduledRun.objects.select_related("task").filter(pk=pk).first()
    if run is None or run.status not in (ScheduledRun.PENDING, ScheduledRun.WAITING):
        return "not waiting to run"
    now = timezone.now()
    if run.not_before and run.not_before > now:
        return "not yet"  # the tick sends it again when its time comes
    task = run.task
    if task.only_online and not Capability.objects.usable(Capability.COMFYUI).exists():
        return wait_for_node(run, now)
    worker = work.worker_id()
    failure: kinds.RunError | None = None
    started = None
    with transaction.atomic():
        if not ScheduledRun.objects.filter(pk=run.pk, status__in=(ScheduledRun.PENDING, ScheduledRun.WAITING)).update(
            status=ScheduledRun.RUNNING, started=now, attempts=F("attempts") + 1, worker=worker, not_before=None
        ):
            return "taken by another worker"
        run.refresh_from_db()
        try:
            with transaction.atomic():  # what it makes commits with the run's link to it, or nothing does
                started = kinds.start(run)
                run.result = {**run.result, "summary": started.summary}
                run.save(update_fields=["batch", "story", "job", "result"])
        except kinds.RunError as e:
            failure = e
        except Exception as e:  # a fault of ours or of the database: trying again may help
            log.exception("scheduled run %s failed to start", run.pk)
            failure = kinds.RunError(f"{type(e).__name__}: {e}", again=True)
        task.changed("schedule.run")
    if failure is None and task.kind in kinds.AFTER_COMMIT:
        try:
            started = kinds.work(run)
        except kinds.RunError as e:
            failure = e
        except Exception as e:
            log.exception("scheduled run %s failed", run.pk)
            failure = kinds.RunError(f"{type(e).__name__}: {e}", again=True)
        if failure is None:
            assert started is not None
            finish(run, started)
            return f"failed: {started.failed}" if started.failed else started.summary
    if failure is not None:
        fail(run, str(failure), again=failure.again)
        return f"failed: {failure}"
    return run.summary()


def finish(run: ScheduledRun, outcome: kinds.Started) -> None:
    """A running run ends as `outcome` says: failed (perhaps tried again), or succeeded."""
    if outcome.failed:
        fail(run, outcome.failed, again=not (run.batch_id or run.story_id or run.job_id), summary=outcome.summary)
    else:
        run.end(ScheduledRun.SUCCEEDED, expect=(ScheduledRun.RUNNING,), summary=outcome.summary)


def fail(run: ScheduledRun, message: str, *, again: bool, summary: str = "") -> None:
    """The run failed: tried again after a backoff while its task allows more tries and trying
    again can help, else ended as failed."""
    task = run.task
    if again and run.attempts <= task.retries:
        wait = timedelta(seconds=settings.SCHEDULE_BACKOFF * 2 ** max(run.attempts - 1, 0))
        at = timezone.now() + wait
        with transaction.atomic():
            if ScheduledRun.objects.filter(pk=run.pk, status=ScheduledRun.RUNNING).update(
                status=ScheduledRun.PENDING,
                not_before=at,
                error=message[:5000],
                note=f"Try {run.attempts + 1} of {task.retries + 1} at {task.shown(at)}.",
                batch=None,
                story=None,
                job=None,
            ):
                task.changed("schedule.run")
        return
    extra = {"summary": summary} if summary else {}
    run.end(ScheduledRun.FAILED, expect=(ScheduledRun.RUNNING,), error=message, **extra)


def wait_for_node(run: ScheduledRun, now: datetime) -> str:
    task = run.task
    deadline = run.created + timedelta(minutes=task.wait_minutes)
    if now >= deadline:
        note = f"No ComfyUI node was online within {task.wait_minutes} minute{'s' if task.wait_minutes != 1 else ''}."
        run.end(ScheduledRun.SKIPPED, expect=(ScheduledRun.PENDING, ScheduledRun.WAITING), note=note)
        return note
    with transaction.atomic():
        if ScheduledRun.objects.filter(pk=run.pk, status__in=(ScheduledRun.PENDING, ScheduledRun.WAITING)).update(
            status=ScheduledRun.WAITING, not_before=min(now + timedelta(seconds=30), deadline)
        ):
            task.changed("schedule.run")
    return "waiting for a ComfyUI node"


# --- following runs ----------------------------------------------------------------------------------


def follow(now: datetime) -> str:
    """Settle the runs whose batch, story or renders have ended; fail those whose worker died;
    send again those whose time has come (a retry, another look for a node, a lost message)."""
    ended = resent = 0
    for run in ScheduledRun.objects.filter(status=ScheduledRun.RUNNING).select_related("task"):
        if run.batch_id or run.story_id or run.job_id or run.result.get("jobs"):
            outcome = kinds.settle(run, now)
            if outcome is not None:
                finish(run, outcome)
                ended += 1
        elif not work.alive(run.worker) or (
            run.started and now - run.started > timedelta(seconds=settings.Q_TIMEOUT + 60)
        ):
            fail(run, "The worker running it stopped before it finished.", again=True)
            ended += 1
    due = ScheduledRun.objects.filter(status__in=(ScheduledRun.PENDING, ScheduledRun.WAITING)).filter(
        Q(not_before__lte=now) | Q(not_before=None, sent__lt=now - RESEND_AFTER) | Q(not_before=None, sent=None)
    )
    for run in due:
        if ScheduledRun.objects.filter(pk=run.pk, status=run.status, sent=run.sent).update(sent=now):
            send(run)
            resent += 1
    return f"{ended} run(s) ended, {resent} sent again"
