from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from nodes.models import Capability, Discovery, Node
from spoonfeeder.tasks import enqueue


class CapabilityInline(admin.TabularInline):
    model = Capability
    extra = 0
    fields = ("kind", "port", "limit", "status", "version", "last_seen", "last_error")
    readonly_fields = ("status", "version", "last_seen", "last_error")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "host", "enabled", "simulated", "services")
    list_filter = ("enabled", "simulated")
    search_fields = ("name", "host")
    inlines = [CapabilityInline]
    actions = ["check_now", "enable", "disable", "remove"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        return super().get_queryset(request).prefetch_related("capabilities")

    @admin.display(description="Services")
    def services(self, node: Node) -> str:
        return ", ".join(f"{c.get_kind_display()} {c.status}" for c in node.capabilities.all()) or "none"

    @admin.action(description="Check now")
    def check_now(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            enqueue("nodes.tasks.check_node", str(node.code))
        self.message_user(request, f"Checking {queryset.count()} node(s).")

    def set_enabled(self, request: HttpRequest, queryset: QuerySet[Node], enabled: bool) -> None:
        for node in queryset:
            node.set_enabled(enabled)
        self.message_user(request, f"{'Enabled' if enabled else 'Disabled'} {queryset.count()} node(s).")

    @admin.action(description="Enable")
    def enable(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self.set_enabled(request, queryset, True)

    @admin.action(description="Disable")
    def disable(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self.set_enabled(request, queryset, False)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Our "remove" refuses busy nodes and says so; the stock bulk delete would not.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Node | None = None) -> bool:
        return super().has_delete_permission(request, obj) and not (obj and obj.busy_reason())

    @admin.action(description="Remove (not while work runs on it)", permissions=["delete"])
    def remove(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        removed = 0
        for node in queryset:
            reason = node.remove()
            if reason:
                self.message_user(request, f"{node.name} was not removed: {reason}.", messages.ERROR)
            else:
                removed += 1
        if removed:
            self.message_user(request, f"Removed {removed} node(s).")


@admin.register(Discovery)
class DiscoveryAdmin(admin.ModelAdmin):
    list_display = ("targets", "created", "finished", "probed", "error")
    readonly_fields = ("targets", "ollama_port", "comfyui_port", "created", "finished", "probed", "found", "error")
