from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from renders.models import Batch, JobInput, RenderJob, Template


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "role", "shipped", "created")
    list_filter = ("kind", "role", "shipped")
    search_fields = ("name", "description")


class JobInputInline(admin.TabularInline):
    """The outputs of other jobs this job takes (the render graph), and how each reached its node."""

    model = JobInput
    fk_name = "job"
    fields = ("parameter", "source", "local", "uploaded")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(RenderJob)
class RenderJobAdmin(admin.ModelAdmin):
    list_display = (
        "code",
        "template",
        "stage",
        "target",
        "status",
        "node",
        "attempts",
        "priority",
        "created",
        "finished",
    )
    list_filter = ("status", "stage", "template", "node")
    search_fields = ("code", "prompt", "prompt_id", "story")
    list_select_related = ("template", "node")
    readonly_fields = ("code", "prompt_id", "client_id", "workflow", "outputs", "heartbeat", "started", "finished")
    actions = ["retry", "cancel", "requeue"]
    inlines = [JobInputInline]

    @admin.action(description="Retry (failed or cancelled)")
    def retry(self, request: HttpRequest, queryset: QuerySet[RenderJob]) -> None:
        done = sum(job.retry() for job in queryset)
        self.message_user(request, f"Queued {done} job(s) again.")

    @admin.action(description="Cancel")
    def cancel(self, request: HttpRequest, queryset: QuerySet[RenderJob]) -> None:
        done = sum(job.cancel() for job in queryset)
        self.message_user(request, f"Cancelled {done} job(s).")

    @admin.action(description="Requeue at the end")
    def requeue(self, request: HttpRequest, queryset: QuerySet[RenderJob]) -> None:
        done = 0
        for job in queryset.filter(status=RenderJob.QUEUED):
            done += job.move("bottom")
        self.message_user(request, f"Moved {done} queued job(s) to the end.")


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "template", "status", "total", "priority", "created", "finished")
    list_filter = ("status", "kind", "template")
    search_fields = ("name", "code", "prompt")
    list_select_related = ("template",)
    readonly_fields = ("code", "kind", "template", "total", "axes", "settings", "created", "started", "finished")
    actions = ["pause", "resume", "cancel"]

    def act(self, request: HttpRequest, queryset: QuerySet[Batch], what: str) -> None:
        refused = [why for batch in queryset if (why := getattr(batch, what)())]
        done = queryset.count() - len(refused)
        self.message_user(
            request, f"{what.capitalize()}: {done} batch(es)." + (" " + " ".join(refused) if refused else "")
        )

    @admin.action(description="Pause (running items finish)")
    def pause(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        self.act(request, queryset, "pause")

    @admin.action(description="Resume")
    def resume(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        self.act(request, queryset, "resume")

    @admin.action(description="Cancel (what finished stays)")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        self.act(request, queryset, "cancel")
