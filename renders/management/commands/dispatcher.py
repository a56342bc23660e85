"""`manage.py dispatcher`: drives renders on the pool's ComfyUI nodes until stopped. `run` starts
one; in scale-out, run any number anywhere (each node is driven by one of them at a time)."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from renders.dispatch import Dispatcher


class Command(BaseCommand):
    help = "Send queued render jobs to the ComfyUI nodes and follow them (runs until stopped)."

    def handle(self, *args: Any, **options: Any) -> None:
        dispatcher = Dispatcher()
        signal.signal(signal.SIGINT, lambda *_: dispatcher.stopping.set())
        signal.signal(signal.SIGTERM, lambda *_: dispatcher.stopping.set())
        self.stdout.write(f"Render dispatcher {dispatcher.owner} running.")
        dispatcher.run()
        self.stdout.write("Render dispatcher stopped.")
