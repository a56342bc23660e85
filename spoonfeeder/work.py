"""What every unit of work on the cluster shares: who runs it, its heartbeat, when it is stale,
and how a stopped worker hands its work back. It knows no app: the apps' tasks use it on their
own rows (a render job, a step run), and register what the sweeper does for them.

A row that holds work names its worker (`worker_id()`: the machine, the process and the task
run) and beats every BEAT seconds on the database's clock. It is an orphan when its heartbeat is
older than STALE seconds by that same clock, when the worker is a process of this machine that
no longer exists, or when it was handed back (no heartbeat). Only the first two count as a crash
of the worker that was running it, and a stale heartbeat only when its worker is not a live
process of this machine (a late one is re-driven, not charged).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import ExpressionWrapper, Q, QuerySet
from django.db.models.functions import Now

from spoonfeeder.models import db_time

log = logging.getLogger(__name__)

HOST = socket.gethostname()

# What the sweeper does each pass, by dotted path: each returns True while it has something to
# watch (work queued, running or waiting for a time). Apps add theirs in AppConfig.ready().
SWEEPS: list[str] = []
# Task -> its own deadline in seconds, for the tasks that carry one (a render attempt follows its
# job for hours; a story step waits for its model's answers): apps add theirs when ready, and the
# check spoonfeeder.E002 holds the broker's `retry` above the longest.
DEADLINES: dict[str, float] = {}


# Set when every task of this process is to stop: the tests' in-process cluster sets it to stop
# its threads. Loops that wait on a node call stopping().
STOP = threading.Event()
_signalled = threading.Event()  # SIGTERM came: the process ends once its work is handed back
_looked = [0.0, False]  # when the cluster's status was last read, and whether it was stopping


class Stopped(BaseException):
    """The task is to stop (SIGTERM, or its cluster stopping): hand the work back, then leave()."""


def leave() -> None:
    """After the work is handed back: a worker that got SIGTERM ends (django-q2 lets SystemExit
    through: the process ends) before it takes another task; one whose cluster stops gracefully
    goes on to the tasks the cluster had taken, which see the stop and leave their rows alone."""
    if _signalled.is_set():
        raise SystemExit(0)


def stopping(*, read: bool = True) -> None:
    """Raise Stopped if this task is to stop: this process's tasks are stopped, or its cluster is
    stopping (a graceful stop of django-q2 waits for the running task, which would be a whole
    render: its status is read at most every BEAT seconds). `read=False`: the cluster's status as
    last read, without reading it now (before a job's POST, where the read would delay every
    pickup; the next stopping() reads it)."""
    if STOP.is_set() or _signalled.is_set() or (cluster_stopping() if read else _looked[1]):
        raise Stopped


def cluster_stopping() -> bool:
    now = time.monotonic()
    if now - _looked[0] < settings.BEAT:
        return bool(_looked[1])
    _looked[0] = now
    try:
        from django_q.conf import Conf
        from django_q.status import Stat

        parent = os.getppid()
        _looked[1] = any(s.host == HOST and s.sentinel == parent and s.status == Conf.STOPPING for s in Stat.get_all())
    except Exception:
        log.exception("could not read the cluster's status")
    return bool(_looked[1])


def worker_id() -> str:
    """Who runs this task: the machine, the process, and this run of the task (a redelivered
    copy of a task in the same process is someone else)."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def alive(worker: str) -> bool:
    """False when `worker` is a process of this machine that is gone; True otherwise (another
    machine's worker is judged by its heartbeat alone)."""
    return running_here(worker) is not False


