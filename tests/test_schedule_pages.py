"""The Schedules pages (issue 13, points 3 and 4): a task made through its form with the cron
helper, bad input refused in words with nothing saved, Run now, the toggle, the run history and its
links, the clean-up's preview before saving, the system schedules shown and kept, the dashboard's
next run, login on every page and fragment, and `manage.py schedule`."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule

from renders.forms import BatchForm
from renders.management.commands.load_templates import load
from renders.models import Template
from scheduling import fire
from scheduling.models import ScheduledRun, ScheduledTask

SEEDED = "test-video-prompt"


@pytest.fixture
def templates(db: None) -> None:
    load()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    queued: list[int] = []
    monkeypatch.setattr(fire, "send", lambda run: queued.append(run.pk))
    return queued


def batch_form(**fields: Any) -> dict[str, Any]:
    """The schedule form for a nightly batch, as the page shows it filled in."""
    t = Template.objects.get(name=SEEDED)
    start = BatchForm(template=t)
    values = {name: start[name].value() for name in start.fields}
    what = {f"k-{n}": v for n, v in values.items() if v is not None and v is not False and n != "name"}
    what.update({"k-template": str(t.pk), "k-prompt": "a lighthouse at dusk", "k-kind": "seeds", "k-count": "4"})
    schedule = {
        "name": "Nightly lighthouses",
        "kind": "batch",
        "cron": "0 2 * * *",
        "time_zone": "Europe/Berlin",
        "enabled": "on",
        "missed": "skip",
        "overlap": "skip",
        "wait_minutes": "10",
        "retries": "0",
    }
    return {**schedule, **what, **fields}


def test_every_schedules_page_and_fragment_needs_a_login(client: Client, db: None) -> None:
    task = ScheduledTask.objects.create(name="t", kind="health", cron="0 2 * * *")
    for url in (
        reverse("scheduling:index"),
        reverse("scheduling:new"),
        reverse("scheduling:refit") + "?kind=health",
        reverse("scheduling:cron") + "?cron=0+2+*+*+*",
        reverse("scheduling:task", args=[task.code]),
        reverse("scheduling:runs", args=[task.code]),
    ):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    response = client.post(reverse("scheduling:action", args=[task.code, "run"]))
    assert response.status_code == 302 and ScheduledRun.objects.count() == 0


def test_a_nightly_batch_is_scheduled_through_its_form(logged_in: Client, templates: None) -> None:
    page = logged_in.get(reverse("scheduling:new") + "?kind=batch").content.decode()
    assert 'name="k-template"' in page and 'name="k-count"' in page and 'name="k-name"' not in page
    assert 'list="cron-presets"' in page and "Daily at 2 AM" in page
    with time_machine.travel("2026-01-10 12:00Z", tick=False):
        response = logged_in.post(reverse("scheduling:new"), batch_form(until="6:30"))
    assert response.status_code == 302
    task = ScheduledTask.objects.get()
    assert (task.kind, task.cron, task.time_zone) == ("batch", "0 2 * * *", "Europe/Berlin")
    assert task.next_run.isoformat() == "2026-01-11T01:00:00+00:00"  # 02:00 in Berlin
    assert task.settings["prompt"] == "a lighthouse at dusk" and task.settings["count"] == "4"
    assert task.settings["template_name"] == SEEDED and task.settings["until"] == "06:30"
    shown = logged_in.get(response["Location"]).content.decode()
    assert "Saved Nightly lighthouses: next run 2026-01-11 02:00 (Europe/Berlin)." in shown
    assert "At 02:00" in shown and "only until 06:30" in shown


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"cron": "* * *"}, "That has 3 fields; a cron expression has five"),
        ({"cron": "61 * * * *"}, "the minute field &#x27;61&#x27; must be * or numbers from 0 to 59"),
        ({"cron": "@reboot"}, "@reboot runs at start-up, not at a time"),
        ({"cron": "x" * 10_000}, "That is 10,000 characters"),
        ({"cron": "0 0 31 2 *"}, "never fires: no month has that day"),
        ({"time_zone": "Mars/Olympus"}, "is not a time zone this machine knows"),
        ({"until": "25:00"}, "Write a time of day as HH:MM, as 06:00"),
        ({"k-count": "0"}, "How many images: from 1 to 1,000; 0 was asked."),
        ({"retries": "50"}, "From 0 to 10 retries."),
        ({"name": ""}, "This field is required."),
    ],
)
def test_bad_input_is_refused_in_words_and_nothing_is_saved(
    logged_in: Client, templates: None, fields: dict[str, str], error: str
) -> None:
    response = logged_in.post(reverse("scheduling:new"), batch_form(**fields))
    assert response.status_code == 400
    assert error in response.content.decode()
    assert ScheduledTask.objects.count() == 0


def test_a_name_taken_is_refused(logged_in: Client, templates: None) -> None:
    ScheduledTask.objects.create(name="Nightly lighthouses", kind="health", cron="0 2 * * *")
    response = logged_in.post(reverse("scheduling:new"), batch_form())
    assert response.status_code == 400 and "Scheduled task with this Name already exists." in response.content.decode()


def test_the_cron_helper_says_it_in_words_with_the_next_five_runs(logged_in: Client, db: None) -> None:
    with time_machine.travel("2026-01-10 12:00Z", tick=False):
        html = logged_in.get(reverse("scheduling:cron"), {"cron": "0 2 * * 1-5", "time_zone": "UTC"}).content.decode()
    assert "At 02:00, Monday through Friday" in html
    assert html.count("<li>") == 5 and "Mon 2026-01-12 02:00" in html and "Fri 2026-01-16 02:00" in html
    html = logged_in.get(reverse("scheduling:cron"), {"cron": "0 0 31 2 *"}).content.decode()
    assert "never fires" in html and "<li>" not in html
    html = logged_in.get(reverse("scheduling:cron"), {"cron": "0 2 * * *", "time_zone": "Nowhere/Else"}).content
    assert b"is not a time zone this machine knows" in html


def test_choosing_a_kind_fits_the_form_keeping_what_was_typed(logged_in: Client, templates: None) -> None:
    html = logged_in.get(
        reverse("scheduling:refit"), {"kind": "health", "name": "Hourly check", "cron": "0 * * * *"}
    ).content.decode()
    assert 'name="k-full"' in html and 'name="k-template"' not in html
    assert 'value="Hourly check"' in html and "Every hour" in html


def test_a_cleanup_shows_what_it_would_delete_before_it_is_saved(logged_in: Client, templates: None) -> None:
    html = logged_in.get(reverse("scheduling:refit"), {"kind": "cleanup", "k-days": "30", "k-renders": "on"}).content
    assert b'id="cleanup-preview"' in html and b"it would delete: <strong>nothing</strong>" in html


def test_run_now_twice_says_why_the_second_did_not_start(logged_in: Client, templates: None, sent: list[int]) -> None:
    logged_in.post(reverse("scheduling:new"), batch_form())
    task = ScheduledTask.objects.get()
    url = reverse("scheduling:action", args=[task.code, "run"])
    first = logged_in.post(url, HTTP_HX_REQUEST="true").content.decode()
    second = logged_in.post(url, HTTP_HX_REQUEST="true").content.decode()
    assert "Nightly lighthouses started: see its run history." in first
    assert "Nightly lighthouses did not start: The run due" in second and "is still pending" in second
    assert ScheduledRun.objects.count() == 1 and len(sent) == 1


def test_the_toggle_disables_and_enables_from_now(logged_in: Client, templates: None) -> None:
    logged_in.post(reverse("scheduling:new"), batch_form())
    task = ScheduledTask.objects.get()
    logged_in.post(reverse("scheduling:action", args=[task.code, "disable"]))
    task.refresh_from_db()
    assert not task.enabled and task.next_run is None
    with time_machine.travel("2026-05-01 03:00Z", tick=False):
        logged_in.post(reverse("scheduling:action", args=[task.code, "enable"]))
    task.refresh_from_db()
    assert task.enabled and task.next_run.isoformat() == "2026-05-02T00:00:00+00:00"  # what was missed is not run


def test_the_list_shows_tasks_and_the_system_schedules_which_cannot_be_deleted(
    logged_in: Client, templates: None
) -> None:
    logged_in.post(reverse("scheduling:new"), batch_form())
    html = logged_in.get(reverse("scheduling:index")).content.decode()
    assert "Nightly lighthouses" in html and "At 02:00 (Europe/Berlin)" in html and "Run now" in html
    system = html[html.index('id="system-schedules"') :]
    assert "Fire scheduled tasks" in system and "Every minute" in system and "Check the nodes" in system
    assert "delete" not in system.lower().replace("cannot be deleted", "")
    assert Schedule.objects.filter(func="scheduling.tasks.tick", cron="* * * * *").count() == 1


def test_the_run_history_links_what_each_run_made(logged_in: Client, templates: None, sent: list[int]) -> None:
    logged_in.post(reverse("scheduling:new"), batch_form())
    task = ScheduledTask.objects.get()
    fire.run_now(task)
    fire.execute(sent.pop())
    run = ScheduledRun.objects.get()
    html = logged_in.get(reverse("scheduling:task", args=[task.code])).content.decode()
    assert f'href="{reverse("renders:batch", args=[run.batch.code])}"' in html
    assert "Queued batch Nightly lighthouses," in html and "4 items." in html


def test_a_task_is_deleted_with_its_history_but_not_what_it_made(
    logged_in: Client, templates: None, sent: list[int]
) -> None:
    logged_in.post(reverse("scheduling:new"), batch_form())
    task = ScheduledTask.objects.get()
    fire.run_now(task)
    fire.execute(sent.pop())
    asked = logged_in.get(reverse("scheduling:delete", args=[task.code])).content.decode()
    assert "Delete the scheduled task Nightly lighthouses?" in asked and "run history (1 run)" in asked
    assert ScheduledTask.objects.count() == 1  # asking deletes nothing
    response = logged_in.post(reverse("scheduling:delete", args=[task.code]), follow=True)
    assert "Deleted Nightly lighthouses and its run history." in response.content.decode()
    assert ScheduledTask.objects.count() == 0 and ScheduledRun.objects.count() == 0
    from renders.models import Batch

    assert Batch.objects.count() == 1


def test_the_dashboard_shows_the_next_scheduled_run(logged_in: Client, templates: None) -> None:
    with time_machine.travel("2026-01-10 12:00Z", tick=False):
        logged_in.post(reverse("scheduling:new"), batch_form())
        html = logged_in.get(reverse("dashboard")).content.decode()
    assert "Next: " in html and "Nightly lighthouses" in html and "Sun 02:00" in html


def test_model_text_in_a_task_is_escaped(logged_in: Client, db: None) -> None:
    ScheduledTask.objects.create(name="<script>alert(1)</script>", kind="health", cron="0 2 * * *")
    html = logged_in.get(reverse("scheduling:index")).content.decode()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


# --- manage.py schedule ----------------------------------------------------------------------------


def command(*args: str) -> str:
    out = StringIO()
    call_command("schedule", *args, stdout=out)
    return out.getvalue()


def test_the_schedule_command_adds_lists_runs_and_shows_history(templates: None, sent: list[int]) -> None:
    out = command("add", "Hourly check", "--kind", "health", "--cron", "0 * * * *", "--retries", "2")
    assert out.startswith("Added Hourly check: Every hour; next run ")
    assert "Hourly check" in command("list") and "Every hour" in command("list")
    command("disable", "Hourly check")
    assert ScheduledTask.objects.get().next_run is None
    command("enable", "Hourly check")
    assert ScheduledTask.objects.get().next_run is not None
    assert command("run", "Hourly check").startswith("Started Hourly check")
    with pytest.raises(CommandError, match="did not start: The run due"):
        command("run", "Hourly check")
    history = command("history", "Hourly check")
    assert "pending" in history and "run now" in history.lower()
    assert timezone.now()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "x", "--kind", "health", "--cron", "61 * * * *"), "the minute field '61' must be"),
        (("add", "x", "--kind", "health", "--cron", "0 2 * * *", "--tz", "Mars/Olympus"), "is not a time zone"),
        (("add", "x", "--kind", "cleanup", "--cron", "0 2 * * *", "--set", "days=0"), "days: Ensure this value"),
        (("run", "nothing"), "No scheduled task is called 'nothing'"),
    ],
)
def test_the_schedule_command_refuses_bad_input_and_saves_nothing(
    templates: None, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        command(*args)
    assert ScheduledTask.objects.count() == 0


def test_the_live_fragments_are_the_page_partials(logged_in: Client, templates: None, sent: list[int]) -> None:
    import re

    from scheduling import live
    from spoonfeeder import live as topics

    logged_in.post(reverse("scheduling:new"), batch_form())
    task = ScheduledTask.objects.get()
    fire.run_now(task)
    assert topics.known("schedules") and topics.known(f"schedule-{task.code}")

    def unsigned(html: str) -> str:
        return re.sub(r'<input type="hidden" name="csrfmiddlewaretoken"[^>]*>', "", html)

    with time_machine.travel(timezone.now(), tick=False):
        listed, page = live.list_fragments(), logged_in.get(reverse("scheduling:index")).content.decode()
        pushed, detail = (
            live.task_fragments(str(task.code)),
            logged_in.get(reverse("scheduling:task", args=[task.code])),
        )
    part = re.search(r'<section id="task-list".*?</section>', page, re.S)
    assert part and unsigned(part.group(0)) == unsigned(listed).strip()
    runs = re.search(r'<section id="schedule-runs".*?</section>', detail.content.decode(), re.S)
    assert runs and unsigned(runs.group(0)) in unsigned(pushed) and "Run now." in pushed
    assert live.task_fragments("5b0e9a2c-0000-4000-8000-000000000000") == ""


def test_a_task_is_edited_through_its_form_filled_in_as_saved(logged_in: Client, templates: None) -> None:
    logged_in.post(reverse("scheduling:new"), batch_form(until="06:00"))
    task = ScheduledTask.objects.get()
    page = logged_in.get(reverse("scheduling:edit", args=[task.code])).content.decode()
    assert 'value="Nightly lighthouses"' in page and 'value="0 2 * * *"' in page and 'value="06:00"' in page
    assert "a lighthouse at dusk</textarea>" in page and 'name="k-count" value="4"' in page
    with time_machine.travel("2026-01-10 12:00Z", tick=False):
        response = logged_in.post(
            reverse("scheduling:edit", args=[task.code]), batch_form(cron="30 4 * * 1", **{"k-count": "9"})
        )
    assert response.status_code == 302
    task.refresh_from_db()
    assert (task.cron, task.settings["count"], "until" in task.settings) == ("30 4 * * 1", "9", False)
    assert task.next_run.isoformat() == "2026-01-12T03:30:00+00:00"  # Monday 04:30 in Berlin
    assert ScheduledTask.objects.count() == 1
