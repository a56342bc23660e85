from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from spoonfeeder.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("id", "created", "topic", "kind", "ref", "relayed")
    list_filter = ("topic", "kind")
    search_fields = ("ref",)
    date_hierarchy = "created"
    readonly_fields = [f.name for f in Event._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
