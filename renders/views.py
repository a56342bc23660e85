from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from nodes.models import Capability, Node
from renders import queue
from renders.forms import KEPT_ON_SWITCH, RenderForm, TemplateForm
from renders.models import Queue, RenderJob, Template
from spoonfeeder.views import HtmxHttpRequest, done
from stories.models import Story


def index(request: HtmxHttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    story = request.GET.get("story", "")
    try:
        page = max(int(request.GET.get("page", "1")), 1)
    except ValueError:
        page = 1
    posted = request.method == "POST"
    form = RenderForm(request.POST, request.FILES) if posted else RenderForm(**form_start(request))
    if request.htmx and not posted and "template" in request.GET:
        # Another template chosen in the form: the form again, fitted to it.
        return render(request, "renders/queue.html#render-form", {"form": form})
    if posted and form.is_valid():
        created = queue_jobs(form)
        message = f"Queued {created} render job{'s' if created != 1 else ''}."
        lacking = form.unrunnable.get(form.cleaned_data["template"].pk)
        if lacking and not form.cleaned_data.get("node"):
            message += f" No online ComfyUI can run it yet ({lacking}): it waits until one can."
        return done(request, message, "renders:index")
    text = request.GET.get("q", "")
    context = {**queue.live(), **queue.finished(status, story, page, text), "form": form}
    context["form_open"] = posted or "template" in request.GET or "reuse" in request.GET
    # Only the unfiltered first page follows finished jobs live; a filtered view stays put.
    context["topics"] = "renders" if (status or story or text or page > 1) else "renders,renders-done"
    return render(request, "renders/queue.html", context, status=400 if form.errors else 200)


def form_start(request: HttpRequest) -> dict[str, Any]:
    """How an empty render form starts: for the template chosen in it (what was typed kept), with
    the settings a job rendered with ("Reuse settings"), or for the best template."""
    reuse = request.GET.get("reuse", "")
    job = RenderJob.objects.select_related("template").filter(code=reuse).first() if is_uuid(reuse) else None
    if job is not None:
        return {"template": job.template, "initial": reused(job)}
    chosen = request.GET.get("template", "")
    template = Template.objects.filter(pk=chosen).first() if chosen.isdigit() else None
    if template is None:
        return {}
    return {"template": template, "initial": {k: request.GET[k] for k in KEPT_ON_SWITCH if request.GET.get(k)}}


def reused(job: RenderJob) -> dict[str, Any]:
    """A job's prompt and settings as the render form's first values: as the node was sent them
    (the seed a "random" became), else as they were asked for."""
    used = job.rendered_with()
    initial: dict[str, Any] = {"prompt": job.prompt, "negative": job.negative, "priority": job.priority}
    if used.get("width") and used.get("height"):
        initial["resolution"] = f"{int(used['width'])}x{int(used['height'])}"
    for name in ("frames", "fps", "steps", "cfg", "seed"):
        if used.get(name) not in (None, ""):
            initial[name] = used[name]
    if isinstance(used.get("fps"), float) and used["fps"].is_integer():
        initial["fps"] = int(used["fps"])
    loras = used.get("loras") or ([used["lora"]] if used.get("lora") else [])
    if loras:
        initial["lora"] = loras[0]
    if job.settings.get("input_image"):
        initial["image_kept"] = job.settings["input_image"]
    return initial


def queue_jobs(form: RenderForm) -> int:
    data = form.cleaned_data
    template = data["template"]
    with transaction.atomic():
        position = RenderJob.last_position()
        for i in range(data["count"]):
            RenderJob.build(
                template,
                data["settings"],
                prompt=data["prompt"],
                negative=data.get("negative", ""),
                priority=data["priority"],
                position=position + i,
                pin=data.get("node"),
            ).save()
        RenderJob.announce_queued()
    return int(data["count"])


@require_POST
def action(request: HtmxHttpRequest, code: str, what: str) -> HttpResponse:
    job = get_object_or_404(RenderJob, code=code)
    if what == "cancel":
        ok = job.cancel()
        message = "Cancelled." if ok else "That job has already ended."
    elif what == "retry":
        ok = job.retry()
        message = "Queued again." if ok else "Only a failed or cancelled job can be retried."
    elif what in ("up", "down", "top", "bottom"):
        ok = job.move(what)
        message = f"Moved {what}." if ok else "Only a queued job can move, and not past the end."
    elif what == "before":
        other = (
            RenderJob.objects.filter(code=request.POST.get("before", "")).first()
            if is_uuid(request.POST.get("before", ""))
            else None
        )
        ok = other is not None and job.move_before(other)
        message = "Moved." if ok else "Drop a queued job onto another waiting job."
    else:
        return HttpResponse(status=404)
    return done(request, message, "renders:index", error=not ok)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@require_POST
def retry_failed(request: HtmxHttpRequest) -> HttpResponse:
    story = request.POST.get("story", "")
    failed = RenderJob.objects.filter(status=RenderJob.FAILED)
    if story:
        failed = failed.filter(story=story)
    with transaction.atomic():
        count = sum(job.retry() for job in failed.order_by("finished"))
    return done(request, f"Queued {count} failed job{'s' if count != 1 else ''} again.", "renders:index")


@require_POST
def pause(request: HtmxHttpRequest) -> HttpResponse:
    paused = request.POST.get("paused") == "1"
    Queue.set_paused(paused)
    if paused:
        return done(request, "Paused: jobs already rendering finish; no new job starts.", "renders:index")
    return done(request, "Resumed.", "renders:index")


def job_detail(request: HttpRequest, code: str) -> HttpResponse:
    job = get_object_or_404(RenderJob.objects.select_related("template", "node"), code=code)
    if job.status == RenderJob.QUEUED:
        queue.why_waiting([job])
    story = Story.objects.filter(code=job.story).first() if is_uuid(job.story) else None
    job.story_title = story.title if story else ""  # type: ignore[attr-defined]
    context = {
        "job": job,
        "story": story,
        "used": settings_shown(job),
        "outputs": zip(job.outputs, job.downloads, strict=True),
    }
    return render(request, "renders/job.html", context)


# How the job page names the settings, in this order.
SETTING_LABELS = {
    "seed": "Seed",
    "width": "Width",
    "height": "Height",
    "frames": "Frames",
    "fps": "FPS",
    "steps": "Steps",
    "cfg": "CFG",
    "loras": "LoRAs",
    "lora": "LoRA",
    "input_image": "Input image",
}


def settings_shown(job: RenderJob) -> list[tuple[str, Any, bool]]:
    """Each setting of the job as (label, value, sent): the values its last attempt sent the node
    (a "random" seed as the number it became), else those asked for (not sent yet)."""
    used = job.used()
    asked = {k: v for k, v in job.settings.items() if v not in (None, "")}
    rows = []
    for name, label in SETTING_LABELS.items():
        if name in used and name != "image":
            value = used[name]
            rows.append((label, ", ".join(map(str, value)) if isinstance(value, list) else value, True))
        elif name in asked and not (name == "lora" and "loras" in used):
            rows.append((label, asked[name], False))
    return rows


def templates(request: HttpRequest) -> HttpResponse:
    return render(request, "renders/templates.html", {"templates": Template.objects.all()})


def template_edit(request: HttpRequest, code: str | None = None) -> HttpResponse:
    """Import a workflow as a template (no code), or correct one's name and mapping."""
    template = get_object_or_404(Template, code=code) if code else None
    form = TemplateForm(request.POST or None, request.FILES or None, template=template)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        found = ", ".join(saved.mapping) or "nothing"
        messages.success(request, f"Saved template {saved.name}; parameters found: {found}.")
        return redirect("renders:templates")
    context: dict[str, Any] = {"form": form, "template": template}
    if template is not None:
        context["runs_on"] = runs_on(template)
        context["workflow_json"] = json.dumps(template.workflow, indent=2, sort_keys=True)
    return render(request, "renders/template_form.html", context, status=400 if form.errors else 200)


def runs_on(template: Template) -> list[tuple[Node, str]]:
    """Each ComfyUI node and whether it can run `template`: "" if it can, else what it lacks (or
    that its inventory is not known yet)."""
    needs = template.requirements()
    caps = Capability.objects.filter(kind=Capability.COMFYUI).select_related("node").order_by("node__name")
    return [
        (
            cap.node,
            ", ".join(cap.lacks(needs)) if cap.inventory.get("classes") else "not known yet: its inventory is not read",
        )
        for cap in caps
    ]


def template_delete(request: HttpRequest, code: str) -> HttpResponse:
    """Delete a template, after a page that says what it affects (GET) and a confirmation (POST);
    refused while render jobs keep it."""
    template = get_object_or_404(Template, code=code)
    kept = template.kept_by()
    if request.method == "POST":
        if kept:
            messages.error(request, f"{template.name} was not deleted: {kept}.")
            return redirect("renders:template", code=template.code)
        with transaction.atomic():
            template.delete()
        messages.success(request, f"Deleted template {template.name}.")
        return redirect("renders:templates")
    stories = template.stories.count()
    return render(request, "renders/template_delete.html", {"template": template, "kept": kept, "stories": stories})


@require_POST
def test_render(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """A node's Test render button: the shipped test template, rendered on that node alone."""
    node = get_object_or_404(Node, code=code)
    if node.comfyui is None:
        return done(request, f"{node.name} has no ComfyUI to render on.", "nodes:index", error=True)
    try:
        RenderJob.test_render(node)
    except Template.DoesNotExist as e:
        return done(request, f"No test render: {e}.", "nodes:index", error=True)
    return done(request, f"Test render queued on {node.name}; the image appears on its card.", "nodes:index")
