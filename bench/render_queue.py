"""The render queue's figures against simulated ComfyUI nodes (issue 4, "How fast"):

1. idle gap: one node, 60 queued 50 ms jobs; the node's own clock from the end of one prompt to the
   start of the next (median <= 10 ms, p95 <= 50 ms);
2. makespan: 200 jobs of mixed lengths on 4 nodes of speeds 2x, 1x, 1x, 0.5x, after a warm-up that
   measures every node's speed: total time <= 1.05 x the lower bound, with plain first-free dispatch
   (renders.dispatch.worth_it always True) as the comparison;
3. overhead: instant renders on one node, jobs per second through the whole path (queued, claimed,
   submitted, followed, output copied and thumbnailed, completed): >= 20 jobs/s over 100 jobs;
4. page: the Render queue page with 10,000 jobs: median server time of 20 renders <= 150 ms with a
   constant number of queries.

Runs the real worker cluster (`qcluster`, bench/cluster.py) on the embedded default (SQLite in a
temporary data folder, the ORM broker); each simulated ComfyUI runs in a child process of its own
on its own 127.0.42.x address, as a real node is another machine. Every part also prints how many
times each job ran on the nodes (their own /history). Node-side times come from the node's own
/history (execution_start and execution_success timestamps, ms resolution). Loopback only.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    BenchError,
    Sim,
    django_on_sqlite,
    executions,
    executions_line,
    machine,
    main,
    percentile,
    temp_dir,
    time_limit,
    time_page,
    verdict,
    wait_done,
    worker_cluster,
)

if TYPE_CHECKING:
    from nodes.models import Capability
    from renders.models import RenderJob, Template

NET = "127.0.42"
GAP_JOBS = 60
GAP_RUN_SECONDS = 0.05
MIX_JOBS = 200
SPEEDS = (2.0, 1.0, 1.0, 0.5)
BASE = 0.05  # seconds per workflow node on a 1x node
LENGTHS = (2, 4, 8, 16)  # workflow nodes a job runs: 0.1, 0.2, 0.4, 0.8 s on a 1x node
OVERHEAD_JOBS = 100
PAGE_JOBS = 10_000


def run() -> None:
    with time_limit(240), temp_dir("sf-bench-renders-") as data:
        django_on_sqlite(data)
        from renders.management.commands.load_templates import load

        load()
        media, logs = data / "media", data / "logs"
        logs.mkdir()
        print(f"Render queue benchmarks (SQLite; {machine()}; each simulated node in a process of its own)")
        # BENCH_ONLY=overhead (a comma list) runs just those parts, for profiling one.
        only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
        for name, part in (("idle_gap", idle_gap), ("makespan", makespan), ("overhead", overhead)):
            if not only or name in only:
                part(media, logs)
        if not only or "page" in only:
            page()


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def pool(knobs: list[dict[str, Any]], logs: Path, net: str = NET) -> Iterator[list[tuple[Capability, Sim]]]:
    """One simulated ComfyUI per entry of `knobs` (on net.1, net.2, ...), each a Node with an
    online ComfyUI capability."""
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
        Node.objects.filter(host__startswith=f"{net}.").delete()


WORKERS = 12  # the pool's slots (4 nodes x limit 1 + prefetch 1) and a few for short tasks


def queue(target: str, specs: list[tuple[Template, float]], **fields: Any) -> list[int]:
    """Queue one job per (template, work) in this order, as the queue's form does (the cluster
    is told once they commit); their primary keys."""
    from django.db import transaction

    from renders.models import RenderJob

    with transaction.atomic():
        start = RenderJob.last_position()
        jobs = [
            RenderJob(template=t, work=work, prompt=f"{target} {i}", position=start + i, target=target, **fields)
            for i, (t, work) in enumerate(specs)
        ]
        RenderJob.objects.bulk_create(jobs)
        RenderJob.announce_queued()
    return list(RenderJob.objects.filter(target=target).values_list("pk", flat=True))


def ran_once(sims: list[Sim], jobs: list[RenderJob]) -> None:
    print(f"  {executions_line(executions([sim.history() for sim in sims], [str(j.code) for j in jobs]))}")


def node_clock(history: dict[str, Any], prompt_id: str) -> tuple[float, float]:
    """(execution_start, execution_success) of a prompt in seconds, from the node's own history."""
    entry = history[prompt_id]
    stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"] if "timestamp" in data}
    return stamps["execution_start"] / 1000, stamps["execution_success"] / 1000


# --- 1. idle gap -----------------------------------------------------------------------------


