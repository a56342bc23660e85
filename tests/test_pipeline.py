"""The story pipeline against simulated Ollama and ComfyUI nodes: graph order, failures and retry,
crash resume, model answers that do not fit, re-runs, parallel branches, waiting for a node, stop
and resume, character references and HoloCine scenes, with the worker cluster's tasks run in this
process (the `cluster` fixture: story steps and renders alike), and a real `qcluster` where a
worker dies."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.db import transaction
from django.utils import timezone

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from nodes.sim.ollama import MARKUP, SimOllama
from renders.management.commands.load_templates import load
from renders.models import RenderJob, Template
from spoonfeeder.models import Sweeper
from stories import graph, runner, steps
from stories.models import Character, Segment, Shot, StepRun, Story
from stories.steps import Unfit
from tests.conftest import Cluster, Stack, TimedOut, executions, wait_until

NET = 81 if os.environ.get("DATABASE_URL") else 80
MODEL = "llama3.2:3b"
T = TypeVar("T")
IDEA = "A lighthouse keeper finds a door in the sea that opens onto her childhood kitchen."


@pytest.fixture
def fast(settings: Any, tmp_path: Path) -> None:
    settings.STALE = 2
    settings.BEAT = 0.25  # well inside STALE: a step that waits long on its node is not taken for dead
    settings.RENDER_BACKOFF = 0.05
    settings.MEDIA_ROOT = tmp_path / "media"


class Lab:
    """Simulated nodes, each registered as a Node on its own loopback address."""

    def __init__(self) -> None:
        self.sims: list[SimOllama | SimComfyUI] = []

    def host(self) -> str:
        return f"127.0.{NET}.{len(self.sims) + 1}"

    def ollama(
        self,
        name: str,
        models: tuple[str, ...] = (MODEL,),
        limit: int = 1,
        status: str = Capability.ONLINE,
        **knobs: Any,
    ) -> SimOllama:
        host = self.host()
        sim = SimOllama(host, 0, models=models, **{"answer_seconds": 0, **knobs}).start()
        self.sims.append(sim)
        node = Node.objects.create(name=name, host=host)
        Capability.objects.create(
            node=node,
            kind=Capability.OLLAMA,
            port=sim.port,
            status=status,
            limit=limit,
            inventory={"models": [{"name": m} for m in models], "loaded": []},
        )
        return sim

    def comfyui(self, name: str = "gpu") -> SimComfyUI:
        host = self.host()
        sim = SimComfyUI(host, 0, seconds_per_node=0.02).start()
        self.sims.append(sim)
        node = Node.objects.create(name=name, host=host)
        Capability.objects.create(node=node, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
        return sim

    def unhang(self) -> None:
        for sim in self.sims:
            if isinstance(sim, SimOllama):
                sim.set(hang=False)

    def close(self) -> None:
        for sim in self.sims:
            sim.close()


@pytest.fixture
def lab(transactional_db: None, fast: None) -> Iterator[Lab]:
    load()
    lab = Lab()
    yield lab
    lab.close()


@pytest.fixture
def pipeline(lab: Lab, cluster: Cluster) -> Iterator[Cluster]:
    """The cluster's tasks in this process, on the lab's nodes (stopped before the nodes close)."""
    yield cluster
    lab.unhang()  # a test that failed while a node held its answers: let the steps end


def no_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper's part for stories does nothing from now on: no pass places a ready step, so
    only the tasks themselves move the stories on."""
    monkeypatch.setattr(runner, "sweep", lambda: False)


def new_story(template: str | None = "test-video-mp4", wake: bool = True, **fields: Any) -> Story:
    """A story as the new-story form makes it, started (without `wake`, no task is told)."""
    fields = {"idea": IDEA, "target_seconds": 15, "model": MODEL, **fields}
    if template:
        fields["template"] = Template.objects.get(name=template)
    story = Story.objects.create(**fields)
    graph.advance(story.pk, wake=wake)
    return story


def fresh(story: Story) -> Story:
    return Story.objects.get(pk=story.pk)


def wait_for(story: Story, check: Callable[[], T | None], what: str, timeout: float = 20) -> T:
    """`check`'s first answer that is not None; past the deadline, fail showing the story's runs."""
    found: list[T] = []

    def ready() -> bool:
        value = check()
        if value is not None:
            found.append(value)
        return value is not None

    try:
        wait_until(ready, timeout, what)
    except TimedOut as e:
        raise AssertionError(f"{e}; the story's runs:\n{table(story)}") from None
    return found[0]


# Every step done and the renders queued: with no ComfyUI in the lab, the story stays rendering.
WRITTEN = Story.RENDERING


def wait_state(story: Story, state: str, timeout: float = 20) -> Story:
    return wait_for(story, lambda: s if (s := fresh(story)).state == state else None, f"the story {state}", timeout)


def table(story: Story) -> str:
    return "\n".join(
        f"  {r.step} {r.part} v{r.version} {r.status} {r.waiting or r.error}"
        for r in StepRun.objects.filter(story=story)
    )


def current(story: Story, step: str, part: int = 0) -> StepRun | None:
    return StepRun.objects.current().filter(story=story, step=step, part=part).first()


def run_of(story: Story, step: str, part: int = 0) -> StepRun:
    run = current(story, step, part)
    assert run is not None, f"{step} {part} has no current run:\n{table(story)}"
    return run


def wait_run(story: Story, step: str, status: str, part: int = 0, timeout: float = 20) -> StepRun:
    def reached() -> StepRun | None:
        run = current(story, step, part)
        return run if run is not None and run.status == status else None

    return wait_for(story, reached, f"{step} {part} {status}", timeout)


def asked(sim: SimOllama) -> list[str]:
    """The steps the node was asked to answer, in order (by the schema's title: "StoryAnswer", …)."""
    return [body["format"]["title"] for _, path, body in sim.state.seen if path == "/api/chat"]


def assert_graph_order(story: Story) -> None:
    """No current run started before every step it needs had finished."""
    steps = {s.name: s for s in graph.steps_for(story)}
    runs = list(StepRun.objects.current().filter(story=story))
    whole = {r.step: r for r in runs if r.part == 0}
    for run in runs:
        if run.started is None:
            continue
        for need in steps[run.step].needs:
            before = whole[need]
            assert before.finished is not None and before.finished <= run.started, (
                f"{run} started at {run.started} before {need} finished at {before.finished}"
            )


def snapshot(story: Story, *steps: str) -> dict[tuple[str, int], tuple[Any, ...]]:
    """What a page shows of these steps' current runs: row, version, status, times, output."""
    runs = StepRun.objects.current().filter(story=story, step__in=steps)
    return {(r.step, r.part): (r.pk, r.version, r.status, r.started, r.finished, r.output) for r in runs}


