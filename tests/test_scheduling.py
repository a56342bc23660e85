"""Scheduled tasks (issue 13): cron expressions checked in words, due times in a time zone across
daylight-saving changes, each due time fired once, missed runs and overlap by the task's rules,
retries with backoff, the condition of an online ComfyUI node, and what each kind of run makes.
Time is travelled (time-machine); the runs' tasks are run here, one by one, as a worker would."""

from __future__ import annotations

import importlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection

from nodes.models import Capability, Node
from renders.forms import BatchForm
from renders.management.commands.load_templates import load
from renders.models import Batch, RenderJob, Template
from scheduling import cron, fire, kinds
from scheduling.models import ScheduledRun, ScheduledTask
from spoonfeeder import work as cluster_work

BERLIN = "Europe/Berlin"


def at(*parts: int, zone: str = "UTC") -> datetime:
    return datetime(*parts, tzinfo=cron.zone(zone)).astimezone(UTC)  # type: ignore[misc]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The runs queued for a worker, in order (run here with `work`)."""
    queued: list[int] = []
    monkeypatch.setattr(fire, "send", lambda run: queued.append(run.pk))
    return queued


def work(sent: list[int]) -> list[str]:
    """Run every queued run, as the workers would."""
    done = [fire.execute(pk) for pk in sent]
    sent.clear()
    return done


def task(**fields: Any) -> ScheduledTask:
    fields.setdefault("name", f"task {ScheduledTask.objects.count() + 1}")
    fields.setdefault("kind", ScheduledTask.CLEANUP)
    fields.setdefault("settings", {"days": 30, "renders": True, "batches": True, "runs": True})
    fields.setdefault("cron", "0 2 * * *")
    t = ScheduledTask(**fields)
    t.plan()
    t.save()
    return t


def runs(t: ScheduledTask) -> list[tuple[str, str, str]]:
    tz = cron.zone(t.time_zone)
    return [
        (r.due.astimezone(tz).strftime("%m-%d %H:%M"), r.status, r.note)
        for r in ScheduledRun.objects.filter(task=t).order_by("due", "id")
    ]


# --- expressions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * *", "That has 3 fields; a cron expression has five: minute hour day-of-month month day-of-week"),
        ("61 * * * *", "the minute field '61' must be * or numbers from 0 to 59"),
        ("0 24 * * *", "the hour field '24' must be * or numbers from 0 to 23"),
        ("@reboot", "@reboot runs at start-up, not at a time"),
        ("x" * 10_000, "That is 10,000 characters: a cron expression is five short fields."),
        ("0 0 31 2 *", "0 0 31 2 * never fires: no month has that day (as 31 February)."),
        ("*/5 * * * * 10", "the minute is the smallest unit"),
        ("", "Write a cron expression"),
    ],
)
def test_a_bad_expression_is_refused_with_what_to_write(expression: str, message: str) -> None:
    with pytest.raises(cron.CronError) as e:
        cron.check(expression)
    assert message in str(e.value)


def test_expressions_are_kept_tidy_and_described_in_words() -> None:
    assert cron.check("  0   2 * *   1-5 ") == "0 2 * * 1-5"
    assert cron.check("@daily") == "0 0 * * *"
    assert cron.describe("0 2 * * 1-5") == "At 02:00, Monday through Friday"
    assert cron.describe("*/30 * * * *") == "Every 30 minutes"
    with pytest.raises(cron.CronError, match="'Mars/Olympus' is not a time zone this machine knows"):
        cron.zone("Mars/Olympus")


def test_the_next_runs_are_in_the_task_time_zone() -> None:
    now = at(2027, 1, 10, 12)
    assert cron.upcoming("0 2 * * *", "America/New_York", now, 2) == [at(2027, 1, 11, 7), at(2027, 1, 12, 7)]
    assert cron.upcoming("0 2 * * *", BERLIN, now, 1) == [at(2027, 1, 11, 1)]


