from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.discovery import TargetError, discover
from nodes.models import COMFYUI_PORT, OLLAMA_PORT


class Command(BaseCommand):
    help = "Probe addresses, host names or ranges for Ollama and ComfyUI and add what answers as nodes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("targets", nargs="*", default=["127.0.0.1"], help="Default: this machine.")
        parser.add_argument("--ollama-port", type=int, default=OLLAMA_PORT)
        parser.add_argument("--comfyui-port", type=int, default=COMFYUI_PORT)

    def handle(self, *args: Any, targets: list[str], ollama_port: int, comfyui_port: int, **options: Any) -> None:
        for port in (ollama_port, comfyui_port):
            if not 1 <= port <= 65535:
                raise CommandError(f"port {port} is out of range (1-65535)")
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
                self.stdout.write(f"  {found['host']}: {services}{' (new)' if found.get('new') else ''}")
            else:
                self.stdout.write(f"  {found['host']}: {found.get('error')}")
        if not any(f.get("node") for f in run.found):
            self.stdout.write("Nothing answered.")
