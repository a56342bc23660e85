"""Batches on the pool (issue 12, "How fast"): the real worker cluster (`qcluster`,
bench/cluster.py) on the embedded default (SQLite, the ORM broker) against simulated ComfyUIs,
each in a child process of its own on 127.0.48.x. Node-side times are the nodes' own clocks (their
/history: execution_start, execution_success or execution_interrupted, ms resolution); every part
prints executions per item from the nodes' own history, PASS only if every item ran exactly once.

1. pause: 4 nodes of 1x (each its limit of 1 and one more waiting in its ComfyUI queue), a batch
   of 60 items of 0.6 s at priority 5. Three rounds, each once a few more items have completed:
   8 other jobs queued at priority 0 (they wait behind the batch), pause (the second round
   "pause now", interrupting the running items), wait until it is paused and the other jobs
   have rendered, then resume. Per round: click -> the pause committed -> the batch paused (its
   items waiting in nodes' queues taken back); the batch's items that started on any node after
   the commit (0: an item waiting in a node's queue is taken off it before the node can start
   it), and the commit -> the first other job started on a node (<= 1 s).
2. makespan: 4 nodes of speeds 2x, 1x, 1x, 0.5x, their speeds learned by a pinned warm-up; one
   batch of 200 seed variations of a 0.4 s (at 1x) workflow: first node start -> last item
   completed, against the lower bound max(work / total speed, one item on the fastest node)
   (<= 1.05 x). A batch is fed a window at a time, so this is the cost of the window.

    .venv/bin/python bench/batch_runs.py
    BENCH_ONLY=pause .venv/bin/python bench/batch_runs.py
"""

from __future__ import annotations

import json
import os
import sys
import time
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
    temp_dir,
    time_limit,
    verdict,
    wait_done,
    wait_until,
    worker_cluster,
)
from bench.render_queue import BASE, SPEEDS, WORKERS, chain, node_clock, pool, queue  # noqa: E402

if TYPE_CHECKING:
    from renders.models import Batch, Template

NET = "127.0.48"
PAUSE_ITEMS = 60
PAUSE_OTHERS = 8  # other jobs queued behind the batch before each pause
PAUSE_LENGTH = 12  # workflow nodes: 0.6 s on a 1x node
PAUSE_AFTER = (6, 24, 42)  # items completed before each round's pause
MAKESPAN_ITEMS = 200
MAKESPAN_LENGTH = 8  # workflow nodes: 0.4 s on a 1x node


def run() -> None:
    with time_limit(600), temp_dir("sf-bench-batch-runs-") as data:
        django_on_sqlite(data)
        logs = data / "logs"
        logs.mkdir()
        print(f"Batches on the pool (SQLite; {machine()}; each simulated node in a process of its own)")
        only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
        for name, part in (("pause", pause), ("makespan", makespan)):
            if not only or name in only:
                part(logs)


def chain_template(length: int) -> Template:
    from renders.models import Template

    return Template.objects.update_or_create(
        name=f"bench-chain-{length}",
        defaults={
            "kind": Template.TEST,
            "workflow": chain(length),
            "mapping": {"seed": [["2", "seed"]], "filename_prefix": [["99", "filename_prefix"]]},
            "needs": {"classes": ["EmptyImage", "ImageAddNoise", "ImageInvert", "SaveImage"], "files": {}},
        },
    )[0]


def seed_batch(name: str, template: Template, count: int, priority: int = 0) -> Batch:
    from renders import batches
    from renders.models import Batch

    items = batches.seed_variations(name, {}, template, count=count, sequential=True, start=1)
    return Batch.make(name=name, kind=Batch.SEEDS, template=template, items=items, priority=priority)


def runs(histories: list[dict[str, Any]], codes: set[str]) -> list[tuple[str, float, float, str]]:
    """Every run the nodes made of these jobs: (code, start, end, how it ended), in seconds by
    the node's clock. A run's job is the code in the filename prefix of the workflow it ran."""
    found = []
    for history in histories:
        for entry in history.values():
            text = json.dumps(entry["prompt"][2])
            code = next((c for c in codes if c in text), None)
            stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
            if code is None or stamps.get("execution_start") is None:
                continue
            end = [(kind, t) for kind, t in stamps.items() if kind != "execution_start" and t]
            how, stop = end[-1] if end else ("?", stamps["execution_start"])
            found.append((code, stamps["execution_start"] / 1000, stop / 1000, how.removeprefix("execution_")))
    return sorted(found, key=lambda r: r[1])


