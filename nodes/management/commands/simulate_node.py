"""`manage.py simulate_node`: a simulated Ollama and/or ComfyUI on this machine, for demos and
trying Spoon Feeder without a GPU. Runs until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from nodes.models import COMFYUI_PORT, OLLAMA_PORT, Capability, Node
from nodes.sim.comfyui import SimComfyUI
from nodes.sim.ollama import SimOllama


class Command(BaseCommand):
    help = "Serve a simulated Ollama and/or ComfyUI (no GPU needed) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ollama", action="store_true", help="Serve a simulated Ollama.")
        parser.add_argument("--comfyui", action="store_true", help="Serve a simulated ComfyUI.")
        parser.add_argument("--host", default="127.0.0.1", help="A loopback address, e.g. 127.0.0.2.")
        parser.add_argument("--ollama-port", type=int, default=OLLAMA_PORT)
        parser.add_argument("--comfyui-port", type=int, default=COMFYUI_PORT)
        parser.add_argument("--run-seconds", type=float, default=3.0, help="How long a simulated render takes.")
        parser.add_argument("--tokens-per-second", type=float, default=60.0, help="Simulated Ollama's speed.")
        parser.add_argument(
            "--add-to-pool",
            metavar="NAME",
            help="Once listening, add it to the pool under this name (labelled simulated), unless a node "
            "has its address already, and have it checked.",
        )

    def handle(self, *args: Any, **o: Any) -> None:
        if not (o["ollama"] or o["comfyui"]):
            raise CommandError("say what to simulate: --ollama, --comfyui or both")
        servers: list[SimOllama | SimComfyUI] = []
        try:
            if o["ollama"]:
                servers.append(SimOllama(o["host"], o["ollama_port"], tokens_per_second=o["tokens_per_second"]).start())
            if o["comfyui"]:
                servers.append(SimComfyUI(o["host"], o["comfyui_port"], run_seconds=o["run_seconds"]).start())
        except OSError as e:
            for server in servers:
                server.close()
            raise CommandError(f"cannot listen on {o['host']}: {e.strerror}; is the port taken?") from None
        for server in servers:
            self.stdout.write(f"Simulated {type(server).__name__[3:]} at {server.url}")
        if o["add_to_pool"]:
            self.add_to_pool(o["add_to_pool"], o["host"], servers)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        for server in servers:
            server.close()  # also removes the simulated ComfyUI's output folder

    def add_to_pool(self, name: str, host: str, servers: list[SimOllama | SimComfyUI]) -> None:
        from spoonfeeder.tasks import enqueue

        with transaction.atomic():
            node, made = Node.objects.get_or_create(host=host, defaults={"name": name, "simulated": True})
            for server in servers:
                kind = Capability.OLLAMA if isinstance(server, SimOllama) else Capability.COMFYUI
                Capability.objects.get_or_create(node=node, kind=kind, defaults={"port": server.port})
            node.changed("node.saved")
            enqueue("nodes.tasks.check_node", str(node.code))
        self.stdout.write(f"{'Added to the pool as' if made else 'Already in the pool as'} {node.name}")
