"""The Schedules pages (issue 13, "How fast"), on a fresh SQLite database in this process: the
server time and queries (20 renders each, as bench/batch_pages.py) of the Schedules page with 500
scheduled tasks (its first page and a later one), a task's page with 20,000 runs in its history
(its first page, and a late page for information), and the cron helper's fragment.

The rows: 500 tasks of every kind (batch, render, health check, clean-up, story), one in seven
disabled, one in six whose last run failed with a long error; 100,000 runs spread over them, each
as its kind leaves it (succeeded with its summary, failed with its error, skipped with its note,
the newest of some still running), the newest runs of batch tasks linked to their batches and
every run of the two render tasks compared to its render job. The query counts are printed at 50
and at 500 tasks, and for a task of 200 runs against one of 20,000: each page's count must not
grow with the rows.

    .venv/bin/python bench/schedule_pages.py
"""

from __future__ import annotations

import random
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BenchError,
    django_on_sqlite,
    machine,
    main,
    temp_dir,
    time_limit,
    time_page,
    verdict,
)

if TYPE_CHECKING:
    from scheduling.models import ScheduledRun, ScheduledTask

TASKS = 500
FIRST_TASKS = 50  # the Schedules page's query count is taken here first, then at TASKS
RUNS = 100_000
BIG_RUNS = 20_000  # the task page timed
SMALL_RUNS = 200  # the task page whose query count it is compared with
TARGET_MS = 150
ROW, RUN, JOB = 'id="schedule-', 'id="run-', "the render</a>"  # a task's row, a run's row, its job's link
CRON_HELPER = "/schedules/cron/?cron=0+2+*+*+1-5&time_zone=Europe/Berlin"
# Kinds in the proportions a lab might keep them; the cadences as people write them, with the
# minutes between two due times (the runs are laid out back from now at that spacing).
KIND_CYCLE = ["batch", "render", "health", "batch", "cleanup", "render", "health", "batch", "story", "render"]
CRONS = [
    ("*/30 * * * *", 30),
    ("0 * * * *", 60),
    ("0 */6 * * *", 360),
    ("0 2 * * *", 1440),
    ("0 2 * * 1-5", 1440),
    ("15 3 * * 0", 10080),
    ("*/5 * * * *", 5),
    ("0 0 1 * *", 43200),
]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    + "".join(
        f'  File "/opt/spoonfeeder/renders/dispatch.py", line {100 + i}, in step_{i}\n    result = node.submit(job)\n'
        for i in range(24)
    )
    + "requests.exceptions.ConnectionError: HTTPConnectionPool(host='10.0.0.21', port=8188): Max retries exceeded"
)


def kind_settings(kind: str, template: Any) -> dict[str, Any]:
    """A kind's form as its page first shows it (the template's own settings), filled in as a
    person would: the settings a saved task keeps."""
    from scheduling import kinds

    cls: Any = kinds.form_class(kind)
    form = cls(template=template) if kind in ("batch", "render", "story") else cls()
    values = {name: form[name].value() for name in form.fields}
    settings = {n: (v.pk if hasattr(v, "pk") else v) for n, v in values.items() if v not in (None, "", False)}
    filled = {
        "batch": {"template": template.pk, "prompt": "a lighthouse at dusk", "kind": "seeds", "count": "4"},
        "render": {"template": template.pk, "prompt": "a fox in the snow, 35 mm", "count": "1"},
        "story": {"template": template.pk, "idea": "A lighthouse keeper finds a message in a bottle", "model": "m:1"},
        "health": {"nodes": [], "full": True},
        "cleanup": {"days": "30", "renders": True, "batches": True, "runs": True},
    }[kind]
    settings.update(filled)
    if "template" in settings:
        settings["template_name"] = template.name
    return {k: str(v) if not isinstance(v, bool | list) else v for k, v in settings.items()}