def running_here(worker: str) -> bool | None:
    """Whether `worker` is a live process of this machine: None when it is another machine's
    (or no worker), which only its heartbeat can speak for."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != HOST or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A process killed with its parent lingers as a zombie where nothing reaps it (a container
    # whose first process does not): it answers signals, but it is dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def stale_before(seconds: float | None = None) -> ExpressionWrapper:
    """The database's now minus STALE seconds (or `seconds`): heartbeats older than this have
    stopped."""
    return db_time(-(settings.STALE if seconds is None else seconds))


@contextmanager
def one_moment() -> Iterator[None]:
    """Every read inside sees the database as of one moment, so what is drawn from several
    queries never mixes rows from before a commit with rows from after it (a story's head still
    running beside its steps already stopped). PostgreSQL: a REPEATABLE READ transaction (its
    default, READ COMMITTED, takes a fresh snapshot at each statement). SQLite: a DEFERRED
    transaction, whose WAL snapshot is taken at its first read; not our IMMEDIATE one, which would
    hold the write lock and keep every worker waiting while a page is drawn."""
    if connection.in_atomic_block:
        yield  # the caller's transaction has its snapshot already
    elif connection.vendor == "sqlite":
        connection.ensure_connection()
        mode, connection.transaction_mode = connection.transaction_mode, "DEFERRED"  # type: ignore[attr-defined]
        try:
            with transaction.atomic():
                connection.transaction_mode = mode  # type: ignore[attr-defined]
                yield
        finally:
            connection.transaction_mode = mode  # type: ignore[attr-defined]
    else:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield


def orphaned(workers: Iterable[str], field: str = "worker") -> Q:
    """Rows whose worker stopped: no heartbeat (handed back), a stale one, or a dead process of
    this machine among `workers` (the workers named in `field` of the rows looked at)."""
    dead = [w for w in set(workers) if w and not alive(w)]
    return Q(heartbeat=None) | Q(heartbeat__lt=stale_before()) | Q(**{f"{field}__in": dead})


# Deaths of the worker running one job or step, after which it is quarantined (failed, saying so)
# rather than run again: work that kills its worker every time.
QUARANTINE_AFTER = 3


def crashed(worker: str, heartbeat: Any) -> bool:
    """Whether an orphan's worker died while running it: not handed back, not never started,
    and not a process of this machine that still lives (its heartbeat came late, on a loaded
    machine, or it hangs: its work is re-driven, and its later writes find the row no longer
    its own, but no death is charged to the work). Another machine's worker whose heartbeat
    stopped is taken for dead: nothing else can speak for it."""
    return bool(worker) and heartbeat is not None and running_here(worker) is not True


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Inside the block, SIGTERM stops the task in this (the worker's main) thread, so it hands
    its work back before the process ends: at once while it waits on a node (interruptible),
    else at its next stopping(); elsewhere (a thread) it does nothing. Never in the middle of a
    database call: cut short there, the connection is left unusable, hand-back included."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        _signalled.set()
        if _waiting[0]:
            raise Stopped

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


_waiting = [0]  # how deep the main thread is in interruptible() blocks


@contextmanager
def interruptible() -> Iterator[None]:
    """Around a wait on a node that makes no database call (a socket's next message, a model's
    answer, a pause): a SIGTERM inside stop_on_sigterm cuts it short with Stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _waiting[0] += 1
    try:
        if _signalled.is_set():  # it came just before
            raise Stopped
        yield
    finally:
        _waiting[0] -= 1


# What every heartbeat thread also does at each beat, registered by those who need it (the
# project's tasks: a look whether a sweeper runs).
BEAT_CHORES: list[Callable[[], None]] = []


@contextmanager
def beating(rows: QuerySet[Any]) -> Iterator[None]:
    """Inside the block, a thread beats `rows` (heartbeat = the database's now) every BEAT
    seconds: for work that blocks on one long call (a model's answer)."""
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()

    def beat() -> None:
        due = time.monotonic()
        try:
            # Every BEAT seconds from the start, however long a beat and its chores took.
            while not stop.wait(max(0.0, (due := due + settings.BEAT) - time.monotonic())):
                rows.update(heartbeat=Now())
                for chore in BEAT_CHORES:
                    chore()
                if main and (STOP.is_set() or cluster_stopping()):
                    # The blocking call is cut short by the SIGTERM handler (stop_on_sigterm).
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
                    return
        except Exception:
            log.exception("heartbeat failed")
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def sweeps() -> list[Callable[[], bool]]:
    found = []
    for path in SWEEPS:
        module, _, name = path.rpartition(".")
        found.append(getattr(import_module(module), name))
    return found
