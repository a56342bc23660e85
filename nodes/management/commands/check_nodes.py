from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from nodes import health
from nodes.models import Capability


class Command(BaseCommand):
    help = "Check every enabled node now and print each service's status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--full", action="store_true", help="Also refresh every inventory.")

    def handle(self, *args: Any, full: bool, **options: Any) -> None:
        health.check_all(full=full)
        caps = Capability.objects.filter(node__enabled=True).select_related("node")
        if not caps:
            self.stdout.write("No enabled nodes. Add one with `manage.py add_node` or `manage.py discover_nodes`.")
        for cap in caps:
            detail = cap.last_error or (f"v{cap.version}" if cap.version else "")
            self.stdout.write(f"{cap.node.name} {cap.get_kind_display()}: {cap.status} {detail}".rstrip())
