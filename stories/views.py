from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import escape
from django.views.decorators.http import require_POST

from renders.models import RenderJob
from spoonfeeder.views import HtmxHttpRequest, done
from stories import context, graph, movie, steps
from stories.forms import CharacterForm, MovieForm, MusicCueForm, NarrationForm, PromptForm, StoryForm
from stories.models import Character, Movie, MusicCue, Segment, StepRun, Story

# The header a following tab sends with what it shows, and gets back with what it would show.
TAB_DIGEST = "X-Story-Tab"
CSRF_INPUT = re.compile(r'<input type="hidden" name="csrfmiddlewaretoken" value="[^"]*">')


def index(request: HtmxHttpRequest) -> HttpResponse:
    form = StoryForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        story = form.start()
        messages.success(
            request,
            "Story started: each step runs on an Ollama node as soon as what it needs is written; "
            "steps that do not need each other run at the same time.",
        )
        return redirect("stories:detail", code=story.code)
    page = page_number(request)
    # Only the first page follows the list live: a later one stays put.
    ctx = {**context.stories(page), "form": form, "topics": "stories" if page == 1 else ""}
    return render(request, "stories/index.html", ctx, status=400 if form.errors else 200)


def page_number(request: HtmxHttpRequest) -> int:
    try:
        return max(int(request.GET.get("page", "1")), 1)
    except ValueError:
        return 1


def find(code: str) -> Story:
    return get_object_or_404(Story.objects.select_related("template", "reference_template", "node"), code=code)


def detail(request: HtmxHttpRequest, code: str, tab: str = "story") -> HttpResponse:
    story = find(code)
    if tab not in dict(context.tabs(story)):
        raise Http404(f"A story has no tab {tab!r}.")
    return show(request, story, tab)


def show(
    request: HtmxHttpRequest,
    story: Story,
    tab: str,
    status: int = 200,
    invalid: CharacterForm | None = None,
    movie_form: MovieForm | None = None,
) -> HttpResponse:
    """The story's page on `tab`; an htmx GET (the tab following the story) gets the tab alone."""
    alone = bool(request.htmx) and request.method == "GET"
    ctx = context.detail(
        story, tab, request.GET.get("status", ""), page_number(request), whole=not alone, text=request.GET.get("q", "")
    )
    if movie_form is not None:  # the export form the user sent, with their choices and its errors
        ctx["movie_form"] = movie_form
    # What the tab asks for to follow the story (not the URL of a refused action or a failed save).
    ctx["here"] = reverse("stories:tab", args=[story.code, tab])
    if request.method == "GET" and request.GET:
        ctx["here"] += f"?{request.GET.urlencode()}"
    if invalid is not None:  # the character the user tried to save, with their input and its errors
        ctx["characters"] = [(c, invalid if c.pk == invalid.instance.pk else f) for c, f in ctx["characters"]]
    if not alone:
        return render(request, "stories/detail.html", ctx, status=status)
    # The tab asks for itself every time the story changes: when it would come back the same (its
    # forms' CSRF tokens aside), it is not sent, so the browser keeps what it shows (a video being
    # looked at, a scrolled list) instead of swapping in a copy.
    html = render_to_string("stories/detail.html#tab", ctx, request)
    digest = hashlib.blake2b(CSRF_INPUT.sub("", html).encode(), digest_size=8).hexdigest()
    unchanged = request.headers.get(TAB_DIGEST) == digest and status == 200
    response = HttpResponse(status=204) if unchanged else HttpResponse(html, status=status)
    response[TAB_DIGEST] = digest
    return response


def refuse(request: HtmxHttpRequest, story: Story, message: str, status: int = 400) -> HttpResponse:
    """A request that changes nothing: the reason, shown where the user is."""
    messages.error(request, message)
    if request.htmx:
        return render(request, "base.html#messages", {"oob": True}, status=status)
    return show(request, story, "story", status=status)


