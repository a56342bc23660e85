"""Batches on the pool (issue 12, points 2, 3 and 7): a batch feeds a few items at a time into the
queue, so other work interleaves; pause, resume, cancel, retry, priority and delete act on it
alone; every completed item ran exactly once, counted on the simulated nodes' own files, with
short jobs, prefetch, pauses, reorders and cancels at once."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections, transaction

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders import batches, dispatch
from renders.management.commands.load_templates import load
from renders.models import Batch, Queue, RenderJob, Template
from spoonfeeder.models import Event
from tests.conftest import Cluster, Process, Stack, executions, wait_until
from tests.test_dispatch import stack_tree

NET = 35 if os.environ.get("DATABASE_URL") else 34
SEEDED = "test-video-prompt"  # a model-free template that takes a prompt and a seed


def start_pool(n: int, seconds: float = 0.05) -> list[SimComfyUI]:
    sims = []
    for i in range(n):
        sim = SimComfyUI(f"127.0.{NET}.{i + 1}", 0, seconds_per_node=seconds).start()
        gpu = Node.objects.create(name=f"gpu{i + 1}", host=f"127.0.{NET}.{i + 1}")
        Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
        sims.append(sim)
    load()
    return sims


@pytest.fixture
def pool(transactional_db: None, fast: None) -> Iterator[list[SimComfyUI]]:
    sims = start_pool(2)
    yield sims
    for sim in sims:
        sim.close()


def make(count: int = 6, *, template: str = SEEDED, priority: int = 0, name: str = "") -> Batch:
    t = Template.objects.get(name=template)
    items = batches.seed_variations("a lighthouse at dusk", {}, t, count=count, sequential=True, start=100)
    return Batch.make(name=name, kind=Batch.SEEDS, template=t, items=items, prompt="a lighthouse", priority=priority)


def runs(sims: list[SimComfyUI], job: RenderJob) -> int:
    return sum(executions(sim, job) for sim in sims)


def starts(sims: list[SimComfyUI]) -> dict[str, float]:
    """prompt_id -> when the node started it (its own history's clock, in seconds)."""
    started = {}
    for sim in sims:
        for prompt_id, entry in list(sim.state.history.items()):
            for kind, data in entry["status"]["messages"]:
                if kind == "execution_start":
                    started[prompt_id] = data["timestamp"] / 1000
    return started


def batch_status(batch: Batch) -> str:
    batch.refresh_from_db()
    return batch.status


def wait_batch(batch: Batch, wanted: str, timeout: float = 60) -> None:
    def describe() -> str:
        rows = RenderJob.objects.filter(batch=batch).values_list("status", "error")
        return f"batch is {batch_status(batch)}; items: {sorted(set(rows))[:6]}"

    wait_until(lambda: batch_status(batch) == wanted, timeout, f"batch {batch.name} to be {wanted}", describe=describe)


def other_work_runs_and_nothing_of_the_batch_starts(sims: list[SimComfyUI], batch: Batch, paused_at: float) -> None:
    """Three jobs queued while the batch is paused render, each once, and no item of the batch
    started on a node after `paused_at` (the nodes' own clocks)."""
    t = Template.objects.get(name=SEEDED)
    with transaction.atomic():
        others = [
            RenderJob.objects.create(template=t, prompt=f"other {i}", position=RenderJob.last_position() + i)
            for i in range(3)
        ]
        RenderJob.announce_queued()
    for other in others:
        wait_until(lambda o=other: RenderJob.objects.get(pk=o.pk).status == "completed", 60, "other work")
        assert runs(sims, other) == 1
    started = starts(sims)
    late = [j.index for j in batch.items.all() if j.prompt_id in started and started[j.prompt_id] > paused_at]
    assert late == [], f"items {late} started after the batch was paused"


def all_ran_once(sims: list[SimComfyUI], batch: Batch) -> None:
    items = list(RenderJob.objects.filter(batch=batch))
    counted = {job.index: runs(sims, job) for job in items if job.status == RenderJob.COMPLETED}
    wrong = {
        job.index: (counted[job.index], job.attempts, job.crashes, job.error)
        for job in items
        if counted.get(job.index, 1) != 1
    }
    assert counted and not wrong, f"items that did not run once (runs, attempts, crashes, error): {wrong}"


def test_a_batch_renders_every_item_once_feeding_a_few_at_a_time(cluster: Cluster, pool: list[SimComfyUI]) -> None:
    window = Batch.window()
    assert window == 8  # twice what two ComfyUIs take: each its limit of 1 plus one waiting in its queue
    batch = make(20)
    assert batch.total == 20 and batch.status == Batch.PENDING
    most = 0
    while batch_status(batch) not in Batch.ENDED:
        out = RenderJob.objects.filter(batch=batch, status__in=(RenderJob.QUEUED, *RenderJob.ON_NODE)).count()
        most = max(most, out)
        time.sleep(0.05)  # the pace of the looks, not a wait for anything
    assert batch.status == Batch.COMPLETED and batch.error == ""
    assert 1 <= most <= window
    items = list(RenderJob.objects.filter(batch=batch).order_by("index"))
    assert [job.status for job in items] == [RenderJob.COMPLETED] * 20
    # Every item rendered with the seed fixed when the batch was made.
    assert [job.used()["seed"] for job in items] == list(range(100, 120))
    all_ran_once(pool, batch)
    counted = Batch.objects.with_counts().get(pk=batch.pk)
    assert (counted.done, counted.failed, counted.cancelled, counted.progress()) == (20, 0, 0, 1.0)
    assert Event.objects.filter(topic=f"batch-{batch.code}", kind="batch.completed").exists()


def test_a_job_queued_behind_a_big_batch_does_not_wait_for_all_of_it(cluster: Cluster, pool: list[SimComfyUI]) -> None:
    for sim in pool:
        sim.knobs.seconds_per_node = 0.1
    batch = make(30)
    wait_until(lambda: RenderJob.objects.filter(batch=batch, status=RenderJob.COMPLETED).count() >= 2, 60, "2 items")
    t = Template.objects.get(name=SEEDED)
    with transaction.atomic():
        other = RenderJob.objects.create(template=t, prompt="other work", position=RenderJob.last_position())
        RenderJob.announce_queued()
    wait_until(lambda: RenderJob.objects.get(pk=other.pk).status == "completed", 60, "the other job")
    done_before = RenderJob.objects.filter(batch=batch, status=RenderJob.COMPLETED).count()
    assert done_before < 30 - 10, f"the other job waited for {done_before} items"
    wait_batch(batch, Batch.COMPLETED, 120)
    all_ran_once(pool, batch)
    assert runs(pool, RenderJob.objects.get(pk=other.pk)) == 1


def test_two_batches_of_one_priority_take_turns_and_a_higher_one_goes_first(
    cluster: Cluster, pool: list[SimComfyUI]
) -> None:
    Queue.set_paused(True)
    first, second = make(20, name="first"), make(20, name="second")  # each more than its window of 8
    urgent = make(4, name="urgent", priority=5)
    wait_until(lambda: urgent.items.filter(status=RenderJob.QUEUED).count() == 4, 30, "the urgent batch in the queue")
    Queue.set_paused(False)
    for batch in (first, second, urgent):
        wait_batch(batch, Batch.COMPLETED, 120)
    # In the order the nodes started them, by their own clocks (ours may note a start late).
    started = starts(pool)
    names = dict(RenderJob.objects.filter(batch__isnull=False).values_list("prompt_id", "batch__name"))
    order = [names[p] for p in sorted(started, key=started.__getitem__) if p in names]
    assert set(order[:4]) == {"urgent"}, order
    # The two of one priority take turns a window at a time: the second starts once the first
    # window is out, long before the first has ended.
    assert order.index("second") <= 4 + Batch.window(), order
    assert len(order) - order[::-1].index("first") > order.index("second") + 8, order
    for batch in (first, second, urgent):
        all_ran_once(pool, batch)


def test_a_paused_batch_starts_nothing_on_any_node_while_other_work_goes_on(
    cluster: Cluster, pool: list[SimComfyUI]
) -> None:
    """Short jobs with the next one waiting in each node's queue: at the pause, the items waiting
    there are taken back; after it is committed (the batch says paused), nothing of it starts on
    any node, and other work runs."""
    for sim in pool:
        sim.knobs.seconds_per_node = 0.15
    batch = make(24)
    wait_until(
        lambda: RenderJob.objects.filter(batch=batch, status=RenderJob.ASSIGNED).exclude(sent=None).exists(),
        30,
        "an item waiting in a node's queue",
    )
    assert batch.pause() == ""
    wait_batch(batch, Batch.PAUSED, 30)
    other_work_runs_and_nothing_of_the_batch_starts(pool, batch, time.time())
    # Those taken off a node's queue go back once the node has shown they never ran there.
    wait_until(
        lambda: not RenderJob.objects.filter(batch=batch, status__in=(RenderJob.QUEUED, *RenderJob.ON_NODE)).exists(),
        30,
        "the items taken back to be held",
    )
    held = RenderJob.objects.filter(batch=batch, status=RenderJob.HELD).count()
    assert held > 0
    assert batch.resume() == ""
    wait_batch(batch, Batch.COMPLETED, 120)
    all_ran_once(pool, batch)
    assert all(job.attempts == 1 for job in RenderJob.objects.filter(batch=batch))


def test_pause_with_interrupt_sends_the_running_item_back_and_it_renders_once_on_resume(
    cluster: Cluster, pool: list[SimComfyUI]
) -> None:
    for sim in pool:
        sim.knobs.seconds_per_node = 1.0
    batch = make(4)
    wait_until(lambda: RenderJob.objects.filter(batch=batch, status=RenderJob.RENDERING).exists(), 30, "a running item")
    assert batch.pause(interrupt=True) == ""
    wait_batch(batch, Batch.PAUSED, 30)
    wait_until(
        lambda: not RenderJob.objects.filter(batch=batch, status__in=(RenderJob.QUEUED, *RenderJob.ON_NODE)).exists(),
        30,
        "the running items to be interrupted and held",
        describe=lambda: list(batch.items.values_list("status", "error")),
    )
    assert RenderJob.objects.filter(batch=batch, status=RenderJob.HELD).count() == 4
    assert RenderJob.objects.filter(batch=batch, error__startswith="interrupted when its batch was paused").exists()
    for sim in pool:
        sim.knobs.seconds_per_node = 0.05
    assert batch.resume() == ""
    wait_batch(batch, Batch.COMPLETED, 60)
    all_ran_once(pool, batch)
    assert all(job.attempts == 1 and job.error == "" or "interrupted" in job.error for job in batch.items.all())


def test_cancelling_a_batch_takes_its_items_off_the_nodes_and_keeps_what_finished(
    cluster: Cluster, pool: list[SimComfyUI]
) -> None:
    for sim in pool:
        sim.knobs.seconds_per_node = 0.3
    batch = make(12)
    wait_until(lambda: RenderJob.objects.filter(batch=batch, status=RenderJob.COMPLETED).exists(), 30, "an item done")
    assert batch.cancel() == ""
    wait_until(
        lambda: not RenderJob.objects.filter(batch=batch, status__in=(*RenderJob.WAITING, *RenderJob.ON_NODE)).exists(),
        30,
        "every item to end",
    )
    batch.refresh_from_db()
    counted = Batch.objects.with_counts().get(pk=batch.pk)
    assert batch.status == Batch.CANCELLED and counted.done >= 1 and counted.done + counted.cancelled == 12
    done = set(RenderJob.objects.filter(batch=batch, status=RenderJob.COMPLETED).values_list("prompt_id", flat=True))
    # Nothing cancelled ran to the end on a node; what completed ran once.
    for job in RenderJob.objects.filter(batch=batch, status=RenderJob.CANCELLED):
        assert runs(pool, job) == 0 or job.prompt_id not in done
    all_ran_once(pool, batch)
    assert "there is nothing to cancel" in batch.cancel()
    assert "was cancelled" in batch.resume()


def test_failed_items_never_stop_the_batch_and_retry_failed_renders_only_them(
    cluster: Cluster, pool: list[SimComfyUI]
) -> None:
    for sim in pool:
        sim.knobs.fail = "oom"
    batch = make(4)
    RenderJob.objects.filter(batch=batch).update(max_attempts=1)
    wait_batch(batch, Batch.FAILED, 60)
    assert batch.error == "4 of its 4 items failed: retry them, or look at each"
    for sim in pool:
        sim.knobs.fail = None
    assert batch.retry() == 4
    assert batch_status(batch) in (Batch.PENDING, Batch.RUNNING)
    wait_batch(batch, Batch.COMPLETED, 60)
    all_ran_once(pool, batch)
    assert batch.retry() == 0


def test_bad_controls_say_what_to_do_and_change_nothing(cluster: Cluster, pool: list[SimComfyUI]) -> None:
    batch = make(2)
    wait_batch(batch, Batch.COMPLETED, 60)
    before = list(Batch.objects.values_list("status", "changed_at"))
    assert batch.pause() == f"{batch.name} is completed: there is nothing to pause."
    assert batch.resume() == f"{batch.name} is completed, not paused: there is nothing to resume."
    assert list(Batch.objects.values_list("status", "changed_at")) == before


def test_deleting_a_batch_keeps_or_removes_its_outputs_as_chosen(
    cluster: Cluster, pool: list[SimComfyUI], settings: Any
) -> None:
    kept, removed = make(2, name="kept"), make(2, name="removed")
    wait_batch(kept, Batch.COMPLETED, 60)
    wait_batch(removed, Batch.COMPLETED, 60)
    files = [Path(settings.MEDIA_ROOT) / job.outputs[0]["path"] for job in removed.items.all()]
    assert all(f.exists() for f in files)
    assert kept.delete_with(outputs=False) == ""
    assert removed.delete_with(outputs=True) == ""
    assert not Batch.objects.exists()
    assert RenderJob.objects.filter(status=RenderJob.COMPLETED, batch=None).count() == 2  # kept's, on their own
    assert not any(f.exists() for f in files)


def test_a_batch_with_items_on_a_node_is_not_deleted(cluster: Cluster, pool: list[SimComfyUI]) -> None:
    for sim in pool:
        sim.knobs.seconds_per_node = 1.0
    batch = make(3)
    wait_until(lambda: RenderJob.objects.filter(batch=batch, status=RenderJob.RENDERING).exists(), 30, "a running item")
    assert "cancel the batch first" in batch.delete_with(outputs=True)
    assert Batch.objects.filter(pk=batch.pk).exists() and batch.items.count() == 3
    batch.cancel()


def test_storms_of_pauses_resumes_reorders_and_cancels_over_short_prefetched_items_render_each_once(
    cluster: Cluster, pool: list[SimComfyUI]
) -> None:
    """Faults come combined: short items with the next waiting in each node's queue, two
    batches paused and resumed, the queue paused and resumed, items moved and one cancelled,
    while other jobs come and go. Every completed item ran exactly once."""
    for sim in pool:
        sim.knobs.seconds_per_node = 0.01
        sim.knobs.history_lag = 0.2
    one, two = make(20, name="one"), make(20, name="two")
    rng = random.Random(12)
    t = Template.objects.get(name=SEEDED)
    loose = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and Batch.objects.exclude(status__in=Batch.ENDED).exists():
        action = rng.choice(("pause", "pause-interrupt", "resume", "resume", "queue", "move", "job", "cancel-one"))
        batch = rng.choice((one, two))
        batch.refresh_from_db()
        if action == "pause":
            batch.pause()
        elif action == "pause-interrupt":
            batch.pause(interrupt=True)
        elif action == "resume":
            batch.resume()
        elif action == "queue":
            Queue.set_paused(rng.random() < 0.3)
        elif action == "move":
            queued = list(RenderJob.objects.filter(status=RenderJob.QUEUED).values_list("pk", flat=True))
            if queued:
                RenderJob.objects.get(pk=rng.choice(queued)).move(rng.choice(("top", "bottom")))
        elif action == "job" and len(loose) < 6:
            with transaction.atomic():
                loose.append(RenderJob.objects.create(template=t, prompt="loose", position=RenderJob.last_position()))
                RenderJob.announce_queued()
        elif action == "cancel-one":
            waiting = batch.items.filter(status__in=RenderJob.WAITING).order_by("?").first()
            if waiting is not None:
                waiting.cancel()
        time.sleep(rng.uniform(0.01, 0.15))  # the storm's pace, not a wait for anything
    Queue.set_paused(False)
    for batch in (one, two):
        batch.refresh_from_db()
        batch.resume()
    for batch in (one, two):
        wait_until(lambda b=batch: batch_status(b) in Batch.ENDED, 120, f"batch {batch.name} to end")
    for job in loose:
        wait_until(lambda j=job: RenderJob.objects.get(pk=j.pk).status == "completed", 60, "the loose jobs")
        assert runs(pool, job) == 1
    for batch in (one, two):
        all_ran_once(pool, batch)
        cancelled = list(batch.items.filter(status=RenderJob.CANCELLED))
        assert all(runs(pool, job) <= 1 for job in cancelled)
    assert not RenderJob.objects.filter(status=RenderJob.FAILED).exists()


def kill_tree(proc: Process) -> None:
    """Every process of it at once, as a power cut or the OOM killer would."""
    assert proc.popen
    for pid in stack_tree(proc.popen.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def test_a_batch_survives_a_killed_cluster_and_a_stack_killed_while_pausing_and_renders_each_item_once(
    transactional_db: None, stack: Stack
) -> None:
    """Two clusters render a batch; one is killed with its items on the nodes; the batch is paused
    and the whole stack killed at once while it pauses; started again, it settles paused, other
    work runs and nothing of the batch starts; resumed, every item completes, each ran once."""
    sims = start_pool(2, seconds=0.2)
    try:
        # The cluster to be killed starts first, alone, so that it surely follows items on the
        # nodes (a worker following a node goes on to its next job: a cluster that starts later
        # may never get one); the whole stack joins it.
        second = stack.worker()
        batch = make(40)

        def completed() -> int:
            return batch.items.filter(status=RenderJob.COMPLETED).count()

        def held_by_the_second() -> bool:
            theirs = {str(pid) for pid in stack_tree(second.popen.pid)} if second.popen else set()
            workers = batch.items.exclude(worker="").values_list("worker", flat=True)
            return any(w.split(":")[1] in theirs for w in workers)

        wait_until(held_by_the_second, 60, "an item followed by the second cluster")
        run = stack.run()
        stack.wait_for_http(run)
        wait_until(lambda: completed() >= 10, 60, "10 items")
        wait_until(held_by_the_second, 30, "the second cluster to follow an item as it is killed")
        kill_tree(second)
        wait_until(lambda: completed() >= 20, 60, "20 items after the second cluster died")
        batch.refresh_from_db()
        assert batch.pause() == ""
        kill_tree(run)
        run = stack.run()
        stack.wait_for_http(run)
        wait_batch(batch, Batch.PAUSED, 60)
        paused_at = Batch.objects.get(pk=batch.pk).changed_at.timestamp()
        other_work_runs_and_nothing_of_the_batch_starts(sims, batch, paused_at)
        batch.refresh_from_db()
        assert batch.resume() == ""
        wait_batch(batch, Batch.COMPLETED, 120)
        all_ran_once(sims, batch)
        assert completed() == 40
    finally:
        for sim in sims:
            sim.close()


@pytest.mark.django_db(transaction=True)
def test_two_claims_of_one_batch_item_at_once_give_it_to_one() -> None:
    """The guarded claim of a batch item, made by two processes at once (one waiting on the other's
    lock, as two nodes' feeds do on PostgreSQL): the second finds it claimed and changes nothing.
    (An update that joined the batch's row checked the first's change too late, and both claimed
    it under different prompt ids: the item rendered twice.)"""
    load()
    [item] = make(1).items.all()
    RenderJob.objects.filter(pk=item.pk).update(status=RenderJob.QUEUED)
    first_holds, release = threading.Event(), threading.Event()
    results: dict[str, int] = {}

    def claim(name: str, hold: bool) -> None:
        try:
            with transaction.atomic():
                results[name] = (
                    RenderJob.objects.filter(pk=item.pk, status=RenderJob.QUEUED)
                    .filter(dispatch.fed())
                    .update(status=RenderJob.ASSIGNED, prompt_id=name)
                )
                if hold:
                    first_holds.set()
                    release.wait(20)
        finally:
            connections.close_all()

    first = threading.Thread(target=claim, args=("first", True))
    first.start()
    assert first_holds.wait(10)
    second = threading.Thread(target=claim, args=("second", False))
    second.start()
    # The first commits once the second waits for the row it holds (SQLite: for its write lock).
    wait_until(lambda: not POSTGRES or waiting_for_a_lock(), 10, "the second claim to wait")
    release.set()
    first.join(20)
    second.join(20)
    assert results == {"first": 1, "second": 0}
    assert RenderJob.objects.get(pk=item.pk).prompt_id == "first"


POSTGRES = bool(os.environ.get("DATABASE_URL"))


def waiting_for_a_lock() -> bool:
    """Whether another session of this database waits for a row lock (PostgreSQL)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return bool(cursor.fetchone()[0])
