"""Login on every page, fragment and socket; CSRF on forms and htmx requests; origin checks."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from spoonfeeder import relay
from spoonfeeder.dashboard import broker
from tests.conftest import communicator, session_for

PUBLIC = {"/login/", "/admin/login/"}


def plain_paths(patterns: list[URLPattern | URLResolver], prefix: str = "") -> list[str]:
    """Every URL without parameters, so that a new page cannot forget its login check."""
    found = []
    for p in patterns:
        route = str(p.pattern)
        if "<" in route or "(?P" in route or "^" in route.lstrip("^") or "$" in route.rstrip("$"):
            continue
        route = route.lstrip("^").rstrip("$")
        if isinstance(p, URLResolver):
            found += plain_paths(p.url_patterns, prefix + route)
        else:
            found.append("/" + prefix + route)
    return found


def test_every_page_sends_an_anonymous_visitor_to_log_in(client: Client, db: None) -> None:
    paths = set(plain_paths(get_resolver().url_patterns)) - PUBLIC
    assert {"/", "/nodes/", "/renders/", "/stories/", "/schedules/", "/admin/"} <= paths
    for path in sorted(paths):
        answer = client.get(path)
        assert answer.status_code == 302, path
        assert answer["Location"].split("?")[0] in ("/login/", "/admin/login/"), path


def test_an_anonymous_post_changes_nothing(client: Client, db: None) -> None:
    broker().purge_queue()
    answer = client.post(reverse("test-task"))
    assert answer.status_code == 302
    assert broker().queue_size() == 0


def test_pages_show_for_a_logged_in_user(logged_in: Client) -> None:
    for name in ("dashboard", "nodes:index", "renders:index", "stories:index", "scheduling:index"):
        answer = logged_in.get(reverse(name))
        assert answer.status_code == 200, name
        assert b'id="live-status"' in answer.content


def test_htmx_posts_need_the_csrf_token(user: User, django_capture_on_commit_callbacks: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    broker().purge_queue()
    refused = client.post(reverse("test-task"), headers={"HX-Request": "true"})
    assert refused.status_code == 403
    assert broker().queue_size() == 0

    page = client.get(reverse("dashboard"))
    token = page.context["csrf_token"]
    assert f'"X-CSRFToken": "{token}"' in page.content.decode()  # htmx sends it from <body>
    with django_capture_on_commit_callbacks(execute=True):  # a request commits as it ends
        accepted = client.post(reverse("test-task"), headers={"HX-Request": "true", "X-CSRFToken": str(token)})
    assert accepted.status_code == 200
    assert b"A test task was queued" in accepted.content
    assert broker().queue_size() == 1
    broker().purge_queue()


def test_logging_in_and_out(client: Client, user: User) -> None:
    answer = client.post(reverse("login"), {"username": "ada", "password": "wrong"})
    assert b"do not match" in answer.content
    answer = client.post(reverse("login"), {"username": "ada", "password": "a-long-test-password"})
    assert answer["Location"] == reverse("dashboard")
    client.post(reverse("logout"))
    assert client.get(reverse("dashboard")).status_code == 302


@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_socket_is_closed_for_good() -> None:
    ws = communicator()
    connected, _ = await ws.connect()
    assert connected
    # 4401: htmx does not retry, so a logged-out page does not hammer the server.
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_socket_from_another_origin_is_refused(user: User) -> None:
    from asgiref.sync import sync_to_async

    ws = communicator(origin="http://evil.example", session=await sync_to_async(session_for)(user))
    connected, _ = await ws.connect()
    assert not connected
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_socket_asking_for_an_unknown_topic_is_closed(user: User) -> None:
    from asgiref.sync import sync_to_async

    ws = communicator(session=await sync_to_async(session_for)(user), topics="dashboard,secrets")
    await ws.connect()
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4404}
    await ws.disconnect()
    await relay.stop()