@require_POST
def action(request: HtmxHttpRequest, code: str, what: str) -> HttpResponse:
    story = find(code)
    here = reverse("stories:detail", args=[story.code])
    if what == "stop":
        if story.stopped or story.state == Story.COMPLETED:
            return refuse(request, story, "The story is not running: there is nothing to stop.")
        graph.stop(story)
        return done(request, "Stopped: nothing new starts; what was running is cancelled. Resume goes on.", here)
    if what == "resume":
        if not story.stopped:
            return refuse(request, story, "The story is not stopped.")
        graph.resume(story)
        return done(request, "Resumed from the last good checkpoint.", here)
    if story.stopped and what in ("render", "retry", "rerun", "rewrite"):
        return refuse(request, story, "The story is stopped: resume it first.", status=409)
    if what == "render":
        if not graph.render_now(story):
            return refuse(request, story, "No renders are waiting for you.")
        return done(request, "Rendering: the shots go to the render queue.", here)
    if what == "retry":
        return retry(request, story, here)
    if what == "rerun":
        return rerun(request, story, here)
    if what == "rewrite":
        return rewrite(request, story, here)
    raise Http404(f"A story has no action {what!r}.")


def retry(request: HtmxHttpRequest, story: Story, here: str) -> HttpResponse:
    pk = context.as_number(request.POST.get("run", ""))
    run = StepRun.objects.select_related("story").filter(pk=pk).first() if pk is not None else None
    if run is None or run.story_id != story.pk:
        return refuse(request, story, "That step run is not one of this story's.", status=404)
    label = graph.STEPS[run.step].label
    if run.part:
        label = f"{label} of {story.piece} {run.part}"
    if run.status != StepRun.FAILED or not graph.retry(run):
        status = run.get_status_display().lower()
        return refuse(request, story, f"Only a failed step can be retried; {label} is {status}.")
    return done(request, f"{label} runs again; the steps after it follow.", here)


def rerun(request: HtmxHttpRequest, story: Story, here: str) -> HttpResponse:
    name = request.POST.get("step", "")
    if name not in {s.name for s in graph.steps_for(story)}:
        return refuse(request, story, f"{name!r} is not a step of this story.")
    label = graph.STEPS[name].label
    why = graph.not_completed(story, name)
    if why:
        return refuse(request, story, why)
    marked = graph.rerun_from(story, name)
    again = ", ".join(graph.STEPS[n].label for n in marked)
    return done(request, f"Re-running from {label}: {again} run again; the steps before stay as they are.", here)


def rewrite(request: HtmxHttpRequest, story: Story, here: str) -> HttpResponse:
    part = request.POST.get("part", "")
    piece = f"{story.piece.capitalize()} {part}"
    number = context.as_number(part)
    run = story.runs.current().filter(step="prompts", part=number).first() if number else None
    if run is None or not run.part:
        return refuse(request, story, f"{piece} has no prompt to write again yet.")
    if run.status in graph.ACTIVE:
        return refuse(request, story, f"{piece}'s prompt is being written now.")
    graph.rerun_part(run)
    return done(request, f"{piece}'s prompt is written again; its render follows if it changes.", here)


@require_POST
def character(request: HtmxHttpRequest, code: str, pk: int) -> HttpResponse:
    story = find(code)
    person = get_object_or_404(Character, pk=pk, story=story)
    form = CharacterForm(request.POST, instance=person, auto_id=f"character-{pk}-%s")
    if not form.is_valid():
        messages.error(request, f"{person.name} was not saved: see below.")
        return show(request, story, "characters", status=400, invalid=form)
    if not form.has_changed():
        return done(request, f"Nothing of {person.name} changed.", tab_url(story, "characters"))
    return by_hand(
        request,
        story,
        "characters",
        person.name,
        lambda: form.save(commit=False).save(update_fields=["role", "look", "personality"]),
        steps.characters_output,
    )


