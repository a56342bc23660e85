"""The Movie tab and the Pipelines page: the export form and its plan, the graph by shot with each
task's status, node and time, pause, resume, retry of a failed task, the film in the player with
its subtitles, and the pages' refusals of bad input."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from renders import voice
from renders.management.commands.load_templates import load
from renders.models import RenderJob, Template
from stories import movie
from stories.models import Movie, Story
from tests.test_story_pages import story_with

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def story(db: None) -> Story:
    load()
    return story_with(shots=3)


def form_data(**extra: Any) -> dict[str, Any]:
    t = {name: Template.objects.get(name=name).pk for name in ("test-still-image", "test-i2v", "test-upscale")}
    return {
        "path": "i2v",
        "keyframe": t["test-still-image"],
        "video": t["test-i2v"],
        "upscaler": t["test-upscale"],
        "upscale": "on",
        "transition": "cut",
        "narration_fit": "hold",
        **extra,
    }


def tab(client: Client, story: Story) -> str:
    answer = client.get(reverse("stories:tab", args=[story.code, "movie"]))
    assert answer.status_code == 200
    return answer.content.decode()


def post(client: Client, name: str, story: Story, data: dict[str, Any], status: int = 200, **args: Any) -> str:
    answer = client.post(reverse(f"stories:{name}", args=[story.code, *args.values()]), data, **HTMX)
    assert answer.status_code == status, answer.content.decode()[:800]
    return answer.content.decode()


def test_every_movie_page_and_action_needs_a_login(client: Client, story: Story) -> None:
    for url in (
        reverse("stories:tab", args=[story.code, "movie"]),
        reverse("stories:pipelines"),
    ):
        assert client.get(url).status_code == 302
    for url in (
        reverse("stories:movie_plan", args=[story.code]),
        reverse("stories:movie_export", args=[story.code]),
        reverse("stories:movie_action", args=[story.code, 1, "pause"]),
        reverse("stories:movie_retry", args=[story.code, 1]),
    ):
        assert client.post(url).status_code == 302
    assert not Movie.objects.exists()


def test_the_plan_is_shown_with_its_counts_before_anything_is_queued(logged_in: Client, story: Story) -> None:
    html = tab(logged_in, story)
    assert 'id="movie-form"' in html and "Export the movie" in html
    plan = post(logged_in, "movie_plan", story, form_data())
    assert "<td>Keyframe</td><td>3</td><td>0</td>" in plan and "<td>Upscale</td><td>3</td><td>0</td>" in plan
    assert "9 tasks to render, 0 reused" in plan and "no estimate yet" in plan
    assert 'form="movie-form"' in plan  # the button that runs it
    assert not RenderJob.objects.exclude(stage="").exists() and not Movie.objects.exists()


def test_a_plan_with_a_step_left_without_template_says_which_and_queues_nothing(
    logged_in: Client, story: Story
) -> None:
    plan = post(logged_in, "movie_plan", story, form_data(upscaler=""), status=400)
    assert "Upscale template: Choose a template for this step." in plan
    wrong = post(logged_in, "movie_plan", story, form_data(path="t2v"), status=400)
    assert "starts from an image" in wrong
    assert not RenderJob.objects.exclude(stage="").exists()


def test_running_the_plan_shows_the_graph_by_shot_and_a_failed_task_can_be_retried(
    logged_in: Client, story: Story
) -> None:
    post(logged_in, "movie_export", story, form_data())
    made = Movie.objects.get()
    html = tab(logged_in, story)
    assert "Movie v1" in html and "Rendering its shots" in html
    for n in (1, 2, 3):
        assert f'id="part-{n}"' in html
    assert html.count('data-stage="keyframe"') == 3 and html.count('data-stage="upscale"') == 3
    # Shot 2's keyframe fails: its video and upscale wait, saying so, and Retry runs it again.
    state = movie.states(made)[1]
    keyframe = state.jobs[0][1]
    assert keyframe is not None
    RenderJob.objects.filter(pk=keyframe.pk).update(
        status="failed", error="CUDA out of memory", finished=timezone.now()
    )
    html = tab(logged_in, story)
    assert "CUDA out of memory" in html and "waits for a task before it that did not render" in html
    post(logged_in, "movie_retry", story, {}, pk=keyframe.pk)
    keyframe.refresh_from_db()
    assert keyframe.status == "queued"
    # Someone else's job cannot be retried from here.
    other = RenderJob.objects.create(template=keyframe.template, status="failed")
    post(logged_in, "movie_retry", story, {}, status=404, pk=other.pk)
    assert RenderJob.objects.get(pk=other.pk).status == "failed"


def test_pause_resume_and_cancel_from_the_tab(logged_in: Client, story: Story) -> None:
    post(logged_in, "movie_export", story, form_data())
    made = Movie.objects.get()
    post(logged_in, "movie_action", story, {}, version=1, what="pause")
    assert Movie.objects.get().status == "paused"
    post(logged_in, "movie_action", story, {}, status=409, version=1, what="pause")
    post(logged_in, "movie_action", story, {}, version=1, what="resume")
    post(logged_in, "movie_action", story, {}, version=1, what="cancel")
    made.refresh_from_db()
    assert made.status == "cancelled"
    assert not RenderJob.objects.filter(pk__in=movie.movie_jobs(made)).exclude(status="cancelled").exists()
    post(logged_in, "movie_action", story, {}, status=404, version=7, what="pause")


def wav(tmp_path: Path, seconds: float = 1.0) -> bytes:
    pcm = b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(int(8000 * seconds)))
    voice.write_wav(tmp_path / "song.wav", pcm, 8000)
    return (tmp_path / "song.wav").read_bytes()


def test_a_music_track_is_kept_and_a_file_that_is_not_music_is_refused(
    logged_in: Client, story: Story, tmp_path: Path
) -> None:
    fake = SimpleUploadedFile("song.mp3", b"not music at all" * 100, content_type="audio/mpeg")
    html = post(logged_in, "movie_export", story, form_data(music=fake), status=400)
    assert "The music could not be read" in html and not Movie.objects.exists()
    post(logged_in, "movie_export", story, form_data(music=SimpleUploadedFile("song.wav", wav(tmp_path), "audio/wav")))
    assert Movie.objects.get().music.startswith("inputs/music-")


def test_a_finished_film_plays_with_its_subtitles_and_earlier_versions_are_kept(
    logged_in: Client, story: Story
) -> None:
    done = {"status": "completed", "video": "movies/x/film-v1.mp4", "vtt": "movies/x/film-v1.vtt", "seconds": 12.5}
    first = Movie.objects.create(story=story, version=1, finished=timezone.now(), srt="movies/x/film-v1.srt", **done)
    Movie.objects.create(
        story=story,
        version=2,
        status="completed",
        video="movies/x/film-v2.mp4",
        vtt="movies/x/film-v2.vtt",
        srt="movies/x/film-v2.srt",
        seconds=13.0,
        finished=timezone.now(),
        chapters=[[0.0, "The bottle"]],
        warnings=["shot 2 was 24 fps: normalised to 16"],
    )
    html = tab(logged_in, story)
    assert '<video controls preload="metadata" src="/media/movies/x/film-v2.mp4"' in html
    assert '<track kind="subtitles" srclang="en" label="Narration" src="/media/movies/x/film-v2.vtt" default>' in html
    assert "The bottle" in html and "normalised to 16" in html
    assert "1 earlier export" in html and first.video in html


def test_the_pipelines_page_lists_every_running_movie_with_its_progress(logged_in: Client, story: Story) -> None:
    post(logged_in, "movie_export", story, form_data())
    answer = logged_in.get(reverse("stories:pipelines"))
    html = answer.content.decode()
    made = Movie.objects.get()
    assert f'id="pipeline-{made.code}"' in html and "0/3 shots" in html and "0/9 rendered" in html


def test_speech_and_music_from_the_pool_show_by_segment(logged_in: Client, story: Story) -> None:
    sound = {name: Template.objects.get(name=name).pk for name in ("test-speech", "test-music")}
    plan = post(logged_in, "movie_plan", story, form_data(speaker=sound["test-speech"], composer=sound["test-music"]))
    assert "<td>Speech</td><td>1</td><td>0</td>" in plan and "<td>Music</td><td>1</td><td>0</td>" in plan
    post(logged_in, "movie_export", story, form_data(speaker=sound["test-speech"], composer=sound["test-music"]))
    html = tab(logged_in, story)
    assert 'id="movie-sound"' in html and 'id="segment-1"' in html
    assert html.count('data-stage="speech"') == 1 and html.count('data-stage="music"') == 1
    # The next export starts from these choices.
    assert f'<option value="{sound["test-speech"]}" selected>' in html