def make_tasks(start: int, count: int, settings: dict[str, dict[str, Any]], now: datetime) -> list[ScheduledTask]:
    """Tasks start..start+count-1, of every kind, cadence and zone; saved with their next run."""
    from scheduling.models import ScheduledTask

    tasks = []
    for i in range(start, start + count):
        kind = KIND_CYCLE[i % len(KIND_CYCLE)]
        expression, _ = CRONS[i % len(CRONS)]
        task = ScheduledTask(
            name=f"{dict(ScheduledTask.KINDS)[kind]} {i:03d}",
            kind=kind,
            settings=settings[kind],
            cron=expression,
            time_zone=ZONES[i % len(ZONES)],
            enabled=i % 7 != 3,
            missed=ScheduledTask.ONCE if i % 3 == 0 else ScheduledTask.SKIP,
            overlap=ScheduledTask.ALLOW if i % 4 == 0 else ScheduledTask.SKIP,
            only_online=i % 5 == 0,
            retries=i % 3,
            created=now - timedelta(days=200),
        )
        task.plan(now)
        tasks.append(task)
    ScheduledTask.objects.bulk_create(tasks)
    return list(ScheduledTask.objects.filter(name__in=[t.name for t in tasks]))


def summary(kind: str, i: int) -> dict[str, Any]:
    if kind == "batch":
        return {"summary": f"Queued batch nightly {i}: 4 items."}
    if kind == "render":
        return {"summary": "Queued 1 render job."}
    if kind == "health":
        nodes = {f"gpu-{n}": [f"ComfyUI online (checked {n * 3} ms)"] for n in range(1, 4)}
        nodes["gpu-2"].append("Ollama offline: connection refused")
        return {"summary": "3 of 4 services answering.", "nodes": nodes}
    if kind == "cleanup":
        return {
            "summary": f"Deleted {i % 40} finished renders, {i % 90} files ({i % 7}.2 GB), {i % 300} schedule runs."
        }
    return {"summary": f"Started the story A lighthouse keeper {i}."}


def make_runs(task: ScheduledTask, count: int, now: datetime, rng: random.Random) -> list[ScheduledRun]:
    """`count` runs of the task back from now at its cadence, as they end: mostly succeeded, some
    failed (with their error), some skipped (with their note), the newest perhaps still running.
    The task's counts and last run are set from them (saved by the caller)."""
    from scheduling.models import ScheduledRun

    step = dict(CRONS)[task.cron]
    newest = now.replace(second=0, microsecond=0) - timedelta(minutes=step)
    runs = []
    for k in range(count):
        due = newest - timedelta(minutes=step * k)
        started = due + timedelta(seconds=rng.uniform(1, 40))
        roll = rng.random()
        run = ScheduledRun(task=task, due=due, created=due, attempts=1, worker=f"lab:{4000 + k % 97}:a1b2c3d4")
        if k == 0 and task.pk % 9 == 0:
            run.status, run.started = ScheduledRun.RUNNING, started
            run.result = summary(task.kind, k)
        elif (k == 0 and task.pk % 6 == 0) or roll < 0.06:
            run.status, run.started, run.finished = ScheduledRun.FAILED, started, started + timedelta(minutes=3)
            run.error = TRACEBACK if k == 0 else f"Not answering: gpu-{k % 4} (ComfyUI)."
            run.attempts = 1 + task.retries
            run.result = summary(task.kind, k)
        elif roll < 0.12:
            run.status, run.finished = ScheduledRun.SKIPPED, due
            run.note = (
                f"The run due {due - timedelta(minutes=step):%Y-%m-%d %H:%M} is still running "
                "(this task skips a run while the previous one runs)."
                if roll < 0.10
                else f"Missed 3 runs ({due:%Y-%m-%d %H:%M} to {due:%H:%M}): Spoon Feeder was not running."
            )
        else:
            run.status, run.started, run.finished = ScheduledRun.SUCCEEDED, started, started + timedelta(minutes=12)
            run.result = summary(task.kind, k)
            run.manual = k % 97 == 5
            if run.manual:
                run.note = "Run now."
        runs.append(run)
    counted = [r for r in runs if r.status != ScheduledRun.SKIPPED]
    task.run_count = len(counted)
    task.success_count = sum(r.status == ScheduledRun.SUCCEEDED for r in counted)
    task.failure_count = sum(r.status == ScheduledRun.FAILED for r in counted)
    last = next((r for r in runs if r.status in ScheduledRun.ENDED), None)
    if last is not None:
        task.last_run_at = last.started or last.due
        task.last_status = last.status
        task.last_error = last.error or (last.note if last.status == ScheduledRun.SKIPPED else "")
    return runs