@require_POST
def narration(request: HtmxHttpRequest, code: str, number: int) -> HttpResponse:
    """A segment's narration written by hand: the narration step's new version."""
    story = find(code)
    segment = get_object_or_404(Segment, story=story, number=number)
    form = NarrationForm(request.POST)
    label = f"the narration of segment {number}"
    if not form.is_valid():
        return refuse(request, story, f"{label.capitalize()} was not saved: {reasons(form)}")
    text = form.cleaned_data["narration"].strip()
    if text == segment.narration:
        return done(request, f"Nothing of {label} changed.", tab_url(story, "narration"))
    save = lambda: Segment.objects.filter(pk=segment.pk).update(narration=text)  # noqa: E731
    return by_hand(request, story, "narration", label, save, steps.narration_output)


@require_POST
def music(request: HtmxHttpRequest, code: str, number: int) -> HttpResponse:
    """A music cue corrected by hand: the music step's new version."""
    story = find(code)
    cue = get_object_or_404(MusicCue, story=story, number=number)
    form = MusicCueForm(request.POST, instance=cue)
    label = f"music cue {number}"
    if not form.is_valid():
        return refuse(request, story, f"{label.capitalize()} was not saved: {reasons(form)}")
    if not form.has_changed():
        return done(request, f"Nothing of {label} changed.", tab_url(story, "music"))
    save = lambda: form.save(commit=False).save(update_fields=["mood", "description"])  # noqa: E731
    return by_hand(request, story, "music", label, save, steps.music_output)


def by_hand(
    request: HtmxHttpRequest,
    story: Story,
    step: str,
    label: str,
    save: Callable[[], object],
    output: Callable[[Story], object],
) -> HttpResponse:
    """Save a correction by hand and make it `step`'s new version, in one transaction; what
    depends on the step runs again. Refused (nothing saved) while the step is being redone."""
    try:
        with transaction.atomic():
            save()
            graph.edited(story, step, output(story), who=request.user.get_username())
    except graph.NotNow as e:
        return refuse(request, story, f"{label[:1].upper()}{label[1:]} was not saved: {e}", status=409)
    again = [graph.STEPS[n].label for n in graph.downstream(story, step) if n != step]
    what = graph.STEPS[step].label.lower()
    follows = f" What depends on the {what} runs again: {', '.join(again)}." if again else ""
    return done(request, f"Saved {label}.{follows}", tab_url(story, step))  # the step's own tab


def tab_url(story: Story, tab: str) -> str:
    return reverse("stories:tab", args=[story.code, tab])


def reasons(form: forms.BaseForm) -> str:
    return " ".join(str(e) for errors in form.errors.values() for e in errors)


def output(request: HtmxHttpRequest, code: str, pk: int) -> HttpResponse:
    """What one run of the story's steps wrote, as JSON text escaped for the page (an earlier
    version, opened): the model's words, never markup."""
    run = get_object_or_404(StepRun.objects.only("output"), pk=pk, story__code=code)
    return HttpResponse(escape(json.dumps(run.output, indent=2, ensure_ascii=False)))


@require_POST
def prompt(request: HtmxHttpRequest, code: str, number: int) -> HttpResponse:
    """A shot's (or scene's) prompt written by hand: that part's new version; its render follows."""
    story = find(code)
    piece = get_object_or_404(story.planned, story=story, number=number)
    back = tab_url(story, f"{story.piece}s")
    form = PromptForm(request.POST)
    if not form.is_valid():
        return refuse(request, story, f"{piece}'s prompt was not saved: {reasons(form)}")
    written = {k: v.strip() for k, v in form.cleaned_data.items()}
    if written == {"positive": piece.positive, "negative": piece.negative}:
        return done(request, f"Nothing of {piece}'s prompt changed.", back)
    run = story.runs.current().filter(step="prompts", part=number).first()
    if run is None:
        return refuse(request, story, f"{piece}'s prompt is not written yet: it can be edited once it is.", status=409)
    try:
        with transaction.atomic():
            story.planned.objects.filter(pk=piece.pk).update(**written)
            graph.edited_part(run, written, who=request.user.get_username())
    except graph.NotNow as e:
        return refuse(request, story, f"{piece}'s prompt was not saved: {e}", status=409)
    return done(request, f"Saved {piece}'s prompt; its render is queued again.", back)


