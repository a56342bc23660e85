from __future__ import annotations

from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes import health
from nodes.forms import NodeForm


class Command(BaseCommand):
    help = "Add a machine to the pool by its address, then check it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("host")
        parser.add_argument("--ollama-port", type=int, help="Ollama's port (usually 11434); omit if none.")
        parser.add_argument("--comfyui-port", type=int, help="ComfyUI's port (usually 8188); omit if none.")
        parser.add_argument("--ollama-limit", type=int, default=1)
        parser.add_argument("--comfyui-limit", type=int, default=1)
        parser.add_argument("--simulated", action="store_true", help="Label it as a simulated node.")

    def handle(self, *args: Any, **o: Any) -> None:
        form = NodeForm(
            {
                "name": o["name"],
                "host": o["host"],
                "enabled": True,
                "ollama_port": o["ollama_port"],
                "comfyui_port": o["comfyui_port"],
                "ollama_limit": o["ollama_limit"],
                "comfyui_limit": o["comfyui_limit"],
            }
        )
        if not form.is_valid():
            # Every reason, each field's under its label: "ComfyUI port: Ensure this value is …".
            errors = [str(e) for e in form.non_field_errors()] + [
                f"{form[field].label}: {' '.join(str(e) for e in errs)}"
                for field, errs in form.errors.items()
                if field != NON_FIELD_ERRORS
            ]
            raise CommandError(" ".join(errors))
        node = form.save()
        if o["simulated"]:
            node.simulated = True
            node.save(update_fields=["simulated"])
        health.check_node(node)
        for cap in node.capabilities.all():
            detail = cap.last_error or f"v{cap.version}"
            self.stdout.write(f"{node.name} {cap.get_kind_display()}: {cap.status} ({detail})")
