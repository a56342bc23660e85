"""What the dashboard shows: the worker's heartbeat, task counts of the last hour, recent errors."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Task
from django_q.signing import SignedPackage
from django_q.status import Stat, Status

from spoonfeeder.dashboard import broker
from spoonfeeder.models import Event
from spoonfeeder.tasks import enqueue
from tests.conftest import count, finished_task


def heartbeat(started: datetime, workers: int = 2, status: str = Conf.IDLE) -> None:
    """What a live cluster's sentinel saves every half second: its Stat, where the broker keeps
    them, for three seconds. django-q2 says "Idle" while its workers run tasks."""
    stat = Status(pid=4242, cluster_id=uuid.uuid4())
    stat.tob, stat.status, stat.workers, stat.host = started, str(status), list(range(workers)), "lab"
    broker().set_stat(Stat.get_key(stat.cluster_id), SignedPackage.dumps(stat, True), 3)


def worker_card(html: str) -> str:
    return html.partition('id="worker"')[2].partition("</section>")[0]


def test_it_counts_the_last_hour_of_tasks(logged_in: Client, django_capture_on_commit_callbacks: Any) -> None:
    cache.clear()
    heartbeat(timezone.now() - timedelta(hours=1))
    broker().purge_queue()
    with django_capture_on_commit_callbacks(execute=True):
        enqueue("spoonfeeder.tasks.selftest", 0)
        enqueue("spoonfeeder.tasks.selftest", 0)
    finished_task(True)
    finished_task(True)
    finished_task(True, age=timedelta(hours=2))  # too old to count
    finished_task(False, error="ValueError: no")
    Event.emit("dashboard", "task.started", "still-going")
    Event.emit("dashboard", "task.started", finished_task(True).id)  # started, and finished since

    html = logged_in.get(reverse("dashboard")).content.decode()
    assert (count(html, "queued"), count(html, "running"), count(html, "done"), count(html, "failed")) == (
        2,
        1,
        3,
        1,
    )
    broker().purge_queue()


def test_it_lists_recent_errors_with_their_message_not_the_traceback(logged_in: Client) -> None:
    finished_task(False, error="ZeroDivisionError: division by zero")
    html = logged_in.get(reverse("dashboard")).content.decode()
    assert "ZeroDivisionError: division by zero" in html
    assert "most recent call last" not in html


def test_with_no_worker_alive_it_says_so_and_how_to_start_one(logged_in: Client) -> None:
    cache.clear()  # no heartbeat from any cluster
    html = logged_in.get(reverse("dashboard")).content.decode()
    assert "No worker is running." in html
    assert "manage.py qcluster" in html and "make run" in html


def test_the_test_task_button_queues_a_task_and_says_so(
    logged_in: Client, django_capture_on_commit_callbacks: Any
) -> None:
    broker().purge_queue()
    with django_capture_on_commit_callbacks(execute=True):
        answer = logged_in.post(reverse("test-task"), follow=True)
    assert "A test task was queued" in answer.content.decode()
    assert broker().queue_size() == 1
    assert Event.objects.filter(kind="task.queued").count() == 1
    broker().purge_queue()


def test_a_live_worker_is_busy_while_its_tasks_run_and_idle_once_they_end(logged_in: Client) -> None:
    cache.clear()
    heartbeat(timezone.now() - timedelta(minutes=5), workers=4)
    Event.emit("dashboard", "task.started", "a")
    Event.emit("dashboard", "task.started", "b")

    html = logged_in.get(reverse("dashboard")).content.decode()
    assert count(html, "running") == 2
    assert "Running — busy: 2 tasks running" in worker_card(html)
    assert "4 workers · " in worker_card(html) and "idle" not in worker_card(html)

    for ref in ("a", "b"):
        Event.objects.filter(ref=ref).update(ref=finished_task(True).id)
    html = logged_in.get(reverse("dashboard")).content.decode()
    assert (count(html, "running"), count(html, "done")) == (0, 2)
    assert "Running — idle" in worker_card(html) and "busy" not in worker_card(html)


def test_a_task_cut_off_with_its_worker_is_not_shown_running(logged_in: Client) -> None:
    # It started under a cluster that was killed; the one running now started after it.
    cache.clear()
    Event.objects.create(
        topic="dashboard", kind="task.started", ref="cut-off", created=timezone.now() - timedelta(minutes=10)
    )
    heartbeat(timezone.now() - timedelta(minutes=1))
    html = logged_in.get(reverse("dashboard")).content.decode()
    assert count(html, "running") == 0
    assert "Running — idle" in worker_card(html)

    cache.clear()  # and then no worker at all: nothing can be running
    Event.emit("dashboard", "task.started", "also-cut-off")
    html = logged_in.get(reverse("dashboard")).content.decode()
    assert count(html, "running") == 0
    assert "No worker is running." in worker_card(html)


def test_a_worker_whose_heartbeat_is_late_while_tasks_end_is_not_called_gone(logged_in: Client) -> None:
    cache.clear()  # no heartbeat has come for a while
    ended = finished_task(True)  # but a worker saved a result just now
    html = logged_in.get(reverse("dashboard")).content.decode()
    assert count(html, "done") == 1
    assert "No worker is running" not in html
    assert (
        f"Running — a task ended at {timezone.localtime(ended.stopped):%H:%M:%S}, but the worker's heartbeat is late."
        in worker_card(html)
    )

    Task.objects.update(stopped=timezone.now() - timedelta(minutes=1))  # a minute on, still nothing
    html = logged_in.get(reverse("dashboard")).content.decode()
    assert "No worker is running." in worker_card(html)