# --- the movie ---------------------------------------------------------------------------------


@require_POST
def movie_plan(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """What "Export the movie" would do with the choices in the form, saving nothing: the plan
    shown beside the form, with the button that runs it."""
    story = find(code)
    form = MovieForm(story, request.POST)
    ctx: dict[str, Any] = {"story": story, "movie_form": form}
    if form.is_valid():
        try:
            ctx["plan"] = movie.plan(story, form.options())
        except movie.PlanError as e:
            ctx["plan_error"] = str(e)
    return render(request, "stories/detail.html#movie-plan", ctx, status=200 if "plan" in ctx else 400)


@require_POST
def movie_export(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """Run the plan: its tasks queued, the film joined once they have rendered."""
    story = find(code)
    form = MovieForm(story, request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "The movie was not started: " + reasons(form))
        return show(request, story, "movie", status=400, movie_form=form)
    try:
        made = movie.start(story, form.options())
    except movie.PlanError as e:
        return refuse(request, story, f"The movie was not started: {e}")
    counts = made.plan.get("counts", {})
    new = sum(c["new"] for c in counts.values())
    reused = sum(c["reused"] for c in counts.values())
    said = f"Movie v{made.version} started: {new} task{pluralize(new)} queued, {reused} reused."
    return done(request, said, tab_url(story, "movie"))


@require_POST
def movie_action(request: HtmxHttpRequest, code: str, version: int, what: str) -> HttpResponse:
    story = find(code)
    made = Movie.objects.select_related("story").filter(story=story, version=version).first()
    if made is None:
        return refuse(request, story, f"This story has no movie v{version}.", status=404)
    if what not in MOVIE_ACTIONS:
        raise Http404(f"A movie has no action {what!r}.")
    act, said, refused = MOVIE_ACTIONS[what]
    if not act(made):
        return refuse(request, story, refused, status=409)
    return done(request, said, tab_url(story, "movie"))


# A movie's controls: what each does, what it says when done, and why it was refused.
MOVIE_ACTIONS: dict[str, tuple[Callable[[Movie], bool], str, str]] = {
    "pause": (
        movie.pause,
        "Paused: its queued tasks wait; those on a node finish.",
        "Only a movie whose shots are rendering can be paused.",
    ),
    "resume": (movie.resume, "Resumed.", "The movie is not paused."),
    "export": (
        movie.export_again,
        "Exporting again, reusing what was encoded before.",
        "Only a movie whose export failed can be exported again.",
    ),
    "cancel": (
        movie.cancel,
        "Cancelled: its unfinished tasks were cancelled; finished renders are kept.",
        "The movie has ended already.",
    ),
}


@require_POST
def movie_retry(request: HtmxHttpRequest, code: str, pk: int) -> HttpResponse:
    """Retry a failed task of the story's movie: the tasks that take its output run once it has."""
    story = find(code)
    job = RenderJob.objects.filter(pk=pk, story=str(story.code)).exclude(stage="").first()
    if job is None:
        return refuse(request, story, "That task is not one of this story's movie.", status=404)
    if not job.retry():
        return refuse(request, story, "Only a failed or cancelled task can be retried.", status=409)
    return done(
        request,
        f"{movie.STAGE_LABELS.get(job.stage, job.stage)} of {job.target.replace(':', ' ')} queued again.",
        tab_url(story, "movie"),
    )


def pipelines(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, "stories/pipelines.html", context.pipelines())
