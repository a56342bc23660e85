"""Scheduled tasks firing on the real worker cluster (issue 13, "How fast"): a render task on the
cron "* * * * *" (one small job each minute) against a simulated ComfyUI in a child process of its
own (127.0.49.x), as the django-q2 cron schedule "Fire scheduled tasks" ticks every minute.

A. the embedded default (SQLite, the ORM broker), one worker cluster (common.worker_cluster), for
   BENCH_DUE_TIMES due times (default 20, about 20 minutes): per due time, started - due (the run's
   `started` minus its `due`, target <= 60 s), with where the time goes (due -> the tick that fired
   it started, as django-q2's Task row says; that tick -> the run started; the run started -> its
   render job completed; due -> the run ended, which the next tick settles); exactly one run per due
   time, none missed or skipped, every one succeeded; each render job ran exactly once on the node
   (its own /history).
B. PostgreSQL + Redis (only when DATABASE_URL and REDIS_URL are set: a throwaway database on that
   server, the Redis database of REDIS_URL under a queue name of its own, its keys deleted at the
   end), TWO worker clusters at once, BENCH_DUE_TIMES due times (default 5): the same figures, and
   each due time fired exactly once (one run row, one render job, one execution on the node) while
   both clusters ticked. django-q2 makes one tick a minute however many clusters look (its
   scheduler locks the schedule's row), and the cluster whose look comes first after the minute
   makes it every time; so that two ticks race for each due time, as the claim is built for, part
   B adds a second django-q2 schedule of the same tick each minute ("Bench: a second tick";
   BENCH_SECOND_TICK=0 leaves it out): both ticks are made at the same look, and the workers of
   either cluster take them. These two clusters log at INFO (the only difference from worker_cluster):
   django-q2 writes "created task <name> from schedule [Fire scheduled tasks]" in the log of the
   cluster whose scheduler made a tick and "processing <name> 'scheduling.tasks.tick'" in the log
   of the cluster whose worker ran it, which is how each tick's cluster is told (a Task row names
   only the cluster's name, which both share); the run task's cluster is the pid in the run's
   `worker`, among each cluster's processes.

Each part runs in a process of its own (Django is set up once per process); BENCH_ONLY=A or
BENCH_ONLY=B runs one of them.

    .venv/bin/python bench/schedule_firing.py
    BENCH_DUE_TIMES=3 .venv/bin/python bench/schedule_firing.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/12 \\
        BENCH_DUE_TIMES=3 .venv/bin/python bench/schedule_firing.py
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    PYTHON,
    ROOT,
    BenchError,
    Child,
    database,
    executions,
    executions_line,
    machine,
    main,
    run_parts,
    temp_dir,
    time_limit,
    verdict,
    wait_until,
    worker_cluster,
)
from bench.engine import Owners  # noqa: E402
from bench.render_queue import pool  # noqa: E402

if TYPE_CHECKING:
    from scheduling.models import ScheduledRun, ScheduledTask

NET = "127.0.49"
WORKERS = 4  # per cluster: the render attempt holds one for its job; the tick, the run and the sweeper
JOB_SECONDS = 1.0  # the simulated node's run of one job
TEMPLATE = "test-still-image"  # EmptyImage -> SaveImage: the simulator runs it without model files
TARGET = 60.0  # started - due, seconds
TICK_GROUP = "Fire scheduled tasks"
DEFAULT_DUE_TIMES = {"sqlite": 20, "postgres": 5}
SECOND_TICK = "Bench: a second tick"  # part B: a second tick each minute, so two run at once
CREATED = re.compile(
    r"created task (\S+) from schedule \[(?:" + re.escape(TICK_GROUP) + "|" + re.escape(SECOND_TICK) + r")\]"
)
PROCESSING = re.compile(r"processing (\S+) 'scheduling\.tasks\.tick'")


def due_times(db: str) -> int:
    raw = os.environ.get("BENCH_DUE_TIMES", "").strip()
    count = int(raw) if raw else DEFAULT_DUE_TIMES[db]
    if count < 1:
        raise BenchError(f"BENCH_DUE_TIMES must be 1 or more, not {raw!r}")
    return count


# --- the driver: each part in a process of its own -----------------------------------------------


def run() -> None:
    postgres = bool(os.environ.get("DATABASE_URL", "").strip())
    redis = bool(os.environ.get("REDIS_URL", "").strip())
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").upper().split(",")))
    if only - {"A", "B"}:
        raise BenchError(f"unknown part(s) {', '.join(sorted(only - {'A', 'B'}))}; known: A, B")
    plan = [db for db, part in (("sqlite", "A"), ("postgres", "B")) if not only or part in only]
    plan = [db for db in plan if db == "sqlite" or (postgres and redis)]
    print(f"Scheduled tasks firing ({machine()}; the simulated ComfyUI in a process of its own)", flush=True)
    if not (postgres and redis):
        print("  DATABASE_URL and REDIS_URL are not both set: part B (PostgreSQL + Redis, two clusters) skipped")
    run_parts([(db, [PYTHON, __file__, "--part", db], limit(due_times(db))) for db in plan])


def limit(count: int) -> int:
    """Seconds a part may take: up to a minute to the first due time, a minute each, the tick
    after the last that settles it, and the start and stop of the clusters."""
    return (count + 3) * 60 + 180


def serve_part(db: str) -> None:
    count = due_times(db)
    with (
        time_limit(limit(count)),
        temp_dir(f"sf-bench-schedule-{db}-") as data,
        database(db, data, "bench-schedules") as mode,
    ):
        from renders.management.commands.load_templates import load

        load()
        logs = data / "logs"
        logs.mkdir()
        clusters = 1 if db == "sqlite" else 2
        print(
            f"\n{'A' if db == 'sqlite' else 'B'}. {mode}, {clusters} worker cluster{'s' if clusters > 1 else ''} of "
            f"{WORKERS} workers; a render task on * * * * * ({TEMPLATE}, one job of {JOB_SECONDS:g} s on the node), "
            f"{count} due times ({machine()})",
            flush=True,
        )
        fired(db, count, logs)


@contextmanager
def logged_cluster(logs: Path, label: str) -> Iterator[Child]:
    """worker_cluster with django-q2's INFO lines in its own log (which ticks its scheduler made
    and its workers ran), waited for by its own status (another cluster's counts for nothing)."""
    from django_q.status import Stat

    argv = [PYTHON, str(ROOT / "bench" / "cluster.py")]
    env = {**os.environ, "SPOONFEEDER_WORKERS": str(WORKERS), "LOG_LEVEL": "INFO"}
    child = Child(f"worker cluster {label}", argv, env, logs / f"cluster-{label}.log")
    try:

        def up() -> bool:
            child.check_alive()
            return any(s.pid == child.pid and len(s.workers) >= WORKERS for s in Stat.get_all())

        wait_until(up, 60, f"worker cluster {label} to report {WORKERS} workers")
        yield child
    finally:
        child.stop(grace=30)


def render_task() -> ScheduledTask:
    """The task, saved through the Schedules page's own forms as a person fills them in: the
    render dialog's fields as it first shows them for the template, one job, every minute."""
    from django.http import QueryDict

    from renders.models import Template
    from scheduling.forms import ScheduleForm, kind_form, save

    template = Template.objects.get(name=TEMPLATE)
    start = kind_form("render", None, initial={"template": str(template.pk)})
    data = QueryDict(mutable=True)
    for name in start.fields:
        value = start[name].value()
        if value is not None and value is not False and value != "":
            data[f"k-{name}"] = str(value.pk if hasattr(value, "pk") else value)
    for field, value in {
        "k-template": str(template.pk),
        "k-prompt": "bench scheduled still",
        "k-count": "1",
        "name": "Bench: a still every minute",
        "kind": "render",
        "cron": "* * * * *",
        "time_zone": "UTC",
        "enabled": "on",
        "missed": "skip",
        "overlap": "allow",
        "wait_minutes": "10",
        "retries": "0",
    }.items():
        data[field] = value  # set, not appended (QueryDict.update would add a second value)
    form = ScheduleForm(data)
    what = kind_form(form.kind(), data)
    if not (form.is_valid() and what.is_valid()):
        raise BenchError(f"the schedule form refused the bench's task: {form.errors} {what.errors}")
    return save(form, what)


def seconds(later: datetime | None, earlier: datetime | None) -> float:
    return (later - earlier).total_seconds() if later and earlier else float("nan")


def spread(values: list[float]) -> str:
    known = [v for v in values if v == v]
    if not known:
        return "none"
    return f"median {statistics.median(known):.2f} s, max {max(known):.2f} s"


def ticks(since: datetime) -> list[Any]:
    """The tick tasks django-q2 ran since `since` (its Task rows, the result a string)."""
    from django_q.models import Task

    return list(Task.objects.filter(func="scheduling.tasks.tick", started__gte=since).order_by("started"))


def fired(db: str, count: int, logs: Path) -> None:
    from renders.models import RenderJob
    from scheduling.models import ScheduledRun

    with ExitStack() as stack:
        [(_, sim)] = stack.enter_context(pool([{"run_seconds": JOB_SECONDS}], logs, net=NET))
        if db == "sqlite":
            children = {"1": stack.enter_context(worker_cluster(logs, WORKERS))}
        else:
            if second_tick():
                from django_q.models import Schedule

                Schedule.objects.create(
                    name=SECOND_TICK, func="scheduling.tasks.tick", schedule_type=Schedule.CRON, cron="* * * * *"
                )
                print(f"  with a second tick each minute (a schedule of the bench's own, {SECOND_TICK!r})")
            children = {label: stack.enter_context(logged_cluster(logs, label)) for label in ("1", "2")}
        owners = Owners(children)
        began = datetime.now().astimezone()
        task = render_task()
        assert task.next_run is not None
        first = task.next_run
        wanted = [first + timedelta(minutes=k) for k in range(count)]
        print(
            f"  the task saved at {began:%H:%M:%S}; first due time {first:%H:%M:%S} UTC, last {wanted[-1]:%H:%M:%S}",
            flush=True,
        )
        for k, due in enumerate(wanted):

            def started(due: datetime = due) -> ScheduledRun | None:
                owners.look()
                for child in children.values():
                    child.check_alive()
                return ScheduledRun.objects.filter(task=task, due=due, started__isnull=False).first()

            wait = max(seconds(due, datetime.now().astimezone()), 0) + 2 * TARGET
            run = wait_until(started, wait, f"the run due {due:%H:%M} to start", interval=0.2)
            assert run is not None
            if k == count - 1:
                task.set_enabled(False)  # no due time after the last one measured
            late = seconds(run.started, run.due)
            state = run.get_status_display().lower()
            print(f"    due {due:%H:%M:%S}: started {late:.1f} s after it ({state})", flush=True)

        def ended() -> bool:
            owners.look()
            return not ScheduledRun.objects.filter(task=task).exclude(status__in=ScheduledRun.ENDED).exists()

        # The last run is settled by the tick after it: up to a minute and its scheduler's look.
        wait_until(ended, 3 * TARGET, "every run to end (the next tick settles it)", interval=0.5)
        owners.look()
        runs = list(ScheduledRun.objects.filter(task=task).order_by("due", "id"))
        codes = [str(c) for r in runs for c in (r.result.get("jobs") or [])]
        jobs = {str(j.code): j for j in RenderJob.objects.filter(code__in=codes)}
        ran = executions([sim.history()], codes)  # the node's own history, before it is stopped
    # The clusters have stopped: their logs are whole, and every tick's Task row is saved.
    done = ticks(began)
    made, ran_by = tick_clusters(logs, list(children)) if db != "sqlite" else ({}, {})
    report(wanted, runs, jobs, ran, done, owners if db != "sqlite" else None, made, ran_by)


def second_tick() -> bool:
    return os.environ.get("BENCH_SECOND_TICK", "1") != "0"


def tick_clusters(logs: Path, labels: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """From the clusters' own logs: the cluster whose scheduler made each tick (by its Task
    name), and the cluster(s) whose workers ran it."""
    made: dict[str, str] = {}
    ran_by: dict[str, list[str]] = {}
    for label in labels:
        text = (logs / f"cluster-{label}.log").read_text(errors="replace")
        for name in CREATED.findall(text):
            made[name] = label
        for name in PROCESSING.findall(text):
            ran_by.setdefault(name, []).append(label)
    return made, ran_by


def fired_count(tick: Any) -> int:
    """How many runs a tick fired, from its result ("fired 1 run(s); ..."); -1 if it failed."""
    found = re.match(r"fired (\d+) run", str(tick.result or "")) if tick.success else None
    return int(found.group(1)) if found else -1


def report(
    wanted: list[datetime],
    runs: list[ScheduledRun],
    jobs: dict[str, Any],
    ran: dict[str, int],
    done: list[Any],
    owners: Owners | None,
    made: dict[str, str],
    ran_by: dict[str, list[str]],
) -> None:
    from renders.models import RenderJob
    from scheduling.models import ScheduledRun

    two = owners is not None
    by_due: dict[datetime, list[ScheduledRun]] = {}
    for r in runs:
        by_due.setdefault(r.due, []).append(r)
    extra = [r for r in runs if r.due not in wanted]
    missing = [d for d in wanted if d not in by_due]
    doubled = [d for d in wanted if len(by_due.get(d, [])) > 1]
    skipped = [r for r in runs if r.status == ScheduledRun.SKIPPED]
    succeeded = [r for r in runs if r.status == ScheduledRun.SUCCEEDED]
    firing = [t for t in done if fired_count(t) > 0]
    late, to_tick, tick_to_run, to_job, to_end = [], [], [], [], []
    contended = 0  # due times whose minute more than one tick ran in
    print("  per due time (seconds after the due time unless said):")
    for due in wanted:
        rows = by_due.get(due, [])
        if not rows:
            print(f"    due {due:%H:%M}: no run")
            continue
        r = rows[0]
        minute = [t for t in done if due <= t.started < due + timedelta(minutes=1)]
        tick = next((t for t in minute if fired_count(t) > 0), None)
        job_codes = r.result.get("jobs") or []
        job = jobs.get(job_codes[0]) if job_codes else None
        late.append(seconds(r.started, r.due))
        to_tick.append(seconds(tick.started if tick else None, due))
        tick_to_run.append(seconds(r.started, tick.started if tick else None))
        to_job.append(seconds(job.finished if job else None, r.started))
        to_end.append(seconds(r.finished, due))
        where = ""
        if two:
            assert owners is not None
            contended += len(minute) > 1
            said = [
                f"{fired_count(t)} by cluster {'+'.join(ran_by.get(str(t.name), ['?']))} "
                f"(made by cluster {made.get(str(t.name), '?')}, started {seconds(t.started, due):.2f})"
                for t in minute
            ]
            where = f"; ticks in its minute fired {', '.join(said)}; its run task in cluster {owners.owner(r.worker)}"
        print(
            f"    due {due:%H:%M}: tick started {to_tick[-1]:.2f}, run started {late[-1]:.2f} "
            f"(tick -> run {tick_to_run[-1]:.2f}), its job completed {seconds(job.finished if job else None, due):.2f} "
            f"(run -> job {to_job[-1]:.2f}), run {r.status} {to_end[-1]:.1f}; {len(job_codes)} job"
            f"{'s' if len(job_codes) != 1 else ''} {job.status if job else '-'}{where}"
        )
    print(f"  started - due: {spread(late)} (target <= {TARGET:g} s)")
    print(
        f"    where it goes: due -> the tick that fired it {spread(to_tick)}; that tick -> the run started "
        f"{spread(tick_to_run)}; the run started -> its render job completed {spread(to_job)}; due -> the run "
        f"ended (settled by the next tick) {spread(to_end)}"
    )
    results: dict[str, int] = {}
    for t in done:
        key = re.sub(r"\d+", "N", str(t.result or "")) if t.success else "failed"
        results[key] = results.get(key, 0) + 1
    print(
        f"  ticks run since the task was saved: {len(done)} ({sum(not t.success for t in done)} failed), "
        f"{len(firing)} of them fired a run ({sum(fired_count(t) for t in firing)} runs); results {results}"
    )
    completed = [j for j in jobs.values() if j.status == RenderJob.COMPLETED]
    one_job = all(len(r.result.get("jobs") or []) == 1 for r in runs)
    print(
        f"  runs: {len(runs)} for {len(wanted)} due times: {len(succeeded)} succeeded, {len(skipped)} skipped, "
        f"{len(missing)} due times without a run, {len(doubled)} with more than one, {len(extra)} at other times; "
        f"render jobs {len(jobs)}, completed {len(completed)}"
    )
    once = bool(ran) and all(n == 1 for n in ran.values()) and len(ran) == len(wanted)
    print(f"  {executions_line(ran)}")
    exact = not missing and not doubled and not extra and not skipped and len(succeeded) == len(wanted)
    exact = exact and one_job and len(completed) == len(wanted)
    exact = exact and len(firing) == len(wanted) and all(fired_count(t) == 1 for t in firing)
    both = True
    if two:
        assert owners is not None
        both = clusters_ticking(runs, done, owners, made, ran_by, contended, len(wanted))
    late_ok = bool(late) and len(late) == len(wanted) and max(late) <= TARGET
    print(f"{verdict(late_ok)}: started - due <= {TARGET:g} s for every due time (max {max(late, default=0):.1f} s)")
    print(
        f"{verdict(exact and once)}: each of {len(wanted)} due times fired exactly once (one run, succeeded, one "
        "render job, one execution on the node, one tick that fired it); none missed or skipped"
        + (" while both clusters ran ticks" if two and both else "")
    )


def clusters_ticking(
    runs: list[ScheduledRun],
    done: list[Any],
    owners: Owners,
    made: dict[str, str],
    ran_by: dict[str, list[str]],
    contended: int,
    due_count: int,
) -> bool:
    """Which cluster made and which ran the ticks (from the clusters' own logs), and which ran
    each run's task (its worker's pid); whether both clusters ran ticks."""
    names = [str(t.name) for t in done]
    labels = list(owners.clusters)
    made_count = {c: sum(made.get(n) == c for n in names) for c in labels}
    run_count = {c: sum(c in ran_by.get(n, []) for n in names) for c in labels}
    fired_by = {c: sum(c in ran_by.get(str(t.name), []) for t in done if fired_count(t) > 0) for c in labels}
    untold = sum(n not in ran_by for n in names)
    twice = sum(len(ran_by.get(n, [])) > 1 for n in names)
    per_run = {c: sum(owners.owner(r.worker) == c for r in runs) for c in labels}
    unknown = sum(owners.owner(r.worker) not in labels for r in runs)
    stated = {str(t.cluster) for t in done}
    print(
        "  ticks by cluster (their own logs): made by the scheduler of "
        + ", ".join(f"cluster {c} {n}" for c, n in made_count.items())
        + "; run by a worker of "
        + ", ".join(f"cluster {c} {n} ({fired_by[c]} of them fired the run)" for c, n in run_count.items())
        + (f"; {untold} in neither log" if untold else "")
        + (f"; {twice} run by both" if twice else "")
        + f"; due times whose minute ran more than one tick: {contended} of {due_count} "
        f"(the Task rows name the cluster {', '.join(sorted(stated))}: the name both clusters share)"
    )
    print(
        "  run tasks (scheduling.tasks.run) by cluster, from the pid in the run's worker: "
        + ", ".join(f"cluster {c} {n}" for c, n in per_run.items())
        + (f", unknown {unknown}" if unknown else "")
    )
    both = all(n > 0 for n in run_count.values())
    print(f"{verdict(both)}: both clusters ran ticks (a worker of each ran at least one)")
    return both and twice == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    if args.part:
        main(lambda: serve_part(args.part))
    else:
        main(run)
