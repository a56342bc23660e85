"""`manage.py story` (create, follow, resume, retry, re-run, list, show) and the stories admin:
commands against the worker cluster's tasks run in this process and a simulated Ollama, admin
pages as a superuser."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from nodes.sim.ollama import SimOllama
from renders.management.commands.load_templates import load
from renders.models import RenderJob
from stories import graph
from stories.management.commands import story as command
from stories.models import Character, MusicCue, Scene, Segment, Shot, StepRun, Story
from tests.conftest import Cluster, executions

NET = 91 if os.environ.get("DATABASE_URL") else 90
MODEL = "llama3.2:3b"
IDEA = "A lighthouse keeper finds a message in a bottle that was written by her future self."


def story_cmd(*args: str) -> list[str]:
    """Run `manage.py story …` and return what it printed, line by line."""
    out = StringIO()
    call_command("story", *args, stdout=out)
    return out.getvalue().splitlines()


def refused(*args: str) -> str:
    with pytest.raises(CommandError) as e:
        story_cmd(*args)
    return str(e.value)


def ollama_node(name: str = "gpu-a", host: str = f"127.0.{NET}.1", port: int = 11434, **fields: Any) -> Node:
    node = Node.objects.create(name=name, host=host)
    fields.setdefault("status", Capability.ONLINE)
    fields.setdefault("inventory", {"models": [{"name": MODEL}, {"name": "qwen2.5:7b"}]})
    Capability.objects.create(node=node, kind=Capability.OLLAMA, port=port, **fields)
    return node


@pytest.fixture
def pool(db: None) -> Node:
    load()
    return ollama_node()


@pytest.fixture
def ollama(transactional_db: None, settings: Any) -> Iterator[SimOllama]:
    """A simulated Ollama on a node of the pool (that takes four steps at once)."""
    settings.RENDER_BACKOFF = 0.05
    load()
    sim = SimOllama(f"127.0.{NET}.1", 0, models=[MODEL]).start()
    ollama_node(port=sim.port, limit=4, inventory={"models": [{"name": MODEL}]})
    yield sim
    sim.close()


@pytest.fixture
def lab(ollama: SimOllama, cluster: Cluster) -> SimOllama:
    """The simulated Ollama, and the cluster's tasks running the steps (stopped before it closes)."""
    return ollama


