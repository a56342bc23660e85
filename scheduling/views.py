from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_q.models import Schedule


def index(request: HttpRequest) -> HttpResponse:
    schedules = Schedule.objects.order_by("next_run")
    return render(request, "scheduling/index.html", {"schedules": schedules})
