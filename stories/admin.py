from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from stories import graph, movie, steps
from stories.models import Character, Movie, MoviePart, MusicCue, Scene, Segment, Shot, StepRun, Story

# What a story's page in the admin links to: its objects' lists, filtered to it.
CONTENTS = [(Segment, "segments"), (Character, "characters"), (Shot, "shots"), (Scene, "scenes")]
CONTENTS += [(MusicCue, "music_cues"), (StepRun, "runs")]


@admin.register(Story)
class StoryAdmin(admin.ModelAdmin):
    list_display = ("heading", "mode", "state", "done", "created")
    list_filter = ("state", "mode")
    search_fields = ("idea", "title")
    readonly_fields = ("code", "contents", "text", "state", "progress", "stopped", "node", "created", "updated")
    actions = ["stop", "resume"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # stories start on the Stories page or with `manage.py story create`

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        # The steps already written follow the mode, and whether references and renders are
        # steps of the graph; changing them under running steps would leave those behind.
        return [*self.readonly_fields, "mode", "references", "auto_render"] if obj else list(self.readonly_fields)

    @admin.display(description="Title", ordering="title")
    def heading(self, story: Story) -> str:
        return str(story)

    @admin.display(description="Progress", ordering="progress")
    def done(self, story: Story) -> str:
        return f"{story.progress:.0%}"

    @admin.display(description="What the pipeline wrote")
    def contents(self, story: Story) -> SafeString:
        links = []
        for model, related in CONTENTS:
            meta = model._meta
            url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist") + f"?story__id__exact={story.pk}"
            links.append((url, getattr(story, related).count(), meta.verbose_name_plural))
        return format_html_join(", ", '<a href="{}">{} {}</a>', links)

    @admin.action(description="Stop (nothing new starts; running steps are cancelled)")
    def stop(self, request: HttpRequest, queryset: QuerySet[Story]) -> None:
        self.each(request, queryset.filter(stopped=False), graph.stop, "Stopped")

    @admin.action(description="Resume from the last good checkpoint")
    def resume(self, request: HttpRequest, queryset: QuerySet[Story]) -> None:
        self.each(request, queryset.filter(stopped=True), graph.resume, "Resumed")

    def each(self, request: HttpRequest, stories: QuerySet[Story], act: Callable[[Story], None], done: str) -> None:
        chosen = list(stories)
        for story in chosen:
            act(story)
        self.message_user(request, f"{done} {len(chosen)} story(ies).")


@admin.register(StepRun)
class StepRunAdmin(admin.ModelAdmin):
    list_display = ("story", "step", "part", "version", "status", "attempts", "node", "model", "started", "finished")
    list_filter = ("status", "step")
    search_fields = ("story__title", "story__idea", "error")
    list_select_related = ("story", "node")
    # Written by the pipeline under guarded updates; only the attempts allowed are the user's.
    readonly_fields = (
        "story",
        "step",
        "part",
        "version",
        "status",
        "held",
        "attempts",
        "not_before",
        "waiting",
        "node",
        "model",
        "owner",
        "heartbeat",
        "created",
        "started",
        "finished",
        "edited",
        "error",
        "log",
        "output",
    )
    actions = ["retry", "rerun_from"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Retry (failed runs)")
    def retry(self, request: HttpRequest, queryset: QuerySet[StepRun]) -> None:
        chosen = list(queryset.select_related("story"))
        runs: dict[int, StepRun] = {}
        for run in chosen:
            if run.status != StepRun.FAILED:
                continue
            whole = run.story.runs.current().filter(step=run.step, part=0).first() if run.part else None
            # A part of a step that failed as a whole is retried with its step (every failed part).
            if whole is not None and whole.status == StepRun.FAILED:
                run = whole
            runs[run.pk] = run
        done = sum(graph.retry(run) for run in runs.values())
        self.message_user(request, f"Retried {done} failed run(s).")
        left = sum(run.status != StepRun.FAILED for run in chosen)
        if left:
            self.message_user(request, f"{left} selected run(s) had not failed: left as they were.", messages.WARNING)

    @admin.action(description="Re-run from this step (and everything after it)")
    def rerun_from(self, request: HttpRequest, queryset: QuerySet[StepRun]) -> None:
        chosen = {(run.story_id, run.step): run.story for run in queryset.select_related("story")}
        for (_, step), story in chosen.items():
            why = graph.not_completed(story, step)
            if story.stopped:
                why = "The story is stopped: resume it first."
            if why:
                self.message_user(request, f"{story}: {why}", messages.WARNING)
                continue
            marked = graph.rerun_from(story, step)
            self.message_user(request, f"{story}: running again: {', '.join(marked)}.")


class WrittenByThePipeline(admin.ModelAdmin):
    """Objects the steps write: shown, not edited (a re-run of the step writes them anew)."""

    search_fields = ("story__title", "story__idea")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Segment)
class SegmentAdmin(WrittenByThePipeline):
    list_select_related = ("story",)
    list_display = ("__str__", "story", "summary")


@admin.register(Shot)
class ShotAdmin(WrittenByThePipeline):
    list_select_related = ("story", "segment")
    list_display = ("__str__", "story", "segment", "duration", "camera", "positive")


@admin.register(Scene)
class SceneAdmin(WrittenByThePipeline):
    list_select_related = ("story", "segment")
    list_display = ("__str__", "story", "segment", "title", "duration", "positive")


@admin.register(MusicCue)
class MusicCueAdmin(WrittenByThePipeline):
    list_select_related = ("story", "segment")
    list_display = ("__str__", "story", "segment", "description")


@admin.register(Character)
class CharacterAdmin(admin.ModelAdmin):
    """A character corrected by hand becomes the characters step's new version: the steps that
    depend on it (shots or scenes, prompts, renders) run again; those before it stay."""

    list_display = ("name", "story", "role")
    list_select_related = ("story",)
    search_fields = ("name", "story__title", "story__idea")
    readonly_fields = ("story", "reference")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the characters step casts them; correct what it wrote

    def has_change_permission(self, request: HttpRequest, obj: Character | None = None) -> bool:
        # Only once the characters step has completed: a correction made while they are being
        # written again would be lost, or would not match the segments being redone.
        return super().has_change_permission(request, obj) and (
            obj is None or not graph.not_completed(obj.story, "characters")
        )

    def has_delete_permission(self, request: HttpRequest, obj: Character | None = None) -> bool:
        return self.has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Character, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        self.edited(request, obj.story)

    def delete_model(self, request: HttpRequest, obj: Character) -> None:
        story = obj.story
        super().delete_model(request, obj)
        self.edited(request, story)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Character]) -> None:
        stories = {c.story_id: c.story for c in queryset.select_related("story")}
        busy = {pk: s for pk, s in stories.items() if graph.not_completed(s, "characters")}
        for story in busy.values():
            self.message_user(request, f"{story}: its characters were kept: they are being written.", messages.WARNING)
            del stories[story.pk]
        super().delete_queryset(request, queryset.exclude(story_id__in=list(busy)))
        for story in stories.values():
            self.edited(request, story)

    def edited(self, request: HttpRequest, story: Story) -> None:
        graph.edited(story, "characters", steps.characters_output(story), who=request.user.get_username())
        self.message_user(request, f"The characters of {story} changed: the steps after them run again.")