@pytest.fixture
def gpu(lab: SimOllama, settings: Any, tmp_path: Path) -> Iterator[SimComfyUI]:
    """A simulated ComfyUI on a simulated node of the pool: the stories render (with the model-free
    test video), so they complete."""
    settings.MEDIA_ROOT = tmp_path / "media"
    sim = SimComfyUI(f"127.0.{NET}.2", 0, seconds_per_node=0.02).start()
    node = Node.objects.create(name="gpu-b", host=f"127.0.{NET}.2", simulated=True)
    Capability.objects.create(node=node, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    yield sim
    sim.close()


def rendered_once(story: Story, sim: SimComfyUI) -> None:
    """Every shot of the story rendered, each exactly once on the node."""
    jobs = RenderJob.objects.filter(story=str(story.code))
    assert jobs and {j.target: (j.status, executions(sim, j)) for j in jobs} == {
        j.target: ("completed", 1) for j in jobs
    }


def created(lines: list[str]) -> Story:
    m = re.fullmatch(r"Story ([0-9a-f-]{36}) created\.", lines[0])
    assert m, lines
    return Story.objects.get(code=m.group(1))


def a_story(mode: str = Story.SHOTS, **fields: Any) -> Story:
    return Story.objects.create(idea=IDEA, mode=mode, model=MODEL, **fields)


def a_run(story: Story, step: str, status: str = StepRun.COMPLETED, **fields: Any) -> StepRun:
    if status in (StepRun.COMPLETED, StepRun.FAILED):
        fields.setdefault("started", timezone.now() - timedelta(seconds=2.5))
        fields.setdefault("finished", timezone.now())
    return StepRun.objects.create(story=story, step=step, status=status, **fields)


# --- create, and following a real run ---------------------------------------------------------


def test_create_wait_prints_each_step_as_it_completes_until_the_story_is_done(lab: SimOllama, gpu: SimComfyUI) -> None:
    lines = story_cmd("create", IDEA, "--seconds", "15", "--genre", "mystery", "--wait", "--timeout", "60")

    story = created(lines)
    assert lines[-1] == f"Story {story.code} completed."
    for step in ("story", "segments", "characters", "shots", "narration", "music"):
        done = [line for line in lines if line.startswith(f"  {step}: completed")]
        assert len(done) == 1, lines
        assert re.fullmatch(rf"  {step}: completed in \d+\.\d s on gpu-a \(llama3\.2:3b\)", done[0]), done
    shots = Shot.objects.filter(story=story).count()
    assert shots >= 1
    jobs = f"{shots} render job{'s' if shots > 1 else ''}"
    assert re.search(rf"^  prompts: completed in \d+\.\d s, {shots} parts?$", "\n".join(lines), re.M), lines
    assert f"  renders: completed in 0.0 s: {jobs} queued, 0 kept" in [
        re.sub(r"in \d+\.\d s", "in 0.0 s", line) for line in lines
    ]
    assert RenderJob.objects.filter(story=str(story.code)).count() == shots
    assert command.NO_RUNNER not in lines
    story.refresh_from_db()
    assert (story.state, story.progress, story.genre) == (Story.COMPLETED, 1.0, "mystery")
    rendered_once(story, gpu)
    # The simulated lab renders with the model-free template that takes a prompt: the node got it.
    job = RenderJob.objects.filter(story=str(story.code)).first()
    assert job is not None and job.template.name == "test-video-prompt"
    sent = requests.get(f"{gpu.url}/history/{job.prompt_id}", timeout=5).json()[job.prompt_id]["prompt"][2]
    assert sent["5"]["inputs"]["value"] == job.prompt == Shot.objects.get(story=story, number=1).positive


def test_without_auto_render_wait_stops_at_the_held_renders_and_render_releases_them(
    lab: SimOllama, gpu: SimComfyUI
) -> None:
    lines = story_cmd("create", IDEA, "--seconds", "10", "--no-auto-render", "--wait", "--timeout", "60")

    story = created(lines)
    assert "  renders: waiting: Waiting for you: press Render to queue the shots." in lines
    assert lines[-1] == (
        f"Story {story.code} waits for you: the prompts are written; "
        f"`manage.py story render {story.code}` queues the renders."
    )
    assert not RenderJob.objects.filter(story=str(story.code)).exists()

    lines = story_cmd("render", str(story.code), "--wait", "--timeout", "30")
    assert lines[0] == f"Story {story.code}: renders released."
    assert lines[-1] == f"Story {story.code} completed."
    assert RenderJob.objects.filter(story=str(story.code)).count() == Shot.objects.filter(story=story).count()
    rendered_once(story, gpu)
    assert "has no renders waiting" in refused("render", str(story.code))


def test_a_failed_step_ends_wait_with_its_error_and_retry_goes_on(lab: SimOllama, gpu: SimComfyUI) -> None:
    lab.set(bad_answers=3, bad_kind="schema")  # every answer the first step may have does not fit

    out = StringIO()
    with pytest.raises(CommandError) as e:
        call_command("story", "create", IDEA, "--seconds", "10", "--wait", "--timeout", "60", stdout=out)
    lines = out.getvalue().splitlines()
    story = created(lines)
    assert str(e.value).startswith(f"story {story.code} failed: story failed: the model's answers did not fit, 3 times")
    assert [line for line in lines if line.startswith("  story: failed: the model's answers did not fit")]
    assert Story.objects.get(pk=story.pk).state == Story.FAILED

    lines = story_cmd("retry", str(story.code), "story", "--wait", "--timeout", "60")
    assert lines[0] == f"Story {story.code}: retrying story."
    assert lines[-1] == f"Story {story.code} completed."
    rendered_once(fresh := Story.objects.get(pk=story.pk), gpu)
    assert fresh.state == Story.COMPLETED


def test_wait_says_why_a_step_waits_once_and_does_not_say_nothing_runs_the_steps(
    lab: SimOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster is running: a step no node can take says why, and that is not taken for a
    missing worker cluster."""
    monkeypatch.setattr(command, "IDLE", 1.5)  # the cluster's feed says why it waits at once
    Capability.objects.update(status=Capability.OFFLINE)

    out = StringIO()
    with pytest.raises(CommandError) as e:
        call_command("story", "create", IDEA, "--wait", "--timeout", "3", stdout=out)
    lines = out.getvalue().splitlines()
    story = created(lines)
    assert lines[1:] == ["  story: waiting: No Ollama node is online; the step starts when one is."]
    assert str(e.value) == (
        f"gave up after 3 s: story {story.code} is waiting, 0% done "
        "(story waiting: No Ollama node is online; the step starts when one is.)"
    )


def test_wait_says_once_when_nothing_runs_the_steps(pool: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command, "IDLE", 0.3)

    out = StringIO()
    with pytest.raises(CommandError) as e:
        call_command("story", "create", IDEA, "--wait", "--timeout", "1.5", stdout=out)
    lines = out.getvalue().splitlines()
    story = created(lines)
    assert lines[1:] == [command.NO_RUNNER]
    assert str(e.value) == f"gave up after 1.5 s: story {story.code} is running, 0% done"
    assert StepRun.objects.get(story=story).status == StepRun.PENDING


def test_a_runner_busy_with_other_stories_is_not_taken_for_a_missing_one(
    pool: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(command, "IDLE", 0.3)
    a_run(a_story(), "story", StepRun.RUNNING, owner="steps-elsewhere", heartbeat=timezone.now())

    out = StringIO()
    with pytest.raises(CommandError, match="gave up after 1 s"):
        call_command("story", "create", IDEA, "--wait", "--timeout", "1", stdout=out)
    assert command.NO_RUNNER not in out.getvalue()


@pytest.mark.django_db
def test_wait_says_a_reason_the_parts_of_a_step_share_once() -> None:
    story = a_story(state=Story.RUNNING)
    a_run(story, "prompts", StepRun.RUNNING)
    busy = "Every Ollama node with llama3.2:3b is busy; the step starts when one is free."
    for n in (1, 2, 3):
        a_run(story, "prompts", StepRun.PENDING, part=n, waiting=busy)

    out = StringIO()
    with pytest.raises(CommandError):
        call_command("story", "resume", str(story.code), "--wait", "--timeout", "0.5", stdout=out)
    assert out.getvalue().splitlines()[1:] == ["  prompts: running, 0 of 3 done", f"  prompts: waiting: {busy}"]


# --- create: what it takes and what it refuses ------------------------------------------------


def test_create_takes_the_first_known_model_and_the_mode_s_template_and_starts_the_story(pool: Node) -> None:
    story = created(story_cmd("create", f"  {IDEA}  "))
    assert (story.idea, story.model, story.mode, story.template.name) == (IDEA, MODEL, "shots", "wan22-t2v")
    assert story.auto_render
    assert list(story.runs.values_list("step", "status")) == [("story", StepRun.PENDING)]

    story = created(
        story_cmd(
            "create",
            IDEA,
            "--mode",
            "scenes",
            "--model",
            "qwen2.5:7b",
            "--style",
            "film noir",
            "--seconds",
            "90",
            "--no-auto-render",
            "--step-model",
            "scenes=llama3.2:3b",
        )
    )
    assert (story.mode, story.model, story.template.name) == ("scenes", "qwen2.5:7b", "holocine-t2v")
    assert story.models_by_step == {"scenes": "llama3.2:3b"}
    assert (story.style, story.target_seconds, story.auto_render) == ("film noir", 90, False)

    story = created(story_cmd("create", IDEA, "--template", "test-video-mp4"))
    assert story.template.name == "test-video-mp4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "idea"),
        (["x" * 20_001], "20000"),
        ([IDEA, "--mode", "films"], "invalid choice: 'films'"),
        ([IDEA, "--template", "nope"], "no template named 'nope'; there are: flux-still, holocine-t2v"),
        ([IDEA, "--model", "mistral:7b"], "mistral:7b; the known models are llama3.2:3b, qwen2.5:7b"),
        ([IDEA, "--seconds", "0"], "--seconds"),
        ([IDEA, "--genre", "g" * 61], "--genre"),
        ([IDEA, "--step-model", "shots=mistral:7b"], "--step-model: No Ollama node has the model mistral:7b"),
    ],
)
def test_create_refuses_bad_input_in_one_line_and_creates_nothing(pool: Node, args: list[str], message: str) -> None:
    error = refused("create", *args)
    assert message in error
    assert "\n" not in error
    assert not Story.objects.exists()
    assert not StepRun.objects.exists()


def test_create_without_a_model_refuses_when_no_node_has_reported_one(pool: Node) -> None:
    Capability.objects.update(inventory={})
    assert refused("create", IDEA) == (
        "--model: no Ollama node has reported a model yet: add one on the Nodes page, or name one"
    )
    both = refused("create", "")
    assert both.startswith("idea: ") and both.endswith(
        "; --model: no Ollama node has reported a model yet: add one on the Nodes page, or name one"
    )
    assert not Story.objects.exists()
    # Nothing known to check it against: the model named is taken as it is.
    assert created(story_cmd("create", IDEA, "--model", "mistral:7b")).model == "mistral:7b"


# --- list, show, resume, retry, re-run --------------------------------------------------------


@pytest.mark.django_db
def test_list_shows_code_state_progress_and_title_newest_first() -> None:
    assert story_cmd("list") == ["No stories yet."]
    first = a_story(title="The Keeper", state=Story.COMPLETED, progress=1.0)
    second = a_story(created=timezone.now() + timedelta(seconds=1), state=Story.RUNNING, progress=0.25)

    assert story_cmd("list") == [
        f"{second.code}  running    25%  {IDEA[:60]}",
        f"{first.code}  completed 100%  The Keeper",
    ]


@pytest.mark.django_db
def test_show_lists_every_step_with_its_status_node_model_time_and_error() -> None:
    gpu = ollama_node()
    story = a_story(title="The Keeper", state=Story.FAILED, progress=0.25)
    a_run(story, "story", node=gpu, model=MODEL)
    a_run(story, "segments", node=gpu, model=MODEL, version=2, edited=True)
    a_run(story, "characters", StepRun.FAILED, node=gpu, model=MODEL, attempts=3, error="gpu-a: out of memory")
    a_run(story, "narration", StepRun.PENDING, waiting="No Ollama node is online; the step starts when one is.")

    lines = story_cmd("show", str(story.pk))
    assert lines == [
        f"Story {story.code}: The Keeper",
        f"  idea: {IDEA}",
        f"  Shots (Wan / Hunyuan), model {MODEL}, template none, 60 s",
        "  Failed, 25% done",
        f"  story       completed, on gpu-a ({MODEL}), 2.5 s",
        f"  segments    completed, v2, edited by hand, on gpu-a ({MODEL}), 2.5 s",
        f"  characters  failed, on gpu-a ({MODEL}), attempt 3 of 3, 2.5 s: gpu-a: out of memory",
        "  shots       not started",
        "  prompts     not started",
        "  narration   pending: No Ollama node is online; the step starts when one is.",
        "  music       not started",
        "  renders     not started",
    ]


@pytest.mark.django_db
def test_show_lists_the_parts_of_a_fanned_out_step_that_failed() -> None:
    story = a_story()
    a_run(story, "prompts", StepRun.FAILED, error="1 of 2 parts did not complete; the first, 2: boom")
    a_run(story, "prompts", part=1)
    a_run(story, "prompts", StepRun.FAILED, part=2, error="boom")

    lines = story_cmd("show", str(story.code))
    assert (
        "  prompts     failed, 1 of 2 parts completed, 2.5 s: 1 of 2 parts did not complete; the first, 2: boom"
        in lines
    )
    assert "      2 failed, 2.5 s: boom" in lines


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["show", "resume", "render", "retry", "rerun"])
def test_an_unknown_story_is_refused(action: str) -> None:
    a_story()
    extra = ["story"] if action in ("retry", "rerun") else []
    assert refused(action, "1234", *extra) == "no story 1234"
    assert refused(action, "not-a-code", *extra) == "no story not-a-code"
    code = "0b4bdf14-3e0f-4f6a-9a44-1a2b3c4d5e6f"
    assert refused(action, code, *extra) == f"no story {code}"


@pytest.mark.django_db
def test_resume_starts_again_what_stop_cancelled() -> None:
    story = a_story()
    graph.advance(story.pk)
    graph.stop(story)
    assert StepRun.objects.get(story=story).status == StepRun.CANCELLED

    assert story_cmd("resume", str(story.code)) == [f"Story {story.code} resumed."]
    story.refresh_from_db()
    assert not story.stopped
    assert StepRun.objects.get(story=story).status == StepRun.PENDING


@pytest.mark.django_db
def test_retry_runs_a_failed_step_again_and_refuses_the_others() -> None:
    story = a_story()
    a_run(story, "story")
    failed = a_run(story, "segments", StepRun.FAILED, attempts=3, error="boom")

    assert story_cmd("retry", str(story.code), "segments") == [f"Story {story.code}: retrying segments."]
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (StepRun.PENDING, 0)

    code = str(story.code)
    assert refused("retry", code, "story") == "story is completed: only a failed step can be retried"
    assert refused("retry", code, "music") == f"music has not run yet in story {code}"
    assert refused("retry", code, "scenes") == (
        f"no step 'scenes' in story {code}; its steps: story, segments, characters, shots, prompts, narration, "
        "music, renders"
    )


@pytest.mark.django_db
def test_rerun_does_a_step_and_everything_after_it_again() -> None:
    story = a_story(mode=Story.SCENES)
    for step in ("story", "segments", "characters", "narration"):
        a_run(story, step)

    lines = story_cmd("rerun", str(story.code), "segments")
    assert lines == [
        f"Story {story.code}: running again: segments, characters, scenes, prompts, narration, music, renders."
    ]
    current = {r.step: (r.status, r.version) for r in story.runs.current()}
    assert current == {"story": (StepRun.COMPLETED, 1), "segments": (StepRun.PENDING, 2)}
    assert story.runs.filter(status=StepRun.STALE).count() == 3

    assert "its steps: story, segments, characters, scenes, prompts" in refused("rerun", str(story.code), "shots")


# --- the admin --------------------------------------------------------------------------------


@pytest.fixture
def written(db: None) -> Story:
    """A story the pipeline got as far as the prompts with: a row of everything."""
    gpu = ollama_node()
    story = a_story(title="The Keeper", state=Story.FAILED)
    for step in ("story", "segments", "characters", "shots", "narration", "music"):
        a_run(story, step, node=gpu, model=MODEL, output={"step": step}, log="12:00:00 completed\n")
    segment = Segment.objects.create(story=story, number=1, title="Storm", summary="A storm comes.")
    Character.objects.create(story=story, name="Mara", role="keeper", look="grey coat", personality="stubborn")
    Shot.objects.create(story=story, segment=segment, number=1, description="The lamp turns.", positive="a lamp")
    Scene.objects.create(story=story, segment=segment, number=1, description="Night.", shots=["wide", "close"])
    MusicCue.objects.create(story=story, segment=segment, number=1, mood="tense", description="Low strings.")
    a_run(story, "prompts", StepRun.FAILED, error="1 of 1 parts did not complete; the first, 1: boom")
    a_run(story, "prompts", StepRun.FAILED, part=1, error="boom")
    return story


@pytest.mark.parametrize(
    ("model", "related"),
    [
        ("story", ""),
        ("steprun", "runs"),
        ("segment", "segments"),
        ("character", "characters"),
        ("shot", "shots"),
        ("scene", "scenes"),
        ("musiccue", "music_cues"),
    ],
)
def test_admin_lists_and_pages_answer_for_a_superuser(
    admin_client: Client, written: Story, model: str, related: str
) -> None:
    listing = admin_client.get(reverse(f"admin:stories_{model}_changelist"))
    assert listing.status_code == 200
    assert "The Keeper" in listing.content.decode()
    obj = getattr(written, related).first() if related else written
    page = admin_client.get(reverse(f"admin:stories_{model}_change", args=[obj.pk]))
    assert page.status_code == 200
    assert escape(str(obj)) in page.content.decode()


def test_admin_story_page_links_to_what_the_pipeline_wrote(admin_client: Client, written: Story) -> None:
    other = a_story(title="Another")
    a_run(other, "story")
    html = admin_client.get(reverse("admin:stories_story_change", args=[written.pk])).content.decode()
    runs = reverse("admin:stories_steprun_changelist") + f"?story__id__exact={written.pk}"
    assert f'<a href="{runs}">8 step runs</a>' in html
    assert "1 segments" in html and "1 characters" in html and "1 music cues" in html

    listing = admin_client.get(runs)
    assert listing.status_code == 200
    assert "8 step runs" in listing.content.decode()


def test_admin_stops_and_resumes_stories(admin_client: Client, written: Story) -> None:
    url = reverse("admin:stories_story_changelist")
    running = written.runs.get(step="prompts", part=1)
    StepRun.objects.filter(pk=running.pk).update(status=StepRun.RUNNING)

    answer = admin_client.post(url, {"action": "stop", "_selected_action": [written.pk]}, follow=True)
    assert "Stopped 1 story(ies)." in answer.content.decode()
    written.refresh_from_db()
    running.refresh_from_db()
    assert (written.stopped, written.state, running.status) == (True, Story.STOPPED, StepRun.CANCELLED)

    answer = admin_client.post(url, {"action": "resume", "_selected_action": [written.pk]}, follow=True)
    assert "Resumed 1 story(ies)." in answer.content.decode()
    written.refresh_from_db()
    running.refresh_from_db()
    assert (written.stopped, running.status) == (False, StepRun.PENDING)


def test_admin_retries_failed_runs_a_part_with_its_step(admin_client: Client, written: Story) -> None:
    whole = written.runs.get(step="prompts", part=0)
    part = written.runs.get(step="prompts", part=1)
    done = written.runs.get(step="story")
    url = reverse("admin:stories_steprun_changelist")

    answer = admin_client.post(url, {"action": "retry", "_selected_action": [part.pk, done.pk]}, follow=True)
    html = answer.content.decode()
    assert "Retried 1 failed run(s)." in html
    assert "1 selected run(s) had not failed: left as they were." in html
    whole.refresh_from_db()
    part.refresh_from_db()
    assert (whole.status, part.status, part.attempts) == (StepRun.RUNNING, StepRun.PENDING, 0)


def test_admin_reruns_from_the_selected_step(admin_client: Client, written: Story) -> None:
    shots = written.runs.get(step="shots")
    url = reverse("admin:stories_steprun_changelist")

    answer = admin_client.post(url, {"action": "rerun_from", "_selected_action": [shots.pk]}, follow=True)
    assert "The Keeper: running again: shots, prompts, renders." in answer.content.decode()
    shots.refresh_from_db()
    assert shots.status == StepRun.STALE
    again = written.runs.current().get(step="shots")
    assert (again.status, again.version) == (StepRun.PENDING, 2)
    assert not written.runs.current().filter(step="prompts").exists()
    assert written.runs.current().get(step="narration").status == StepRun.COMPLETED


def test_admin_edit_of_a_character_becomes_the_step_s_new_version(admin_client: Client, written: Story) -> None:
    mara = written.characters.get()
    url = reverse("admin:stories_character_change", args=[mara.pk])

    answer = admin_client.post(
        url, {"name": "Mara", "role": "keeper", "look": "yellow oilskin", "personality": "stubborn"}, follow=True
    )
    assert "The characters of The Keeper changed: the steps after them run again." in answer.content.decode()
    edited = written.runs.current().get(step="characters")
    assert (edited.status, edited.version, edited.edited) == (StepRun.COMPLETED, 2, True)
    assert edited.output == {
        "characters": [{"name": "Mara", "role": "keeper", "look": "yellow oilskin", "personality": "stubborn"}]
    }
    assert "edited by hand by admin" in edited.log
    assert written.runs.current().get(step="shots").status == StepRun.PENDING
    assert written.runs.current().get(step="segments").version == 1


def test_admin_shows_what_the_pipeline_wrote_without_letting_it_be_changed(
    admin_client: Client, written: Story
) -> None:
    shot = written.shots.get()
    page = admin_client.get(reverse("admin:stories_shot_change", args=[shot.pk])).content.decode()
    assert 'name="description"' not in page
    admin_client.post(reverse("admin:stories_shot_change", args=[shot.pk]), {"description": "changed"})
    shot.refresh_from_db()
    assert shot.description == "The lamp turns."
    assert admin_client.get(reverse("admin:stories_shot_add")).status_code == 403
