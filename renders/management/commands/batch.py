"""`manage.py batch create|list|show|pause|resume|cancel|retry`: batches from the command line.

manage.py batch create sdxl-still --prompt "a lighthouse" --seeds 50 [--sequential --start 1000]
manage.py batch create sdxl-still --prompts-file prompts.txt
manage.py batch create sdxl-still --prompt "a lighthouse" --grid cfg=4,6,8 --grid steps=20,30
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from renders import batches
from renders.forms import BatchForm
from renders.models import Batch, Template
from renders.views import make_batch


class Command(BaseCommand):
    help = "Make, list, show and control batches of render jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Make a batch and queue its items.")
        create.add_argument("template", help="The template's name.")
        create.add_argument("--prompt", default="")
        create.add_argument("--negative")
        create.add_argument("--name", default="")
        kind = create.add_mutually_exclusive_group(required=True)
        kind.add_argument("--seeds", help="How many seed variations (1 to 1,000).")
        kind.add_argument("--prompts-file", type=Path, help="A UTF-8 text file, one prompt per line.")
        kind.add_argument("--grid", action="append", help="An axis, as cfg=4,6,8 (up to three).")
        create.add_argument("--sequential", action="store_true", help="Seeds in a row from --start.")
        create.add_argument("--start", default="0", help="The first seed, with --sequential.")
        create.add_argument("--resolution", help="WIDTHxHEIGHT, as 832x480.")
        create.add_argument("--frames", type=int)
        create.add_argument("--fps", type=int)
        create.add_argument("--steps", type=int)
        create.add_argument("--cfg", type=float)
        create.add_argument("--priority", type=int, default=0)
        sub.add_parser("list", help="Every batch, newest first.")
        for name in ("show", "pause", "resume", "cancel", "retry"):
            one = sub.add_parser(name)
            one.add_argument("code", help="The batch's code (its first characters will do).")
            if name == "pause":
                one.add_argument("--interrupt", action="store_true", help="Interrupt its running items too.")

    def handle(self, *args: Any, **o: Any) -> None:
        action = o["action"]
        if action == "create":
            return self.create(o)
        if action == "list":
            for batch in Batch.objects.select_related("template").with_counts().order_by("-created")[:200]:
                self.stdout.write(self.line(batch))
            return None
        batch = self.find(o["code"])
        if action == "show":
            return self.show(batch)
        if action == "pause":
            why = batch.pause(interrupt=o["interrupt"])
        elif action == "resume":
            why = batch.resume()
        elif action == "cancel":
            why = batch.cancel()
        else:
            n = batch.retry()
            why = "" if n else "No item of it has failed: there is nothing to retry."
            if n:
                self.stdout.write(f"Queued {n} failed item{'s' if n != 1 else ''} again.")
        if why:
            raise CommandError(why)
        batch.refresh_from_db()
        self.stdout.write(f"{batch.name}: {batch.get_status_display().lower()}")
        return None

    def find(self, code: str) -> Batch:
        code = code.strip().lower()
        if len(code) < 4:
            raise CommandError("Give at least the first 4 characters of the batch's code (see `batch list`).")
        found = [pk for pk, c in Batch.objects.values_list("pk", "code") if str(c).startswith(code)][:2]
        if not found:
            raise CommandError(f"No batch's code starts with {code!r}: see `batch list`.")
        if len(found) > 1:
            raise CommandError(f"More than one batch's code starts with {code!r}: give more of it.")
        return Batch.objects.get(pk=found[0])

    def line(self, batch: Batch) -> str:
        done = getattr(batch, "done", 0)
        failed = f", {batch.failed} failed" if getattr(batch, "failed", 0) else ""  # type: ignore[attr-defined]
        return (
            f"{str(batch.code)[:8]}  {batch.get_status_display():<24} {done}/{batch.total}{failed}  "
            f"{batch.name} ({batch.template.name})"
        )

    def show(self, batch: Batch) -> None:
        batch = Batch.objects.select_related("template").with_counts().get(pk=batch.pk)
        self.stdout.write(self.line(batch))
        if batch.error:
            self.stdout.write(f"  {batch.error}")
        for job in batch.items.select_related("node").order_by("index")[:1000]:
            varies = ", ".join(f"{k} {v}" for k, v in job.labels.items()) or f"seed {job.settings.get('seed', '-')}"
            where = f" on {job.node.name}" if job.node else ""
            self.stdout.write(f"  #{job.index + 1:<5} {job.get_status_display():<20} {varies}{where}  {job.code}")

    def create(self, o: dict[str, Any]) -> None:
        template = Template.objects.filter(name=o["template"]).first()
        if template is None:
            names = ", ".join(Template.objects.values_list("name", flat=True)) or "none (run load_templates)"
            raise CommandError(f"no template named {o['template']!r}; there are: {names}")
        start = BatchForm(template=template)
        data = {name: start[name].value() for name in start.fields}  # the template's own settings
        for name in ("negative", "resolution", "frames", "fps", "steps", "cfg"):
            if o[name] is not None:
                if name not in start.fields:
                    raise CommandError(f"{template.name} takes no {name}.")
                data[name] = o[name]
        data.update(template=template.pk, prompt=o["prompt"], name=o["name"], priority=o["priority"], node="")
        files = {}
        if o["seeds"] is not None:
            data.update(kind="seeds", count=o["seeds"], sequential=o["sequential"], start=o["start"])
        elif o["prompts_file"] is not None:
            try:
                raw = o["prompts_file"].open("rb").read(batches.MAX_PROMPT_FILE + 1)
            except OSError as e:
                raise CommandError(f"--prompts-file {o['prompts_file']}: {e.strerror or e}") from None
            from django.core.files.uploadedfile import SimpleUploadedFile

            files["prompts_file"] = SimpleUploadedFile(o["prompts_file"].name, raw)
            data.update(kind="prompts")
        else:
            if len(o["grid"]) > batches.MAX_AXES:
                raise CommandError(f"A grid has at most {batches.MAX_AXES} axes; {len(o['grid'])} were given.")
            data.update(kind="grid", **{f"axis_{i + 1}": text for i, text in enumerate(o["grid"])})
        form = BatchForm({k: v for k, v in data.items() if v is not None and v is not False}, files)
        if not form.is_valid():
            raise CommandError("; ".join(f"{' '.join(map(str, e))}" for e in form.errors.values()))
        batch = make_batch(form)
        self.stdout.write(f"Queued batch {str(batch.code)[:8]} {batch.name}: {form.cleaned_data['summary']}")
        lacking = form.unrunnable.get(template.pk)
        if lacking:
            self.stdout.write(f"No online ComfyUI can run {template.name} yet ({lacking}): it waits until one can.")