def link_jobs(runs: list[ScheduledRun], template: Any, now: datetime) -> None:
    """Each run its render job (finished), as a render task's runs are."""
    from renders.models import RenderJob

    jobs = [
        RenderJob(
            template=template, prompt="a fox in the snow, 35 mm", status=RenderJob.COMPLETED, finished=now, work=1
        )
        for _ in runs
    ]
    RenderJob.objects.bulk_create(jobs, batch_size=2000)
    for run, job in zip(runs, jobs, strict=True):
        run.job = job
        run.result = {**run.result, "jobs": [str(job.code)]}


def link_batches(runs: list[ScheduledRun], template: Any, now: datetime) -> None:
    """Each run its batch (completed), as a batch task's newest runs are (a clean-up deleted the
    older ones' batches)."""
    from renders.models import Batch

    batches = [
        Batch(name=f"{r.task.name}, {r.due:%Y-%m-%d %H:%M}", kind=Batch.SEEDS, template=template, total=4) for r in runs
    ]
    for b in batches:
        b.status, b.finished = Batch.COMPLETED, now
    Batch.objects.bulk_create(batches, batch_size=2000)
    for run, batch in zip(runs, batches, strict=True):
        run.batch = batch


def shows(path: str, *marks: tuple[str, int]) -> None:
    """The page shows what is timed: each mark at least so many times (a page that answered 200
    with an empty table would time nothing)."""
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    user = User.objects.filter(username="bench").first() or User.objects.create_user("bench", password="bench-pw-1234")
    client.force_login(user)
    page = client.get(path).content.decode()
    for mark, least in marks:
        if page.count(mark) < least:
            raise BenchError(f"{path} shows {mark!r} {page.count(mark)} times, not at least {least}")


def timed(label: str, path: str, *marks: tuple[str, int]) -> tuple[float, list[int]]:
    shows(path, *marks)
    median, worst, counts = time_page(path)
    print(f"  {label}: median {median:.1f} ms, max {worst:.1f} ms, queries {counts} (target <= {TARGET_MS} ms)")
    return median, counts