def test_a_0230_task_runs_once_on_both_days_the_clocks_change() -> None:
    # Spring forward (2027-03-28, 02:00 -> 03:00 in Berlin): 02:30 never happens; it runs at 03:00.
    days = cron.upcoming("30 2 * * *", BERLIN, at(2027, 3, 26, 12), 3)
    assert days == [at(2027, 3, 27, 2, 30, zone=BERLIN), at(2027, 3, 28, 1), at(2027, 3, 29, 2, 30, zone=BERLIN)]
    # Fall back (2027-10-31, 03:00 -> 02:00): 02:30 happens twice; it runs at the first.
    days = cron.upcoming("30 2 * * *", BERLIN, at(2027, 10, 30, 12), 3)
    assert days == [at(2027, 10, 31, 0, 30), at(2027, 11, 1, 1, 30), at(2027, 11, 2, 1, 30)]
    # A task of every hour follows the hours as they pass: both repeated hours, not the skipped one.
    hourly = cron.upcoming("30 * * * *", BERLIN, at(2027, 10, 30, 23), 4)
    assert [t - hourly[0] for t in hourly] == [timedelta(hours=h) for h in range(4)]
    hourly = cron.upcoming("30 * * * *", BERLIN, at(2027, 3, 27, 23), 4)
    assert [t - hourly[0] for t in hourly] == [timedelta(hours=h) for h in range(4)]


@pytest.mark.django_db
def test_the_tick_fires_a_0230_task_once_a_day_across_both_changes(sent: list[int]) -> None:
    for start in (at(2027, 3, 26, 12), at(2027, 10, 29, 12)):
        with time_machine.travel(start, tick=False):
            t = task(name=f"nightly {start:%m}", cron="30 2 * * *", time_zone=BERLIN, overlap=ScheduledTask.ALLOW)
        moment = start
        while moment < start + timedelta(days=4):  # every minute's tick, for four days
            moment += timedelta(minutes=1)
            if ScheduledTask.objects.get(pk=t.pk).next_run <= moment:
                with time_machine.travel(moment, tick=False):
                    fire.tick(moment)
        fired = [r.due for r in ScheduledRun.objects.filter(task=t).order_by("due")]
        local = [d.astimezone(cron.zone(BERLIN)).strftime("%d %H:%M") for d in fired]
        assert len(fired) == 4 and len({d.date() for d in fired}) == 4, local
        assert ScheduledRun.objects.filter(task=t, status=ScheduledRun.SKIPPED).count() == 0
    sent.clear()


# --- firing ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_due_time_fires_once_however_many_ticks_look_at_it(sent: list[int]) -> None:
    with time_machine.travel(at(2027, 1, 1, 1), tick=False):
        t = task(cron="0 2 * * *")
    assert t.next_run == at(2027, 1, 1, 2)
    with time_machine.travel(at(2027, 1, 1, 2, 0, 20), tick=False):
        fire.tick()
        fire.tick()  # a second cluster's tick, a moment later
        # A tick that read the task before the first moved it on claims nothing either.
        stale = ScheduledTask.objects.get(pk=t.pk)
        stale.next_run = at(2027, 1, 1, 2)
        assert fire.fire_due(stale, at(2027, 1, 1, 2, 0, 30)) == 0
        # Nor can a run be made twice for one due time.
        again, why = fire.claim(ScheduledTask.objects.get(pk=t.pk), at(2027, 1, 1, 2))
    assert again is None and why
    assert len(sent) == 1 and runs(t) == [("01-01 02:00", "pending", "")]
    assert ScheduledTask.objects.get(pk=t.pk).next_run == at(2027, 1, 2, 2)


@pytest.mark.django_db(transaction=True)
def test_two_clusters_ticking_at_once_fire_each_due_time_once(sent: list[int]) -> None:
    with time_machine.travel(at(2027, 1, 1, 1), tick=False):
        tasks = [task(cron="*/5 * * * *", overlap=ScheduledTask.ALLOW) for _ in range(5)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def ticking() -> None:
        try:
            barrier.wait()
            fire.tick(at(2027, 1, 1, 1, 5, 10))
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=ticking) for _ in range(2)]
    with time_machine.travel(at(2027, 1, 1, 1, 5, 10), tick=False):
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
    assert not errors
    assert ScheduledRun.objects.count() == 5 and len(sent) == 5
    assert all(runs(t) == [("01-01 01:05", "pending", "")] for t in tasks)


