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


def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "spoonfeeder/dashboard.html", board.context())


@require_POST
def test_task(request: HtmxHttpRequest) -> HttpResponse:
    seconds = 2.0 if request.POST.get("length") == "long" else 0.5
    enqueue("spoonfeeder.tasks.selftest", seconds, task_name=f"test task by {request.user}")
    if request.htmx:
        # The counts arrive over the live socket; nothing to swap here.
        return HttpResponse(status=204)
    messages.success(request, "A test task was queued; watch the counts change.")
    return redirect("dashboard")
