"""The web server: daphne, with bounds on what a client may send before Spoon Feeder reads it.

Daphne reads a whole request body (into memory, on its way to the application) before the
application sees the request, so a limit set in Django comes too late: a 1 GB POST would already
be held by the server. Here each request's body is refused as soon as its headers say it is too
large (Content-Length), or as soon as a chunked body grows past its limit, with a page that says
the limit. WebSocket messages are bounded by daphne's own options, set here. `manage.py run` and the tests start the
web server as `python -m spoonfeeder.web`, which takes daphne's own arguments.
"""

from __future__ import annotations

import html
import os
import sys
from typing import Any

from daphne import server as daphne_server
from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from django.conf import settings


def size(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MB"
    return f"{n / 2**10:.0f} KB" if n >= 2**10 else f"{n} bytes"


def body_limit(path: str, logged_in: bool) -> tuple[int, str]:
    """The largest body a request to `path` may send, and what the limit is for (for the message).

    Whether the sender is logged in is judged on the session cookie's presence alone, without the
    database: a forged cookie gets no more than a logged-in user's limit, and Django then refuses
    the request itself.
    """
    if not logged_in:
        return settings.BODY_LIMIT_ANONYMOUS, "a request without a login"
    if path.startswith(settings.UPLOAD_PATHS):
        return settings.UPLOAD_LIMIT, "an upload"
    return settings.BODY_LIMIT, "a form"


def refusal(received: int | None, limit: int, what: str) -> str:
    sent = f"The request's body is {size(received)}" if received is not None else "The request's body is too large"
    return f"{sent}; {what} may send at most {size(limit)}. Nothing was read or changed."


class BoundedRequest(WebRequest):
    refused = False
    received = 0
    limit = 0
    what = ""

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        path = channel._path.split(b"?", 1)[0].decode("latin-1")
        logged_in = settings.SESSION_COOKIE_NAME.encode() in self.received_cookies
        self.limit, self.what = body_limit(path, logged_in)
        if length is not None and length > self.limit:
            self.refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        if self.received > self.limit:  # a chunked body, counted as it comes
            self.refuse(None)
            return
        super().handleContentChunk(data)

    def refuse(self, length: int | None) -> None:
        """Answer 413 with the limit in words and close, reading none of the body."""
        self.refused = True
        # Twisted would answer "100 Continue" after this, inviting the body we refuse.
        self.requestHeaders.removeHeader(b"expect")
        text = html.escape(refusal(length, self.limit, self.what))
        body = (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>Request too large · Spoon Feeder</title>"
            f"<h1>Request too large</h1><p>{text}</p></html>"
        ).encode()
        head = (
            "HTTP/1.1 413 Content Too Large\r\n"
            "Content-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Content-Security-Policy: {settings.CONTENT_SECURITY_POLICY}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        transport = self.channel.transport
        transport.write(head + body)
        transport.loseConnection()

    def process(self) -> Any:
        if self.refused:
            return None
        return super().process()


class BoundedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedRequest
        return protocol


def main(argv: list[str]) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "spoonfeeder.settings")
    django.setup()
    daphne_server.HTTPFactory = BoundedHTTPFactory  # type: ignore[misc]
    # Pages send nothing over the live socket: a client that sends more is cut off.
    limit = str(settings.SOCKET_MESSAGE_LIMIT)
    CommandLineInterface().run(["--websocket-max-message-size", limit, "--websocket-max-frame-size", limit, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