@pytest.mark.django_db
def test_missed_runs_are_skipped_or_run_once_by_the_task_rule(sent: list[int]) -> None:
    with time_machine.travel(at(2027, 1, 1, 0, 30), tick=False):
        skip = task(name="skipper", cron="0 * * * *")
        once = task(name="catcher", cron="0 * * * *", missed=ScheduledTask.ONCE)
    # Down from 00:30 to 04:10: the 01:00 to 04:00 runs were missed.
    back = at(2027, 1, 1, 4, 10)
    with time_machine.travel(back, tick=False):
        fire.tick()
    assert runs(skip) == [
        (
            "01-01 01:00",
            "skipped",
            "Missed 4 runs (2027-01-01 01:00 to 2027-01-01 04:00): Spoon Feeder was not running.",
        )
    ]
    assert runs(once) == [
        (
            "01-01 04:00",
            "pending",
            "Caught up: 4 runs missed (2027-01-01 01:00 to 2027-01-01 04:00) while Spoon Feeder was down.",
        )
    ]
    assert ScheduledTask.objects.get(pk=skip.pk).last_status == "skipped"
    assert len(sent) == 1
    # Back within the grace of a due time (a busy minute): it runs, and the one before is missed.
    with time_machine.travel(at(2027, 1, 1, 6, 1), tick=False):
        fire.tick()
    assert runs(skip)[1:] == [
        ("01-01 05:00", "skipped", "Missed 1 run (2027-01-01 05:00): Spoon Feeder was not running."),
        ("01-01 06:00", "pending", ""),
    ]


@pytest.mark.django_db
def test_a_run_due_while_the_previous_runs_is_skipped_or_run_by_the_task_rule(sent: list[int]) -> None:
    with time_machine.travel(at(2027, 1, 1, 0, 30), tick=False):
        skip = task(name="skipper", cron="0 * * * *")
        allow = task(name="allower", cron="0 * * * *", overlap=ScheduledTask.ALLOW)
    with time_machine.travel(at(2027, 1, 1, 1, 0, 5), tick=False):
        fire.tick()
    ScheduledRun.objects.update(status=ScheduledRun.RUNNING)  # both still running at 02:00
    with time_machine.travel(at(2027, 1, 1, 2, 0, 5), tick=False):
        fire.tick()
    assert runs(skip)[1] == (
        "01-01 02:00",
        "skipped",
        "The run due 2027-01-01 01:00 is still running (this task skips a run while the previous one runs).",
    )
    assert [r[1] for r in runs(allow)] == ["running", "pending"]


@pytest.mark.django_db
def test_run_now_twice_under_the_skip_rule_says_why_the_second_did_not_start(sent: list[int]) -> None:
    t = task()
    first, why = fire.run_now(t)
    assert first is not None and why == ""
    second, why = fire.run_now(t)
    assert second is None
    assert why.startswith("The run due ") and "is still pending (this task skips a run" in why
    assert ScheduledRun.objects.filter(task=t).count() == 1 and len(sent) == 1


# --- running ---------------------------------------------------------------------------------------


@pytest.fixture
def templates(db: None) -> None:
    load()


def batch_task(**fields: Any) -> ScheduledTask:
    template = Template.objects.get(name="sdxl-still")
    start = BatchForm(template=template)  # the template's own settings, as the form starts
    settings = {name: start[name].value() for name in start.fields if start[name].value() not in (None, "")}
    settings.update(template=str(template.pk), template_name=template.name, kind="seeds", count="3")
    settings.update(prompt="a lighthouse", **fields.pop("settings", {}))
    return task(kind=ScheduledTask.BATCH, settings=settings, **fields)


@pytest.mark.django_db
def test_a_batch_run_queues_its_batch_and_succeeds_when_the_batch_completes(templates: None, sent: list[int]) -> None:
    t = batch_task(name="nightly seeds")
    with time_machine.travel(at(2027, 1, 1, 2, 0, 10), tick=False):
        run, _ = fire.claim(t, at(2027, 1, 1, 2))
        assert work(sent) == ["Queued batch nightly seeds, 2027-01-01 02:00: 3 items."]
    run = ScheduledRun.objects.get(pk=run.pk)
    assert run.status == "running" and run.batch is not None and run.batch.total == 3
    fire.follow(at(2027, 1, 1, 2, 1))
    assert ScheduledRun.objects.get(pk=run.pk).status == "running"
    run.batch.items.update(status=RenderJob.COMPLETED)
    Batch.feed()  # the pool's next feed finishes the batch
    fire.follow(at(2027, 1, 1, 2, 2))
    run = ScheduledRun.objects.get(pk=run.pk)
    assert (run.status, run.summary()) == ("succeeded", "Batch completed: 3 of 3 items done.")
    t.refresh_from_db()
    assert (t.run_count, t.success_count, t.failure_count, t.last_status) == (1, 1, 0, "succeeded")


