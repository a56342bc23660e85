"""`manage.py render TEMPLATE --prompt …`: queue a render from the command line; with --wait,
follow it until it ends."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.models import Capability, Node
from renders.forms import RenderForm
from renders.models import RenderJob, Template
from renders.queue import why_waiting
from renders.views import queue_jobs


class Command(BaseCommand):
    help = "Queue a render job (and with --wait, print its progress until it ends)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("template", help="The template's name.")
        parser.add_argument("--prompt", required=True)
        parser.add_argument("--negative", default="")
        parser.add_argument("--resolution", default="512x512")
        parser.add_argument("--frames", type=int, default=16)
        parser.add_argument("--fps", type=int, default=16)
        parser.add_argument("--steps", type=int, default=20)
        parser.add_argument("--cfg", type=float, default=5.0)
        parser.add_argument("--seed", default="random")
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--node", help="Render only on this node (its name).")
        parser.add_argument("--wait", action="store_true", help="Print progress until the job ends.")
        parser.add_argument("--timeout", type=float, default=3600)

    def handle(self, *args: Any, **o: Any) -> None:
        template = Template.objects.filter(name=o["template"]).first()
        if template is None:
            names = ", ".join(Template.objects.values_list("name", flat=True)) or "none (run load_templates)"
            raise CommandError(f"no template named {o['template']!r}; there are: {names}")
        pin = None
        if o["node"]:
            pin = Node.objects.filter(name=o["node"], capabilities__kind=Capability.COMFYUI).first()
            if pin is None:
                known = ", ".join(
                    Node.objects.filter(capabilities__kind=Capability.COMFYUI).values_list("name", flat=True)
                )
                raise CommandError(f"no ComfyUI node named {o['node']!r}; there are: {known or 'none'}")
        form = RenderForm(
            {
                "template": template.pk,
                "prompt": o["prompt"],
                "negative": o["negative"],
                "resolution": o["resolution"],
                "frames": o["frames"],
                "fps": o["fps"],
                "steps": o["steps"],
                "cfg": o["cfg"],
                "seed": o["seed"],
                "priority": o["priority"],
                "count": 1,
                "node": pin.pk if pin else "",
            }
        )
        if not form.is_valid():
            raise CommandError("; ".join(f"{f}: {' '.join(map(str, e))}" for f, e in form.errors.items()))
        queue_jobs(form)
        job = RenderJob.objects.order_by("-id").first()
        assert job is not None
        self.stdout.write(f"Queued job {job.code}.")
        lacking = form.unrunnable.get(template.pk)
        if lacking and pin is None:
            self.stdout.write(f"No online ComfyUI can run {template.name} yet ({lacking}): it waits until one can.")
        if o["wait"]:
            self.follow(job, o["timeout"])

    def follow(self, job: RenderJob, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            job.refresh_from_db()
            line = f"{job.get_status_display()}"
            if job.status == RenderJob.QUEUED:
                why_waiting([job])
                line += f": {job.waiting}"  # type: ignore[attr-defined]
            if job.status == RenderJob.RENDERING:
                line += f" {job.progress:.0%}" + (f" step {job.step}/{job.steps}" if job.steps else "")
            if line != last:
                self.stdout.write(line)
                last = line
            if job.status in RenderJob.ENDED:
                if job.status == RenderJob.COMPLETED:
                    for out in job.outputs:
                        self.stdout.write(f"  {out['path']} ({out['size']} bytes)")
                    return
                raise CommandError(job.error or job.get_status_display())
            time.sleep(0.2)
        raise CommandError(f"still {job.get_status_display().lower()} after {timeout:g} s")
