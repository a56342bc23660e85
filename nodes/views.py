from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from nodes import pool, timeline
from nodes.forms import DiscoverForm, NodeForm
from nodes.models import Discovery, Node
from spoonfeeder.tasks import enqueue
from spoonfeeder.views import HtmxHttpRequest, done


def page(form: DiscoverForm) -> dict[str, Any]:
    """What the Nodes page shows: the pool, its last hour, and the discover form."""
    ctx = pool.context()
    return {**ctx, **timeline.context(ctx["nodes"]), "discover_form": form}


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "nodes/index.html", page(DiscoverForm()))


def edit(request: HttpRequest, code: str | None = None) -> HttpResponse:
    """Add a node (no code) or edit one; either way it is checked right after."""
    node = get_object_or_404(Node, code=code) if code else None
    form = NodeForm(request.POST or None, instance=node)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        enqueue("nodes.tasks.check_node", str(saved.code))
        messages.success(request, f"{'Saved' if node else 'Added'} {saved.name}; checking it now.")
        return redirect("nodes:index")
    return render(request, "nodes/form.html", {"form": form, "node": node})


@require_POST
def toggle(request: HtmxHttpRequest, code: str) -> HttpResponse:
    node = get_object_or_404(Node, code=code)
    node.set_enabled(not node.enabled)
    return done(request, f"{node.name} is {'enabled' if node.enabled else 'disabled'}.", "nodes:index")


def remove(request: HttpRequest, code: str) -> HttpResponse:
    node = get_object_or_404(Node, code=code)
    reason = node.busy_reason()
    if request.method == "POST":
        reason = node.remove()
        if reason:
            messages.error(request, f"{node.name} was not removed: {reason}.")
        else:
            messages.success(request, f"Removed {node.name}.")
        return redirect("nodes:index")
    return render(request, "nodes/remove.html", {"node": node, "reason": reason})


@require_POST
def check(request: HtmxHttpRequest, code: str) -> HttpResponse:
    node = get_object_or_404(Node, code=code)
    enqueue("nodes.tasks.check_node", str(node.code))
    return done(request, f"Checking {node.name}; the result appears here.", "nodes:index")


@require_POST
def discover(request: HttpRequest) -> HttpResponse:
    form = DiscoverForm(request.POST)
    if not form.is_valid():
        return render(request, "nodes/index.html", page(form), status=400)
    with transaction.atomic():
        run = Discovery.objects.create(
            targets=form.cleaned_data["targets"],
            ollama_port=form.cleaned_data["ollama_port"],
            comfyui_port=form.cleaned_data["comfyui_port"],
        )
        enqueue("nodes.tasks.run_discovery", str(run.code))
    messages.success(request, f"Discovering {len(form.hosts)} address(es); results appear below.")
    return redirect("nodes:index")