@pytest.mark.django_db
def test_a_batch_only_until_a_time_is_paused_then(templates: None, sent: list[int]) -> None:
    t = batch_task(settings={"until": "06:00"}, time_zone=BERLIN)
    with time_machine.travel(at(2027, 1, 1, 2, 0, 10, zone=BERLIN), tick=False):
        fire.claim(t, at(2027, 1, 1, 2, zone=BERLIN))
        work(sent)
    run = ScheduledRun.objects.get(task=t)
    fire.follow(at(2027, 1, 1, 5, 59, zone=BERLIN))
    assert ScheduledRun.objects.get(pk=run.pk).status == "running"
    fire.follow(at(2027, 1, 1, 6, 0, 30, zone=BERLIN))
    run.refresh_from_db()
    assert run.status == "succeeded" and run.summary().startswith(
        "Paused at 06:00 (only until then): 0 of 3 items done"
    )
    assert Batch.objects.get(pk=run.batch_id).status in Batch.HELD_BACK


@pytest.mark.django_db
def test_a_batch_whose_template_was_deleted_since_fails_and_the_task_says_why(templates: None, sent: list[int]) -> None:
    t = batch_task(retries=3)
    Template.objects.filter(name="sdxl-still").delete()
    fire.run_now(t)
    assert work(sent)[0].startswith("failed: The template 'sdxl-still' this task renders with was deleted")
    t.refresh_from_db()
    assert t.last_status == "failed" and "was deleted since it was saved: edit the task" in t.last_error
    assert Batch.objects.count() == 0  # nothing half made, and no retry of what cannot get better
    assert ScheduledRun.objects.get(task=t).attempts == 1


@pytest.mark.django_db
def test_a_failed_health_check_is_tried_again_with_backoff(sent: list[int]) -> None:
    Node.objects.create(name="gone", host="127.0.0.77").capabilities.create(kind=Capability.COMFYUI, port=9)
    t = task(kind=ScheduledTask.HEALTH, settings={"nodes": [], "full": False}, retries=2)
    start = at(2027, 1, 1, 2, 0, 10)
    with time_machine.travel(start, tick=False):
        fire.run_now(t)
        assert work(sent) == ["failed: Not answering: gone (ComfyUI)."]
    run = ScheduledRun.objects.get(task=t)
    assert run.status == "pending" and run.not_before == start + timedelta(seconds=60)
    assert run.note.startswith("Try 2 of 3 at ")
    fire.follow(start + timedelta(seconds=30))
    assert sent == []  # not yet
    with time_machine.travel(start + timedelta(seconds=61), tick=False):
        fire.follow(start + timedelta(seconds=61))
        assert len(sent) == 1
        work(sent)
    run.refresh_from_db()
    assert run.not_before == start + timedelta(seconds=61 + 120)  # doubled
    with time_machine.travel(start + timedelta(seconds=200), tick=False):
        fire.follow(start + timedelta(seconds=200))
        work(sent)
    run.refresh_from_db()
    assert (run.status, run.attempts, run.error) == ("failed", 3, "Not answering: gone (ComfyUI).")
    assert run.result["nodes"] == {"gone": [run.result["nodes"]["gone"][0]]}
    assert ScheduledTask.objects.get(pk=t.pk).failure_count == 1


@pytest.mark.django_db
def test_a_run_that_needs_an_online_comfyui_waits_then_is_skipped_with_the_reason(sent: list[int]) -> None:
    t = task(only_online=True, wait_minutes=5)
    start = at(2027, 1, 1, 2, 0, 10)
    with time_machine.travel(start, tick=False):
        fire.run_now(t)
        assert work(sent) == ["waiting for a ComfyUI node"]
    assert ScheduledRun.objects.get(task=t).status == "waiting"
    with time_machine.travel(start + timedelta(minutes=5, seconds=1), tick=False):
        fire.follow(start + timedelta(minutes=5, seconds=1))
        assert work(sent) == ["No ComfyUI node was online within 5 minutes."]
    run = ScheduledRun.objects.get(task=t)
    assert (run.status, run.note) == ("skipped", "No ComfyUI node was online within 5 minutes.")