def idle_gap(media: Path, logs: Path) -> None:
    from renders.models import Template

    still = Template.objects.get(name="test-still-image")
    with pool([{"run_seconds": GAP_RUN_SECONDS}], logs) as [(_, sim)]:
        ids = queue("bench:gap", [(still, 1.0)] * GAP_JOBS)
        with worker_cluster(logs, WORKERS):
            jobs = wait_done(ids, 60)
        history = sim.history()
        ran_once([sim], jobs)
    spans = sorted(node_clock(history, j.prompt_id) for j in jobs)
    gaps = sorted((spans[k + 1][0] - spans[k][1]) * 1000 for k in range(len(spans) - 1))
    median, p95 = statistics.median(gaps), percentile(gaps, 95)
    rows = sorted(jobs, key=lambda j: j.started or j.created)
    ours = sorted(
        (b.started - a.finished).total_seconds() * 1000
        for a, b in zip(rows, rows[1:], strict=False)
        if a.finished and b.started
    )
    print(
        f"idle gap, 1 node, {GAP_JOBS} jobs of {GAP_RUN_SECONDS * 1000:.0f} ms (node's clock, ms resolution, "
        f"end of prompt k -> start of k+1): median {median:.0f} ms, p95 {p95:.0f} ms, max {gaps[-1]:.0f} ms"
    )
    print(
        f"  for information, our rows (finished k -> started k+1, after output copy): "
        f"median {statistics.median(ours):.0f} ms, p95 {percentile(ours, 95):.0f} ms, max {ours[-1]:.0f} ms"
    )
    print(f"{verdict(median <= 10 and p95 <= 50)}: idle gap median <= 10 ms, p95 <= 50 ms")


# --- 2. makespan -----------------------------------------------------------------------------


def chain(length: int) -> dict[str, Any]:
    """A workflow that runs `length` nodes, each taking the node's seconds_per_node: ImageAddNoise
    (its seed is random per job, so nothing after the shared EmptyImage is ever cached), length - 2
    ImageInvert, SaveImage. The 64 px EmptyImage is cached after a node's first prompt."""
    workflow: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 0, "strength": 0.5}},
    }
    last = "2"
    for i in range(length - 2):
        node = str(3 + i)
        workflow[node] = {"class_type": "ImageInvert", "inputs": {"image": [last, 0]}}
        last = node
    workflow["99"] = {"class_type": "SaveImage", "inputs": {"images": [last, 0], "filename_prefix": "bench"}}
    return workflow


def makespan(media: Path, logs: Path) -> None:
    from renders.models import RenderJob, Speed, Template

    templates = {
        n: Template.objects.update_or_create(
            name=f"bench-chain-{n}",
            defaults={
                "kind": Template.TEST,
                "workflow": chain(n),
                "mapping": {"seed": [["2", "seed"]], "filename_prefix": [["99", "filename_prefix"]]},
                "needs": {"classes": ["EmptyImage", "ImageAddNoise", "ImageInvert", "SaveImage"], "files": {}},
            },
        )[0]
        for n in LENGTHS
    }
    rng = random.Random(4)
    lengths = [rng.choice(LENGTHS) for _ in range(MIX_JOBS)]
    total = sum(lengths) * BASE  # seconds of work on a 1x node
    bound = max(total / sum(SPEEDS), max(lengths) * BASE / max(SPEEDS))
    knobs = [{"seconds_per_node": BASE / s} for s in SPEEDS]

    with pool(knobs, logs) as caps:
        sims = {cap.node_id: sim for cap, sim in caps}
        # Warm-up: two jobs of every length pinned to every node, so each has measured speeds.
        specs = [(templates[n], float(n)) for n in LENGTHS for _ in range(2)]
        warm: list[int] = []
        for cap, _ in caps:
            warm += queue(f"bench:warm:{cap.pk}", specs, pin_id=cap.node_id)
        with worker_cluster(logs, WORKERS, first_free=True):
            wait_done(warm, 60)
        RenderJob.objects.filter(pk__in=warm).delete()
        learned = []
        for (cap, _), speed in zip(caps, SPEEDS, strict=True):
            rates = Speed.objects.filter(capability=cap, template__in=templates.values())
            per_unit = statistics.mean(rates.values_list("seconds_per_unit", flat=True) or [float("nan")])
            learned.append(f"{speed:g}x: {per_unit * 1000:.0f} ms/unit ({rates.count()} templates)")
        print(
            f"makespan, {MIX_JOBS} jobs of {len(LENGTHS)} lengths ({', '.join(f'{n * BASE:g}' for n in LENGTHS)} s "
            f"on a 1x node), 4 nodes of speeds {', '.join(f'{s:g}x' for s in SPEEDS)}: {total:.1f} s of 1x work, "
            f"lower bound {bound:.2f} s"
        )
        print(f"  speeds learned in the warm-up (nominal {BASE * 1000:.0f} ms/unit at 1x): {'; '.join(learned)}")
        for label, patch in (("speed-aware (ours)", False), ("first-free (worth_it always True)", True)):
            ids = queue(f"bench:mix:{label}", [(templates[n], float(n)) for n in lengths])
            with worker_cluster(logs, WORKERS, first_free=patch):
                jobs = wait_done(ids, 120)
            ran_once([sim for _, sim in caps], jobs)
            histories = {node: sim.history() for node, sim in sims.items()}
            spans = {j.pk: node_clock(histories[j.node_id], j.prompt_id) for j in jobs if j.node_id}
            first = min(s for s, _ in spans.values())
            last_node = max(e for _, e in spans.values())
            last_row = max(j.finished.timestamp() for j in jobs if j.finished)
            took = last_row - first
            per_node = []
            for (cap, _), speed in zip(caps, SPEEDS, strict=True):
                mine = [j for j in jobs if j.node_id == cap.node_id]
                ends = [spans[j.pk][1] for j in mine]
                busy = sum(spans[j.pk][1] - spans[j.pk][0] for j in mine)
                nominal = sum(j.work for j in mine) * BASE / speed
                end = (max(ends) - first) if ends else 0.0
                idle = end - busy
                per_node.append(
                    f"{speed:g}x: {len(mine)} jobs, busy {busy:.1f} s (nominal {nominal:.1f} s), "
                    f"idle {idle:.2f} s, done at {end:.1f} s"
                )
            print(
                f"  {label}: {took:.2f} s = {took / bound:.3f} x lower bound "
                f"(first node start -> last job completed; node clocks alone {last_node - first:.2f} s)"
            )
            print(f"    {'; '.join(per_node)}")
            if not patch:  # first-free is the comparison, not a target
                print(f"  {verdict(took <= 1.05 * bound)}: {label} <= 1.05 x lower bound")
            RenderJob.objects.filter(pk__in=ids).delete()


