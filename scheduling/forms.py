"""The scheduled task form: when (a cron expression in a time zone, with the rules for missed runs
and overlap) and what (the form of its kind, prefixed `k`: the Batches page's, the render
dialog's, the Stories page's, or the health check's and the clean-up's own)."""

from __future__ import annotations

import re
import zoneinfo
from functools import cache
from typing import Any

from django import forms
from django.db import transaction
from django.http import QueryDict
from django.urls import reverse
from django.utils import timezone

from renders.forms import RenderForm
from renders.models import Template
from scheduling import cron, kinds
from scheduling.models import ScheduledTask

PREFIX = "k"


@cache
def zones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


class ScheduleForm(forms.ModelForm):
    until = forms.CharField(
        required=False,
        max_length=5,
        label="Only until",
        help_text="HH:MM, optional: the batch's unfinished items are paused then.",
    )

    class Meta:
        model = ScheduledTask
        fields = [
            "name",
            "kind",
            "cron",
            "time_zone",
            "enabled",
            "missed",
            "overlap",
            "only_online",
            "wait_minutes",
            "retries",
        ]
        labels = {
            "kind": "What it runs",
            "cron": "Schedule",
            "only_online": "Only when a ComfyUI node is online",
            "retries": "Retries",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fields: Any = self.fields
        fields["cron"].max_length = None  # checked by scheduling.cron, with its words
        self.fields["cron"].widget = forms.TextInput(
            attrs={
                "list": "cron-presets",
                "autocomplete": "off",
                "spellcheck": "false",
                "hx-get": reverse("scheduling:cron"),
                "hx-trigger": "input changed delay:300ms, change",
                "hx-target": "#cron-help",
                "hx-swap": "outerHTML",
                "hx-include": "#schedule-form [name=cron], #schedule-form [name=time_zone]",
            }
        )
        self.fields["time_zone"].widget = forms.TextInput(attrs={"list": "time-zones", "autocomplete": "off"})
        fields["time_zone"].max_length = None
        self.fields["kind"].widget.attrs.update(refit())
        self.fields["wait_minutes"].validators.append(lambda v: limit(v, 1, 1440, "minutes"))
        self.fields["retries"].validators.append(lambda v: limit(v, 0, 10, "retries"))
        if self.kind() != ScheduledTask.BATCH:
            del self.fields["until"]  # only a batch has unfinished items to pause
        elif self.instance.pk and not self.is_bound:
            self.initial["until"] = self.instance.settings.get("until", "")

    def kind(self) -> str:
        chosen = self.data.get("kind") if self.is_bound else self.initial.get("kind", self.instance.kind)
        return chosen if chosen in dict(ScheduledTask.KINDS) else ScheduledTask.BATCH

    def clean_cron(self) -> str:
        try:
            return cron.check(self.cleaned_data.get("cron") or "")
        except cron.CronError as e:
            raise forms.ValidationError(str(e)) from None

    def clean_time_zone(self) -> str:
        name = (self.cleaned_data.get("time_zone") or "").strip()
        try:
            cron.zone(name)
        except cron.CronError as e:
            raise forms.ValidationError(str(e)) from None
        return name

    def clean_until(self) -> str:
        text = (self.cleaned_data.get("until") or "").strip()
        if text and not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", text):
            raise forms.ValidationError(f"Write a time of day as HH:MM, as 06:00 (not {text[:20]!r}).")
        return f"{int(text.split(':')[0]):02d}:{text.split(':')[1]}" if text else ""


def limit(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise forms.ValidationError(f"From {low} to {high:,} {what}.")


def refit() -> dict[str, str]:
    """Choosing another kind or template draws the form again, fitted to it, keeping what was typed."""
    return {
        "hx-get": reverse("scheduling:refit"),
        "hx-trigger": "change",
        "hx-target": "#schedule-form",
        "hx-swap": "outerHTML",
        "hx-include": "#schedule-form",
    }


def kind_form(
    kind: str, data: QueryDict | None, files: Any = None, initial: dict[str, Any] | None = None
) -> forms.Form:
    """The form of what a task of `kind` runs: bound to what was posted, or starting at `initial`
    (fitted to the template named there)."""
    cls = kinds.form_class(kind)
    kwargs: dict[str, Any] = {"prefix": PREFIX}
    if issubclass(cls, RenderForm) and data is None:
        chosen = str((initial or {}).get("template") or "")
        kwargs["template"] = Template.objects.filter(pk=chosen).first() if chosen.isdigit() else None
    form = cls(data, files, initial=initial, **kwargs) if data is not None else cls(initial=initial, **kwargs)
    if "template" in form.fields:
        form.fields["template"].widget.attrs.update(refit())
    if "name" in form.fields:  # a scheduled batch is named after its task and its due time
        del form.fields["name"]
    return form


def typed(request_data: QueryDict) -> dict[str, Any]:
    """What was typed in the kind form, as the initial values of its fitted copy."""
    start = f"{PREFIX}-"
    values: dict[str, Any] = {}
    for key in request_data:
        if key.startswith(start):
            items = request_data.getlist(key)
            values[key[len(start) :]] = items if len(items) > 1 else items[0]
    return values


@transaction.atomic
def save(form: ScheduleForm, what: forms.Form) -> ScheduledTask:
    task = form.save(commit=False)
    settings = kinds.kept(what)
    template = what.cleaned_data.get("template") if "template" in what.fields else None
    if isinstance(template, Template):
        settings["template_name"] = template.name
    if form.cleaned_data.get("until") and task.kind == ScheduledTask.BATCH:
        settings["until"] = form.cleaned_data["until"]
    task.settings = settings
    task.plan(timezone.now())
    task.changed_at = timezone.now()
    task.save()
    task.changed("schedule.saved")
    return task
