from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import auth, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.middleware import HtmxDetails

from nodes import timeline
from spoonfeeder import dashboard as board
from spoonfeeder import security
from spoonfeeder.tasks import enqueue


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def done(request: HtmxHttpRequest, message: str, to: str, *, error: bool = False) -> HttpResponse:
    """Answer an action: an htmx request gets the message swapped in place (the change itself
    arrives over the live socket); a plain form post is redirected with the message."""
    (messages.error if error else messages.success)(request, message)
    if request.htmx:
        return render(request, "base.html#messages", {"oob": True}, status=200)
    return redirect(to)


def dashboard(request: HttpRequest) -> HttpResponse:
    # The pool's timeline has a topic of its own (nodes/live.py): the dashboard's topic is redrawn
    # every few seconds, and the timeline only when work starts or ends or a check is stored.
    return render(request, "spoonfeeder/dashboard.html", board.context() | timeline.context())


@require_POST
def test_task(request: HtmxHttpRequest) -> HttpResponse:
    seconds = 2.0 if request.POST.get("length") == "long" else 0.5
    enqueue("spoonfeeder.tasks.selftest", seconds, task_name=f"test task by {request.user}")
    return done(request, "A test task was queued; watch the counts change.", "dashboard")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    key = request.session.session_key
    auth.logout(request)
    if key:  # the live sockets this session opened stop at once (code 4401: htmx does not retry)
        async_to_sync(get_channel_layer().group_send)(security.session_group(key), {"type": "live.logout"})
    return redirect(settings.LOGOUT_REDIRECT_URL)
