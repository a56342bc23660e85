"""`manage.py dispatcher`: drives renders on the pool's ComfyUI nodes and story steps on its Ollama
nodes until stopped. `run` starts one; in scale-out, run any number anywhere (each ComfyUI node is
driven by one of them at a time, and each step run is claimed by one)."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from renders.dispatch import Dispatcher
from stories.runner import Pipeline


class Command(BaseCommand):
    help = "Send queued renders to the ComfyUI nodes and story steps to the Ollama nodes (runs until stopped)."

    def handle(self, *args: Any, **options: Any) -> None:
        dispatcher = Dispatcher()
        pipeline = Pipeline(owner=f"steps-{dispatcher.owner}")

        def stop(*_: Any) -> None:
            dispatcher.stopping.set()
            pipeline.stop()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(f"Dispatcher {dispatcher.owner} running (renders and story steps).")
        pipeline.start()
        dispatcher.run()
        pipeline.stop()
        pipeline.join(timeout=30)
        self.stdout.write("Dispatcher stopped.")