def jobs_by_target(story: Story, prefix: str = "shot:") -> dict[str, list[RenderJob]]:
    jobs: dict[str, list[RenderJob]] = {}
    for job in RenderJob.objects.filter(story=str(story.code), target__startswith=prefix).order_by("created", "id"):
        jobs.setdefault(job.target, []).append(job)
    return jobs


def wait_rendered(lab: Lab, story: Story, prefix: str = "shot:", timeout: float = 30) -> dict[str, list[RenderJob]]:
    """Until the newest job of every target has rendered; every job of the story that completed ran
    exactly once on the lab's ComfyUI nodes."""

    def done() -> dict[str, list[RenderJob]] | None:
        jobs = jobs_by_target(story, prefix)
        return jobs if jobs and all(js[-1].status == RenderJob.COMPLETED for js in jobs.values()) else None

    jobs = wait_for(story, done, f"the story's {prefix} jobs rendered", timeout)
    completed = RenderJob.objects.filter(story=str(story.code), status=RenderJob.COMPLETED)
    comfyuis = [sim for sim in lab.sims if isinstance(sim, SimComfyUI)]
    runs = {f"{job.target} {job.code}": sum(executions(sim, job) for sim in comfyuis) for job in completed}
    assert runs == dict.fromkeys(runs, 1), runs
    return jobs


def overlap(a: StepRun, b: StepRun) -> bool:
    assert a.started and a.finished and b.started and b.finished
    return a.started < b.finished and b.started < a.finished


# --- order, failure, retry -------------------------------------------------------------------


