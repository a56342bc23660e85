"""`manage.py render TEMPLATE --prompt …`: queue a render from the command line; with --wait,
follow it until it ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.models import Capability, Node
from renders import media
from renders.forms import RenderForm
from renders.models import RenderJob, Template
from renders.queue import why_waiting
from renders.views import queue_jobs


class Command(BaseCommand):
    help = "Queue a render job (and with --wait, print its progress until it ends)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("template", help="The template's name.")
        parser.add_argument("--prompt", required=True)
        # Left out, a setting is the template's own.
        parser.add_argument("--negative")
        parser.add_argument("--resolution", help="WIDTHxHEIGHT, as 832x480.")
        parser.add_argument("--frames", type=int)
        parser.add_argument("--fps", type=int)
        parser.add_argument("--steps", type=int)
        parser.add_argument("--cfg", type=float)
        parser.add_argument("--seed", help="A number, or random (the default).")
        parser.add_argument("--image", type=Path, help="The input image, for a template that starts from one.")
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
        start = RenderForm(template=template)
        data = {name: start[name].value() for name in start.fields}  # the template's own settings
        given = ("negative", "resolution", "frames", "fps", "steps", "cfg", "seed", "priority")
        for name in given:
            if o[name] is not None and name not in start.fields:
                takes = [
                    n for n in ("negative", "resolution", "frames", "fps", "steps", "cfg", "seed") if n in start.fields
                ]
                raise CommandError(f"{template.name} takes no {name}; it takes {', '.join(takes) or 'no settings'}.")
        data.update({name: o[name] for name in given if o[name] is not None})
        data.update(template=template.pk, prompt=o["prompt"], count=1, node=pin.pk if pin else "")
        if o["image"] is not None:
            try:
                data["image_kept"] = media.keep_input(o["image"].read_bytes())
            except (OSError, media.MediaError) as e:
                raise CommandError(f"--image {o['image']}: {e}") from None
        form = RenderForm({k: v for k, v in data.items() if v is not None})
        if not form.is_valid():
            raise CommandError("; ".join(f"{f}: {' '.join(map(str, e))}" for f, e in form.errors.items()))
        job = queue_jobs(form)[0]
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
