"""The story pipeline's figures (issue 5, "How fast"):

1. overhead per step: stories on one simulated Ollama that answers at once (answer_seconds 0, a
   capacity limit no step waits for), run by the engine's tasks: 10 stories one after another
   (each with its own branches and prompt parts side by side), then 10 at once. For every
   language-model step run (each prompt part counted on its own) that needs another step:

       overhead = (run finished - its inputs ready) - (the node's answer ready - the request arrived)

   where "inputs ready" is the latest `finished` of the runs of the steps it needs, and the node's
   two times come from the node's own clock of that answer. So it is everything between "this
   step could start" and "this step's objects are written" that is not the node working:
   advancing the story, queueing the feed and step tasks, claiming the run and a lease, building the prompt,
   the HTTP round trip, checking the answer and writing it. Median (<= 50 ms) and p95, with the
   phases; a story's first step (created -> started) apart, as it waits for no other step. With 10
   stories at once every step also queues behind the others' for this process's one GIL, so that
   figure is shown, for information, with the CPU time the process spent per step;
2. parallelism: 20 stories on 4 simulated Ollamas that answer one request at a time in 0.2 s;
   first step started -> last language-model step finished, against the ideal
   max(answers x 0.2 s / 4, the longest chain of answers in one story x 0.2 s) (<= 1.15 x); then
   the same 20 stories on 1 node: the speed-up, 1-node time / 4-node time (>= 3.5 x). Answers
   are counted from the rows (the "asked" lines in the runs' logs; one per run when every answer
   fits);
3. page: a story of 300 shots built directly in the database (every step's run completed, 300
   prompt parts, 300 render jobs of which some completed with outputs): median server time of 20
   renders of its page (`stories:detail`) <= 150 ms, with the same number of queries as a
   3-shot story's; its Shots, Renders and Gallery tabs for information.

Auto-render is off, so no ComfyUI is needed: a story is done when its language-model steps are
(its renders step waits for the user). The engine's tasks (stories.tasks.feed and .step, and the
sweeper) run in threads of this process, as the tests' `cluster` fixture runs them (`Tasks`
below): every task queued runs in a thread of its own once the queuing transaction commits, so
the figures are the engine's own, without a broker's latency; on the embedded default (SQLite in a
temporary data folder). Each simulated Ollama runs in a child process of its own on its own
127.0.44.x address, as a real node is another machine, and keeps a clock of its answers
(bench.common.clock_answers). Loopback only.

    python bench/stories.py                    # every part
    BENCH_ONLY=parallelism python bench/stories.py   # just these parts (a comma list: overhead,
                                                      # parallelism, page), for profiling one
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    BenchError,
    Sim,
    django_on_sqlite,
    machine,
    main,
    percentile,
    temp_dir,
    time_limit,
    time_page,
    verdict,
    wait_until,
)
from tests.cluster import Cluster  # noqa: E402

if TYPE_CHECKING:
    from nodes.models import Capability
    from stories.models import StepRun, Story

NET = "127.0.44"
MODEL = "llama3.2:3b"
OVERHEAD_STORIES = 10
PARALLEL_STORIES = 20
NODES = 4
ANSWER_SECONDS = 0.2
PAGE_SHOTS = 300


def run() -> None:
    with time_limit(240), temp_dir("sf-bench-stories-") as data:
        django_on_sqlite(data)
        logs = data / "logs"
        logs.mkdir()
        print(f"Story pipeline benchmarks (SQLite; {machine()}; each simulated node in a process of its own)")
        # BENCH_ONLY=parallelism (a comma list) runs just those parts, for profiling one.
        only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
        for name, part in (("overhead", overhead), ("parallelism", parallelism)):
            if not only or name in only:
                part(logs)
        if not only or "page" in only:
            page()


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def lab(count: int, limit: int, logs: Path, **knobs: Any) -> Iterator[list[tuple[Capability, Sim]]]:
    """`count` simulated Ollamas with MODEL loaded, each a Node with an online capability."""
    from nodes.models import Capability, Node

    sims: list[Sim] = []
    made: list[tuple[Capability, Sim]] = []
    try:
        for i in range(count):
            sim = Sim("ollama", f"{NET}.{i + 1}", {"models": [MODEL], **knobs}, logs)
            sims.append(sim)
            node = Node.objects.create(name=f"sim {i + 1}", host=sim.host, simulated=True)
            cap = Capability.objects.create(
                node=node,
                kind=Capability.OLLAMA,
                port=sim.port,
                status=Capability.ONLINE,
                limit=limit,
                inventory={"models": [{"name": MODEL}], "loaded": [MODEL]},
            )
            made.append((cap, sim))
        yield made
    finally:
        for sim in sims:
            sim.child.stop(grace=10)
        Node.objects.filter(host__startswith=f"{NET}.").delete()


@contextmanager
def piping() -> Iterator[Cluster]:
    """The engine's tasks (placing, running and advancing steps, and the sweeper) in this process
    for the block; a sweeper starts as when a worker starts."""
    from django.db import close_old_connections

    from spoonfeeder import tasks

    cluster = Cluster()
    with mock.patch.object(tasks, "async_task", cluster.async_task):
        tasks.ensure_sweeping()
        try:
            yield cluster
        finally:
            cluster.stop()
            close_old_connections()


def start_stories(count: int, first: int = 0, wake: bool = True) -> list[int]:
    """`count` stories (auto-render off), all created, then all advanced: their first steps pending
    (and, with `wake`, a feed task queued for each, as the web page's start does; without, they
    wait for the sweeper's first pass). Story i has idea i (from `first`): the same ideas get the
    same answers, the same shots."""
    from stories import graph
    from stories.models import Story

    ids = [
        Story.objects.create(
            idea=f"Bench story {i}: a lighthouse keeper finds a door in the sea that opens onto a kitchen.",
            target_seconds=15,
            model=MODEL,
            auto_render=False,
        ).pk
        for i in range(first, first + count)
    ]
    for pk in ids:
        graph.advance(pk, wake=wake)
    return ids


def asks_done(ids: list[int], timeout: float) -> list[StepRun]:
    """Wait until every language-model step of the stories has completed (their renders step,
    held for the user, is then pending); those runs, or BenchError if one failed."""
    from django.db.models import Count, Q

    from stories import graph
    from stories.models import StepRun

    current = StepRun.objects.current().filter(story_id__in=ids)
    ended = Q(status__in=(StepRun.FAILED, StepRun.CANCELLED))

    def done() -> bool:
        # One query, a few times a second: this thread takes the pipeline's GIL while it looks.
        seen = current.aggregate(
            held=Count("pk", filter=Q(step="renders")),
            open=Count("pk", filter=~Q(step="renders") & ~Q(status=StepRun.COMPLETED)),
            bad=Count("pk", filter=ended),
        )
        if seen["bad"]:
            failed = current.filter(ended).first()
            raise BenchError(f"step {failed} ended {failed and failed.status}: {failed and failed.error}")
        return seen["held"] == len(ids) and not seen["open"]

    wait_until(done, timeout, f"the language-model steps of {len(ids)} stories", interval=0.2)
    asks = [s for s, step in graph.STEPS.items() if step.kind == graph.ASK]
    runs = current.filter(step__in=asks).select_related("story")
    # A fanned-out step's own run only gathers its parts: the parts are what ask.
    return [r for r in runs if r.part or not graph.STEPS[r.step].fans_out]


def answers_in(runs: list[StepRun]) -> int:
    return sum(r.log.count(" asked ") for r in runs)


def chain(story: Story) -> int:
    """The longest chain of answers in the story's graph (a fanned-out step's parts run side by side)."""
    from stories import graph

    depth: dict[str, int] = {}
    for step in graph.steps_for(story):  # every step after the ones it needs
        if step.kind == graph.ASK:
            depth[step.name] = 1 + max((depth.get(n, 0) for n in step.needs), default=0)
    return max(depth.values())


def ready_at(run: StepRun, finished: dict[tuple[int, str], datetime]) -> datetime | None:
    """When the run could start: its inputs' latest finish; None for a step that needs none."""
    from stories import graph

    needs = next(s.needs for s in graph.steps_for(run.story) if s.name == run.step)
    return max(finished[(run.story_id, n)] for n in needs) if needs else None


