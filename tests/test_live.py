"""The event outbox and its relay, inside one web process."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import time_machine
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.db import close_old_connections, transaction
from django.utils import timezone
from django_q.models import Task

from spoonfeeder import relay
from spoonfeeder.asgi import application
from spoonfeeder.models import Event
from tests.conftest import count, session_for


def finish_task(success: bool = True) -> None:
    """What the worker's monitor does when a task ends: the result row and its event, together."""
    now = timezone.now()
    with transaction.atomic():
        task = Task.objects.create(
            id=uuid.uuid4().hex,
            name="t",
            func="spoonfeeder.tasks.selftest",
            started=now,
            stopped=now,
            success=success,
            result=None if success else "boom : Traceback ...",
        )
        Event.emit("dashboard", "task.done" if success else "task.failed", task.id)


async def connect(user: User) -> WebsocketCommunicator:
    session = await sync_to_async(session_for)(user)
    ws = WebsocketCommunicator(
        application,
        "/ws/live/?topics=dashboard",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()),
        ],
    )
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

    await sync_to_async(finish_task)()
    await receive_until(ws, lambda html: count(html, "done") == 1)
    await sync_to_async(finish_task)(success=False)
    await receive_until(ws, lambda html: count(html, "failed") == 1)
    await ws.disconnect()
    await relay.stop()


@pytest.mark.django_db(transaction=True)
async def test_a_burst_of_events_is_sent_as_the_latest_state(user: User) -> None:
    ws = await connect(user)
    await ws.receive_from(timeout=10)
    await relay.stop()  # hold the relay while the burst is written

    for _ in range(30):
        await sync_to_async(finish_task)()
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

    def fail_with_markup() -> None:
        now = timezone.now()
        with transaction.atomic():
            Task.objects.create(
                id=uuid.uuid4().hex,
                name="<b>bold</b>",
                func="x",
                started=now,
                stopped=now,
                success=False,
                result="<script>alert(1)</script> : Traceback",
            )
            Event.emit("dashboard", "task.failed")

    await sync_to_async(fail_with_markup)()
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
