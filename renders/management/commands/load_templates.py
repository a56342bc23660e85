from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from renders.models import Template
from renders.workflows import shipped


def load() -> int:
    """Add or refresh the templates Spoon Feeder ships (by name); the user's own are untouched."""
    count = 0
    for spec in shipped():
        Template.objects.update_or_create(
            name=spec["name"],
            defaults={
                "description": spec.get("description", ""),
                "kind": spec.get("kind", Template.STILL),
                "role": spec.get("role", ""),
                "workflow": spec["workflow"],
                "mapping": spec.get("mapping", {}),
                "needs": spec.get("needs", {}),
                "shipped": True,
            },
        )
        count += 1
    return count


class Command(BaseCommand):
    help = "Add or refresh the workflow templates that ship with Spoon Feeder."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{load()} shipped templates loaded.")