def test_a_story_runs_every_step_once_in_graph_order(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm")
    story = wait_state(new_story(), WRITTEN)
    assert_graph_order(story)
    runs = list(StepRun.objects.filter(story=story))
    shots = list(story.shots.all())
    assert len(shots) >= 2
    assert sorted((r.step, r.part) for r in runs) == sorted(
        [(s, 0) for s in ("story", "segments", "characters", "narration", "music", "shots", "prompts", "renders")]
        + [("prompts", s.number) for s in shots]
    )
    assert all(r.status == StepRun.COMPLETED and r.version == 1 and r.attempts <= 1 for r in runs)
    assert asked(sim)[:3] == ["StoryAnswer", "SegmentsAnswer", "CharactersAnswer"]
    assert sorted(asked(sim)[3:]) == sorted(
        ["NarrationAnswer", "MusicAnswer", "ShotsAnswer"] + ["PromptAnswer"] * len(shots)
    )
    # Written, and its renders queued, waiting for a ComfyUI: the story says so, and is not 100 %.
    assert story.progress == (len(graph.steps_for(story)) - 1) / len(graph.steps_for(story))
    assert story.title and story.text
    assert all(s.positive for s in shots)
    assert sorted(jobs_by_target(story)) == [f"shot:{s.number}" for s in shots]


def test_a_failing_step_holds_back_its_dependents_until_retried_and_other_branches_finish(
    pipeline: Cluster, lab: Lab
) -> None:
    llm = lab.ollama("llm")
    cast = lab.ollama("cast", models=("cast:7b",), bad_json=True)
    story = new_story(models_by_step={"characters": "cast:7b"})
    story = wait_state(story, Story.FAILED)
    failed = run_of(story, "characters")
    assert failed.status == StepRun.FAILED
    assert failed.error.startswith("the model's answers did not fit, 3 times; the last: the answer is not JSON")
    assert asked(cast) == ["CharactersAnswer"] * 3
    assert {r.step for r in StepRun.objects.filter(story=story, status=StepRun.COMPLETED)} == {
        "story",
        "segments",
        "narration",
        "music",
    }
    assert not StepRun.objects.filter(story=story, step__in=["shots", "prompts", "renders"]).exists()
    before = snapshot(story, "story", "segments", "narration", "music")

    cast.set(bad_json=False)
    assert graph.retry(failed)
    story = wait_state(story, WRITTEN)
    assert_graph_order(story)
    retried = run_of(story, "characters")
    assert (retried.pk, retried.version, retried.attempts) == (failed.pk, 1, 1)
    assert "retried by the user" in retried.log and retried.error == ""
    assert snapshot(story, "story", "segments", "narration", "music") == before
    assert asked(cast) == ["CharactersAnswer"] * 4
    assert [a for a in asked(llm) if a != "PromptAnswer"] == [
        "StoryAnswer",
        "SegmentsAnswer",
        "NarrationAnswer",
        "MusicAnswer",
        "ShotsAnswer",
    ]


def test_retrying_one_failed_part_finishes_the_step_and_what_follows(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm")
    # Parts run one at a time on this node, in order: the first takes the three bad answers.
    writer = lab.ollama("writer", models=("writer:7b",), bad_answers=3, bad_kind="schema")
    story = wait_state(new_story(models_by_step={"prompts": "writer:7b"}), Story.FAILED)
    parent, first = run_of(story, "prompts"), run_of(story, "prompts", 1)
    count = story.shots.count()
    assert parent.status == first.status == StepRun.FAILED
    assert parent.error.startswith(f"1 of {count} parts did not complete; the first, 1: the model's answers")
    assert StepRun.objects.filter(story=story, step="prompts", status=StepRun.COMPLETED).count() == count - 1
    assert current(story, "renders") is None

    assert graph.retry(first)
    story = wait_state(story, WRITTEN)
    assert asked(writer).count("PromptAnswer") == 3 + count
    assert sorted(jobs_by_target(story)) == [f"shot:{n}" for n in range(1, count + 1)]


def test_a_node_that_answers_with_a_web_page_fails_the_step_at_once_naming_the_node(
    pipeline: Cluster, lab: Lab
) -> None:
    sim = lab.ollama("llm", garbage=True)
    story = wait_state(new_story(), Story.FAILED)
    run = run_of(story, "story")
    assert run.attempts == 1
    assert run.error.startswith("llm: ") and "HTML" in run.error
    assert len([p for _, p, _ in sim.state.seen if p == "/api/chat"]) == 1


def test_a_node_error_is_retried_with_backoff_then_fails_after_the_attempts(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm", fail="oom")
    story = wait_state(new_story(), Story.FAILED)
    run = run_of(story, "story")
    assert run.attempts == run.max_attempts == 3
    assert "out of memory" in run.error and run.error.startswith("llm: ")
    assert "trying again in 0.05 s" in run.log and "trying again in 0.1 s" in run.log
    assert len([p for _, p, _ in sim.state.seen if p == "/api/chat"]) == 3

    sim.set(fail=None)
    assert graph.retry(run)
    wait_run(story, "story", StepRun.COMPLETED)


# --- resuming after a crash ------------------------------------------------------------------


def worker_pid(run: StepRun) -> int:
    """The pid of the worker process running `run`, as its row names it ("host:pid:token")."""
    return int(run.owner.split(":")[1])


def test_a_killed_worker_mid_step_is_replaced_and_every_step_completes_once(lab: Lab, stack: Stack) -> None:
    llm = lab.ollama("llm")
    cast = lab.ollama("cast", models=("cast:7b",), hang=True)  # holds its answer until told
    # The dead worker is found by its pid, long before its heartbeat would be stale.
    stack.worker(SPOONFEEDER_STALE="30", SPOONFEEDER_RENDER_BACKOFF="0.05")
    story = new_story(models_by_step={"characters": "cast:7b"})
    for step in ("narration", "music"):
        wait_run(story, step, StepRun.COMPLETED, timeout=60)
    wait_until(lambda: asked(cast) == ["CharactersAnswer"], 30, "the node to be asked for the characters")
    running = wait_for(
        story,
        lambda: r if (r := run_of(story, "characters")).status == StepRun.RUNNING and r.owner else None,
        "a worker to run the characters",
    )
    killed = worker_pid(running)
    os.kill(killed, signal.SIGKILL)
    before = snapshot(story, "story", "segments", "narration", "music")
    segments = list(story.segments.values_list("pk", "title", "summary", "narration"))
    # The run goes back to pending once the sweeper finds its worker gone, then starts again.
    wait_until(lambda: run_of(story, "characters").crashes == 1, 30, "the crash to be found")

    cast.set(hang=False)
    story = wait_state(story, WRITTEN, timeout=60)

    runs = list(StepRun.objects.filter(story=story))
    assert all(r.status == StepRun.COMPLETED and r.version == 1 for r in runs)
    assert len({(r.step, r.part) for r in runs}) == len(runs)  # one run per step and part
    characters = run_of(story, "characters")
    assert (characters.attempts, characters.crashes) == (1, 1)  # the crash is not an attempt
    assert worker_pid(characters) != killed  # another worker ran it again
    assert "the worker running this step stopped; it starts again" in characters.log
    others = [r for r in runs if r.pk != characters.pk and not (r.step == "prompts" and r.part == 0)]
    assert all((r.attempts, r.crashes) == (1, 0) for r in others)
    assert snapshot(story, "story", "segments", "narration", "music") == before
    assert list(story.segments.values_list("pk", "title", "summary", "narration")) == segments
    assert asked(cast) == ["CharactersAnswer", "CharactersAnswer"]
    shots = story.shots.count()
    assert sorted(asked(llm)) == sorted(
        ["StoryAnswer", "SegmentsAnswer", "NarrationAnswer", "MusicAnswer", "ShotsAnswer"] + ["PromptAnswer"] * shots
    )
    assert not held()


ANSWERS = {
    "story": "StoryAnswer",
    "segments": "SegmentsAnswer",
    "characters": "CharactersAnswer",
    "shots": "ShotsAnswer",
    "prompts": "PromptAnswer",
    "narration": "NarrationAnswer",
    "music": "MusicAnswer",
}


def test_a_story_with_worker_kills_mid_step_completes(lab: Lab, stack: Stack) -> None:
    """Workers killed one after another, each while it runs a step (each time another step):
    every step completes once, the kills are counted as crashes of the runs they cut short and
    not as attempts, and the node answered each step no more often than the pipeline asked."""
    sim = lab.ollama("llm", answer_seconds=1.0)  # a step takes a second on the node: time to kill
    stack.worker(SPOONFEEDER_STALE="30", SPOONFEEDER_RENDER_BACKOFF="0.05")
    story = new_story()
    hit: set[int] = set()  # the runs a kill cut short
    kills = tries = 0

    def crashes() -> dict[int, int]:
        return dict(StepRun.objects.filter(story=story, crashes__gt=0).values_list("pk", "crashes"))

    def next_step() -> StepRun | str | None:
        """The next step running on a worker (not one a kill cut short before), or "done"."""
        if fresh(story).state == WRITTEN:
            return "done"
        running = StepRun.objects.filter(story=story, status=StepRun.RUNNING).exclude(owner="").exclude(pk__in=hit)
        return running.order_by("started").first()

    while kills < 4 and tries < 10:
        tries += 1
        run = wait_for(story, next_step, "the next step running on a worker", timeout=60)
        if run == "done":
            break
        assert isinstance(run, StepRun)
        before = crashes()

        def handled(owner: str = run.owner) -> bool:
            return not StepRun.objects.filter(status=StepRun.RUNNING, owner=owner).exists()

        os.kill(worker_pid(run), signal.SIGKILL)
        # The worker is gone: its rows stay as it left them until the sweeper finds it dead and
        # starts them again. A kill between two steps (or in a claim it had not committed yet)
        # cut no run short.
        wait_until(handled, 30, "the sweeper to start the cut-short step again")
        cut = {pk for pk, n in crashes().items() if n > before.get(pk, 0)}
        assert len(cut) <= 1, cut
        hit |= cut
        kills += len(cut)
    assert kills >= 3, f"only {kills} of {tries} kills landed mid-step"

    story = wait_state(story, WRITTEN, timeout=120)
    runs = list(StepRun.objects.filter(story=story))
    assert all(r.status == StepRun.COMPLETED and r.version == 1 for r in runs), table(story)
    assert len({(r.step, r.part) for r in runs}) == len(runs)  # one run per step and part
    claimed = [r for r in runs if not (r.step == "prompts" and r.part == 0)]  # the prompts' parts run
    assert all(r.attempts == 1 for r in claimed), [(str(r), r.attempts) for r in claimed]  # kills are no attempts
    asking = [r for r in claimed if r.step in ANSWERS]
    assert {r.pk: r.crashes for r in runs if r.crashes} == dict.fromkeys(hit, 1)
    for r in runs:
        if r.pk in hit:
            assert "the worker running this step stopped; it starts again" in r.log, r.log
    # What the node answered, by step: never more often than the pipeline asked for (one answer
    # per claim, each noted "asked … (answer 1 of at most 3)"), so each kill cost at most one answer.
    answered = asked(sim)
    for step, title in ANSWERS.items():
        these = [r for r in asking if r.step == step]
        assert len(these) <= answered.count(title) <= sum(r.log.count(" asked ") for r in these), (step, answered)
    assert len(answered) <= len(asking) + kills
    assert_graph_order(story)
    assert not held()


def held() -> int:
    """Units of the pool's capacity that rows hold now."""
    return sum(c.holders() for c in Capability.objects.all())


def test_a_story_left_between_two_steps_by_a_dead_worker_goes_on(lab: Lab, request: pytest.FixtureRequest) -> None:
    sim = lab.ollama("llm")
    # A worker wrote the first step's answer and died before it moved the story on.
    now = timezone.now()
    story = Story.objects.create(
        idea=IDEA,
        model=MODEL,
        target_seconds=15,
        template=Template.objects.get(name="test-video-mp4"),
        title="The Door",
        text="A lighthouse keeper opens a door in the sea and walks into her mother's kitchen.",
        state=Story.RUNNING,
    )
    StepRun.objects.create(story=story, step="story", status=StepRun.COMPLETED, started=now, finished=now)

    request.getfixturevalue("cluster")  # a worker starts (and with it a sweeper)
    wait_run(story, "segments", StepRun.COMPLETED)
    assert asked(sim)[0] == "SegmentsAnswer" and "StoryAnswer" not in asked(sim)


def test_the_node_a_dead_worker_held_comes_back_with_its_step(lab: Lab, request: pytest.FixtureRequest) -> None:
    sim = lab.ollama("llm", limit=1)
    cap = Capability.objects.get()
    # A worker was asking the only node for a story's first step and died: its run's row still
    # holds the node, with a heartbeat that stopped (a worker of another machine: found by that).
    gone = timezone.now() - timedelta(seconds=5)
    story = new_story(wake=False)
    StepRun.objects.filter(story=story, step="story").update(
        status=StepRun.RUNNING,
        owner="elsewhere:1:dead",
        heartbeat=gone,
        started=gone,
        attempts=1,
        node=cap.node,
        capability=cap,
    )
    assert cap.holders() == 1 and cap.display_status == "busy"

    request.getfixturevalue("cluster")  # a worker starts (and with it a sweeper)
    story = wait_state(story, WRITTEN)
    assert asked(sim)[0] == "StoryAnswer" and cap.holders() == 0
    run = run_of(story, "story")
    assert (run.attempts, run.crashes) == (1, 1)  # the crash is counted, not as an attempt
    assert "the worker running this step stopped; it starts again" in run.log


# --- model answers that do not fit -----------------------------------------------------------


def test_an_answer_that_does_not_fit_is_sent_back_and_the_second_one_is_used(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm", bad_answers=1, bad_kind="broken")
    story = new_story()
    run = wait_run(story, "story", StepRun.COMPLETED)
    assert run.attempts == 1 and fresh(story).title
    assert "(answer 2 of at most 3)" in run.log
    assert "the answer did not fit: the answer is not JSON" in run.log and "cut short" in run.log
    first = next(body for _, path, body in sim.state.seen if path == "/api/chat")
    again = [body for _, path, body in sim.state.seen if path == "/api/chat"][1]
    raw = again["messages"][-2]["content"]
    assert raw.endswith(" and then")  # the broken answer, as the model gave it
    assert f"--- the answer ---\n{raw}\n---" in run.log
    assert again["messages"][-1]["content"].startswith("That answer does not fit: the answer is not JSON")
    assert again["messages"][:2] == first["messages"]


@pytest.mark.parametrize(
    ("kind", "reason"), [("broken", "the answer is not JSON"), ("schema", "the answer: Input should be")]
)
def test_answers_that_never_fit_fail_the_step_after_three_with_the_raw_answers_kept(
    pipeline: Cluster, lab: Lab, kind: str, reason: str
) -> None:
    sim = lab.ollama("llm", bad_json=kind)
    story = wait_state(new_story(), Story.FAILED)
    run = run_of(story, "story")
    assert run.status == StepRun.FAILED and run.attempts == 1
    assert run.error.startswith(f"the model's answers did not fit, 3 times; the last: {reason}")
    assert run.log.count("--- the answer ---") == run.log.count(f"the answer did not fit: {reason}") == 3
    assert asked(sim) == ["StoryAnswer"] * 3
    chats = [body for _, path, body in sim.state.seen if path == "/api/chat"]
    sent_back = [chat["messages"][-2]["content"] for chat in chats[1:]]  # the answers before the last
    assert len(sent_back) == 2 and all(f"--- the answer ---\n{a}\n---" in run.log for a in sent_back)
    assert current(story, "segments") is None and fresh(story).title == ""


def test_model_text_with_markup_is_stored_as_text(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm", bad_json="html")
    story = wait_state(new_story(), WRITTEN)
    assert MARKUP in story.title and story.text.endswith(MARKUP)
    assert all(s.title.endswith(MARKUP) for s in story.segments.all())
    assert all(c.name.endswith(MARKUP) for c in story.characters.all())
    assert all(s.positive.endswith(MARKUP) for s in story.shots.all())


@pytest.fixture
def cast_story(db: None) -> Story:
    story = Story.objects.create(idea=IDEA, model=MODEL)
    Segment.objects.create(story=story, number=1, title="The door", summary="She finds it.")
    for name in ("Maren", "Old Tom"):
        Character.objects.create(story=story, name=name, look="grey coat")
    return story


def test_a_shot_naming_someone_not_cast_does_not_fit(cast_story: Story) -> None:
    cast_story.target_seconds = 9  # what the two shots add up to
    answer = {
        "shots": [
            {"segment": 1, "description": "Waves.", "camera": "wide", "duration": 5, "characters": ["Maren"]},
            {"segment": 1, "description": "A door.", "camera": "close", "duration": 4, "characters": ["Captain Ahab"]},
        ]
    }
    with pytest.raises(Unfit) as e:
        steps.ASKING["shots"].read(cast_story, json.dumps(answer))
    assert e.value.reasons == ["shot 2 names 'Captain Ahab', who is not among the characters (Maren, Old Tom)"]


def shot(segment: int, duration: float) -> dict[str, Any]:
    return {"segment": segment, "description": "Waves.", "camera": "wide", "duration": duration, "characters": []}


def test_shots_that_do_not_add_up_to_the_storys_length_do_not_fit(cast_story: Story) -> None:
    Story.objects.filter(pk=cast_story.pk).update(target_seconds=30)
    cast_story.refresh_from_db()
    with pytest.raises(Unfit) as e:
        steps.ASKING["shots"].read(cast_story, json.dumps({"shots": [shot(1, 5), shot(1, 5)]}))
    assert e.value.reasons == [
        "the shots add up to 10 s, but the film is to last 30 s: plan shots whose lengths add up to between 27 and 33 s"
    ]
    # Within a tenth of the length, it fits.
    steps.ASKING["shots"].read(cast_story, json.dumps({"shots": [shot(1, 14), shot(1, 14.5)]}))


def test_narration_or_music_that_leaves_a_segment_out_is_sent_back_with_the_reason(cast_story: Story) -> None:
    Segment.objects.create(story=cast_story, number=2, title="The key", summary="It opens.")
    Segment.objects.create(story=cast_story, number=3, title="The sea", summary="It ends.")
    with pytest.raises(Unfit) as e:
        steps.ASKING["narration"].read(cast_story, json.dumps({"lines": [{"segment": 1, "text": "She finds it."}]}))
    assert e.value.reasons == ["segments 2, 3 have no narration: give every segment its narration"]
    cues = {"cues": [{"segment": 1, "mood": m, "description": "strings"} for m in ("calm", "tense", "warm")]}
    with pytest.raises(Unfit) as e:
        steps.ASKING["music"].read(cast_story, json.dumps(cues))  # all in the first segment
    assert e.value.reasons == ["segments 2, 3 have no music cue: give every segment its music cue"]
    for n, cue in enumerate(cues["cues"], 1):
        cue["segment"] = n
    steps.ASKING["music"].read(cast_story, json.dumps(cues))


def test_a_shot_renders_for_its_planned_length_as_far_as_the_template_goes(db: None) -> None:
    load()
    wan = Template.objects.get(name="wan22-t2v")
    test = Template.objects.get(name="test-video-mp4")
    assert [wan.frames_for(s, 16) for s in (0.1, 2, 5, 8)] == [1, 33, 81, 81]  # 4n + 1, at most 81
    assert [test.frames_for(s, 24) for s in (0.1, 2, 5.5, 60)] == [2, 48, 132, 1024]


def test_a_truncated_answer_does_not_fit_and_says_it_was_cut_short(cast_story: Story) -> None:
    with pytest.raises(Unfit) as e:
        steps.ASKING["story"].read(cast_story, '{"title": "The Door", "text": "She walked to')
    [why] = e.value.reasons
    assert why.startswith("the answer is not JSON") and "it looks cut short" in why


# --- re-running ------------------------------------------------------------------------------

UPSTREAM = ("story", "segments", "narration", "music")
TINY = {"width": 64, "height": 64, "frames": 4}  # quick to render


@pytest.fixture
def rendered(pipeline: Cluster, lab: Lab) -> tuple[Story, SimOllama]:
    """A completed story whose shots have rendered."""
    sim = lab.ollama("llm")
    lab.comfyui()
    story = wait_state(new_story(render_settings=TINY), Story.COMPLETED)
    wait_rendered(lab, story)
    return story, sim


def test_rerunning_from_characters_redoes_them_and_what_follows_and_keeps_the_rest(
    rendered: tuple[Story, SimOllama],
    lab: Lab,
) -> None:
    story, sim = rendered
    before = snapshot(story, *UPSTREAM)
    old_runs = snapshot(story, "characters", "shots", "prompts", "renders")
    segments = list(story.segments.values_list("pk", "title", "narration"))
    cues = list(story.music_cues.values_list("pk", "mood"))
    old_jobs = {j.pk: j.outputs for js in jobs_by_target(story).values() for j in js}
    old_characters = set(story.characters.values_list("pk", flat=True))

    Story.objects.filter(pk=story.pk).update(style="black and white, film noir")  # the user changed the look
    assert graph.rerun_from(fresh(story), "characters") == ["characters", "shots", "prompts", "renders"]
    story = wait_state(story, Story.COMPLETED)
    jobs = wait_rendered(lab, story)

    assert_graph_order(story)
    assert snapshot(story, *UPSTREAM) == before
    assert list(story.segments.values_list("pk", "title", "narration")) == segments
    assert list(story.music_cues.values_list("pk", "mood")) == cues
    assert not old_characters & set(story.characters.values_list("pk", flat=True))
    redone = snapshot(story, "characters", "shots", "prompts", "renders")
    assert {version for _, version, *_ in redone.values()} == {2}
    for (step, part), (pk, *_, output) in old_runs.items():
        old = StepRun.objects.get(pk=pk)
        assert (old.status, old.version, old.output) == (StepRun.STALE, 1, output), (step, part)
    # Every prompt changed with the style: each shot is queued again; the first renders stay.
    for pk, outputs in old_jobs.items():
        job = RenderJob.objects.get(pk=pk)
        assert job.status == RenderJob.COMPLETED and job.outputs == outputs
    for shot in story.shots.all():
        newest = jobs[shot.target()][-1]
        assert newest.pk not in old_jobs and newest.prompt == shot.positive
    assert asked(sim).count("StoryAnswer") == asked(sim).count("NarrationAnswer") == 1


def test_rerunning_one_prompt_queues_only_that_shot_again(rendered: tuple[Story, SimOllama], lab: Lab) -> None:
    story, sim = rendered
    before = jobs_by_target(story)
    others = snapshot(story, *UPSTREAM, "characters", "shots")
    parts = {n: run_of(story, "prompts", n) for n in range(1, story.shots.count() + 1)}
    Shot.objects.filter(story=story, number=1).update(description="The door opens onto a kitchen full of light.")

    graph.rerun_part(parts[1])
    story = wait_state(story, Story.COMPLETED)
    after = wait_rendered(lab, story)

    assert len(after["shot:1"]) == 2 and after["shot:1"][0].pk == before["shot:1"][0].pk
    assert after["shot:1"][-1].prompt == story.shots.get(number=1).positive != before["shot:1"][0].prompt
    assert {t: [j.pk for j in js] for t, js in after.items() if t != "shot:1"} == {
        t: [j.pk for j in js] for t, js in before.items() if t != "shot:1"
    }
    renders = run_of(story, "renders")
    assert renders.version == 2 and renders.output == {"queued": 1, "kept": len(parts) - 1}
    assert run_of(story, "prompts", 1).version == 2
    assert all(run_of(story, "prompts", n).pk == parts[n].pk for n in parts if n != 1)
    assert snapshot(story, *UPSTREAM, "characters", "shots") == others
    assert asked(sim).count("ShotsAnswer") == 1


def write_prompt_by_hand(story: Story, number: int) -> dict[str, str]:
    """A shot's prompt written by hand, as the page saves it."""
    written = {"positive": "a brass lantern on a wet rock, dawn, 35mm", "negative": "text"}
    with transaction.atomic():
        Shot.objects.filter(story=story, number=number).update(**written)
        graph.edited_part(run_of(story, "prompts", number), written, who="ada")
    return written


def test_a_prompt_written_by_hand_requeues_only_that_shot_and_asks_the_model_nothing(
    rendered: tuple[Story, SimOllama],
    lab: Lab,
) -> None:
    story, sim = rendered
    before = jobs_by_target(story)
    asked_before = len(asked(sim))
    written = write_prompt_by_hand(story, 2)
    story = wait_state(story, Story.COMPLETED)
    after = wait_rendered(lab, story)

    assert [j.pk for j in after["shot:2"][:-1]] == [j.pk for j in before["shot:2"]]
    assert (after["shot:2"][-1].prompt, after["shot:2"][-1].negative) == (written["positive"], "text")
    assert {t: [j.pk for j in js] for t, js in after.items() if t != "shot:2"} == {
        t: [j.pk for j in js] for t, js in before.items() if t != "shot:2"
    }
    part = run_of(story, "prompts", 2)
    assert (part.version, part.edited, {k: v for k, v in part.output.items() if k != "asked"}) == (2, True, written)
    assert len(asked(sim)) == asked_before  # no model was asked


def test_a_character_edited_by_hand_reruns_only_the_shots_and_what_follows(
    rendered: tuple[Story, SimOllama], lab: Lab
) -> None:
    story, sim = rendered
    before = snapshot(story, *UPSTREAM)
    character = story.characters.first()
    assert character is not None
    Character.objects.filter(pk=character.pk).update(look="a red raincoat and a brass lantern")
    output = {"characters": list(story.characters.values("name", "role", "look", "personality"))}

    graph.edited(fresh(story), "characters", output, "ada")
    story = wait_state(story, Story.COMPLETED)
    wait_rendered(lab, story)

    edited = run_of(story, "characters")
    assert edited.edited and edited.version == 2 and edited.output == output
    assert {run_of(story, s).version for s in ("shots", "prompts", "renders")} == {2}
    assert snapshot(story, *UPSTREAM) == before
    assert story.characters.get(pk=character.pk).look == "a red raincoat and a brass lantern"
    assert asked(sim).count("CharactersAnswer") == 1 and asked(sim).count("ShotsAnswer") == 2
    shots_asked = [b for _, p, b in sim.state.seen if p == "/api/chat" and b["format"]["title"] == "ShotsAnswer"]
    assert "a red raincoat and a brass lantern" in shots_asked[-1]["messages"][1]["content"]


def test_shots_planned_again_as_they_were_keep_their_prompts_and_renders(
    rendered: tuple[Story, SimOllama], lab: Lab
) -> None:
    story, sim = rendered
    # A prompt written by hand is an answer like the model's: kept too, while its shot is the same.
    written = write_prompt_by_hand(story, 2)
    story = wait_state(story, Story.COMPLETED)
    before = wait_rendered(lab, story)
    asked_before = asked(sim)
    prompts = {s.number: (s.positive, s.negative) for s in story.shots.all()}

    # The simulated model plans the same shots for the same question: nothing else is asked again.
    graph.rerun_from(fresh(story), "shots")
    story = wait_state(story, Story.COMPLETED)
    after = wait_rendered(lab, story)
    assert asked(sim)[len(asked_before) :] == ["ShotsAnswer"]
    assert {s.number: (s.positive, s.negative) for s in story.shots.all()} == prompts
    assert prompts[2] == (written["positive"], "text")
    parts = StepRun.objects.current().filter(story=story, step="prompts").exclude(part=0)
    assert all("kept the answer of version" in p.log for p in parts) and parts.count() == len(prompts)
    assert {t: [j.pk for j in js] for t, js in after.items()} == {t: [j.pk for j in js] for t, js in before.items()}

    # Asked for by name, the prompts are written again, however alike the questions.
    graph.rerun_from(fresh(story), "prompts")
    story = wait_state(story, Story.COMPLETED)
    assert asked(sim)[len(asked_before) + 1 :] == ["PromptAnswer"] * len(prompts)


def test_a_rerun_whose_answer_comes_out_the_same_keeps_everything_after_it_without_asking(
    rendered: tuple[Story, SimOllama], lab: Lab
) -> None:
    story, sim = rendered
    before = jobs_by_target(story)
    asked_before = asked(sim)
    shots = list(story.shots.values_list("number", "description", "positive"))
    characters = list(story.characters.values_list("name", "look"))

    # The simulated model answers the same question the same way: the segments come out as they
    # were, so every step after them has the question it had, and keeps its answer.
    graph.rerun_from(fresh(story), "segments")
    story = wait_state(story, Story.COMPLETED)
    after = wait_rendered(lab, story)
    assert asked(sim)[len(asked_before) :] == ["SegmentsAnswer"]
    for name in ("characters", "shots", "narration", "music"):
        kept = run_of(story, name)
        assert kept.version == 2 and "kept the answer of version 1" in kept.log, name
    assert list(story.shots.values_list("number", "description", "positive")) == shots
    assert list(story.characters.values_list("name", "look")) == characters
    assert {t: [j.pk for j in js] for t, js in after.items()} == {t: [j.pk for j in js] for t, js in before.items()}


def test_rerun_renders_keep_only_jobs_that_would_render_the_same(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm")  # no ComfyUI node: the renders wait in the queue
    story = wait_state(new_story(), WRITTEN)
    before = jobs_by_target(story)
    last = story.shots.order_by("number").last()
    assert last is not None and len(before) >= 2

    # The prompts of the first shot are written again: its render waits for them, then is queued
    # again, as it came out the same; a render that started meanwhile would have been kept.
    RenderJob.objects.filter(pk=before["shot:2"][0].pk).update(status=RenderJob.RENDERING)
    graph.rerun_from(fresh(story), "prompts")
    story = wait_state(story, WRITTEN)
    again = jobs_by_target(story)
    assert [j.status for j in again["shot:1"]] == [RenderJob.CANCELLED, RenderJob.QUEUED]
    assert again["shot:2"] == before["shot:2"]  # on a node: kept, as it renders the same
    RenderJob.objects.filter(pk=before["shot:2"][0].pk).update(status=RenderJob.QUEUED)

    # A shot removed by hand: its queued render is cancelled.
    last.delete()
    output = {"shots": list(story.shots.values("segment__number", "description", "camera", "duration", "characters"))}
    graph.edited(fresh(story), "shots", output, "ada")
    story = wait_state(story, WRITTEN)
    kept = {t: js[-1:] for t, js in jobs_by_target(story).items()}
    [dropped] = kept.pop(last.target())
    assert dropped.status == RenderJob.CANCELLED
    assert all(jobs[0].status == RenderJob.QUEUED for jobs in kept.values())

    # Other render settings: every shot is queued again, and its earlier job cancelled.
    Story.objects.filter(pk=story.pk).update(render_settings={"frames": 8, "fps": 8})
    graph.rerun_from(fresh(story), "renders")
    story = wait_state(story, WRITTEN)
    after = jobs_by_target(story)
    for target, (old, new) in ((t, after[t][-2:]) for t in kept):
        assert old.pk == kept[target][0].pk and old.status == RenderJob.CANCELLED, target
        shot = story.shots.get(number=int(target.split(":")[1]))
        # Each shot renders for as long as it is planned: its frames at the story's fps.
        assert new.status == RenderJob.QUEUED and new.settings == {"frames": round(shot.duration * 8), "fps": 8}
    assert run_of(story, "renders").output == {"queued": len(kept), "kept": 0}


def test_queued_renders_of_prompts_being_written_again_are_cancelled_at_once(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm")
    story = wait_state(new_story(), WRITTEN)  # no ComfyUI: the renders wait in the queue
    queued = {t: js[-1] for t, js in jobs_by_target(story).items()}
    assert len(queued) >= 3 and {j.status for j in queued.values()} == {RenderJob.QUEUED}
    sim.set(hang=True)  # the new prompts take their time

    graph.rerun_part(run_of(story, "prompts", 1))
    status = {t: RenderJob.objects.get(pk=j.pk).status for t, j in queued.items()}
    assert status.pop("shot:1") == RenderJob.CANCELLED and set(status.values()) == {RenderJob.QUEUED}

    graph.rerun_from(fresh(story), "characters")
    assert {RenderJob.objects.get(pk=j.pk).status for j in queued.values()} == {RenderJob.CANCELLED}
    sim.set(hang=False)
    story = wait_state(story, WRITTEN)
    newest = {t: js[-1] for t, js in jobs_by_target(story).items()}
    assert {j.status for j in newest.values()} == {RenderJob.QUEUED} and not set(newest.values()) & set(queued.values())


def test_characters_cannot_be_corrected_while_they_or_their_inputs_are_written_again(
    pipeline: Cluster, lab: Lab
) -> None:
    sim = lab.ollama("llm")
    story = wait_state(new_story(), WRITTEN)
    cast = list(story.characters.values_list("pk", "look"))
    sim.set(hang=True)
    graph.rerun_from(fresh(story), "segments")
    wait_run(story, "segments", StepRun.RUNNING)

    with pytest.raises(graph.NotNow, match="Characters has not completed"):
        graph.edited(fresh(story), "characters", steps.characters_output(story), who="admin")
    assert current(story, "characters", 0) is None  # no hand-made version slipped in
    sim.set(hang=False)
    story = wait_state(story, WRITTEN)
    assert run_of(story, "characters").version == 2 and not run_of(story, "characters").edited
    assert list(story.characters.values_list("pk", "look")) != cast
    graph.edited(story, "characters", steps.characters_output(story), who="admin")  # now it may
    assert run_of(story, "characters").edited


def test_without_auto_render_the_renders_wait_for_the_user(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm")
    story = new_story(auto_render=False)
    held = wait_run(story, "renders", StepRun.PENDING)
    assert held.held and held.waiting.startswith("Waiting for you: press Render")
    assert fresh(story).state == Story.WAITING
    assert not jobs_by_target(story)
    # Nothing left to watch while the story waits for the user: the sweeper leaves (and pressing
    # Render wakes the pipeline).
    wait_until(lambda: not Sweeper.objects.exclude(worker="").exists(), 20, "the sweeper to leave")

    assert graph.render_now(fresh(story))
    story = wait_state(story, WRITTEN)
    assert sorted(jobs_by_target(story)) == sorted(s.target() for s in story.shots.all())
    assert not graph.render_now(story)


# --- parallel branches -----------------------------------------------------------------------


def test_branches_and_prompt_parts_run_at_the_same_time_on_two_nodes(pipeline: Cluster, lab: Lab) -> None:
    for name in ("a", "b"):
        lab.ollama(name, limit=1, answer_seconds=0.3)  # one answer at a time: overlaps are on two nodes
    story = wait_state(new_story(), WRITTEN, timeout=30)
    branches = [run_of(story, step) for step in ("characters", "narration", "music")]
    assert any(overlap(p, q) and p.node_id != q.node_id for p in branches for q in branches)
    parts = list(StepRun.objects.filter(story=story, step="prompts").exclude(part=0))
    assert len(parts) >= 3
    assert any(overlap(p, q) and p.node_id != q.node_id for p in parts for q in parts)
    assert_graph_order(story)


def test_a_node_that_answered_goes_straight_on_to_the_next_ready_step(
    pipeline: Cluster, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One feed starts the first step; every later step is handed on by the step task whose node
    just answered (no other feed, nor a pass of the sweeper, places a step here): one step task
    runs them all."""
    no_sweeps(monkeypatch)
    feeds: list[int] = []
    first_feed = runner.feed

    def only_the_first() -> int:
        feeds.append(1)
        return first_feed() if len(feeds) == 1 else 0

    monkeypatch.setattr(runner, "feed", only_the_first)
    sim = lab.ollama("llm", limit=1)
    story = new_story(auto_render=False)
    asks = [s.name for s in graph.steps_for(story) if s.kind == graph.ASK]

    def answered() -> bool:
        done = StepRun.objects.current().filter(story=story, part=0, status=StepRun.COMPLETED)
        return set(asks) <= set(done.values_list("step", flat=True))

    wait_for(story, lambda: answered() or None, "every language-model step answered")
    seen = asked(sim)
    assert seen[:2] == ["StoryAnswer", "SegmentsAnswer"]
    assert sorted(set(seen)) == sorted(
        ["StoryAnswer", "SegmentsAnswer", "CharactersAnswer", "ShotsAnswer", "PromptAnswer"]
        + ["NarrationAnswer", "MusicAnswer"]
    )
    shots = fresh(story).shots.count()
    assert seen.count("PromptAnswer") == shots and len(seen) == 6 + shots  # each step asked once
    assert pipeline.ran("stories.tasks.step") == 1
    asking = StepRun.objects.filter(story=story, step__in=asks).exclude(step="prompts", part=0)
    assert len(set(asking.values_list("owner", flat=True))) == 1  # one task, from step to step
    assert_graph_order(story)
    assert not held()  # the node's capacity went back when nothing was left for it


def test_a_node_that_failed_to_answer_is_not_handed_the_next_step(pipeline: Cluster, lab: Lab) -> None:
    """A node that errored gives its lease back and its step task ends, instead of going on to
    the next ready step (which a failing node would fail too, burning its attempts): each answer
    it failed was asked by a step task of its own, the next step placed anew."""
    sim = lab.ollama("llm", limit=1, fail="oom")
    first, second = new_story(idea="The first story's idea, long enough."), new_story()
    for story in (first, second):
        wait_state(story, Story.FAILED)
        run = run_of(story, "story")
        assert run.attempts == run.max_attempts == 3 and "out of memory" in run.error
    chats = [path for _, path, _ in sim.state.seen if path == "/api/chat"]
    assert len(chats) == 6 == pipeline.ran("stories.tasks.step")
    assert not held()


def test_steps_queued_behind_a_busy_node_wait_without_a_reason_and_run_in_turn(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm", limit=1, hang=True)
    first, second = new_story(idea="The first story's idea, long enough."), new_story()
    wait_until(lambda: asked(sim) == ["StoryAnswer"], 10, "the first story to be asked")
    wait_until(lambda: run_of(first, "story").status == StepRun.RUNNING, 10, "the first step running")
    runner.feed()  # a pass while the only node is busy
    queued = run_of(second, "story")
    assert (queued.status, queued.waiting) == (StepRun.PENDING, "")
    assert fresh(second).state == Story.RUNNING
    sim.set(hang=False)
    wait_until(lambda: len(asked(sim)) >= 3, 10, "three answers")
    # In the order they became ready: the second story's first step before the first's segments.
    assert asked(sim)[:3] == ["StoryAnswer", "StoryAnswer", "SegmentsAnswer"]


# --- waiting for a node ----------------------------------------------------------------------


def waiting_reason(story: Story) -> str:
    """Why the story's first step waits, once the story shows it is waiting."""
    wait_state(story, Story.WAITING, timeout=10)
    run = run_of(story, "story")
    assert run.status == StepRun.PENDING
    return run.waiting


def test_the_first_step_waits_for_an_ollama_node_and_starts_when_one_is_online(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm", status=Capability.OFFLINE, hang=True)
    story = new_story()
    assert waiting_reason(story) == "No Ollama node is online; the step starts when one is."
    assert not sim.state.seen

    Capability.objects.filter(kind=Capability.OLLAMA).update(status=Capability.ONLINE)
    wait_until(lambda: asked(sim) == ["StoryAnswer"], 10, "the node to be asked")
    assert fresh(story).state == Story.RUNNING and run_of(story, "story").waiting == ""
    sim.set(hang=False)
    wait_run(story, "story", StepRun.COMPLETED)


def test_a_step_whose_model_no_node_has_says_which_model_it_waits_for(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm", models=(MODEL, "mistral:7b"))
    Capability.objects.update(inventory={"models": [{"name": MODEL}], "loaded": []})
    story = new_story(model="mistral:7b")
    assert waiting_reason(story) == (
        "No online Ollama node has the model mistral:7b: pull it on a node, or choose another model."
    )

    Capability.objects.update(inventory={"models": [{"name": MODEL}, {"name": "mistral:7b"}], "loaded": []})
    wait_run(story, "story", StepRun.COMPLETED)


# --- stop and resume -------------------------------------------------------------------------


def test_stop_cancels_the_running_step_and_throws_away_its_late_answer_and_resume_goes_on(
    pipeline: Cluster, lab: Lab
) -> None:
    llm = lab.ollama("llm")
    slow = lab.ollama("slow", models=("slow:7b",), hang=True)  # holds its answers until told
    story = new_story(models_by_step={"segments": "slow:7b"})
    wait_until(lambda: asked(slow) == ["SegmentsAnswer"], 10, "the segments to be asked")
    done = snapshot(story, "story")

    graph.stop(fresh(story))
    segments = run_of(story, "segments")
    assert segments.status == StepRun.CANCELLED
    assert fresh(story).state == Story.STOPPED
    slow.set(hang=False)
    wait_until(lambda: "not used" in run_of(story, "segments").log, 10, "the late answer")
    assert not story.segments.exists()
    graph.advance(story.pk)
    runner.feed()  # a pass of the feed: nothing is ready
    assert sorted(StepRun.objects.filter(story=story).values_list("step", "status")) == [
        ("segments", StepRun.CANCELLED),
        ("story", StepRun.COMPLETED),
    ]
    assert asked(llm) == ["StoryAnswer"] and asked(slow) == ["SegmentsAnswer"]

    graph.resume(fresh(story))
    story = wait_state(story, WRITTEN)
    assert snapshot(story, "story") == done
    resumed = run_of(story, "segments")
    assert resumed.pk == segments.pk and resumed.attempts == 2
    assert story.segments.exists()
    assert asked(llm).count("StoryAnswer") == 1 and asked(slow) == ["SegmentsAnswer"] * 2
    assert_graph_order(story)


# --- references and scenes -------------------------------------------------------------------


def test_character_references_render_first_and_the_shots_use_them(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm")
    lab.comfyui()
    story = new_story(
        template="test-load-image",
        references=True,
        reference_template=Template.objects.get(name="test-still-image"),
    )
    story = wait_state(story, Story.COMPLETED, timeout=30)
    shot_jobs = wait_rendered(lab, story)

    characters = list(story.characters.all())
    references = jobs_by_target(story, "reference:")
    assert sorted(references) == sorted(f"reference:{c.pk}" for c in characters)
    assert all(len(js) == 1 and js[0].status == RenderJob.COMPLETED for js in references.values())
    step = run_of(story, "references")
    assert step.status == StepRun.COMPLETED and step.finished
    assert all(js[0].finished and js[0].finished <= step.finished for js in references.values())
    for c in characters:
        assert c.reference and c.reference == references[f"reference:{c.pk}"][0].outputs[0]["path"]
    looks = {c.name: c.reference for c in characters}
    for shot in story.shots.all():
        [job] = shot_jobs[shot.target()]
        assert job.created >= step.finished
        assert job.settings.get("input_image") == (looks[shot.characters[0]] if shot.characters else None)
    assert any("input_image" in jobs[0].settings for jobs in shot_jobs.values())
    assert_graph_order(story)


def test_resuming_a_story_stopped_while_its_references_wait_does_not_queue_them_twice(
    pipeline: Cluster, lab: Lab
) -> None:
    lab.ollama("llm")  # no ComfyUI node yet: the reference images wait in the queue
    story = new_story(references=True, reference_template=Template.objects.get(name="test-still-image"))
    wait_until(lambda: jobs_by_target(story, "reference:"), 20, "the reference images to be queued")
    queued = jobs_by_target(story, "reference:")
    graph.stop(fresh(story))
    graph.resume(fresh(story))
    wait_until(
        lambda: run_of(story, "references").log.count("reference image") == 2,
        10,
        "the references step to run again",
    )
    assert jobs_by_target(story, "reference:") == queued

    lab.comfyui()
    story = wait_state(story, Story.COMPLETED, timeout=30)
    assert all(len(jobs) == 1 for jobs in wait_rendered(lab, story, "reference:").values())
    assert all(c.reference for c in story.characters.all())


def test_a_holocine_story_queues_one_render_per_scene(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm")
    story = wait_state(new_story(template="holocine-t2v", mode=Story.SCENES), WRITTEN)
    scenes = list(story.scenes.all())
    assert scenes and not story.shots.exists()
    assert current(story, "scenes") is not None and current(story, "shots") is None
    jobs = jobs_by_target(story, "scene:")
    assert sorted(jobs) == sorted(s.target() for s in scenes)
    assert all(len(jobs[s.target()]) == 1 and jobs[s.target()][0].prompt == s.positive for s in scenes)
    assert "ScenesAnswer" in asked(sim) and "ShotsAnswer" not in asked(sim)
    assert_graph_order(story)