def run() -> None:
    with time_limit(900), temp_dir("sf-bench-schedules-") as data:
        django_on_sqlite(data)
        from django.db.models import Count
        from django.utils import timezone

        from renders.management.commands.load_templates import load
        from renders.models import Template
        from scheduling.models import ScheduledRun, ScheduledTask

        load()
        print(f"Schedules pages (SQLite; {machine()})")
        now = timezone.now()
        rng = random.Random(13)
        template = Template.objects.get(name="test-video-prompt")
        settings = {kind: kind_settings(kind, template) for kind, _ in ScheduledTask.KINDS}
        began = time.perf_counter()
        first = make_tasks(0, FIRST_TASKS, settings, now)
        for task in first:  # a few runs each, so the first page shows last runs too
            runs = make_runs(task, 5, now, rng)
            ScheduledRun.objects.bulk_create(runs)
        ScheduledTask.objects.bulk_update(
            first, ["run_count", "success_count", "failure_count", "last_run_at", "last_status", "last_error"]
        )
        ok = True
        print(f"  with {FIRST_TASKS} tasks:")
        median, few = timed(f"Schedules page ({FIRST_TASKS} tasks)", "/schedules/", (ROW, FIRST_TASKS))
        ok = ok and median <= TARGET_MS

        rest = make_tasks(FIRST_TASKS, TASKS - FIRST_TASKS - 2, settings, now)  # and the two compared
        big = ScheduledTask.objects.create(
            name="Render every 5 minutes (big)", kind="render", settings=settings["render"], cron="*/5 * * * *"
        )
        small = ScheduledTask.objects.create(
            name="Render every 5 minutes (small)", kind="render", settings=settings["render"], cron="*/5 * * * *"
        )
        ScheduledRun.objects.filter(task__in=first).delete()
        tasks = first + rest
        spread = RUNS - BIG_RUNS - SMALL_RUNS
        each, extra = divmod(spread, len(tasks))
        for n, task in enumerate(tasks):
            runs = make_runs(task, each + (n < extra), now, rng)
            if task.kind == "batch":
                link_batches(runs[:3], template, now)
            ScheduledRun.objects.bulk_create(runs, batch_size=2000)
        for task, count in ((big, BIG_RUNS), (small, SMALL_RUNS)):
            runs = make_runs(task, count, now, rng)
            link_jobs(runs, template, now)
            ScheduledRun.objects.bulk_create(runs, batch_size=2000)
        everything = [*tasks, big, small]
        ScheduledTask.objects.bulk_update(
            everything,
            ["run_count", "success_count", "failure_count", "last_run_at", "last_status", "last_error"],
            batch_size=500,
        )
        total_tasks, total_runs = ScheduledTask.objects.count(), ScheduledRun.objects.count()
        statuses = dict(ScheduledRun.objects.values_list("status").annotate(n=Count("id")))
        disabled = ScheduledTask.objects.filter(enabled=False).count()
        failed = ScheduledTask.objects.filter(last_status="failed").count()
        print(
            f"  rows: {total_tasks} tasks ({disabled} disabled, {failed} whose last run failed), {total_runs:,} runs "
            f"({', '.join(f'{s} {n:,}' for s, n in sorted(statuses.items()))}), made in "
            f"{time.perf_counter() - began:.1f} s"
        )
        print(f"  with {total_tasks} tasks and {total_runs:,} runs:")
        median, many = timed(
            f"Schedules page ({total_tasks} tasks)", "/schedules/", (ROW, 100), ("disabled</span>", 1), ("Traceback", 1)
        )
        ok = ok and median <= TARGET_MS
        median, later = timed("Schedules page, page 3", "/schedules/?page=3", (ROW, 100))
        ok = ok and median <= TARGET_MS
        same_list = len(few) == 1 and few == many == later
        print(f"    queries at {FIRST_TASKS} tasks {few}, at {total_tasks} tasks {many}, page 3 {later}")
        median, small_counts = timed(
            f"task page ({SMALL_RUNS} runs)", f"/schedules/{small.code}/", (RUN, 50), (JOB, 50)
        )
        ok = ok and median <= TARGET_MS
        median, big_counts = timed(f"task page ({BIG_RUNS:,} runs)", f"/schedules/{big.code}/", (RUN, 50), (JOB, 50))
        ok = ok and median <= TARGET_MS
        same_task = len(small_counts) == 1 and small_counts == big_counts
        print(f"    queries at {SMALL_RUNS} runs {small_counts}, at {BIG_RUNS:,} runs {big_counts}")
        last_page = (BIG_RUNS + 49) // 50
        timed(
            f"for information, task page {last_page} of {last_page} ({BIG_RUNS:,} runs)",
            f"/schedules/{big.code}/?page={last_page}",
            (RUN, 50),
        )
        median, cron_counts = timed(
            "cron helper fragment (0 2 * * 1-5, Europe/Berlin)", CRON_HELPER, ("Monday through Friday", 1)
        )
        ok = ok and median <= TARGET_MS and len(cron_counts) == 1
        print(
            f"{verdict(same_list)}: the Schedules page's queries are the same at {FIRST_TASKS} and {total_tasks} tasks"
        )
        print(f"{verdict(same_task)}: a task page's queries are the same at {SMALL_RUNS} and {BIG_RUNS:,} runs")
        print(f"{verdict(ok)}: every page <= {TARGET_MS} ms (median server time), one query count each")


if __name__ == "__main__":
    main(run)
