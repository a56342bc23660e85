"""The worker cluster in this process, for tests and in-process benchmarks: every task queued
(spoonfeeder.tasks.enqueue) runs in a thread of its own once the queuing transaction commits, as a
django-q2 worker would run it. Tests of process faults (kills, restarts) start a real `qcluster`."""

from __future__ import annotations

import pydoc
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from django.db import transaction


class Cluster:
    """Tasks run in threads of this process. At stop() every task is stopped as a stopping
    cluster stops its workers, and any task that raised fails (AssertionError)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="task")
        self.futures: list[tuple[str, Future[Any]]] = []
        self.lock = threading.Lock()
        # Messages to lose, by task: how many of the next ones never reach a worker (as Redis
        # loses one a worker had taken when it died).
        self.lose: dict[str, int] = {}

    # What django-q2 reads from a task's keyword arguments itself: the cluster's, not the task's.
    OPTIONS = ("timeout", "save", "group", "hook", "cluster", "q_options", "ack_failure", "task_name", "broker", "sync")

    def async_task(self, func: str, *args: Any, **kwargs: Any) -> str:
        """django-q2's async_task, run here once the caller's transaction commits."""
        for option in self.OPTIONS:
            kwargs.pop(option, None)
        with self.lock:
            lost = self.lose.get(func, 0) > 0
            if lost:
                self.lose[func] -= 1
        if not lost:
            transaction.on_commit(lambda: self.submit(func, *args, **kwargs))
        return uuid.uuid4().hex

    def submit(self, func: str, *args: Any, **kwargs: Any) -> None:
        from django.db import connection

        target = pydoc.locate(func)
        assert callable(target), func

        def run() -> Any:
            try:
                return target(*args, **kwargs)
            finally:
                connection.close()

        with self.lock:
            self.futures.append((func, self.pool.submit(run)))

    def ran(self, func: str) -> int:
        with self.lock:
            return sum(f == func for f, _ in self.futures)

    def stop(self) -> None:
        from spoonfeeder import work

        work.STOP.set()
        try:
            with self.lock:
                futures = list(self.futures)
            wait([f for _, f in futures], timeout=30)
        finally:
            work.STOP.clear()
            self.pool.shutdown(wait=False, cancel_futures=True)
        failed = [(name, f.exception()) for name, f in futures if f.done() and f.exception()]
        failed = [(name, e) for name, e in failed if not isinstance(e, SystemExit)]
        assert not failed, f"tasks raised: {failed}"
