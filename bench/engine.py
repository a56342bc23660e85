"""The one engine's figures (issue "one engine"): the real worker cluster (`qcluster`,
bench/cluster.py, or the whole `manage.py run`) against simulated ComfyUI nodes.

1. pickup: one node, the cluster idle for a few seconds (its sweeper gone); a job queued alone,
   from the commit that queues it to its POST /prompt arriving at the node (the simulator's clock
   of its answers, bench.common.clock_answers), 30 jobs one at a time, each waited for to complete
   and for the pool to go idle again. Median <= 20 ms. For information, the same to the node
   starting it (its history's execution_start, ms resolution).
2. recovery: one node, one job of 8 s; 2 s into it the worker following it (its pid is in the
   row's `worker`, host:pid:token) is SIGKILLed; kill -> the row names another worker (followed
   again), and kill -> completed, having run once on the node. Followed again <= 30 s.
3. idle: `manage.py run` (SQLite, ORM broker) with two idle simulated nodes registered and online:
   PSS of the whole process tree (as bench/memory.py) <= 400 MB, and the CPU the tree uses over
   60 s (utime + stime of every process, counting the children each reaped) <= 2 % of one core.
   Then, on PostgreSQL + Redis only (SQLite's work cannot be counted across processes): the same
   stack with four nodes each rendering a 60 s job (and more waiting behind them, nothing ending),
   the database work per second over two 20 s windows: transactions (xact_commit + xact_rollback)
   and rows read (tup_returned + tup_fetched) of the throwaway database, from pg_stat_database.
4. scaleout (PostgreSQL + Redis only): 8 nodes, 400 jobs of 1-3 s (seeded). A: one cluster of 20
   workers. B: two clusters of 10; both must complete jobs (a job's cluster is the one whose
   process tree held the pid in its `worker`), throughput B >= 0.95 x A. C: two clusters of 10,
   one SIGKILLed as a whole (its process group) a third of the way in: kill -> every job it
   held is followed again by the survivor (<= 30 s), and all 400 complete once. D, for
   comparison: C with two clusters of 20 (each could run the whole pool alone).

SQLite parts run on 127.0.46.x, PostgreSQL ones on 127.0.47.x; each simulated node is a child
process of its own. Every part that renders prints executions per job from the nodes' own
/history, PASS only if every job ran exactly once. Pickup and recovery run on SQLite, and also on
PostgreSQL + Redis when DATABASE_URL is set (a throwaway database `bench_<pid>` on that server,
dropped at the end, as bench/event_latency.py does); each part runs in a process of its own.

    .venv/bin/python bench/engine.py
    BENCH_ONLY=pickup,recovery BENCH_HOG=1 .venv/bin/python bench/engine.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python bench/engine.py

BENCH_ONLY=a,b runs only those parts; BENCH_HOG=1 runs one CPU-bound process beside the whole run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    PYTHON,
    BenchError,
    Child,
    Sim,
    base_env,
    cpu_hog,
    cpu_ticks,
    database,
    descendants,
    executions,
    executions_line,
    free_port,
    machine,
    main,
    percentile,
    proc_stat,
    process_tree,
    pss_kb,
    run_parts,
    short_command,
    start_run,
    temp_dir,
    time_limit,
    tree_cpu_seconds,
    verdict,
    wait_done,
    wait_for_login,
    wait_until,
    worker_cluster,
)

if TYPE_CHECKING:
    from nodes.models import Capability
    from renders.models import RenderJob, Template

NETS = {"sqlite": "127.0.46", "postgres": "127.0.47"}
WORKERS = 8  # pickup and recovery: the default cluster (one node needs two slots and the sweeper)
PARTS = ("pickup", "recovery", "idle", "scaleout")
LIMITS = {"pickup": 300, "recovery": 180, "idle": 300, "busy": 240, "scaleout": 1500}

PICKUP_JOBS = 30
PICKUP_RUN = 0.05  # seconds each pickup job renders
IDLE_FIRST = 5.0  # seconds the cluster sits idle before the first pickup job
RECOVERY_RUN = 8.0
KILL_AFTER = 2.0  # seconds into the render when its worker is killed
IDLE_SETTLE = 10.0  # seconds after /login/ first answers before the idle stack is measured
CPU_WINDOW = 60.0
BUSY_RUN = 60.0  # seconds each busy job renders: nothing ends while the windows are measured
BUSY_WINDOWS = (20.0, 20.0)
SCALE_NODES = 8
SCALE_JOBS = 400
SCALE_WORKERS = 20  # 8 nodes x (limit 1 + prefetch 1) + a few for feed and the sweeper
# Seconds per workflow node: chains of 6-16 nodes run 1.0-3.0 s (EmptyImage is cached after a
# node's first prompt). Not longer chains: the simulator's cache key of a node nests its inputs'
# keys JSON-escaped, so it doubles in size with every level (2^31 characters at 31 nodes).
SCALE_STEP = 0.2
SCALE_LENGTHS = range(6, 17)
KILL_AT = SCALE_JOBS // 3  # completed jobs when run C kills a cluster


# --- the driver: each part in a process of its own, one after the other --------------------------


def run() -> None:
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    unknown = only - set(PARTS)
    if unknown:
        raise BenchError(f"unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    postgres = bool(os.environ.get("DATABASE_URL", "").strip())
    plan: list[tuple[str, str]] = []
    for part in PARTS:
        if only and part not in only:
            continue
        if part in ("pickup", "recovery"):
            plan += [(part, "sqlite")] + ([(part, "postgres")] if postgres else [])
        elif part == "idle":
            plan += [("idle", "sqlite")] + ([("busy", "postgres")] if postgres else [])
        elif postgres:
            plan.append((part, "postgres"))
    print(f"Engine benchmarks ({machine()}; each simulated node in a process of its own)", flush=True)
    if not postgres and (not only or {"idle", "scaleout"} & only):
        print("  DATABASE_URL is not set: the busy half of idle and all of scaleout need PostgreSQL; skipped")
    with temp_dir("sf-bench-engine-hog-") as tmp, cpu_hog(tmp, os.environ.get("BENCH_HOG") == "1"):
        run_parts(
            [(f"{part} ({db})", [PYTHON, __file__, "--part", part, "--db", db], LIMITS[part]) for part, db in plan]
        )


def serve_part(part: str, db: str) -> None:
    with (
        time_limit(LIMITS[part]),
        temp_dir(f"sf-bench-engine-{part}-") as data,
        database(db, data, "bench-engine") as mode,
    ):
        from renders.management.commands.load_templates import load

        load()
        logs = data / "logs"
        logs.mkdir()
        print(f"\n{part} ({mode}; {machine()})", flush=True)
        net = NETS[db]
        if part == "pickup":
            pickup(net, logs)
        elif part == "recovery":
            recovery(net, logs)
        elif part == "idle":
            idle(net, logs, data)
        elif part == "busy":
            busy(net, logs, data)
        elif part == "scaleout":
            scaleout(net, logs)


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def pool(net: str, knobs: list[dict[str, Any]], logs: Path) -> Iterator[list[tuple[Capability, Sim]]]:
    """One simulated ComfyUI per entry of `knobs` on net.1, net.2, ..., each a Node with an online
    ComfyUI capability."""
    from nodes.models import Capability, Node

    sims: list[Sim] = []
    made: list[tuple[Capability, Sim]] = []
    try:
        for i, k in enumerate(knobs):
            sim = Sim("comfyui", f"{net}.{i + 1}", k, logs)
            sims.append(sim)
            node = Node.objects.create(name=f"sim {i + 1}", host=sim.host, simulated=True)
            cap = Capability.objects.create(node=node, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
            made.append((cap, sim))
        yield made
    finally:
        for sim in sims:
            sim.child.stop(grace=10)


def queue(target: str, specs: list[tuple[Template, float]]) -> tuple[list[int], float]:
    """Queue one job per (template, work), as the queue's form does; their primary keys and the
    wall-clock time (time.time(), the nodes' clock) the transaction committed."""
    from django.db import transaction

    from renders.models import RenderJob

    with transaction.atomic(), committed_at() as committed:
        start = RenderJob.last_position()
        jobs = [
            RenderJob(template=t, work=work, prompt=f"{target} {i}", position=start + i, target=target)
            for i, (t, work) in enumerate(specs)
        ]
        RenderJob.objects.bulk_create(jobs)
        RenderJob.announce_queued()
    return list(RenderJob.objects.filter(target=target).values_list("pk", flat=True)), committed[0]


@contextmanager
def committed_at() -> Iterator[list[float]]:
    """Inside a transaction: the moment it commits, taken by the first of its on-commit hooks,
    before the doorbell rings (taken after the block, a process preempted once the worker was
    woken would read a moment after the worker started, and pickups would look shorter)."""
    from django.db import transaction

    moment: list[float] = []
    transaction.on_commit(lambda: moment.append(time.time()))
    yield moment


def ran_once(sims: list[Sim], jobs: list[RenderJob]) -> dict[str, int]:
    ran = executions([sim.history() for sim in sims], [str(j.code) for j in jobs])
    print(f"  {executions_line(ran)}")
    return ran


def started_at(history: dict[str, Any], prompt_id: str) -> float:
    """execution_start of a prompt, in seconds, from the node's own history (ms resolution)."""
    for kind, data in history[prompt_id]["status"]["messages"]:
        if kind == "execution_start":
            return float(data["timestamp"]) / 1000
    raise BenchError(f"prompt {prompt_id} has no execution_start in the node's history")


def worker_pid(worker: str) -> int | None:
    """The process in a row's `worker` (host:pid:token)."""
    pid = worker.split(":")[1] if worker.count(":") >= 2 else ""
    return int(pid) if pid.isdigit() else None


def pool_idle() -> bool:
    """No sweeper runs: nothing in the pool is watched any more."""
    from spoonfeeder.models import Sweeper

    return not Sweeper.objects.exclude(worker="").exists()


@contextmanager
def cluster(logs: Path, workers: int) -> Iterator[Child]:
    """worker_cluster, and up: waited for by its own status (another cluster's counts for
    nothing), its workers forked."""
    from django_q.status import Stat

    with worker_cluster(logs, workers) as child:

        def up() -> bool:
            child.check_alive()
            return any(s.pid == child.pid and len(s.workers) >= workers for s in Stat.get_all())

        wait_until(up, 60, f"cluster {child.pid} to report {workers} workers")
        yield child


# --- 1. pickup -------------------------------------------------------------------------------


def pickup(net: str, logs: Path) -> None:
    from renders.models import RenderJob, Template

    still = Template.objects.get(name="test-still-image")
    commits: dict[int, float] = {}
    with pool(net, [{"run_seconds": PICKUP_RUN}], logs) as [(_, sim)], cluster(logs, WORKERS):
        wait_until(pool_idle, 30, "the pool to go idle")
        time.sleep(IDLE_FIRST)  # the condition measured: a pool that has been idle for a while
        for i in range(PICKUP_JOBS):
            wait_until(pool_idle, 30, "the sweeper to leave (the pool idle)", interval=0.02)
            ids, committed = queue(f"bench:pickup:{i}", [(still, 1.0)])
            commits[ids[0]] = committed
            wait_done(ids, 30)
        jobs = list(RenderJob.objects.filter(pk__in=commits))
        history, clock = sim.history(), sim.answers()
        ran_once([sim], jobs)
        hops = bare_hops()
    arrived = {a["prompt_id"]: a["arrived"] for a in clock}
    waits = sorted((arrived[j.prompt_id] - commits[j.pk]) * 1000 for j in jobs)
    starts = sorted((started_at(history, j.prompt_id) - commits[j.pk]) * 1000 for j in jobs)
    median, p95 = statistics.median(waits), percentile(waits, 95)
    print(
        f"pickup, 1 idle node, {PICKUP_JOBS} jobs one at a time, each on an idle pool (its sweeper gone; "
        f"the cluster idle {IDLE_FIRST:g} s before the first): commit -> its POST /prompt arrives at the node "
        f"(the node's clock): median {median:.1f} ms, p95 {p95:.1f} ms, min {waits[0]:.1f} ms, max {waits[-1]:.1f} ms"
    )
    print(
        f"  for information: commit -> the node starts the prompt (its execution_start, ms resolution) median "
        f"{statistics.median(starts):.0f} ms, p95 {percentile(starts, 95):.0f} ms"
    )
    claimed = claim_times(jobs)
    to_claim = sorted((claimed[j.pk] - commits[j.pk]) * 1000 for j in jobs if j.pk in claimed)
    to_start = sorted((started_at(history, j.prompt_id) - claimed[j.pk]) * 1000 for j in jobs if j.pk in claimed)
    if to_claim:
        print(
            f"  for information: commit -> claimed (the feed task's job.assigned event) median "
            f"{statistics.median(to_claim):.0f} ms, p95 {percentile(to_claim, 95):.0f} ms; claimed -> the node "
            f"starts it (the attempt task) median {statistics.median(to_start):.0f} ms, "
            f"p95 {percentile(to_start, 95):.0f} ms"
        )
    slowest = sorted(jobs, key=lambda j: arrived[j.prompt_id] - commits[j.pk])[-3:]
    print(
        "  for information, the slowest 3 (commit -> claimed + claimed -> POST arrives): "
        + ", ".join(
            f"{(claimed.get(j.pk, commits[j.pk]) - commits[j.pk]) * 1000:.0f} + "
            f"{(arrived[j.prompt_id] - claimed.get(j.pk, commits[j.pk])) * 1000:.0f} ms"
            for j in slowest
        )
    )
    print(
        f"  for information: one bare task (spoonfeeder.tasks.selftest(0)) on the idle cluster, {len(hops)} times: "
        f"commit -> the worker has run it (its Task row's stopped) median {statistics.median(hops):.0f} ms, "
        f"p95 {percentile(hops, 95):.0f} ms; a pickup takes one such hop "
        "(the feed task follows the first job it claims)"
    )
    print(f"{verdict(median <= 20)}: pickup median <= 20 ms")


def bare_hops(count: int = 10) -> list[float]:
    """Commit -> end of a task that does nothing, queued alone on the idle cluster, in ms."""
    from django.db import transaction
    from django_q.models import Task

    from spoonfeeder.tasks import enqueue

    hops = []
    for i in range(count):
        wait_until(pool_idle, 30, "the pool to go idle", interval=0.02)
        name = f"bench-hop-{os.getpid()}-{i}"
        with transaction.atomic(), committed_at() as moment:
            enqueue("spoonfeeder.tasks.selftest", 0, task_name=name)
        committed = moment[0]
        # Its `stopped`: django-q2 sets `started` when the task is queued, not when it runs.
        rows = Task.objects.filter(name=name).values_list("stopped", flat=True)
        stopped = wait_until(rows.first, 30, "a bare task to run")
        hops.append((stopped.timestamp() - committed) * 1000)
    return sorted(hops)


def claim_times(jobs: list[RenderJob]) -> dict[int, float]:
    """When each job was claimed for its node: its first job.assigned event (the claiming
    worker's clock)."""
    from spoonfeeder.models import Event

    by_code = {str(j.code): j.pk for j in jobs}
    found: dict[int, float] = {}
    events = Event.objects.filter(kind="job.assigned", ref__in=by_code).order_by("created")
    for ref, created in events.values_list("ref", "created"):
        found.setdefault(by_code[ref], created.timestamp())
    return found


# --- 2. recovery -----------------------------------------------------------------------------


def recovery(net: str, logs: Path) -> None:
    from renders.models import RenderJob, Template

    still = Template.objects.get(name="test-still-image")
    with pool(net, [{"run_seconds": RECOVERY_RUN}], logs) as [(_, sim)], cluster(logs, WORKERS) as child:
        ids, _ = queue("bench:recovery", [(still, 1.0)])
        rows = RenderJob.objects.filter(pk=ids[0])
        wait_until(lambda: rows.filter(status=RenderJob.RENDERING).exclude(worker="").exists(), 30, "the job to render")
        time.sleep(KILL_AFTER)  # the position measured: mid-render
        before = rows.values_list("worker", flat=True).get()
        pid = worker_pid(before)
        if pid is None or pid not in descendants(child.pid):
            raise BenchError(f"the job's worker {before!r} is not a process of the cluster {child.pid}")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        def followed() -> str:
            now = rows.values_list("worker", "status").get()
            return now[0] if now[0] not in ("", before) else ""

        after = wait_until(followed, 120, "the job to be followed by another worker", interval=0.02)
        refollowed = time.monotonic() - killed
        jobs = wait_done(ids, 120)
        completed = time.monotonic() - killed
        ran_once([sim], jobs)
    job = jobs[0]
    print(
        f"recovery, 1 node, a {RECOVERY_RUN:g} s job, its worker (pid {pid}) SIGKILLed {KILL_AFTER:g} s into the "
        f"render: kill -> followed by another worker (pid {worker_pid(after)}) {refollowed:.2f} s; "
        f"kill -> completed {completed:.2f} s (attempts {job.attempts}, crashes counted {job.crashes})"
    )
    print(f"{verdict(refollowed <= 30)}: kill -> followed again <= 30 s")


# --- 3. idle -----------------------------------------------------------------------------------


def registered(net: str, count: int, knobs: dict[str, Any], logs: Path) -> list[Sim]:
    """`count` simulated ComfyUIs, each a node with an online capability."""
    from nodes.models import Capability, Node

    sims = []
    for i in range(count):
        sim = Sim("comfyui", f"{net}.{i + 1}", knobs, logs)
        sims.append(sim)
        node = Node.objects.create(name=f"sim {i + 1}", host=sim.host, simulated=True)
        Capability.objects.create(node=node, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    return sims


def per_process(root: int) -> dict[tuple[int, int], tuple[int, str]]:
    """(pid, start time) -> (CPU clock ticks so far, a readable name) of the tree's processes."""
    found = {}
    for pid, _ in process_tree(root):
        stat, ticks = proc_stat(pid), cpu_ticks(pid)
        if stat is not None and ticks is not None:
            found[(pid, stat[1])] = (ticks, short_command(pid))
    return found


def cluster_roles() -> dict[int, str]:
    """What each process of the running clusters is, by pid, from their own status."""
    from django_q.status import Stat

    roles: dict[int, str] = {}
    for stat in Stat.get_all():
        roles |= {stat.pid: "qcluster", stat.sentinel: "its sentinel"}
        roles |= {stat.monitor: "its monitor", stat.pusher: "its pusher"}
        roles |= dict.fromkeys(stat.workers, "a worker")
    return roles


def online(count: int) -> bool:
    from nodes.models import Capability

    return Capability.objects.filter(kind=Capability.COMFYUI, status=Capability.ONLINE).count() >= count


def idle(net: str, logs: Path, data: Path) -> None:
    from django.db import connections

    sims = registered(net, 2, {}, logs)
    connections.close_all()
    env = base_env(data, embedded=True, SPOONFEEDER_ADMIN_PASSWORD="bench-engine-password")
    port = free_port()
    stack = start_run(env, port, logs / "run.log")
    try:
        up = wait_for_login(stack, f"http://127.0.0.1:{port}", timeout=60)
        wait_until(lambda: online(2), 60, "both nodes online")
        connections.close_all()  # this process stays out of the database while it measures
        time.sleep(IDLE_SETTLE)  # as bench/memory.py: the figures of a stack that has settled
        stack.check_alive()
        tree = process_tree(stack.pid)
        total = sum(kb for pid, _ in tree if (kb := pss_kb(pid)) is not None) / 1024
        cpu0, t0, each0 = tree_cpu_seconds(stack.pid), time.monotonic(), per_process(stack.pid)
        time.sleep(CPU_WINDOW)  # the window measured
        cpu1, t1, each1 = tree_cpu_seconds(stack.pid), time.monotonic(), per_process(stack.pid)
        stack.check_alive()
        still = online(2)
        roles = cluster_roles()
        connections.close_all()
    finally:
        stack.stop(grace=45)
        for sim in sims:
            sim.child.stop(grace=10)
    share = (cpu1 - cpu0) / (t1 - t0) * 100
    print(
        f"idle, `manage.py run` with 2 idle nodes online ({'still online' if still else 'NOT online'} at the end), "
        f"{IDLE_SETTLE:g} s after /login/ answered ({up:.1f} s after start): PSS {total:.1f} MB over "
        f"{len(tree)} processes"
    )
    print(
        f"  CPU of the whole tree over {t1 - t0:.1f} s: {cpu1 - cpu0:.2f} s = {share:.2f} % of one core"
        " (utime + stime of every process, with the children each reaped)"
    )
    ticks = os.sysconf("SC_CLK_TCK")
    both = each1.keys() & each0.keys()
    used = sorted(((each1[k][0] - each0[k][0]) / ticks, roles.get(k[0], each1[k][1])) for k in both)[::-1]
    print(
        "  for information, CPU by process over the window (utime + stime + reaped children): "
        + "; ".join(f"{name} {seconds:.2f} s" for seconds, name in used[:6])
    )
    print(f"{verdict(total <= 400)}: idle PSS <= 400 MB")
    print(f"{verdict(share <= 2)}: idle CPU <= 2 % of one core")
    print("  busy database work: SQLite's cannot be counted across processes; measured on PostgreSQL only")


def pg_counts() -> dict[str, int]:
    """The throwaway database's counters from pg_stat_database, read over a connection to the
    server's own database (its queries do not count in ours)."""
    import psycopg
    from django.conf import settings

    name = settings.DATABASES["default"]["NAME"]
    url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    fields = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated")
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT {', '.join(fields)} FROM pg_stat_database WHERE datname = %s", [name]).fetchone()
    if row is None:
        raise BenchError(f"no pg_stat_database row for {name}")
    return dict(zip(fields, (int(v) for v in row), strict=True))


def busy(net: str, logs: Path, data: Path) -> None:
    from django.db import connections
    from django.db.models import Count

    from nodes.models import SPARE_WORKERS, slots
    from renders.models import RenderJob, Template

    sims = registered(net, 4, {"run_seconds": BUSY_RUN}, logs)
    still = Template.objects.get(name="test-still-image")
    connections.close_all()
    # The workers the pool's slots need, as nodes.models.worker_shortfall asks for (8 by default).
    workers = str(slots() + SPARE_WORKERS)
    env = base_env(
        data, embedded=False, SPOONFEEDER_ADMIN_PASSWORD="bench-engine-password", SPOONFEEDER_WORKERS=workers
    )
    port = free_port()
    stack = start_run(env, port, logs / "run.log")
    figures = []
    try:
        wait_for_login(stack, f"http://127.0.0.1:{port}", timeout=60)
        # 4 rendering, 4 waiting in the nodes' own queues (prefetch), 4 waiting in ours.
        ids, _ = queue("bench:busy", [(still, 1.0)] * 12)
        jobs = RenderJob.objects.filter(pk__in=ids)
        wait_until(lambda: jobs.filter(status=RenderJob.RENDERING).count() >= 4, 60, "4 nodes rendering")
        wait_until(lambda: jobs.exclude(sent=None).count() >= 8, 30, "8 jobs sent to the nodes")
        states = dict(jobs.values_list("status").annotate(n=Count("pk")).order_by())
        connections.close_all()
        for window in BUSY_WINDOWS:
            before, cpu0, t0 = pg_counts(), tree_cpu_seconds(stack.pid), time.monotonic()
            time.sleep(window)  # the window measured
            after, cpu1, t1 = pg_counts(), tree_cpu_seconds(stack.pid), time.monotonic()
            figures.append(({k: (after[k] - before[k]) / (t1 - t0) for k in after}, (cpu1 - cpu0) / (t1 - t0) * 100))
        stack.check_alive()
        ended = jobs.filter(status__in=RenderJob.ENDED).count()
        connections.close_all()
    finally:
        stack.stop(grace=45)
        for sim in sims:
            sim.child.stop(grace=10)
    print(
        f"busy, `manage.py run` on PostgreSQL + Redis with {workers} workers (the pool's slots + "
        f"{SPARE_WORKERS}), 4 nodes each rendering a {BUSY_RUN:g} s job "
        f"(jobs: {states}; {ended} ended during the windows): database work of the throwaway database "
        "(pg_stat_database; a backend flushes its counts at most every second, so each window's edges are "
        "blurred by about that)"
    )
    for (rates, cpu), window in zip(figures, BUSY_WINDOWS, strict=True):
        print(
            f"  {window:g} s window: {rates['xact_commit'] + rates['xact_rollback']:.1f} transactions/s, "
            f"{rates['tup_returned'] + rates['tup_fetched']:.0f} rows read/s "
            f"(inserted {rates['tup_inserted']:.1f}/s, updated {rates['tup_updated']:.1f}/s); "
            f"CPU of the whole tree {cpu:.1f} % of one core"
        )
    print("  (for comparison: the last landing measured 108-127 transactions/s for this)")


# --- 4. scaleout -----------------------------------------------------------------------------


def chain_templates() -> dict[int, Template]:
    """One template per chain length (see render_queue.chain): SCALE_STEP s per workflow node."""
    from bench.render_queue import chain
    from renders.models import Template

    return {
        n: Template.objects.update_or_create(
            name=f"bench-chain-{n}",
            defaults={
                "kind": Template.TEST,
                "workflow": chain(n),
                "mapping": {"seed": [["2", "seed"]], "filename_prefix": [["99", "filename_prefix"]]},
                "needs": {"classes": ["EmptyImage", "ImageAddNoise", "ImageInvert", "SaveImage"], "files": {}},
            },
        )[0]
        for n in SCALE_LENGTHS
    }


class Owners:
    """Which cluster each worker pid belongs to, from the clusters' process trees, read over and
    over while they run (a pid is recorded once seen; workers a cluster forks later join it)."""

    def __init__(self, clusters: dict[str, Child]) -> None:
        self.clusters = clusters
        self.of: dict[int, str] = {}
        self.look()

    def look(self) -> None:
        for name, child in self.clusters.items():
            if child.alive():
                for pid in descendants(child.pid):
                    self.of.setdefault(pid, name)

    def owner(self, worker: str) -> str:
        pid = worker_pid(worker)
        return self.of.get(pid, "?") if pid else ""


def scale_run(
    label: str,
    specs: list[tuple[Template, float]],
    sims: list[Sim],
    logs: Path,
    sizes: list[int],
    kill: bool = False,
) -> float:
    """One run: the clusters of `sizes` workers, the jobs queued, waited for; its throughput."""
    from renders.models import RenderJob

    target = f"bench:scale:{label}"
    with ExitStack() as stack:
        clusters = {str(i + 1): stack.enter_context(cluster(logs, size)) for i, size in enumerate(sizes)}
        owners = Owners(clusters)
        ids, committed = queue(target, specs)
        jobs = RenderJob.objects.filter(pk__in=ids)
        deadline = time.monotonic() + SCALE_JOBS * 3.0 / len(sims) * 4 + 120
        recovery_note = ""
        if kill:

            def far_enough() -> bool:
                owners.look()
                return jobs.filter(status=RenderJob.COMPLETED).count() >= KILL_AT

            wait_until(
                far_enough,
                deadline - time.monotonic(),
                f"{KILL_AT} jobs completed",
                interval=0.2,
            )
            recovery_note = kill_one(clusters, owners, jobs)
        while jobs.exclude(status__in=RenderJob.ENDED).exists():
            owners.look()
            if time.monotonic() > deadline:
                raise BenchError(f"run {label}: jobs still not ended at the deadline")
            time.sleep(0.2)
        rows = list(jobs)
    done = [j for j in rows if j.status == RenderJob.COMPLETED]
    last = max((j.finished.timestamp() for j in done if j.finished), default=committed)
    rate = len(done) / max(last - committed, 1e-9)
    per = {name: sum(owners.owner(j.worker) == name for j in done) for name in clusters}
    unknown = sum(owners.owner(j.worker) not in clusters for j in done)
    ran = executions([sim.history() for sim in sims], [str(j.code) for j in rows])
    twice, lost = sum(n > 1 for n in ran.values()), len(rows) - len(done)
    print(
        f"  run {label}: {len(sizes)} cluster(s) of {'+'.join(map(str, sizes))} workers: {len(done)} of {len(rows)} "
        f"completed in {last - committed:.1f} s (commit -> last completed) = {rate:.2f} jobs/s; completed by "
        f"cluster {', '.join(f'{n}: {c}' for n, c in per.items())}"
        f"{f', by an unknown pid: {unknown}' if unknown else ''}; {twice} ran twice, {lost} did not complete"
    )
    print(f"    {executions_line(ran)}")
    if recovery_note:
        print(f"    {recovery_note}")
    return rate


def kill_one(clusters: dict[str, Child], owners: Owners, jobs: Any) -> str:
    """SIGKILL the cluster holding the most active jobs (its whole process group); wait until
    every job it held is followed by the other; what happened, in words (PASS/FAIL first)."""
    from renders.models import RenderJob
    from spoonfeeder.models import Sweeper

    owners.look()
    active = list(jobs.filter(status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING)).values_list("pk", "worker"))
    held = {name: {pk for pk, w in active if owners.owner(w) == name} for name in clusters}
    victim = max(held, key=lambda n: len(held[n]))
    survivor = next(n for n in clusters if n != victim)
    unheld = {pk for pk, w in active if not w}
    busy = {name: len({worker_pid(w) for _, w in active if owners.owner(w) == name}) for name in clusters}
    sweeper = Sweeper.objects.filter(pk=1)
    swept_by = owners.owner(sweeper.values_list("worker", flat=True).first() or "") or "nobody"
    os.killpg(clusters[victim].pid, signal.SIGKILL)
    killed = time.monotonic()
    mine = held[victim]
    waiting = set(mine) | unheld
    followed_at: dict[int, float] = {}
    cleared_at: dict[int, float] = {}  # the row's worker emptied: re-driven by the sweeper
    sweeper_back: float | None = None
    deadline = killed + 120
    while waiting and time.monotonic() < deadline:
        owners.look()
        now = time.monotonic() - killed
        if sweeper_back is None and owners.owner(sweeper.values_list("worker", flat=True).first() or "") == survivor:
            sweeper_back = now
        for pk, worker, status in jobs.filter(pk__in=waiting).values_list("pk", "worker", "status"):
            if not worker:
                cleared_at.setdefault(pk, now)
            if owners.owner(worker) == survivor or (status in RenderJob.ENDED and not worker):
                followed_at[pk] = now
                waiting.discard(pk)
        time.sleep(0.05)
    cleared = sorted(cleared_at[pk] for pk in mine if pk in cleared_at)
    taken = sorted(followed_at[pk] - cleared_at[pk] for pk in mine if pk in cleared_at and pk in followed_at)
    holder = "no cluster's" if swept_by == "nobody" else f"cluster {swept_by}'s"
    back = f"{sweeper_back:.2f} s after" if sweeper_back is not None else "never after (or all along)"
    diagnosis = (
        "      at the kill, workers following jobs: "
        + ", ".join(f"cluster {n} {c}" for n, c in busy.items())
        + f"; the sweeper was {holder}; one of cluster {survivor} held it {back}; "
        f"the held jobs re-driven (worker emptied) {len(cleared)}: first {cleared[0] if cleared else 0:.2f} s, "
        f"last {cleared[-1] if cleared else 0:.2f} s after the kill; re-driven -> taken by a worker median "
        f"{statistics.median(taken) if taken else float('nan'):.2f} s, max {max(taken, default=0.0):.2f} s"
    )
    times = [followed_at[pk] for pk in mine if pk in followed_at]
    others = [followed_at[pk] for pk in unheld if pk in followed_at]
    worst = max(times, default=0.0)
    ok = not (mine - followed_at.keys()) and worst <= 30
    return (
        f"{verdict(ok)}: cluster {victim} SIGKILLed holding {len(mine)} active jobs ({len(active)} active in all, "
        f"{len(unheld)} claimed but not yet taken by a worker): kill -> all {len(mine)} followed again by cluster "
        f"{survivor} {worst:.2f} s (median {statistics.median(times) if times else float('nan'):.2f} s"
        f"{f', {len(mine - followed_at.keys())} never within 120 s' if mine - followed_at.keys() else ''}); "
        f"the {len(unheld)} untaken: last followed {max(others, default=0.0):.2f} s after the kill (target <= 30 s)\n"
        + diagnosis
    )


def scaleout(net: str, logs: Path) -> None:
    if not os.environ.get("REDIS_URL"):
        print("  (REDIS_URL is not set: the clusters share PostgreSQL's ORM broker)")
    templates = chain_templates()
    rng = random.Random(46)
    lengths = [rng.choice(SCALE_LENGTHS) for _ in range(SCALE_JOBS)]
    work = sum((n - 1) * SCALE_STEP for n in lengths)
    print(
        f"scaleout, {SCALE_NODES} nodes, {SCALE_JOBS} jobs of 1-3 s (seeded; {work:.0f} s of node work, "
        f"{work / SCALE_NODES:.1f} s per node at best)"
    )
    only = set(filter(None, os.environ.get("BENCH_SCALE_RUNS", "A,B,C,D").split(",")))
    with pool(net, [{"seconds_per_node": SCALE_STEP}] * SCALE_NODES, logs) as caps:
        sims = [sim for _, sim in caps]
        specs = [(templates[n], float(n - 1)) for n in lengths]
        half = SCALE_WORKERS // 2
        rates = {}
        runs = (
            ("A", [SCALE_WORKERS], False),
            ("B", [half, half], False),
            ("C", [half, half], True),
            # For comparison: the same kill with two clusters that could each run the whole pool.
            ("D", [SCALE_WORKERS, SCALE_WORKERS], True),
        )
        for label, sizes, kill in runs:
            if label in only:
                rates[label] = scale_run(label, specs, sims, logs, sizes, kill=kill)
    if "A" in rates and "B" in rates:
        print(
            f"{verdict(rates['B'] >= 0.95 * rates['A'])}: two clusters {rates['B']:.2f} jobs/s >= 0.95 x one "
            f"cluster {rates['A']:.2f} jobs/s (ratio {rates['B'] / rates['A']:.3f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "busy"])
    parser.add_argument("--db", choices=list(NETS), default="sqlite")
    args = parser.parse_args()
    if args.part:
        main(lambda: serve_part(args.part, args.db))
    else:
        main(run)
