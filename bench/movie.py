"""The movie's render graph (issue 14, "How fast"):

1. plan: in this process, a fresh SQLite database: "Export the movie" planned for a story of 300
   shots (keyframe, image-to-video, upscale, interpolation: 1,200 tasks), median of 5 (<= 1 s);
   then started, and its Movie tab's server time and queries (20 renders) at 30 and at 300 shots
   (<= 150 ms, one query count).
2. graph: the real worker cluster on SQLite against 4 simulated ComfyUIs of speeds 2x, 1x, 1x,
   0.5x (each in a process of its own on 127.0.49.x), their speeds for the four model-free
   templates learned by a pinned warm-up; a movie of 300 shots x 4 tasks: first node start ->
   last task completed against the lower bound max(all the work at 1x / total speed, one shot's
   chain on the fastest node), the work measured by the nodes' own clocks (<= 1.10 x); the share
   of tasks that ran where their input was (loaded from the node's own output folder) and the
   bytes uploaded; the same movie again with locality ignored (SPOONFEEDER_UPLOAD_RATE=0) for
   comparison. Every task's executions, from the nodes' own /history, printed.

    .venv/bin/python bench/movie.py
    BENCH_ONLY=plan .venv/bin/python bench/movie.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    BenchError,
    django_on_sqlite,
    executions,
    executions_line,
    machine,
    main,
    temp_dir,
    time_limit,
    time_page,
    verdict,
    wait_done,
    worker_cluster,
)
from bench.render_queue import SPEEDS, node_clock, pool  # noqa: E402

if TYPE_CHECKING:
    from stories.models import Story

NET = "127.0.49"
SHOTS = 300
BASE = 0.1  # seconds per workflow node on a 1x node
WORKERS = 12
TEMPLATES = {"keyframe": "test-still-image", "video": "test-i2v", "upscale": "test-upscale", "interp": "test-interp"}
RENDER = {"width": 128, "height": 80, "fps": 8}


def run() -> None:
    with time_limit(1500), temp_dir("sf-bench-movie-") as data:
        django_on_sqlite(data)
        from django.core.management import call_command

        call_command("load_templates", verbosity=0)
        logs = data / "logs"
        logs.mkdir()
        print(f"The movie's render graph (SQLite; {machine()})")
        only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
        if not only or "plan" in only:
            plan()
        if not only or "graph" in only:
            graph(logs)


def story(shots: int, title: str) -> Story:
    from stories.models import Segment, Shot, Story

    made = Story.objects.create(idea=title, title=title, model="m", render_settings=RENDER)
    segments = [
        Segment.objects.create(story=made, number=n, title=f"Part {n}", summary="s", narration=f"Part {n} begins.")
        for n in range(1, shots // 5 + 2)
    ]
    Shot.objects.bulk_create(
        Shot(
            story=made,
            segment=segments[(n - 1) // 5],
            number=n,
            description=f"shot {n}",
            duration=1.0,
            positive=f"a lighthouse at dusk, shot {n}",
            negative="blurry",
        )
        for n in range(1, shots + 1)
    )
    return made


def options(made: Story) -> Any:
    from renders.models import Template
    from stories import movie
    from stories.models import Movie

    templates = {stage: Template.objects.get(name=name) for stage, name in TEMPLATES.items()}
    return movie.Options(path=Movie.I2V, upscale=True, interpolate=True, templates=templates)


# --- 1. plan ---------------------------------------------------------------------------------


def plan() -> None:
    from django.urls import reverse

    from stories import movie

    big = story(SHOTS, "bench plan")
    times = []
    for _ in range(5):
        started = time.perf_counter()
        planned = movie.plan(big, options(big))
        times.append(time.perf_counter() - started)
    took = statistics.median(times)
    print(
        f"plan: {SHOTS} shots x {len(planned.parts[0][1])} tasks ({planned.new} new): median {took * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms of 5"
    )
    print(f"{verdict(took <= 1.0)}: planning a {SHOTS}-shot movie <= 1 s")
    small = story(30, "bench plan small")
    figures = {}
    for made in (small, big):
        started = time.perf_counter()
        movie.start(made, options(made))
        start_ms = (time.perf_counter() - started) * 1000
        median, worst, counts = time_page(reverse("stories:tab", args=[made.code, "movie"]))
        shots = made.shots.count()
        figures[shots] = counts
        print(
            f"  Movie tab, {shots} shots: median {median:.1f} ms, max {worst:.1f} ms, queries {counts} "
            f"(started in {start_ms:.0f} ms)"
        )
    constant = len({tuple(c) for c in figures.values()}) == 1
    print(f"{verdict(median <= 150 and constant)}: Movie tab <= 150 ms with {SHOTS} shots, the same queries at 30")


# --- 2. graph --------------------------------------------------------------------------------


def graph(logs: Path) -> None:
    from renders.models import JobInput, RenderJob
    from stories import movie

    knobs = [{"seconds_per_node": BASE / s} for s in SPEEDS]
    print(
        f"graph: {SHOTS} shots x 4 tasks ({', '.join(TEMPLATES.values())}) on 4 nodes of speeds "
        f"{', '.join(f'{s:g}x' for s in SPEEDS)} ({BASE * 1000:g} ms per workflow node at 1x)"
    )
    with pool(knobs, logs, net=NET) as caps:
        sims = {cap.node_id: sim for cap, sim in caps}
        speed_of = {cap.node_id: s for (cap, _), s in zip(caps, SPEEDS, strict=True)}
        warm = story(len(caps) * 2, "bench warm-up")
        made = movie.start(warm, options(warm))
        ids = sorted(movie.movie_jobs(made))
        pins = [cap.node_id for cap, _ in caps]
        for index, part in enumerate(made.parts.order_by("number")):
            RenderJob.objects.filter(pk__in=[pk for _, pk, _ in part.chain]).update(pin=pins[index % len(pins)])
        with worker_cluster(logs, WORKERS):
            wait_done(ids, 120)
        warm.delete()
        RenderJob.objects.filter(pk__in=ids).delete()
        results = {}
        for label, near in (("where its input is (ours)", "50"), ("locality ignored", "0")):
            os.environ["SPOONFEEDER_UPLOAD_RATE"] = near
            made_story = story(SHOTS, f"bench graph {near}")
            made = movie.start(made_story, options(made_story))
            ids = sorted(movie.movie_jobs(made))
            with worker_cluster(logs, WORKERS):
                jobs = wait_done(ids, 900)
            histories = {node: sim.history() for node, sim in sims.items()}
            ran = executions(list(histories.values()), [str(j.code) for j in jobs])
            spans = {j.pk: node_clock(histories[j.node_id], j.prompt_id) for j in jobs}
            first = min(s for s, _ in spans.values())
            took = max(j.finished.timestamp() for j in jobs if j.finished) - first
            work = {j.pk: (spans[j.pk][1] - spans[j.pk][0]) * speed_of[j.node_id] for j in jobs}
            chains = [[pk for _, pk, _ in p.chain] for p in made.parts.all()]
            longest = max(sum(work[pk] for pk in chain) for chain in chains) / max(SPEEDS)
            bound = max(sum(work.values()) / sum(SPEEDS), longest)
            inputs = JobInput.objects.filter(job__in=ids)
            local = inputs.filter(local=True).count()
            sent = sum(inputs.values_list("uploaded", flat=True))
            results[label] = (took, bound)
            nodes = sorted(sims, key=lambda n: speed_of[n])
            per_node = ", ".join(f"{speed_of[n]:g}x {sum(1 for j in jobs if j.node_id == n)}" for n in nodes)
            print(
                f"  {label}: {took:.1f} s = {took / bound:.3f} x lower bound {bound:.1f} s; "
                f"{local}/{inputs.count()} tasks ran where their input was ({local / max(inputs.count(), 1):.0%}), "
                f"{inputs.count() - local} uploads, {sent / 1e6:.1f} MB uploaded; tasks per node {per_node}"
            )
            print(f"    {executions_line(ran)}")
            if any(n != 1 for n in ran.values()):
                raise BenchError("a task did not run exactly once")
        ours, bound = results["where its input is (ours)"]
        other = results["locality ignored"][0]
        print(f"  ours / locality ignored: {ours / other:.3f}")
        print(f"{verdict(ours <= 1.10 * bound)}: makespan <= 1.10 x the lower bound; every task ran once")


if __name__ == "__main__":
    main(run)
