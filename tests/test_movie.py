""" "Export the movie": the plan from intent (what is queued, what is reused, the estimate), its
run on simulated nodes to the finished film, and its controls."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import av
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from renders import dispatch
from renders.management.commands.load_templates import load
from renders.models import JobInput, Queue, RenderJob, Speed, Template
from spoonfeeder import tasks, work
from stories import movie
from stories.models import Movie, Shot, StepRun, Story
from stories.rendering import queue_renders
from tests.conftest import Cluster, executions, wait_until
from tests.test_story_pages import story_with

NET = 57 if os.environ.get("DATABASE_URL") else 56


def options(story: Story, path: str = Movie.I2V, **fields: Any) -> movie.Options:
    templates = {
        movie.KEYFRAME: Template.objects.get(name="test-still-image"),
        movie.VIDEO: Template.objects.get(name="test-i2v" if path == Movie.I2V else "test-video-mp4"),
        movie.UPSCALE: Template.objects.get(name="test-upscale"),
        movie.INTERP: Template.objects.get(name="test-interp"),
    }
    return movie.Options(path=path, templates=templates, **fields)


@pytest.fixture
def story(db: None) -> Story:
    load()
    return story_with(shots=4)


def test_a_plan_counts_every_task_of_every_shot_and_saves_nothing(story: Story) -> None:
    before = RenderJob.objects.count()
    planned = movie.plan(story, options(story, upscale=True, interpolate=True))
    assert [p.number for p, _ in planned.parts] == [1, 2, 3, 4]
    assert [t.stage for t in planned.parts[0][1]] == ["keyframe", "video", "upscale", "interp"]
    assert planned.counts == {s: {"new": 4, "reused": 0} for s in ("keyframe", "video", "upscale", "interp")}
    assert planned.estimate is None and planned.unmeasured == 16  # nothing measured yet
    assert RenderJob.objects.count() == before


def test_the_text_to_video_path_reuses_the_shots_the_renders_step_made(story: Story) -> None:
    run = StepRun.objects.create(story=story, step="renders", status=StepRun.RUNNING, owner="me")
    queue_renders(story, run)  # with the story's template, test-video-mp4
    planned = movie.plan(story, options(story, Movie.T2V, upscale=True))
    assert planned.counts == {"video": {"new": 0, "reused": 4}, "upscale": {"new": 4, "reused": 0}}


def test_an_estimate_comes_from_measured_speeds(story: Story) -> None:
    gpu = Node.objects.create(name="gpu", host=f"127.0.{NET}.9")
    cap = Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=8188, status=Capability.ONLINE)
    for name in ("test-still-image", "test-i2v"):
        Speed.objects.create(capability=cap, template=Template.objects.get(name=name), seconds_per_unit=2.0)
    planned = movie.plan(story, options(story))
    expected = sum(t.job.work * 2.0 for _, tasks in planned.parts for t in tasks)
    assert planned.estimate == pytest.approx(expected) and planned.unmeasured == 0


def test_started_it_queues_each_chain_in_story_order_and_a_second_plan_reuses_it(story: Story) -> None:
    made = movie.start(story, options(story, upscale=True))
    jobs = list(RenderJob.objects.filter(story=str(story.code)).exclude(stage="").order_by("position"))
    assert [(j.target, j.stage) for j in jobs[:3]] == [
        ("shot:1", "keyframe"),
        ("shot:1", "video"),
        ("shot:1", "upscale"),
    ]
    assert [i.parameter for i in JobInput.objects.filter(job__in=jobs[:3]).order_by("job__position")] == [
        "image",
        "video",
    ]
    assert [p.number for p in made.parts.all()] == [1, 2, 3, 4]
    assert made.plan["counts"]["keyframe"] == {"new": 4, "reused": 0}
    # Nothing changed: everything is reused. One prompt changed: that shot's chain is new.
    again = movie.plan(story, options(story, upscale=True))
    assert again.new == 0 and again.reused == 12
    Shot.objects.filter(story=story, number=2).update(positive="a storm at night")
    changed = movie.plan(story, options(story, upscale=True))
    assert changed.counts["keyframe"] == {"new": 1, "reused": 3} and changed.new == 3


def test_a_new_movie_replaces_a_running_one_and_cancels_what_it_no_longer_needs(story: Story) -> None:
    first = movie.start(story, options(story))
    Shot.objects.filter(story=story, number=1).update(positive="a storm at night")
    second = movie.start(story, options(story))
    first.refresh_from_db()
    assert (first.status, first.error, second.version) == ("cancelled", "replaced by v2", 2)
    old = {pk for chain in first.parts.values_list("chain", flat=True) for _, pk, _ in chain}
    new = {pk for chain in second.parts.values_list("chain", flat=True) for _, pk, _ in chain}
    assert RenderJob.objects.filter(pk__in=old - new).exclude(status="cancelled").count() == 0
    assert RenderJob.objects.filter(pk__in=new, status="queued").count() == len(new) == 8


def test_pause_holds_its_queued_tasks_and_resume_queues_them_again(story: Story) -> None:
    made = movie.start(story, options(story))
    assert movie.pause(made)
    jobs = RenderJob.objects.filter(pk__in=movie.movie_jobs(made))
    assert set(jobs.values_list("status", flat=True)) == {"held"}
    assert not RenderJob.objects.runnable().exists()
    assert movie.resume(made)
    assert set(jobs.values_list("status", flat=True)) == {"queued"}


def test_pause_takes_back_a_task_claimed_for_a_node_but_not_sent_yet(story: Story) -> None:
    gpu = Node.objects.create(name="gpu", host=f"127.0.{NET}.8")
    cap = Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=8188, status=Capability.ONLINE)
    made = movie.start(story, options(story))
    first = movie.states(made)[0].last
    assert first is not None
    # As a claim leaves it, its attempt on the way; and one already sent, which goes on.
    claim = {"status": "assigned", "node": gpu, "capability": cap, "prompt_id": "p", "attempts": 1}
    RenderJob.objects.filter(pk=first.pk).update(**claim)
    sent = movie.states(made)[1].last
    assert sent is not None
    RenderJob.objects.filter(pk=sent.pk).update(**claim, client_id="spoonfeeder-p")
    assert movie.pause(made)
    first.refresh_from_db()
    assert (first.status, first.capability_id, first.node_id, first.attempts) == ("held", None, None, 0)
    assert RenderJob.objects.get(pk=sent.pk).status == "assigned"
    # Its attempt, when it comes, finds it no longer its own and sends nothing.
    assert dispatch.Attempt.take(first.pk, "p") is None
    assert movie.resume(made) and RenderJob.objects.get(pk=first.pk).status == "queued"


def test_a_story_with_nothing_to_film_or_no_template_says_what_to_do(story: Story) -> None:
    chosen = options(story)
    del chosen.templates[movie.KEYFRAME]
    with pytest.raises(movie.PlanError, match="Choose a template for: Keyframe"):
        movie.plan(story, chosen)
    Shot.objects.filter(story=story).delete()
    with pytest.raises(movie.PlanError, match="no shots yet"):
        movie.plan(story, options(story))


def test_the_export_command_prints_the_plan_and_refuses_an_unknown_step(story: Story) -> None:
    out = StringIO()
    call_command("story", "export", str(story.pk), "--path", "i2v", "--dry-run", stdout=out)
    assert "4 shots; keyframe 4 new, 0 reused, video 4 new, 0 reused" in out.getvalue()
    assert not Movie.objects.exists()
    with pytest.raises(CommandError, match="the step is one of keyframe, video, upscale, interp"):
        call_command("story", "export", str(story.pk), "--template", "colour=x", stdout=StringIO())


# --- the whole way, on simulated nodes ---------------------------------------------------------


@pytest.fixture
def node(transactional_db: None, fast: None) -> Iterator[SimComfyUI]:
    load()
    sim = SimComfyUI(f"127.0.{NET}.1", 0, seconds_per_node=0.01).start()
    gpu = Node.objects.create(name="gpu", host=f"127.0.{NET}.1")
    Capability.objects.create(node=gpu, kind=Capability.COMFYUI, port=sim.port, status=Capability.ONLINE)
    yield sim
    sim.close()


def test_the_narration_and_the_music_cues_are_planned_per_segment_when_templates_are_chosen(story: Story) -> None:
    chosen = options(story)
    chosen.templates[movie.SPEECH] = Template.objects.get(name="test-speech")
    chosen.templates[movie.MUSIC] = Template.objects.get(name="test-music")
    planned = movie.plan(story, chosen)
    assert planned.counts["speech"] == {"new": 1, "reused": 0} and planned.counts["music"] == {"new": 1, "reused": 0}
    [(number, speech), (_, music)] = planned.tracks
    assert (number, speech.job.prompt, speech.job.target) == (1, "The sea gives back.", "segment:1")
    # As long as the segment's four 5 s shots; the speech as long as its words take.
    assert music.job.prompt == "eerie: low strings" and music.job.settings == {"seconds": 20.0}
    assert speech.job.settings == {"seconds": round(len("The sea gives back.") * movie.SPEECH_PER_CHARACTER, 1)}
    made = movie.start(story, chosen)
    assert [stage for _, stage, _, _ in made.tracks] == ["speech", "music"]
    assert len(movie.movie_jobs(made)) == 4 * 2 + 2
    assert movie.plan(story, chosen).counts["music"] == {"new": 0, "reused": 1}
    # An empty cue gets no music task, and the plan says so.
    story.music_cues.update(description=" ")
    empty = movie.plan(story, chosen)
    assert "music" not in {t.stage for _, t in empty.tracks}
    assert empty.notes == ["Segment 1's music cue is empty: it gets no music of its own."]


def test_a_story_is_exported_to_a_film_with_every_task_run_once(
    cluster: Cluster, node: SimComfyUI, tmp_path: Path
) -> None:
    story = story_with(shots=3, render_settings={"width": 96, "height": 64, "fps": 8})
    Shot.objects.filter(story=story).update(duration=1.0)
    chosen = options(story, upscale=True, interpolate=True)
    chosen.templates[movie.SPEECH] = Template.objects.get(name="tts-kokoro")  # the simulator has them
    chosen.templates[movie.MUSIC] = Template.objects.get(name="music-stable-audio")
    made = movie.start(story, chosen)

    def finished() -> bool:
        made.refresh_from_db()
        assert made.status not in ("failed", "cancelled"), made.error
        return made.status == "completed"

    wait_until(finished, 90, "the movie to be exported")
    for pk in movie.movie_jobs(made):
        job = RenderJob.objects.get(pk=pk)
        assert executions(node, job) == 1, (job.target, job.stage)
    media = tmp_path / "media"
    with av.open(str(media / made.video)) as film:
        video = film.streams.video[0]
        assert (video.width, video.height) == (192, 128)  # upscaled twice
        assert film.streams.audio
        assert made.seconds == pytest.approx(3.0, abs=0.3)
    assert (media / made.vtt).read_text().startswith("WEBVTT")
    assert made.chapters and made.chapters[0][1] == "The bottle"
    # The narration was spoken and the cue played on the pool: nothing fell back.
    assert not [w for w in made.warnings if "did not render" in w], made.warnings
    assert {stage for _, stage, _, _ in made.tracks} == {"speech", "music"}


def test_music_that_fails_on_the_pool_leaves_the_film_without_it_saying_so(cluster: Cluster, node: SimComfyUI) -> None:
    story = story_with(shots=1, render_settings={"width": 96, "height": 64, "fps": 8})
    Shot.objects.filter(story=story).update(duration=1.0)
    chosen = options(story, Movie.T2V)
    chosen.templates[movie.MUSIC] = Template.objects.get(name="music-stable-audio")
    node.knobs.models = {**node.knobs.models, "checkpoints": []}  # the node lost the model meanwhile
    made = exported(movie.start(story, chosen))
    assert made.status == "completed", made.error
    [warning] = [w for w in made.warnings if "did not render" in w]
    assert warning.startswith("Segment 1's music did not render (") and warning.endswith("it has no music of its own.")


def exported(made: Movie, timeout: float = 90) -> Movie:
    def finished() -> bool:
        made.refresh_from_db()
        assert made.status not in ("cancelled",), made.error
        return made.status in ("completed", "failed")

    wait_until(finished, timeout, f"movie v{made.version} to be exported")
    return made


@pytest.fixture
def filmed(cluster: Cluster, node: SimComfyUI, tmp_path: Path) -> Movie:
    """A story of two 1 s shots rendered (text to video) and exported once."""
    story = story_with(shots=2, render_settings={"width": 96, "height": 64, "fps": 8})
    Shot.objects.filter(story=story).update(duration=1.0)
    made = exported(movie.start(story, options(story, Movie.T2V)))
    assert made.status == "completed", made.error
    return made


def test_an_export_whose_worker_died_is_queued_again_and_reuses_what_it_encoded(filmed: Movie, tmp_path: Path) -> None:
    dead = f"{work.HOST}:{2**22 + 7}:gone"  # a process of this machine that is not running
    Movie.objects.filter(pk=filmed.pk).update(status="exporting", worker=dead, heartbeat=timezone.now(), video="")
    tasks.ensure_sweeping()
    made = exported(filmed)
    assert (made.status, made.crashes) == ("completed", 1), made.error
    assert made.message == "encoded 0 shot(s), reused 2"
    with av.open(str(tmp_path / "media" / made.video)) as film:
        assert film.streams.video and film.streams.audio


def test_a_worker_that_keeps_dying_on_an_export_gets_it_quarantined(filmed: Movie) -> None:
    dead = f"{work.HOST}:{2**22 + 7}:gone"
    Movie.objects.filter(pk=filmed.pk).update(status="exporting", worker=dead, heartbeat=timezone.now(), crashes=2)
    tasks.ensure_sweeping()
    made = exported(filmed)
    assert made.status == "failed" and made.error == "quarantined: the worker exporting it died 3 times"


def test_an_export_missing_a_shots_file_fails_saying_which_and_exports_again_once_it_is_back(
    filmed: Movie, tmp_path: Path
) -> None:
    clip = tmp_path / "media" / movie.states(filmed)[1].last.outputs[0]["path"]  # type: ignore[union-attr]
    kept = clip.read_bytes()
    clip.unlink()
    again = exported(movie.start(filmed.story, options(filmed.story, Movie.T2V)))
    assert again.status == "failed" and "shot:2" in again.error and again.video == ""
    clip.write_bytes(kept)
    assert movie.export_again(again)
    assert exported(again).status == "completed"


def test_the_export_command_runs_the_plan_and_follows_it_to_the_film(cluster: Cluster, node: SimComfyUI) -> None:
    story = story_with(shots=2, render_settings={"width": 96, "height": 64, "fps": 8})
    Shot.objects.filter(story=story).update(duration=1.0)
    out = StringIO()
    call_command(
        "story",
        "export",
        str(story.code),
        "--template",
        "video=test-video-mp4",
        "--wait",
        "--timeout",
        "90",
        stdout=out,
    )
    made = Movie.objects.get(story=story)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"Story {story.code}: 2 shots; video 2 new, 0 reused")
    assert lines[1] == f"Movie v1 ({made.code}) started."
    assert lines[-1].startswith("The film: ") and lines[-1].endswith(f"{made.video} ({made.seconds:.1f} s)")
    for pk in movie.movie_jobs(made):
        assert executions(node, RenderJob.objects.get(pk=pk)) == 1


def test_a_shot_left_out_gets_a_title_card_and_the_film_is_exported_without_it(
    cluster: Cluster, node: SimComfyUI, tmp_path: Path
) -> None:
    story = story_with(shots=2, render_settings={"width": 96, "height": 64, "fps": 8})
    Shot.objects.filter(story=story).update(duration=1.0)
    Queue.set_paused(True)  # nothing starts until shot 1's render has been cancelled
    made = movie.start(story, options(story, Movie.T2V, leave_out_failed=True))
    first = movie.states(made)[0].last
    assert first is not None and first.cancel()
    Queue.set_paused(False)
    made = exported(made)
    assert made.status == "completed", made.error
    assert made.seconds == pytest.approx(2.0, abs=0.3)  # the card stands for the shot
    with av.open(str(tmp_path / "media" / made.video)) as film:
        assert film.streams.video[0].frames or film.duration
    assert executions(node, first) == 0


def test_pauses_replans_and_queue_pauses_over_short_prefetched_tasks_on_two_nodes_render_each_once(
    cluster: Cluster, node: SimComfyUI
) -> None:
    other = SimComfyUI(f"127.0.{NET}.2", 0, seconds_per_node=0.01).start()
    try:
        second = Node.objects.create(name="gpu-2", host=f"127.0.{NET}.2")
        Capability.objects.create(node=second, kind=Capability.COMFYUI, port=other.port, status=Capability.ONLINE)
        story = story_with(shots=6, render_settings={"width": 96, "height": 64, "fps": 8})
        Shot.objects.filter(story=story).update(duration=1.0)
        made = movie.start(story, options(story, upscale=True))
        rng = random.Random(14)
        for round_ in range(6):

            def progressed(done: int = 3 * round_) -> bool:
                return RenderJob.objects.filter(status="completed").count() >= done

            wait_until(progressed, 60, "some progress")
            step = rng.choice(["pause", "queue", "replan"])
            if step == "pause" and movie.pause(made):
                assert movie.resume(made)
            elif step == "queue":
                Queue.set_paused(True)
                Queue.set_paused(False)
            else:  # a prompt rewritten mid-way: the movie is planned again and replaces this one
                Shot.objects.filter(story=story, number=rng.randint(1, 6)).update(positive=f"rewritten {round_}")
                made = movie.start(story, options(story, upscale=True))
        made = exported(made, timeout=120)
        assert made.status == "completed", made.error
        for job in RenderJob.objects.filter(story=str(story.code), status="completed"):
            assert executions(node, job) + executions(other, job) == 1, (job.target, job.stage)
    finally:
        other.close()
