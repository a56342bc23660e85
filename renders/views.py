from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.conf import settings as django_settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import F, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_date
from django.utils.text import slugify
from django.views.decorators.http import require_POST

from nodes.models import Capability, Node
from renders import media, queue, sheets
from renders.forms import KEPT_ON_SWITCH, BatchForm, RenderForm, TemplateForm
from renders.models import Batch, Queue, RenderJob, Speed, Template
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
        created = len(queue_jobs(form))
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


def queue_jobs(form: RenderForm) -> list[RenderJob]:
    data = form.cleaned_data
    template = data["template"]
    with transaction.atomic():
        position = RenderJob.last_position()
        jobs = []
        for i in range(data["count"]):
            job = RenderJob.build(
                template,
                data["settings"],
                prompt=data["prompt"],
                negative=data.get("negative", ""),
                priority=data["priority"],
                position=position + i,
                pin=data.get("node"),
            )
            job.save()
            jobs.append(job)
        RenderJob.announce_queued()
    return jobs


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
    job = get_object_or_404(RenderJob.objects.select_related("template", "node", "batch"), code=code)
    if job.status == RenderJob.QUEUED:
        queue.why_waiting([job])
    story = Story.objects.filter(code=job.story).first() if is_uuid(job.story) else None
    job.story_title = story.title if story else ""  # type: ignore[attr-defined]
    context = {
        "job": job,
        "story": story,
        "used": settings_shown(job),
        "outputs": zip(job.outputs, job.downloads, strict=True),
        "workflow_json": json.dumps(job.workflow, indent=2, sort_keys=True) if job.workflow else "",
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


# --- batches -----------------------------------------------------------------------------------

BATCHES_PAGE = 25
ITEMS_PAGE = 100


def batches(request: HtmxHttpRequest) -> HttpResponse:
    """The Batches page: every batch with its progress and controls, and the form that makes one
    (previewed first: what it would queue, and how many)."""
    carried = request.method == "POST" and "as_batch" in request.POST
    posted = request.method == "POST" and not carried
    form = BatchForm(request.POST, request.FILES) if posted else BatchForm(**batch_start(request))
    if request.htmx and not posted and "template" in request.GET:
        return render(request, "renders/batches.html#batch-form", {"form": form})
    if posted and form.is_valid() and "preview" not in request.POST:
        batch = make_batch(form)
        message = f"Queued batch {batch.name}: {batch.total:,} item{'s' if batch.total != 1 else ''}."
        lacking = form.unrunnable.get(form.cleaned_data["template"].pk)
        if lacking:
            message += f" No online ComfyUI can run it yet ({lacking}): it waits until one can."
        messages.success(request, message)
        return redirect("renders:batch", code=batch.code)
    context = {
        **batch_list(request.GET.get("page", "1")),
        "form": form,
        "form_open": posted or carried or bool(request.GET),
    }
    if posted and form.is_valid():  # a preview
        context["preview"] = preview(form)
    return render(request, "renders/batches.html", context, status=400 if form.errors else 200)


def batch_start(request: HttpRequest) -> dict[str, Any]:
    """An empty batch form: fitted to the template chosen in it, or "more like this" of a job
    (its template, prompt and settings)."""
    if request.method == "POST":  # the render dialog's "As a batch…": what was typed there
        return carried_over(request.POST)
    start = form_start(request)
    like = request.GET.get("like", "")
    job = RenderJob.objects.select_related("template").filter(code=like).first() if is_uuid(like) else None
    if job is not None:
        initial = reused(job)
        initial.pop("seed", None)
        initial.update(kind="seeds", count="8", name=f"More like {job.prompt[:60] or job.template.name}")
        return {"template": job.template, "initial": initial}
    if "template" in start:
        start["initial"].update({k: request.GET[k] for k in BatchForm.FIELD_ORDER if request.GET.get(k)})
    return start


def carried_over(posted: QueryDict) -> dict[str, Any]:
    """The render dialog's settings as the start of a batch of seed variations of them (a file
    chosen there is not carried: an image already kept is)."""
    chosen = posted.get("template", "")
    template = Template.objects.filter(pk=chosen).first() if chosen.isdigit() else None
    if template is None:
        return {}
    skipped = {"csrfmiddlewaretoken", "as_batch", "template", "seed", "count", "image"}
    initial: dict[str, Any] = {k: v for k, v in posted.items() if k not in skipped and v != ""}
    initial.update(kind="seeds", count="8")
    return {"template": template, "initial": initial}


def preview(form: BatchForm) -> dict[str, Any]:
    data = form.cleaned_data
    items = data["items"]
    return {"summary": data["summary"], "count": len(items), "first": items[:12], "axes": data.get("axes", [])}


def make_batch(form: BatchForm) -> Batch:
    data = form.cleaned_data
    return Batch.make(
        name=data.get("name") or "",
        kind=data["kind"],
        template=data["template"],
        items=data["items"],
        prompt=data.get("prompt", ""),
        negative=data.get("negative", ""),
        settings=data.get("settings", {}),
        axes=data.get("axes", []),
        priority=data["priority"],
        pin=data.get("node"),
    )


def batch_list(page: str = "1") -> dict[str, Any]:
    """A page of batches, newest first, each with its counts and an ETA: a few queries whatever
    the number of batches or items."""
    shown = Paginator(
        Batch.objects.select_related("template").with_counts().order_by("-created", "-id"), BATCHES_PAGE
    ).get_page(page)
    batch_etas(list(shown))
    return {"batches": shown}


def batch_etas(shown: list[Batch]) -> None:
    """Seconds until each running batch is done, from the pool's measured speeds on its template:
    the work it has left over what the online ComfyUIs do in a second together (None until a node
    has rendered that template)."""
    live = [b for b in shown if b.status in Batch.FED]
    if not live:
        return
    usable = Capability.objects.usable(Capability.COMFYUI).values("pk")
    rates: dict[int, list[float]] = {}
    for template, rate in Speed.objects.filter(capability__in=usable).values_list("template", "seconds_per_unit"):
        rates.setdefault(template, []).append(rate)
    left = dict(
        RenderJob.objects.filter(batch__in=live)
        .exclude(status__in=RenderJob.ENDED)
        .values_list("batch")
        .annotate(w=Sum(F("work") * (1 - F("progress"))))
        .values_list("batch", "w")
    )
    for batch in live:
        per_second = sum(1 / r for r in rates.get(batch.template_id, []) if r > 0)
        batch.eta = left.get(batch.pk, 0) / per_second if per_second else None  # type: ignore[attr-defined]


def batch_detail(request: HttpRequest, code: str) -> HttpResponse:
    batch = get_object_or_404(Batch.objects.select_related("template"), code=code)
    return render(request, "renders/batch.html", batch_context(batch, request.GET.get("page", "1")))


def batch_context(batch: Batch, page: str = "1") -> dict[str, Any]:
    """The batch page: its head (counts, progress, controls) and a page of its items; a grid's
    items as a table per value of its third axis, rows and columns labelled."""
    counted = Batch.objects.with_counts().get(pk=batch.pk)
    for name in ("done", "failed", "cancelled", "on_node", "rendering", "waiting"):
        setattr(batch, name, getattr(counted, name))
    batch_etas([batch])
    items = batch.items.select_related("node").order_by("index")
    shown = Paginator(items, ITEMS_PAGE).get_page(page)
    context: dict[str, Any] = {"batch": batch, "items": shown}
    if batch.kind == Batch.GRID and batch.axes:
        context["tables"] = grid_tables(batch, list(shown))
    return context


def grid_tables(batch: Batch, items: list[RenderJob]) -> list[dict[str, Any]]:
    """The grid view: for each value of the third axis (one table if none), rows of the first
    axis's values and columns of the second's, each cell the item there (or None off this page)."""
    names = [a["name"] for a in batch.axes]
    values = [a["values"] for a in batch.axes]
    rows, columns = values[0], values[1] if len(values) > 1 else [""]
    sheets = values[2] if len(values) > 2 else [""]
    at = {tuple(job.labels.get(n, "") for n in names): job for job in items}
    tables = []
    for sheet in sheets:
        table = []
        for row in rows:
            cells = []
            for column in columns:
                key = tuple(v for v in (row, column, sheet)[: len(names)])
                cells.append(at.get(key))
            table.append((row, cells))
        tables.append({"sheet": sheet, "sheet_axis": names[2] if len(names) > 2 else "", "rows": table})
    return tables


@require_POST
def batch_action(request: HtmxHttpRequest, code: str, what: str) -> HttpResponse:
    batch = get_object_or_404(Batch, code=code)
    to = reverse("renders:batch", kwargs={"code": batch.code})
    if what in ("pause", "pause-interrupt"):
        why = batch.pause(interrupt=what == "pause-interrupt")
        said = "Pausing: nothing more of it starts; its items waiting on nodes are taken back." + (
            " The running ones are interrupted and go back to it." if what == "pause-interrupt" else ""
        )
    elif what == "resume":
        why, said = batch.resume(), "Resumed."
    elif what == "cancel":
        why, said = batch.cancel(), "Cancelled: what has finished stays."
    elif what == "retry":
        n = batch.retry()
        why = "" if n else "No item of it has failed: there is nothing to retry."
        said = f"Queued {n} failed item{'s' if n != 1 else ''} again."
    elif what == "priority":
        try:
            priority = int(request.POST.get("priority", ""))
        except ValueError:
            priority = None
        if priority is None or not -100 <= priority <= 100:
            why, said = "The priority is a whole number from -100 to 100.", ""
        else:
            batch.set_priority(priority)
            why, said = "", f"Its priority is now {priority}."
    elif what == "delete":
        why = batch.delete_with(outputs=request.POST.get("outputs") == "remove")
        if not why:
            messages.success(request, f"Deleted batch {batch.name}.")
            return redirect("renders:batches")
        said = ""
    else:
        return HttpResponse(status=404)
    if request.htmx:
        return done(request, why or said, "renders:batches", error=bool(why))
    (messages.error if why else messages.success)(request, why or said)
    return redirect(to)


def batch_delete(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """What deleting the batch would do, and the choice of its outputs (GET); the deletion (POST)."""
    if request.method == "POST":
        return batch_action(request, code, "delete")
    batch = get_object_or_404(Batch.objects.with_counts(), code=code)
    return render(request, "renders/batch_delete.html", {"batch": batch})


def batch_outputs(batch: Batch) -> QuerySet[RenderJob]:
    return batch.items.filter(status=RenderJob.COMPLETED).order_by("index")


def item_caption(batch: Batch, job: RenderJob) -> str:
    if job.labels:
        return ", ".join(f"{name} {value}" for name, value in job.labels.items())
    if batch.kind == Batch.PROMPTS:
        return job.prompt[:40]
    return f"seed {job.settings.get('seed', '?')}"


def batch_sheet(request: HttpRequest, code: str) -> HttpResponse:
    """The batch's contact sheet (PNG): every finished item's thumbnail, captioned; a grid's in
    its rows and columns, labelled."""
    batch = get_object_or_404(Batch, code=code)
    items = list(batch.items.order_by("index").only("index", "labels", "prompt", "settings", "outputs", "status"))
    cells = [
        sheets.Cell(job.outputs[0].get("thumbnail", "") if job.outputs else "", item_caption(batch, job))
        for job in items
    ]
    if batch.kind == Batch.GRID and batch.axes:
        rows = batch.axes[0]["values"]
        columns = batch.axes[1]["values"] if len(batch.axes) > 1 else [""]
        png = sheets.contact_sheet(
            cells,
            columns=len(columns),
            row_labels=[f"{batch.axes[0]['name']} {v}" for v in rows]
            * (len(cells) // max(len(rows) * len(columns), 1)),
            column_labels=[f"{batch.axes[1]['name']} {v}" for v in columns] if len(batch.axes) > 1 else [],
            title=batch.name,
        )
    else:
        png = sheets.contact_sheet(cells, columns=min(8, max(len(cells), 1)), title=batch.name)
    response = HttpResponse(png, content_type="image/png")
    response["Content-Disposition"] = f'attachment; filename="{slugify(batch.name)[:60] or "batch"}-contact-sheet.png"'
    return response


def batch_zip(request: HttpRequest, code: str) -> StreamingHttpResponse:
    """Every output of the batch's finished items as one zip, streamed as it is written (never
    built in memory), each file named as its download is."""
    batch = get_object_or_404(Batch, code=code)
    root = Path(django_settings.MEDIA_ROOT)

    def files() -> Iterator[tuple[str, Path]]:
        for job in batch_outputs(batch).iterator(chunk_size=200):
            for i, out in enumerate(job.outputs):
                path = media.inside(root, str(out.get("path", "")))
                if path is not None:
                    yield f"{job.index + 1:05d}-{job.download_name(i)}", path

    response = StreamingHttpResponse(sheets.zip_stream(files()), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{slugify(batch.name)[:60] or "batch"}.zip"'
    return response


HISTORY_PAGE = 50


def history(request: HttpRequest) -> HttpResponse:
    """Every finished output, batch or not, newest first, filtered by template, prompt text,
    batch, story, node and date; a page at a time (an index on finished jobs keeps it fast)."""
    q = request.GET
    jobs = (
        RenderJob.objects.filter(status=RenderJob.COMPLETED)
        .select_related("template", "node", "batch")
        .order_by("-finished", "-id")
    )
    if q.get("template", "").isdigit():
        jobs = jobs.filter(template_id=int(q["template"]))
    if q.get("node", "").isdigit():
        jobs = jobs.filter(node_id=int(q["node"]))
    if is_uuid(q.get("batch", "")):
        jobs = jobs.filter(batch__code=q["batch"])
    if is_uuid(q.get("story", "")):
        jobs = jobs.filter(story=q["story"])
    text = q.get("q", "").strip()[:200]
    if text:
        jobs = jobs.filter(prompt__icontains=text)
    dates: dict[str, Any] = {}
    for name, lookup in (("after", "finished__date__gte"), ("before", "finished__date__lte")):
        value = parse_date(q.get(name, "") or "") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", q.get(name, "")) else None
        if value is not None:
            dates[name] = value
            jobs = jobs.filter(**{lookup: value})
    shown = Paginator(jobs, HISTORY_PAGE).get_page(q.get("page", "1"))
    filters = {k: q.get(k, "") for k in ("template", "node", "batch", "story", "q", "after", "before")}
    context = {
        "jobs": shown,
        "filters": filters,
        "query": urlencode({k: v for k, v in filters.items() if v}),
        "templates": Template.objects.only("pk", "name"),
        "nodes": Node.objects.filter(capabilities__kind=Capability.COMFYUI).only("pk", "name").distinct(),
    }
    return render(request, "renders/history.html", context)