@pytest.mark.django_db
def test_a_lost_message_is_sent_again_and_a_run_whose_worker_died_fails(sent: list[int]) -> None:
    t = task(retries=0)
    start = at(2027, 1, 1, 2, 0, 10)
    with time_machine.travel(start, tick=False):
        fire.run_now(t)
    sent.clear()  # the message was lost
    fire.follow(start + timedelta(seconds=30))
    assert sent == []
    fire.follow(start + timedelta(seconds=61))
    assert len(sent) == 1
    ScheduledRun.objects.update(
        status=ScheduledRun.RUNNING, attempts=1, worker=f"{cluster_work.HOST}:999999999:x", started=start
    )
    fire.follow(start + timedelta(seconds=90))
    run = ScheduledRun.objects.get(task=t)
    assert (run.status, run.error) == ("failed", "The worker running it stopped before it finished.")


@pytest.mark.django_db
def test_a_cleanup_shows_what_it_would_delete_and_deletes_just_that(templates: None, sent: list[int]) -> None:
    template = Template.objects.get(name="sdxl-still")
    old, new = at(2027, 1, 1), at(2027, 2, 25)
    out = [{"path": "renders/x.png", "thumbnail": "", "size": 2048}]
    RenderJob.objects.create(template=template, status=RenderJob.COMPLETED, finished=old, outputs=out)
    RenderJob.objects.create(template=template, status=RenderJob.COMPLETED, finished=new, outputs=out)
    RenderJob.objects.create(template=template, status=RenderJob.COMPLETED, finished=old, story="s1", target="x")
    RenderJob.objects.create(template=template, status=RenderJob.QUEUED)
    data = {"days": 30, "renders": True, "batches": True, "runs": True}
    found = kinds.preview(data, at(2027, 3, 1))
    assert found.words() == "1 finished render, 1 file (2.0 KB)"
    t = task(settings=data)
    with time_machine.travel(at(2027, 3, 1), tick=False):
        fire.run_now(t)
        assert work(sent) == ["Deleted 1 finished render, 1 file (2.0 KB)."]
    assert RenderJob.objects.count() == 3


def kind_settings(kind: str, **fields: Any) -> dict[str, Any]:
    """A kind's form as its page first shows it (a template's own settings), with `fields`."""
    form = kinds.form_class(kind)(
        **({"template": Template.objects.get(name=fields["template"])} if "template" in fields else {})
    )
    values = {name: form[name].value() for name in form.fields}
    settings = {n: getattr(v, "pk", v) for n, v in values.items() if v is not None and v != "" and v is not False}
    settings.update({k: (Template.objects.get(name=v).pk if k == "template" else v) for k, v in fields.items()})
    return {k: str(v) if not isinstance(v, bool | list) else v for k, v in settings.items()}


@pytest.mark.django_db
def test_a_story_run_starts_its_story_and_ends_with_it(templates: None, sent: list[int]) -> None:
    from stories.models import Story

    t = task(kind=ScheduledTask.STORY, settings=kind_settings("story", idea="A lighthouse keeper", model="m:1"))
    fire.run_now(t)
    assert work(sent)[0].startswith("Started the story ")
    run = ScheduledRun.objects.get(task=t)
    assert run.status == "running" and run.story is not None and run.story.idea == "A lighthouse keeper"
    fire.follow(timezone_now())
    assert ScheduledRun.objects.get(pk=run.pk).status == "running"
    Story.objects.filter(pk=run.story_id).update(state=Story.FAILED)
    fire.follow(timezone_now())
    run.refresh_from_db()
    assert (run.status, run.error) == ("failed", f"The story {run.story} failed: see its page.")