def node_times(runs: list[StepRun], clock: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """(arrived, ready) of each run's answer on the node's clock (Sim.answers()), matched by the
    answer itself: the run's output is the node's text parsed, checked and dumped again (with
    the question it answered beside it)."""
    from stories import graph

    by_answer: dict[str, list[tuple[float, float]]] = {}
    for a in clock:
        try:
            key = json.dumps(json.loads(a["text"]), sort_keys=True)
        except ValueError:
            continue
        by_answer.setdefault(key, []).append((a["arrived"], a["ready"]))
    found = {}
    for r in runs:
        assert r.started and r.finished
        answer = {k: v for k, v in (r.output or {}).items() if k != graph.ASKED}  # the question is ours
        spans = by_answer.get(json.dumps(answer, sort_keys=True), [])
        inside = [s for s in spans if r.started.timestamp() - 0.001 <= s[0] and s[1] <= r.finished.timestamp() + 0.001]
        if len(inside) != 1:
            raise BenchError(f"{len(inside)} answers on the nodes' clocks match run {r} ({len(spans)} with its text)")
        found[r.pk] = inside[0]
    return found


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"median {statistics.median(ordered):.1f} ms, p95 {percentile(ordered, 95):.1f} ms"


# --- 1. overhead per step -----------------------------------------------------------------------


def overhead(logs: Path) -> None:
    with lab(1, 1000, logs, answer_seconds=0) as [(_, sim)], piping():
        asks_done(start_stories(1), 60)  # connections, caches and the node's first answer
        alone: list[int] = []
        for i in range(OVERHEAD_STORIES):
            alone += start_stories(1, first=i)
            asks_done(alone[-1:], 60)
        cpu = time.process_time()
        together = start_stories(OVERHEAD_STORIES)
        runs_together = asks_done(together, 120)
        cpu = time.process_time() - cpu
        runs_alone = asks_done(alone, 1)
        clock = sim.answers()
    print(
        "overhead per step, 1 node answering at once: inputs ready -> run finished, less the node's time "
        "(a story's first step, which waits for no other, apart)"
    )
    figures = phases(runs_alone, clock)
    print(
        f"  {OVERHEAD_STORIES} stories one after another (each story's own branches side by side): "
        f"{len(figures['overhead'])} step runs: {ms(figures['overhead'])}"
    )
    for name, label in (
        ("claim", "inputs ready -> claimed (run started)"),
        ("send", "claimed -> request arrived at the node (prompt built, sent)"),
        ("node", "on the node (arrived -> answer ready)"),
        ("after", "answer ready -> run finished (received, checked, written)"),
    ):
        print(f"    {label}: {ms(figures[name])}")
    print(
        f"    a new story's first step, created -> started: {ms(figures['first'])} (starting a story queues a "
        "feed task once it commits, which claims the step and queues its step task)"
    )
    busy = phases(runs_together, clock)
    per_run = cpu * 1000 / len(runs_together)
    print(
        f"  for information, {OVERHEAD_STORIES} stories at once: {len(busy['overhead'])} step runs: "
        f"{ms(busy['overhead'])} (inputs ready -> claimed {ms(busy['claim'])}); this process's CPU time, all "
        f"threads: {per_run:.1f} ms per step run, so a step that becomes ready with n others queues behind "
        f"about n x {per_run:.0f} ms of their work"
    )
    one = statistics.median(figures["overhead"])
    print(f"{verdict(one <= 50)}: overhead per step <= 50 ms (median)")


def phases(runs: list[StepRun], clock: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per step run, in ms: the overhead and its phases (see the module's docstring); "first" is
    created -> started of the stories' first steps, which are left out of the rest."""
    from stories.models import StepRun

    node = node_times(runs, clock)
    ids = {r.story_id for r in runs}
    finished = {
        (r.story_id, r.step): r.finished
        for r in StepRun.objects.current().filter(story_id__in=ids, part=0, status=StepRun.COMPLETED)
        if r.finished
    }
    out: dict[str, list[float]] = {k: [] for k in ("overhead", "claim", "send", "node", "after", "first")}
    for r in runs:
        assert r.started and r.finished
        ready = ready_at(r, finished)
        if ready is None:
            out["first"].append((r.started - r.created).total_seconds() * 1000)
            continue
        arrived, answered = node[r.pk]
        started, ended = r.started.timestamp(), r.finished.timestamp()
        out["overhead"].append(((ended - ready.timestamp()) - (answered - arrived)) * 1000)
        out["claim"].append((started - ready.timestamp()) * 1000)
        out["send"].append((arrived - started) * 1000)
        out["node"].append((answered - arrived) * 1000)
        out["after"].append((ended - answered) * 1000)
    return out


# --- 2. parallelism -----------------------------------------------------------------------------


def makespan(label: str, nodes: int, logs: Path) -> tuple[float, float, int]:
    """(seconds from the first step started to the last finished, the ideal, answers) for
    PARALLEL_STORIES stories on `nodes` nodes, with the nodes' idle time printed."""
    with lab(nodes, 1, logs, answer_seconds=ANSWER_SECONDS) as caps:
        ids = start_stories(PARALLEL_STORIES, wake=False)  # placed by the sweeper's first pass
        cpu = time.process_time()
        with piping():
            runs = asks_done(ids, 120)
        cpu = time.process_time() - cpu
        clocks = [sorted((a["arrived"], a["ready"]) for a in sim.answers()) for _, sim in caps]
    answers = answers_in(runs)
    first = min(r.started for r in runs if r.started)
    last = max(r.finished for r in runs if r.finished)
    took = (last - first).total_seconds()
    longest = max(chain(r.story) for r in runs)
    ideal = max(answers * ANSWER_SECONDS / nodes, longest * ANSWER_SECONDS)
    gaps = sorted((b[0] - a[1]) * 1000 for c in clocks for a, b in zip(c, c[1:], strict=False))
    start = first.timestamp()
    idle = [f"{(c[0][0] - start) * 1000:.0f}/{(last.timestamp() - c[-1][1]) * 1000:.0f}" for c in clocks if c]
    print(
        f"  {label}: {took:.2f} s for {answers} answers in {len(runs)} step runs; ideal {ideal:.2f} s "
        f"(chain of {longest} answers); {took / ideal:.3f} x ideal"
    )
    print(
        f"    node idle between answers (node's clock, answer ready -> next request arrives): "
        f"{ms(gaps)}, max {gaps[-1]:.0f} ms, in all {sum(gaps) / 1000:.2f} s over {nodes} node(s); "
        f"idle ms before the first / after the last answer per node: {', '.join(idle)}"
    )
    print(f"    this process's CPU time, all threads: {cpu:.2f} s, {cpu * 1000 / len(runs):.1f} ms per step run")
    return took, ideal, answers


def parallelism(logs: Path) -> None:
    print(
        f"parallelism, {PARALLEL_STORIES} stories created at once, nodes answering one request at a time in "
        f"{ANSWER_SECONDS:g} s (first step started -> last language-model step finished):"
    )
    took4, ideal4, answers4 = makespan(f"{NODES} nodes", NODES, logs)
    took1, _, answers1 = makespan("1 node", 1, logs)
    if answers1 != answers4:
        print(f"  note: the two runs asked {answers4} and {answers1} answers")
    print(f"  speed-up, 1 node / {NODES} nodes: {took1 / took4:.2f} x")
    print(f"{verdict(took4 <= 1.15 * ideal4)}: {NODES} nodes <= 1.15 x ideal")
    print(f"{verdict(took1 / took4 >= 3.5)}: speed-up >= 3.5 x")


# --- 3. page ------------------------------------------------------------------------------------


def build_story(shots: int) -> Story:
    """A finished story of `shots` shots, written straight into the database as the pipeline
    would have: every step's run completed, a prompt part per shot, and a render job per shot
    (most completed with an output, some failed, some queued)."""
    from django.utils import timezone

    from nodes.models import Node
    from renders.models import RenderJob, Template
    from stories import graph
    from stories.models import Character, MusicCue, Segment, Shot, StepRun, Story

    template = Template.objects.get(name="test-video-mp4")
    gpu, _ = Node.objects.get_or_create(name="page gpu", host=f"{NET}.200")
    story = Story.objects.create(
        idea="A lighthouse keeper finds a door in the sea that opens onto her childhood kitchen.",
        title=f"The Door in the Sea ({shots} shots)",
        text="She found it at low tide. " * 200,
        target_seconds=shots * 5,
        model=MODEL,
        template=template,
        state=Story.COMPLETED,
        progress=1,
    )
    segments = Segment.objects.bulk_create(
        Segment(story=story, number=n, title=f"Part {n}", summary="The sea gives back what it took. " * 8)
        for n in range(1, 13)
    )
    names = ["Mara", "Tomas", "The Keeper", "Ilse", "The Child", "Old Pell"]
    Character.objects.bulk_create(
        Character(story=story, name=n, role="lead", look="weathered, grey coat", personality="stubborn") for n in names
    )
    Shot.objects.bulk_create(
        Shot(
            story=story,
            number=n,
            segment=segments[(n - 1) * len(segments) // shots],
            description=f"Shot {n}: the door opens a little further; light spills over the water.",
            camera="slow push in",
            characters=names[n % 3 : n % 3 + 2],
            positive=f"cinematic, 35mm, a lighthouse keeper at a door in the sea, shot {n}, golden hour",
            negative="blurry, text, watermark",
        )
        for n in range(1, shots + 1)
    )
    MusicCue.objects.bulk_create(
        MusicCue(story=story, number=n, segment=s, mood="wistful", description="Solo cello, slow.")
        for n, s in enumerate(segments, 1)
    )
    now = timezone.now()
    begun = now - timedelta(minutes=30)
    runs = [
        StepRun(
            story=story,
            step=step.name,
            status=StepRun.RUNNING if step.fans_out else StepRun.COMPLETED,
            attempts=1,
            node=gpu,
            model=MODEL,
            started=begun,
            finished=now,
            log=f"{now:%H:%M:%S} asked {MODEL} on page gpu\n{now:%H:%M:%S} completed\n",
            output={"parts": shots} if step.fans_out else {"answer": "as the model wrote it " * 20},
        )
        for step in graph.steps_for(story)
    ]
    runs += [
        StepRun(
            story=story,
            step="prompts",
            part=n,
            status=StepRun.COMPLETED,
            attempts=1,
            node=gpu,
            model=MODEL,
            created=begun,
            started=begun,
            finished=now,
            output={"positive": f"shot {n} prompt", "negative": "blurry"},
        )
        for n in range(1, shots + 1)
    ]
    StepRun.objects.bulk_create(runs)
    StepRun.objects.filter(story=story, step="prompts", part=0).update(status=StepRun.COMPLETED)
    jobs = []
    for n in range(1, shots + 1):
        status = RenderJob.QUEUED if n % 10 == 0 else RenderJob.FAILED if n % 10 == 1 else RenderJob.COMPLETED
        job = RenderJob.build(
            template,
            {},
            prompt=f"cinematic, shot {n}",
            negative="blurry",
            position=n,
            status=status,
            story=str(story.code),
            target=f"shot:{n}",
        )
        if status != RenderJob.QUEUED:
            job.node, job.attempts = gpu, 1
            job.started = now - timedelta(seconds=shots - n + 30)
            job.finished, job.seconds = job.started + timedelta(seconds=20), 20.0
        if status == RenderJob.FAILED:
            job.error = "torch.OutOfMemoryError at node 3 (KSampler): Allocation on device"
        if status == RenderJob.COMPLETED:
            base = f"renders/{str(job.code)[:2]}/{job.code}"
            job.progress = 1
            job.outputs = [
                {
                    "path": f"{base}/00.mp4",
                    "kind": "video",
                    "mime": "video/mp4",
                    "size": 2_412_345,
                    "width": 832,
                    "height": 480,
                    "frames": 81,
                    "duration": 5.06,
                    "thumbnail": f"{base}/00.mp4.thumb.jpg",
                }
            ]
        jobs.append(job)
    RenderJob.objects.bulk_create(jobs)
    return story


def page() -> None:
    from django.urls import NoReverseMatch, reverse

    from renders.management.commands.load_templates import load

    load()
    big, small = build_story(PAGE_SHOTS), build_story(3)
    try:
        paths = {s.pk: reverse("stories:detail", args=[s.code]) for s in (big, small)}
    except NoReverseMatch as e:
        raise BenchError(f"the story page is not there yet (stories:detail): {e}") from e
    median, worst, counts = time_page(paths[big.pk])
    _, _, few = time_page(paths[small.pk])
    constant = len(counts) == 1 and counts == few
    print(
        f"Story page of a story of {PAGE_SHOTS} shots (and {PAGE_SHOTS} prompt runs and render jobs): median "
        f"{median:.1f} ms, max {worst:.1f} ms server time, queries per render {counts} (a 3-shot story's: {few})"
    )
    for tab in ("shots", "renders", "gallery"):
        try:
            path = reverse("stories:tab", args=[big.code, tab])
        except NoReverseMatch:
            continue
        tab_median, tab_worst, tab_counts = time_page(path)
        _, _, tab_few = time_page(reverse("stories:tab", args=[small.code, tab]))
        print(
            f"  for information, its {tab} tab: median {tab_median:.1f} ms, max {tab_worst:.1f} ms, "
            f"queries {tab_counts} (3 shots: {tab_few})"
        )
    print(f"{verdict(median <= 150 and constant)}: <= 150 ms with a constant number of queries")


if __name__ == "__main__":
    main(run)
