from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from nodes.discovery import TargetError, discover
from nodes.models import COMFYUI_PORT, OLLAMA_PORT, Discovery, Node


class Command(BaseCommand):
    help = "Probe addresses, host names or ranges for Ollama and ComfyUI and add what answers as nodes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("targets", nargs="*", default=["127.0.0.1"], help="Default: this machine.")
        parser.add_argument("--ollama-port", type=int, default=OLLAMA_PORT)
        parser.add_argument("--comfyui-port", type=int, default=COMFYUI_PORT)
        parser.add_argument(
            "--first-run",
            action="store_true",
            help="Only when the pool is empty and nothing was ever discovered, and in the background: "
            "the worker cluster runs it (what `manage.py run` does at its first start).",
        )

    def handle(
        self, *args: Any, targets: list[str], ollama_port: int, comfyui_port: int, first_run: bool, **options: Any
    ) -> None:
        for port in (ollama_port, comfyui_port):
            if not 1 <= port <= 65535:
                raise CommandError(f"port {port} is out of range (1-65535)")
        if first_run:
            self.queue_first(" ".join(targets), ollama_port, comfyui_port)
            return
        try:
            run = discover(" ".join(targets), ollama_port=ollama_port, comfyui_port=comfyui_port)
        except TargetError as e:
            raise CommandError(str(e)) from None
        self.stdout.write(f"Probed {run.probed} address(es).")
        for found in run.found:
            if found.get("node"):
                services = ", ".join(
                    f"{name} {found[key]}"
                    for key, name in (("ollama", "Ollama"), ("comfyui", "ComfyUI"))
                    if found.get(key)
                )
                known = " (new)" if found.get("new") else f" (already in the pool as {found['node']})"
                self.stdout.write(f"  {found['host']}: {services}{known}")
            else:
                self.stdout.write(f"  {found['host']}: {found.get('error')}")
        summary = run.summary()
        self.stdout.write(f"{summary[0].upper()}{summary[1:]}.")

    def queue_first(self, targets: str, ollama_port: int, comfyui_port: int) -> None:
        from spoonfeeder.tasks import enqueue

        if Node.objects.exists() or Discovery.objects.exists():
            self.stdout.write("The pool has nodes, or was searched before: nothing to do.")
            return
        with transaction.atomic():
            run = Discovery.objects.create(targets=targets, ollama_port=ollama_port, comfyui_port=comfyui_port)
            enqueue("nodes.tasks.run_discovery", str(run.code))
        self.stdout.write(f"Queued a search of {targets} for the worker cluster.")
