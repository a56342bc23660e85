"""What the dashboard shows: the worker's heartbeat, task counts of the last hour, recent errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from spoonfeeder.dashboard import broker
from spoonfeeder.models import Event
from spoonfeeder.tasks import enqueue
from tests.conftest import count, finished_task


def test_it_counts_the_last_hour_of_tasks(logged_in: Client, django_capture_on_commit_callbacks: Any) -> None:
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
