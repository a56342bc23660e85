from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.middleware import HtmxDetails

from spoonfeeder import dashboard as board
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
    return render(request, "spoonfeeder/dashboard.html", board.context())


@require_POST
def test_task(request: HtmxHttpRequest) -> HttpResponse:
    seconds = 2.0 if request.POST.get("length") == "long" else 0.5
    enqueue("spoonfeeder.tasks.selftest", seconds, task_name=f"test task by {request.user}")
    return done(request, "A test task was queued; watch the counts change.", "dashboard")