class MoviePartInline(admin.TabularInline):
    model = MoviePart
    fields = ("number", "segment", "seconds", "chain", "job")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Movie)
class MovieAdmin(admin.ModelAdmin):
    """A story's movie exports: their plans (the render graph's tasks by shot) and their films."""

    list_display = ("story", "version", "path", "status", "progress", "seconds", "created", "finished")
    list_filter = ("status", "path")
    list_select_related = ("story",)
    search_fields = ("story__title", "code")
    readonly_fields = [f.name for f in Movie._meta.fields]
    inlines = [MoviePartInline]
    actions = ["pause", "resume", "cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a movie is planned from its story: the Movie tab, or `manage.py story export`

    @admin.action(description="Pause")
    def pause(self, request: HttpRequest, queryset: QuerySet[Movie]) -> None:
        self.message_user(request, f"Paused {sum(movie.pause(m) for m in queryset)} movie(s).")

    @admin.action(description="Resume")
    def resume(self, request: HttpRequest, queryset: QuerySet[Movie]) -> None:
        self.message_user(request, f"Resumed {sum(movie.resume(m) for m in queryset)} movie(s).")

    @admin.action(description="Cancel")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Movie]) -> None:
        self.message_user(request, f"Cancelled {sum(movie.cancel(m) for m in queryset)} movie(s).")
