"""The event outbox and its relay, inside one web process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from importlib import import_module

import pytest
import time_machine
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.contrib.auth.models import User
from django.db import close_old_connections
from django.utils import timezone
from django_q.models import Schedule, Task

from spoonfeeder import relay
from spoonfeeder.models import Event
from spoonfeeder.tasks import prune
from tests.conftest import communicator, count, finished_task, session_for


async def connect(user: User) -> WebsocketCommunicator:
    ws = communicator(await sync_to_async(session_for)(user))
    connected, _ = await ws.connect()
    assert connected
    return ws


async def receive_until(ws: WebsocketCommunicator, check: Callable[[str], bool]) -> str:
    while True:
        html = await ws.receive_from(timeout=10)
        if check(html):
            return html


@pytest.mark.django_db(transaction=True)
async def test_a_socket_gets_a_snapshot_then_every_change(user: User) -> None:
    ws = await connect(user)
    snapshot = await ws.receive_from(timeout=10)
    for element in ('id="worker"', 'id="tasks"', 'id="errors"'):
        assert element in snapshot
    assert count(snapshot, "done") == 0

    await sync_to_async(finished_task)()
    await receive_until(ws, lambda html: count(html, "done") == 1)
    await sync_to_async(finished_task)(success=False)
    await receive_until(ws, lambda html: count(html, "failed") == 1)
    await ws.disconnect()
    await relay.stop()


@pytest.mark.django_db(transaction=True)
async def test_a_burst_of_events_is_sent_as_the_latest_state(user: User) -> None:
    ws = await connect(user)
    await ws.receive_from(timeout=10)
    await relay.stop()  # hold the relay while the burst is written
    while not await ws.receive_nothing(timeout=0.2):
        await ws.receive_from()  # what the relay sent before it stopped

    for _ in range(30):
        await sync_to_async(finished_task)()
    relay.ensure_running()
    html = await ws.receive_from(timeout=10)
    assert count(html, "done") == 30  # one push for the burst, already up to date
    assert await ws.receive_nothing(timeout=0.3)
    assert await sync_to_async(Event.objects.filter(relayed=None).count)() == 0
    await ws.disconnect()
    await relay.stop()


@pytest.mark.django_db(transaction=True)
async def test_model_text_is_escaped_in_pushed_fragments(user: User) -> None:
    ws = await connect(user)
    await ws.receive_from(timeout=10)

    await sync_to_async(finished_task)(False, error="<script>alert(1)</script>", name="<b>bold</b>")
    html = await receive_until(ws, lambda html: count(html, "failed") == 1)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html and "<b>bold" not in html
    await ws.disconnect()
    await relay.stop()


@pytest.mark.django_db(transaction=True)
def test_each_event_is_claimed_by_exactly_one_relay() -> None:
    Event.objects.bulk_create(Event(topic="dashboard", kind="test", ref=str(i)) for i in range(200))
    claimed: list[list[int]] = [[], [], []]

    def claimer(mine: list[int]) -> None:
        try:
            while batch := Event.objects.claim(limit=7):
                mine.extend(e.id for e in batch)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=claimer, args=(c,)) for c in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    everything = [i for c in claimed for i in c]
    assert len(everything) == len(set(everything)) == 200


@pytest.mark.django_db
def test_old_events_are_pruned_after_the_retention(settings: object) -> None:
    with time_machine.travel(timezone.now() - timedelta(days=2)):
        Event.emit("dashboard", "old")
    Event.emit("dashboard", "new")
    Event.objects.prune()
    assert list(Event.objects.values_list("kind", flat=True)) == ["new"]


@pytest.mark.django_db
def test_pruning_is_scheduled_hourly_exactly_once() -> None:
    migration = import_module("spoonfeeder.migrations.0002_prune_schedule")
    migration.add_schedule(apps, None)
    migration.add_schedule(apps, None)  # migrating again never adds a second one
    schedule = Schedule.objects.get(func="spoonfeeder.tasks.prune")
    assert schedule.schedule_type == Schedule.HOURLY and schedule.repeats < 0


@pytest.mark.django_db
def test_the_prune_task_removes_old_events_and_task_results() -> None:
    old = finished_task(age=timedelta(days=30))
    with time_machine.travel(timezone.now() - timedelta(days=30)):
        Event.emit("dashboard", "old")
    kept = finished_task()
    assert prune().startswith("pruned")
    assert list(Task.objects.values_list("id", flat=True)) == [kept.id]
    assert not Task.objects.filter(id=old.id).exists()
    assert not Event.objects.filter(kind="old").exists()


@pytest.mark.django_db(transaction=True)
def test_a_page_drawn_at_one_moment_reads_an_expired_cache_entry_after_another_commit() -> None:
    """Fragments are drawn inside a read transaction (work.one_moment); a cache read there that
    finds an expired entry (a stopped cluster's heartbeat, on the dashboard) writes nothing, so
    a commit made meanwhile by another process does not make it fail."""
    from django.core.cache import cache
    from django.db import connections

    from spoonfeeder import work

    cache.set("a-stopped-cluster", "its heartbeat", timeout=0)  # expired at once

    def commit_elsewhere() -> None:
        try:
            Event.emit("dashboard", "elsewhere")
        finally:
            connections.close_all()

    with work.one_moment():
        before = Event.objects.count()  # the moment is taken here
        elsewhere = threading.Thread(target=commit_elsewhere)
        elsewhere.start()
        elsewhere.join()
        assert cache.get("a-stopped-cluster") is None
        assert Event.objects.count() == before
    assert Event.objects.count() == before + 1