def ran_once(sims: list[Sim], codes: list[str]) -> bool:
    ran = executions([sim.history() for sim in sims], codes)
    print(f"  {executions_line(ran)}")
    return all(n == 1 for n in ran.values())


# --- 1. pause --------------------------------------------------------------------------------


def pause(logs: Path) -> None:
    from renders.models import Batch

    template = chain_template(PAUSE_LENGTH)
    print(
        f"pause: 4 nodes of 1x (limit 1, one more waiting in each ComfyUI queue), a batch of {PAUSE_ITEMS} items "
        f"of {PAUSE_LENGTH * BASE:g} s at priority 5; before each pause, {PAUSE_OTHERS} other jobs of the same "
        "length at priority 0"
    )
    ok = True
    with pool([{"seconds_per_node": BASE}] * 4, logs, net=NET) as caps:
        sims = [sim for _, sim in caps]
        batch = seed_batch("bench pause", template, PAUSE_ITEMS, priority=5)
        codes = {str(c) for c in batch.items.values_list("code", flat=True)}
        others: set[str] = set()
        with worker_cluster(logs, WORKERS):
            for round_, after in enumerate(PAUSE_AFTER):
                ok = pause_round(batch, sims, template, round_, after, codes, others) and ok
            items = wait_done(list(batch.items.values_list("pk", flat=True)), 180)
            last = max(j.finished for j in items if j.finished)
            wait_until(lambda: Batch.objects.filter(pk=batch.pk, status=Batch.COMPLETED).exists(), 30, "the batch")
            batch.refresh_from_db()
            ended = (batch.finished - last).total_seconds() * 1000 if batch.finished else float("nan")
        ok = ran_once(sims, sorted(codes | others)) and ok
        print(f"  the batch ended {batch.status} with {len(items)} items completed, {ended:.0f} ms after its last")
    print(
        f"{verdict(ok)}: nothing of the batch starts after the pause, the first other job starts <= 1 s after it, "
        "every job ran once"
    )


def committing(batch: Batch) -> list[float]:
    """When the transaction that next changes the batch's status commits (time.time()), noted by
    a hook on that transaction, once it has."""
    from django.db import transaction

    when: list[float] = []
    change = batch.set_status

    def noted(*args: Any, **kwargs: Any) -> bool:
        transaction.on_commit(lambda: when.append(time.time()))
        batch.set_status = change  # type: ignore[method-assign]
        return change(*args, **kwargs)

    batch.set_status = noted  # type: ignore[method-assign]
    return when