# --- 3. overhead -----------------------------------------------------------------------------


def overhead(media: Path, logs: Path) -> None:
    from renders.models import Template

    still = Template.objects.get(name="test-still-image")
    with pool([{"seconds_per_node": 0}], logs) as [(_, sim)], worker_cluster(logs, WORKERS):
        started = time.monotonic()
        ids = queue("bench:overhead", [(still, 1.0)] * OVERHEAD_JOBS)
        jobs = wait_done(ids, 60)
        took = time.monotonic() - started
        ran_once([sim], jobs)
    missing = [j for j in jobs if not j.outputs or not (media / j.outputs[0]["thumbnail"]).is_file()]
    if missing:
        raise BenchError(f"{len(missing)} completed jobs have no output or thumbnail on disk")
    done = sorted(j.finished for j in jobs if j.finished)
    steady = (len(done) - 1) / max((done[-1] - done[0]).total_seconds(), 1e-9)
    rate = OVERHEAD_JOBS / took
    print(
        f"overhead, 1 node, instant renders, {OVERHEAD_JOBS} jobs queued -> completed with output and thumbnail: "
        f"{took:.2f} s, {rate:.1f} jobs/s (steady state, first -> last completion: {steady:.1f} jobs/s)"
    )
    print(f"{verdict(rate >= 20)}: >= 20 jobs/s")


# --- 4. page ---------------------------------------------------------------------------------


def page() -> None:
    from django.utils import timezone

    from nodes.models import Node
    from renders.models import RenderJob, Template

    still = Template.objects.get(name="test-still-image")
    gpu = Node.objects.create(name="page gpu", host=f"{NET}.200")
    now = timezone.now()
    jobs = []
    for i in range(PAGE_JOBS):
        status = RenderJob.QUEUED if i % 50 == 0 else RenderJob.FAILED if i % 50 == 1 else RenderJob.COMPLETED
        job = RenderJob(template=still, prompt=f"page job {i}", position=i, status=status, target="bench:page")
        if status != RenderJob.QUEUED:
            job.node, job.attempts = gpu, 1
            job.started = now - timedelta(seconds=PAGE_JOBS - i + 5)
            job.finished = job.started + timedelta(seconds=2)
            job.seconds = 2.0
        if status == RenderJob.FAILED:
            job.error = "torch.OutOfMemoryError at node 3 (KSampler): Allocation on device"
        if status == RenderJob.COMPLETED:
            base = f"renders/{str(job.code)[:2]}/{job.code}"
            job.progress = 1
            job.outputs = [
                {
                    "path": f"{base}/00.png",
                    "kind": "image",
                    "mime": "image/png",
                    "size": 412345,
                    "width": 1024,
                    "height": 1024,
                    "frames": 1,
                    "duration": None,
                    "thumbnail": f"{base}/00.png.thumb.jpg",
                }
            ]
        jobs.append(job)
    RenderJob.objects.bulk_create(jobs, batch_size=500)
    median, worst, counts = time_page("/renders/")
    print(
        f"Render queue page with {PAGE_JOBS} jobs ({RenderJob.objects.count()} rows): median {median:.1f} ms, "
        f"max {worst:.1f} ms server time, queries per render {counts}"
    )
    print(f"{verdict(median <= 150 and len(counts) == 1)}: <= 150 ms with a constant number of queries")


if __name__ == "__main__":
    main(run)
