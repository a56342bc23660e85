"""`manage.py schedule add|list|run|enable|disable|history`: scheduled tasks from the command line,
checked by the Schedules page's own forms.

manage.py schedule add "Nightly seeds" --kind batch --cron "0 2 * * *" --template sdxl-still \
    --set prompt="a lighthouse" --set kind=seeds --set count=50 [--until 06:00]
manage.py schedule add "Hourly check" --kind health --cron @hourly --retries 2
manage.py schedule add "Weekly clean-up" --kind cleanup --cron "0 3 * * 0" --set days=30
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import QueryDict
from django.utils import timezone

from renders.models import Template
from scheduling import fire
from scheduling.forms import PREFIX, ScheduleForm, kind_form, save
from scheduling.models import ScheduledTask
from scheduling.views import next_words


class Command(BaseCommand):
    help = "Add, list, run, enable, disable scheduled tasks and show their run history."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Schedule a task.")
        add.add_argument("name")
        add.add_argument("--kind", required=True, choices=[k for k, _ in ScheduledTask.KINDS])
        add.add_argument("--cron", required=True, help='Five fields, as "0 2 * * *", or @daily.')
        add.add_argument("--tz", default=timezone.get_default_timezone_name(), help="As Europe/Berlin.")
        add.add_argument("--missed", choices=["skip", "once"], default="skip")
        add.add_argument("--overlap", choices=["skip", "allow"], default="skip")
        add.add_argument("--only-online", action="store_true", help="Only when a ComfyUI node is online.")
        add.add_argument("--wait", type=int, default=10, help="Minutes to wait for a ComfyUI node.")
        add.add_argument("--retries", type=int, default=0)
        add.add_argument("--until", default="", help="A batch: pause its unfinished items at HH:MM.")
        add.add_argument("--template", help="The template's name (batch, render, story).")
        add.add_argument(
            "--set", action="append", default=[], metavar="FIELD=VALUE", help="A field of its kind's form."
        )
        add.add_argument("--disabled", action="store_true")
        sub.add_parser("list", help="Every scheduled task.")
        for name in ("run", "enable", "disable", "history"):
            sub.add_parser(name).add_argument("name")

    def handle(self, *args: Any, **o: Any) -> None:
        action = o["action"]
        if action == "add":
            return self.add(o)
        if action == "list":
            for task in ScheduledTask.objects.order_by("name"):
                last = f"last {task.last_status} {task.last_local:%Y-%m-%d %H:%M}" if task.last_local else "not run yet"
                upcoming = f"next {task.next_local:%Y-%m-%d %H:%M}" if task.next_local else "disabled"
                self.stdout.write(f"{task.name}\t{task.get_kind_display()}\t{task.described()}\t{upcoming}\t{last}")
            return None
        found = ScheduledTask.objects.filter(name=o["name"]).first()
        if found is None:
            names = ", ".join(ScheduledTask.objects.values_list("name", flat=True)[:20]) or "none"
            raise CommandError(f"No scheduled task is called {o['name']!r}; there are: {names}")
        task = found
        if action == "run":
            run, why = fire.run_now(task)
            if run is None:
                raise CommandError(f"{task.name} did not start: {why}")
            self.stdout.write(f"Started {task.name} (run {run.pk}); a worker runs it.")
        elif action in ("enable", "disable"):
            task.set_enabled(action == "enable")
            self.stdout.write(f"{task.name} {action}d: {next_words(task)}")
        else:
            for run in task.runs.order_by("-due", "-id")[:50]:
                due = task.shown(run.due)
                what = run.summary() or run.error or run.note
                self.stdout.write(f"{due}\t{run.status}{' (run now)' if run.manual else ''}\t{what}")
        return None

    def add(self, o: dict[str, Any]) -> None:
        data = QueryDict(mutable=True)
        data.update(
            {
                "name": o["name"],
                "kind": o["kind"],
                "cron": o["cron"],
                "time_zone": o["tz"],
                "missed": o["missed"],
                "overlap": o["overlap"],
                "wait_minutes": str(o["wait"]),
                "retries": str(o["retries"]),
                "until": o["until"],
            }
        )
        if not o["disabled"]:
            data["enabled"] = "on"
        if o["only_online"]:
            data["only_online"] = "on"
        initial: dict[str, Any] = {}
        if o["template"]:
            template = Template.objects.filter(name=o["template"]).first()
            if template is None:
                names = ", ".join(Template.objects.values_list("name", flat=True)) or "none (run load_templates)"
                raise CommandError(f"No template named {o['template']!r}; there are: {names}")
            initial["template"] = str(template.pk)
        start = kind_form(o["kind"], None, initial=initial)
        for name in start.fields:  # the form's first values (a template's own settings)
            value = start[name].value()
            if value not in (None, False, ""):
                for item in value if isinstance(value, list) else [value]:
                    data.appendlist(f"{PREFIX}-{name}", str(getattr(item, "pk", item)))
        for pair in o["set"]:
            field, sep, value = pair.partition("=")
            if not sep:
                raise CommandError(f"--set {pair}: write FIELD=VALUE, as count=50.")
            data.setlist(f"{PREFIX}-{field}", value.split(",") if field == "nodes" else [value])
        form = ScheduleForm(data)
        what = kind_form(form.kind(), data)
        if not (form.is_valid() & what.is_valid()):
            errors = {**form.errors, **{f"{name}": e for name, e in what.errors.items()}}
            raise CommandError("; ".join(f"{name}: {' '.join(map(str, e))}" for name, e in errors.items()))
        task = save(form, what)
        self.stdout.write(f"Added {task.name}: {task.described()}; {next_words(task)}")
