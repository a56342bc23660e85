"""The event path across processes: a worker commits, the web process relays, a browser's socket
receives the fragment. Runs on whichever mode the suite runs in (SQLite + ORM broker, or
PostgreSQL + Redis)."""

from __future__ import annotations

import signal

from django.contrib.auth.models import User

from spoonfeeder.tasks import enqueue
from tests.conftest import Stack, count, session_for


def test_a_task_run_by_the_worker_reaches_a_websocket_client(stack: Stack, user: User) -> None:
    stack.web()
    stack.worker()
    sock = stack.socket(session_for(user))
    snapshot = sock.wait_for(lambda m: 'id="tasks"' in m, 10, "the snapshot")
    assert count(snapshot, "done") == 0
    sock.wait_for(lambda m: "Running" in m and 'id="worker"' in m, 20, "the worker to be shown alive")

    enqueue("spoonfeeder.tasks.selftest", 0.1)

    sock.wait_for(lambda m: count(m, "done") == 1, 20, "the done count to reach 1")
    assert count(sock.seen[-1], "failed") == 0


def test_a_failing_task_shows_as_failed_with_its_error(stack: Stack, user: User) -> None:
    stack.web()
    stack.worker()
    sock = stack.socket(session_for(user))

    enqueue("math.sqrt", -1)

    html = sock.wait_for(lambda m: count(m, "failed") == 1, 20, "the failed count to reach 1")
    assert "math domain error" in html
    assert 'id="errors"' in html


def test_a_socket_that_reconnects_gets_what_it_missed(stack: Stack, user: User) -> None:
    stack.web()
    stack.worker()
    session = session_for(user)
    sock = stack.socket(session)
    sock.wait_for(lambda m: count(m, "done") == 0, 10, "the snapshot")
    sock.close()

    enqueue("spoonfeeder.tasks.selftest", 0)
    enqueue("spoonfeeder.tasks.selftest", 0)
    # Watch for completion from a second page, so the first one is surely away when it happens.
    other = stack.socket(session)
    other.wait_for(lambda m: count(m, "done") == 2, 20, "both tasks to finish")

    again = stack.socket(session)
    snapshot = again.wait_for(lambda m: 'id="tasks"' in m, 10, "the snapshot after reconnecting")
    assert count(snapshot, "done") == 2


def test_a_killed_worker_shows_as_down_and_back_and_loses_no_event(stack: Stack, user: User) -> None:
    stack.web()
    worker = stack.worker()
    sock = stack.socket(session_for(user))
    sock.wait_for(lambda m: "Running" in m and 'id="worker"' in m, 20, "the worker to be shown alive")

    worker.signal(signal.SIGKILL, group=True)
    worker.wait(5)
    sock.wait_for(lambda m: "No worker is running" in m, 10, "the worker to be shown down")

    # Work queued while the worker is down is done, and shown, once it is back.
    enqueue("spoonfeeder.tasks.selftest", 0)
    stack.worker()
    sock.wait_for(lambda m: "Running" in m and 'id="worker"' in m, 20, "the worker to be shown back")
    sock.wait_for(lambda m: count(m, "done") == 1, 20, "the queued task to be done")
