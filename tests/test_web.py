"""The web server's own bounds (spoonfeeder/web.py), against a real daphne: a body over its limit is
refused before it is read, with the limit in words, and a socket message over its limit closes
the socket. Each test sends what an attacker or a careless client would, over a raw connection."""

from __future__ import annotations

import re
import socket
import time

import pytest
import websocket
from django.conf import settings
from django.contrib.auth.models import User

from tests.conftest import Stack, session_for


def connect(stack: Stack) -> socket.socket:
    return socket.create_connection((stack.host, stack.port), timeout=10)


def answer(s: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout` passes)."""
    s.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        got += chunk
    return got


def head(path: str, host: str, *lines: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", f"Host: {host}", *lines, "", ""])).encode()


def status(reply: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    assert m, reply[:200]
    return int(m.group(1))


@pytest.fixture
def web(stack: Stack) -> Stack:
    stack.web()
    return stack


def test_a_gigabyte_posted_without_a_login_is_refused_before_a_byte_of_it_is_read(web: Stack) -> None:
    host = f"{web.host}:{web.port}"
    with connect(web) as s:
        # The headers alone: a server that waits for the body before answering never answers.
        s.sendall(head("/login/", host, "Content-Type: application/x-www-form-urlencoded", f"Content-Length: {2**30}"))
        reply = answer(s)
    assert status(reply) == 413
    assert b"1.0 GB" in reply and b"a request without a login may send at most 64 KB" in reply
    assert b"Content-Security-Policy:" in reply
    # The server goes on serving.
    with connect(web) as s:
        s.sendall(f"GET /login/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert status(answer(s)) == 200


def test_a_chunked_body_is_counted_as_it_comes_and_cut_off_at_the_limit(web: Stack) -> None:
    host = f"{web.host}:{web.port}"
    chunk = b"a" * 8192
    sent = 0
    with connect(web) as s:
        s.sendall(
            head("/login/", host, "Content-Type: application/x-www-form-urlencoded", "Transfer-Encoding: chunked")
        )
        try:
            for _ in range(64):  # 512 KB at the most, far past the limit
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while sending: what the answer says is what counts
        reply = answer(s)
    assert status(reply) == 413, reply[:300]
    assert b"a request without a login may send at most 64 KB" in reply
    assert sent > settings.BODY_LIMIT_ANONYMOUS


def test_a_logged_in_form_and_an_upload_have_their_own_limits(web: Stack, user: User) -> None:
    host = f"{web.host}:{web.port}"
    cookie = f"Cookie: {settings.SESSION_COOKIE_NAME}={session_for(user)}"
    cases = [
        ("/stories/", 2 * 2**20, b"a form may send at most 1.0 MB"),
        ("/renders/templates/import/", 6 * 2**20, b"an upload may send at most 5.5 MB"),
    ]
    for path, length, says in cases:
        with connect(web) as s:
            s.sendall(
                head(path, host, cookie, "Content-Type: multipart/form-data; boundary=x", f"Content-Length: {length}")
            )
            reply = answer(s)
        assert status(reply) == 413, path
        assert says in reply, reply[-300:]


def test_a_body_within_its_limit_reaches_the_page(web: Stack) -> None:
    host = f"{web.host}:{web.port}"
    body = b"username=ada&password=" + b"x" * 1000
    with connect(web) as s:
        s.sendall(
            head("/login/", host, "Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}")
            + body
        )
        reply = answer(s, timeout=5)
    assert status(reply) == 403  # Django's CSRF check: the body was read and judged by the page


def test_a_socket_message_over_its_limit_closes_the_socket(web: Stack, user: User) -> None:
    ws = websocket.create_connection(
        f"ws://{web.host}:{web.port}/ws/live/?topics=dashboard",
        cookie=f"{settings.SESSION_COOKIE_NAME}={session_for(user)}",
        origin=web.url,
        timeout=10,
    )
    assert 'id="worker"' in ws.recv()  # a live page's snapshot
    ws.send("x" * (settings.SOCKET_MESSAGE_LIMIT + 1))
    # The server drops the connection without reading the message.
    deadline = time.monotonic() + 10
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionResetError)):
        while time.monotonic() < deadline:
            ws.recv()
    ws.close()