@pytest.mark.django_db
def test_a_render_run_queues_its_jobs_and_ends_when_they_have(templates: None, sent: list[int]) -> None:
    t = task(
        kind=ScheduledTask.RENDER, settings=kind_settings("render", template="sdxl-still", prompt="a fox", count=2)
    )
    fire.run_now(t)
    assert work(sent) == ["Queued 2 render jobs."]
    run = ScheduledRun.objects.get(task=t)
    jobs = RenderJob.objects.filter(code__in=run.result["jobs"])
    assert jobs.count() == 2 and run.job in jobs and {j.prompt for j in jobs} == {"a fox"}
    jobs.filter(pk=run.job_id).update(status=RenderJob.COMPLETED)
    fire.follow(timezone_now())
    assert ScheduledRun.objects.get(pk=run.pk).status == "running"
    jobs.update(status=RenderJob.FAILED)
    fire.follow(timezone_now())
    run.refresh_from_db()
    assert (run.status, run.error, run.attempts) == ("failed", "0 of 2 render jobs completed.", 1)


@pytest.mark.django_db
def test_one_broken_task_does_not_stop_the_others_firing(sent: list[int], caplog: Any) -> None:
    with time_machine.travel(at(2027, 1, 1, 1), tick=False):
        broken = task(name="broken", cron="0 2 * * *")
        fine = task(name="fine", cron="0 2 * * *")
    ScheduledTask.objects.filter(pk=broken.pk).update(time_zone="Gone/Zone")
    with time_machine.travel(at(2027, 1, 1, 2, 0, 10), tick=False):
        fire.tick()
    assert runs(fine) == [("01-01 02:00", "pending", "")]
    assert "broken" in caplog.text and "is not a time zone" in caplog.text


def timezone_now() -> datetime:
    from django.utils import timezone

    return timezone.now()


def test_the_system_schedule_fires_the_tick_on_the_real_cluster(stack: Any) -> None:
    """The wiring end to end: django-q2's schedule row queues the tick, a worker of a real
    cluster runs it, and the tick queues the due task's run, which that cluster runs too."""
    from django.apps import apps as django_apps
    from django.utils import timezone
    from django_q.brokers import get_broker
    from django_q.models import Schedule
    from django_q.scheduler import scheduler

    from tests.conftest import wait_until

    t = task(kind=ScheduledTask.HEALTH, settings={"nodes": [], "full": False})
    ScheduledTask.objects.filter(pk=t.pk).update(next_run=timezone.now() - timedelta(seconds=5))
    # The migration's schedule row (a transactional test before this one may have flushed it).
    importlib.import_module("scheduling.migrations.0001_scheduled_tasks").add_schedule(django_apps, None)
    Schedule.objects.filter(func="scheduling.tasks.tick").update(next_run=timezone.now() - timedelta(seconds=1))
    stack.worker()
    scheduler(broker=get_broker())  # as the cluster's guard does about every 30 s
    wait_until(lambda: ScheduledRun.objects.filter(task=t, status=ScheduledRun.FAILED).exists(), 60, "the run to end")
    run = ScheduledRun.objects.get(task=t)
    assert run.error == "There are no nodes to check: add one on the Nodes page." and run.worker
    assert ScheduledTask.objects.get(pk=t.pk).next_run > timezone.now()


@pytest.mark.django_db
def test_a_tick_a_little_late_runs_each_due_time_it_finds(sent: list[int]) -> None:
    """Within the grace of their due times (a busy minute held the tick back), due times are
    not missed: each runs once; one older than the grace follows the rule for missed runs."""
    with time_machine.travel(at(2027, 1, 1, 9, 59, 30), tick=False):
        t = task(name="every minute", cron="* * * * *", overlap=ScheduledTask.ALLOW)
    with time_machine.travel(at(2027, 1, 1, 10, 1, 30), tick=False):
        fire.tick()  # 90 s after 10:00
    assert runs(t) == [("01-01 10:00", "pending", ""), ("01-01 10:01", "pending", "")]
    with time_machine.travel(at(2027, 1, 1, 10, 7, 30), tick=False):
        fire.tick()  # 10:02 is past the grace (300 s); 10:03 to 10:07 are not
    assert runs(t)[2] == ("01-01 10:02", "skipped", "Missed 1 run (2027-01-01 10:02): Spoon Feeder was not running.")
    assert [r[0] for r in runs(t)[3:]] == [f"01-01 10:0{m}" for m in range(3, 8)]
    # Sent: the seven runs, and again the first two, not started six minutes on (a lost message).
    assert ScheduledRun.objects.filter(task=t).count() == 8 and len(sent) == 9