def pause_round(
    batch: Batch, sims: list[Sim], template: Template, round_: int, after: int, codes: set[str], others: set[str]
) -> bool:
    """Once `after` items have completed: other work queued behind the batch, the batch paused
    (interrupting its running items in the second round) until that work has rendered, then
    resumed; whether nothing of it started after the pause and other work started within 1 s.
    The other jobs' codes are added to `others`."""
    from renders.models import Batch, RenderJob

    def completed() -> bool:
        return batch.items.filter(status=RenderJob.COMPLETED).count() >= after

    wait_until(completed, 120, f"{after} items of the batch to complete", interval=0.01)
    # Other work queued behind the batch (a lower priority): it waits until the pause.
    waiting = queue(f"bench:others:{round_}", [(template, 1.0)] * PAUSE_OTHERS, priority=0)
    mine = {str(c) for c in RenderJob.objects.filter(pk__in=waiting).values_list("code", flat=True)}
    others |= mine
    batch.refresh_from_db()
    interrupt = round_ == 1
    on_node = batch.items.filter(status__in=RenderJob.ON_NODE).count()
    click, committed = time.time(), committing(batch)
    refused = batch.pause(interrupt=interrupt)
    if refused:
        raise BenchError(f"the pause was refused: {refused}")
    commit = committed[0]

    def paused() -> bool:
        return Batch.objects.filter(pk=batch.pk, status=Batch.PAUSED).exists()

    wait_until(paused, 30, "the batch to be paused", interval=0.01)
    paused_at = Batch.objects.get(pk=batch.pk).changed_at.timestamp()
    # Paused until the other work has rendered, so anything of the batch that slipped through shows.
    wait_done(waiting, 60)
    done = runs([s.history() for s in sims], codes | mine)
    items = [r for r in done if r[0] in codes]
    after_click = [r for r in items if r[1] >= click]
    after_commit = [r for r in items if r[1] >= commit]
    after_paused = [r for r in items if r[1] >= paused_at]
    first_other = min(start for code, start, _, _ in done if code in mine and start >= commit)
    interrupted = sum(1 for r in items if r[3] == "interrupted" and r[2] >= click)
    print(
        f"  round {round_ + 1} ({'pause now' if interrupt else 'pause'}, {after} done, {on_node} on nodes): "
        f"click -> committed {(commit - click) * 1000:.0f} ms -> paused {(paused_at - commit) * 1000:.0f} ms; "
        f"items started after the commit {len(after_commit)}, after paused {len(after_paused)} "
        f"(between the click and the commit {len(after_click) - len(after_commit)}); interrupted {interrupted}; "
        f"commit -> first other job started {(first_other - commit) * 1000:.0f} ms"
    )
    for code, start, _, how in after_commit:  # what slipped through, against the commit
        job = RenderJob.objects.get(code=code)
        at = {k: round((t.timestamp() - commit) * 1000) for k, t in (("claimed", job.claimed), ("sent", job.sent)) if t}
        print(f"    started after the commit: {(start - commit) * 1000:.0f} ms after it ({how}); {at} ms")
    if batch.resume():
        raise BenchError("the resume was refused")
    return not after_commit and not after_paused and first_other - commit <= 1.0


# --- 2. makespan -----------------------------------------------------------------------------


def makespan(logs: Path) -> None:
    from renders.models import RenderJob, work_of

    template = chain_template(MAKESPAN_LENGTH)
    one = MAKESPAN_LENGTH * BASE  # seconds of one item on a 1x node
    bound = max(MAKESPAN_ITEMS * one / sum(SPEEDS), one / max(SPEEDS))
    print(
        f"makespan: one batch of {MAKESPAN_ITEMS} items of {one:g} s (at 1x) on 4 nodes of speeds "
        f"{', '.join(f'{s:g}x' for s in SPEEDS)}: lower bound {bound:.2f} s"
    )
    with pool([{"seconds_per_node": BASE / s} for s in SPEEDS], logs, net=NET) as caps:
        sims = {cap.node_id: sim for cap, sim in caps}
        warm: list[int] = []
        for cap, _ in caps:  # each node's speed for the template, learned as real work teaches it
            warm += queue(f"bench:warm:{cap.pk}", [(template, work_of({}))] * 3, pin_id=cap.node_id)
        with worker_cluster(logs, WORKERS):
            wait_done(warm, 60)
            RenderJob.objects.filter(pk__in=warm).delete()
            batch = seed_batch("bench makespan", template, MAKESPAN_ITEMS)
            items = wait_done(list(batch.items.values_list("pk", flat=True)), 240)
        ok = ran_once(list(sims.values()), [str(j.code) for j in items])
        histories = {node: sim.history() for node, sim in sims.items()}
        spans = {j.pk: node_clock(histories[j.node_id], j.prompt_id) for j in items}
        first = min(s for s, _ in spans.values())
        took = max(j.finished.timestamp() for j in items if j.finished) - first
        per_node = []
        for (cap, _), speed in zip(caps, SPEEDS, strict=True):
            mine = [j for j in items if j.node_id == cap.node_id]
            busy = sum(spans[j.pk][1] - spans[j.pk][0] for j in mine)
            end = max((spans[j.pk][1] for j in mine), default=first) - first
            per_node.append(f"{speed:g}x: {len(mine)} items, busy {busy:.1f} s, idle {end - busy:.2f} s")
        print(f"  {took:.2f} s = {took / bound:.3f} x lower bound (first node start -> last item completed)")
        print(f"    {'; '.join(per_node)}")
    print(f"{verdict(ok and took <= 1.05 * bound)}: a batch's makespan <= 1.05 x lower bound, every item once")


if __name__ == "__main__":
    main(run)
