"""Login on every page, fragment and socket; CSRF on forms and htmx requests; origin checks."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from spoonfeeder import relay
from spoonfeeder.dashboard import broker
from tests.conftest import PASSWORD, Stack, communicator, session_for

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


# --- origins ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "host", "trusted", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", [], True),
        ("http://127.0.0.1", "127.0.0.1", [], True),
        ("http://127.0.0.1:80", "127.0.0.1", [], True),  # the scheme's own port, written out
        # Another web service on this machine is another origin: scheme, host and port all count.
        ("http://127.0.0.1:9999", "127.0.0.1:8000", [], False),
        ("http://localhost:9999", "localhost:8000", [], False),
        ("http://localhost:8000", "127.0.0.1:8000", [], False),
        ("https://127.0.0.1:8000", "127.0.0.1:8000", [], False),
        ("null", "127.0.0.1:8000", [], False),
        ("", "127.0.0.1:8000", [], False),
        ("http://127.0.0.1:8000", "evil.example:8000", [], False),  # a host that is not ours
        # Behind a proxy that ends TLS: the public origin is named in CSRF_TRUSTED_ORIGINS.
        ("https://studio.lab", "127.0.0.1:8000", ["https://studio.lab"], True),
        ("https://a.studio.lab", "127.0.0.1:8000", ["https://*.studio.lab"], True),
        ("https://studio.lab:8443", "127.0.0.1:8000", ["https://studio.lab"], False),
    ],
)
async def test_a_socket_is_let_in_only_from_the_page_own_origin(
    user: User, settings: Any, origin: str, host: str, trusted: list[str], allowed: bool
) -> None:
    from asgiref.sync import sync_to_async

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    settings.CSRF_TRUSTED_ORIGINS = trusted
    ws = communicator(origin=origin, host=host, session=await sync_to_async(session_for)(user))
    connected, _ = await ws.connect()
    if allowed:
        assert connected and 'id="worker"' in await ws.receive_from(timeout=10)  # live data only then
    else:
        assert not connected
    await ws.disconnect()
    await relay.stop()


# --- sockets whose login ends -----------------------------------------------------------------


async def closed_with(ws: Any, timeout: float) -> int:
    """The close code the socket ends with, skipping the live pages sent before it."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "the socket stayed open"
        message = await ws.receive_output(timeout=left)
        if message["type"] == "websocket.close":
            return int(message["code"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("end", ["session deleted", "session expired", "user deactivated", "password changed"])
async def test_a_socket_whose_login_ended_is_closed_for_good_within_seconds(
    user: User, settings: Any, end: str
) -> None:
    from asgiref.sync import sync_to_async
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    settings.SOCKET_RECHECK = 0.2
    key = await sync_to_async(session_for)(user)
    ws = communicator(session=key)
    assert (await ws.connect())[0]
    assert 'id="worker"' in await ws.receive_from(timeout=10)

    def finish() -> None:
        if end == "session deleted":
            Session.objects.filter(session_key=key).delete()
        elif end == "session expired":
            Session.objects.filter(session_key=key).update(expire_date=timezone.now())
        elif end == "user deactivated":
            User.objects.filter(pk=user.pk).update(is_active=False)
        else:
            user.set_password("another-long-password")
            user.save()

    await sync_to_async(finish)()
    assert await closed_with(ws, timeout=10) == 4401  # htmx does not retry it
    await ws.disconnect()
    await relay.stop()


@pytest.mark.django_db(transaction=True)
async def test_a_socket_whose_login_goes_on_stays_open(user: User, settings: Any) -> None:
    import asyncio

    from asgiref.sync import sync_to_async

    settings.SOCKET_RECHECK = 0.1
    ws = communicator(session=await sync_to_async(session_for)(user))
    assert (await ws.connect())[0]
    await ws.receive_from(timeout=10)
    loop = asyncio.get_running_loop()
    until = loop.time() + 1  # ten re-checks, with live pages among them but no close
    while loop.time() < until:
        if not await ws.receive_nothing(timeout=0.05):
            assert (await ws.receive_output(timeout=1))["type"] == "websocket.send"
    await ws.disconnect()
    await relay.stop()


def test_logging_out_closes_the_sessions_open_sockets_at_once(stack: Stack, user: User) -> None:
    import requests
    import websocket

    stack.web()
    browser = requests.Session()
    page = browser.get(f"{stack.url}/login/", timeout=5)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    browser.post(
        f"{stack.url}/login/",
        data={"username": "ada", "password": PASSWORD, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{stack.url}/login/"},
        timeout=5,
    )
    session = browser.cookies[settings.SESSION_COOKIE_NAME]
    sockets = [stack.socket(session, topics) for topics in ("dashboard", "renders")]  # two tabs
    for s in sockets:
        s.wait_for(lambda html: "id=" in html, 10, "the snapshot")

    dashboard = browser.get(f"{stack.url}/", timeout=5)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', dashboard.text)
    assert token
    started = time.monotonic()
    out = browser.post(
        f"{stack.url}/logout/", headers={"X-CSRFToken": token.group(1), "Referer": f"{stack.url}/"}, timeout=5
    )
    assert out.url == f"{stack.url}/login/"
    for s in sockets:
        s.ws.settimeout(5)
        # Frames as they come, without answering the close (recv_data would echo it, over a
        # connection the server may already have dropped): what the browser is told is the code.
        while (frame := s.ws.recv_frame()).opcode != websocket.ABNF.OPCODE_CLOSE:
            pass
        assert int.from_bytes(frame.data[:2], "big") == 4401
    # Long before the periodic re-check (SOCKET_RECHECK) would have noticed.
    assert time.monotonic() - started < settings.SOCKET_RECHECK


# --- the content security policy ----------------------------------------------------------------


def test_every_response_carries_a_content_security_policy(client: Client, logged_in: Client) -> None:
    answers = [client.get(reverse("login")), client.get("/"), logged_in.get("/"), logged_in.get("/nope/")]
    for answer in answers:
        policy = answer["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "style-src 'self';" in policy, policy
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
        assert policy.endswith("connect-src 'self' ws://testserver")  # the page's own socket
        assert "unsafe" not in policy


def test_no_page_carries_an_inline_script_style_or_handler(logged_in: Client) -> None:
    from renders.management.commands.load_templates import load
    from tests.test_story_pages import TABS, story_with

    load()
    story = story_with()
    urls = [reverse(n) for n in ("dashboard", "nodes:index", "renders:index", "renders:templates", "stories:index")]
    urls += [reverse("stories:tab", args=[story.code, tab]) for tab in TABS]
    urls += [reverse("login")]
    for url in urls:
        html = logged_in.get(url).content.decode()
        assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), url  # only scripts from files
        assert not re.search(r"<style|\sstyle=", html), url
        assert not re.search(r"\son[a-z]+=|\shx-on|javascript:|js:", html), url
        assert not re.search(r"\[[^\]]*\(\)\]", html), url  # an htmx trigger filter is eval


# --- login throttling ---------------------------------------------------------------------------


def try_login(client: Client, name: str = "ada", password: str = "wrong", source: str = "127.0.0.7") -> str:
    answer = client.post(reverse("login"), {"username": name, "password": password}, REMOTE_ADDR=source)
    if answer.status_code == 302:
        return "in"
    return answer.content.decode()


@pytest.fixture
def throttle(db: None) -> Iterator[None]:
    """Clean counts: the cache outlives a test in Redis."""
    from django.core.cache import cache

    cache.delete_many([f"login-failures:{k}" for k in ("name:ada", "name:bob", "source:127.0.0.7", "source:127.0.0.8")])
    yield
    cache.delete_many([f"login-failures:{k}" for k in ("name:ada", "name:bob", "source:127.0.0.7", "source:127.0.0.8")])


def test_failed_logins_slow_down_then_lock_out_and_a_success_clears_them(
    client: Client, user: User, throttle: None, settings: Any
) -> None:
    settings.LOGIN_SLOW_AFTER, settings.LOGIN_LOCK_AFTER = 3, 6  # every password check takes a while
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(3):
            assert "do not match" in try_login(client)
        # The sixth try comes too soon, even with the right password: it is not even checked.
        refused = try_login(client, password=PASSWORD)
        assert "Too many failed logins for this address: wait 1 s" in refused and "do not match" not in refused
        waits = []
        for _ in range(3):  # each failure doubles the wait
            wait = int(re.search(r"wait (\d+) s", try_login(client)).group(1))  # type: ignore[union-attr]
            waits.append(wait)
            clock.shift(wait)
            assert "do not match" in try_login(client)
        assert waits == [1, 2, 4]
        locked = try_login(client, password=PASSWORD)
        until = (timezone.now() + timedelta(seconds=settings.LOGIN_LOCK_SECONDS)).strftime("%H:%M:%S")
        assert f"Login is locked for this address after 6 failed tries, until {until}" in locked
        clock.shift(settings.LOGIN_LOCK_SECONDS - 1)
        assert "Login is locked" in try_login(client, password=PASSWORD)
        clock.shift(1)
        assert try_login(client, password=PASSWORD) == "in"
        client.logout()
        # A success clears the counts: the next failure is an ordinary one.
        assert "do not match" in try_login(client)


def test_a_user_name_tried_from_many_addresses_and_many_names_from_one_are_both_slowed(
    client: Client, user: User, throttle: None, settings: Any
) -> None:
    settings.LOGIN_SLOW_AFTER = 3
    with time_machine.travel(timezone.now(), tick=False):
        for n in range(3):
            assert "do not match" in try_login(client, source=f"127.0.1.{n}")
        assert "Too many failed logins for this user name" in try_login(client, source="127.0.1.99")
        for name in ("bob", "carl", "dora"):
            try_login(client, name=name, source="127.0.0.8")
        assert "Too many failed logins for this address" in try_login(client, name="gus", source="127.0.0.8")


def test_the_admin_login_is_the_throttled_one(client: Client, db: None) -> None:
    answer = client.get("/admin/login/?next=/admin/")
    assert answer.status_code == 302 and answer["Location"] == "/login/?next=/admin/"
