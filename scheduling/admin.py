from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from scheduling import fire
from scheduling.models import ScheduledRun, ScheduledTask


@admin.register(ScheduledTask)
class ScheduledTaskAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "cron", "time_zone", "enabled", "next_run", "last_status", "run_count")
    list_filter = ("kind", "enabled", "last_status")
    search_fields = ("name",)
    # Its timing fields are the scheduler's: the Schedules page's form sets the rest, checked.
    readonly_fields = (
        "code",
        "next_run",
        "last_run_at",
        "last_status",
        "last_error",
        "run_count",
        "success_count",
        "failure_count",
    )
    actions = ["run_now", "enable", "disable"]

    @admin.action(description="Run now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        for task in queryset:
            run, why = fire.run_now(task)
            if run is None:
                self.message_user(request, f"{task.name} did not start: {why}", messages.WARNING)
            else:
                self.message_user(request, f"{task.name} started.")

    @admin.action(description="Enable (from now)")
    def enable(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        for task in queryset:
            task.set_enabled(True)

    @admin.action(description="Disable")
    def disable(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        for task in queryset:
            task.set_enabled(False)


@admin.register(ScheduledRun)
class ScheduledRunAdmin(admin.ModelAdmin):
    list_display = ("task", "due", "status", "manual", "attempts", "started", "finished")
    list_filter = ("status", "manual")
    list_select_related = ("task",)
    raw_id_fields = ("task", "batch", "story", "job")
    date_hierarchy = "due"
