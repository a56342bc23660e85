"""The story pages without a browser: a new story through the form (and every way to get it
wrong), the list and StoryDetail showing what the rows say, each of the user's controls changing
the rows as the step graph does, refusals that change nothing, login, CSRF, escaping, the live
fragments, and a constant number of queries whatever the story's size."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from nodes.models import Capability, Node
from renders.management.commands.load_templates import load
from renders.models import RenderJob, Template
from spoonfeeder import relay
from stories import graph, live, runner
from stories.models import Character, MusicCue, Scene, Segment, Shot, StepRun, Story
from tests.conftest import communicator, session_for
from tests.test_render_page import output

HTMX = {"HTTP_HX_REQUEST": "true"}
MODEL = "llama3.2:3b"
FORM = {
    "idea": "A lighthouse keeper finds a message in a bottle that was written by her future self.",
    "genre": "mystery",
    "style": "film noir",
    "target_seconds": "60",
    "mode": "shots",
    "model": MODEL,
    "auto_render": "on",
    "resolution": "832x480",
    "frames": "33",
    "fps": "16",
    "steps": "12",
    "cfg": "4.5",
    "seed": "1234",
    "lora": "",
}
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def templates(db: None) -> None:
    load()


@pytest.fixture
def ollama(db: None) -> Node:
    node = Node.objects.create(name="writer", host="127.0.70.9")
    Capability.objects.create(
        node=node,
        kind=Capability.OLLAMA,
        port=11434,
        status=Capability.ONLINE,
        inventory={"models": [{"name": MODEL}, {"name": "qwen2.5:7b"}]},
    )
    return node


def form(**changes: Any) -> dict[str, Any]:
    return {**FORM, **changes}


def field_errors(html: str, name: str) -> str:
    m = re.search(rf'<div class="field field-{name}">.*?</div>', html, re.S)
    assert m, f"no field {name} on the page"
    return m.group(0)


# --- building a story as the pipeline leaves it ---------------------------------------------------


def run(story: Story, step: str, status: str = StepRun.COMPLETED, **fields: Any) -> StepRun:
    started = timezone.now() - timedelta(seconds=20)
    defaults: dict[str, Any] = {"started": started, "attempts": 1, "model": MODEL}
    if status in StepRun.ENDED or status == StepRun.STALE:
        defaults["finished"] = started + timedelta(seconds=14.2)
    return StepRun.objects.create(story=story, step=step, status=status, **{**defaults, **fields})


def story_with(shots: int = 3, prompted: int | None = None, *, node: Node | None = None, **fields: Any) -> Story:
    """A story whose steps up to the prompts are done; `prompted` of its shots' prompts are
    written (all by default), the rest wait; with a render job per shot, each completed."""
    prompted = shots if prompted is None else prompted
    story = Story.objects.create(
        **{
            "idea": "A lighthouse keeper finds a message in a bottle.",
            "title": "The Keeper",
            "text": "Mara keeps the light.\n\nOne morning a bottle washes up.",
            "model": MODEL,
            "template": Template.objects.get(name="test-video-mp4"),
            "state": Story.RUNNING,
            "progress": 0.6,
            **fields,
        }
    )
    segment = Segment.objects.create(
        story=story, number=1, title="The bottle", summary="It washes up.", narration="The sea gives back."
    )
    Character.objects.bulk_create(
        Character(story=story, name=name, role=role, look=look, personality="calm")
        for name, role, look in (("Mara", "keeper", "grey coat, red scarf"), ("Tom", "fisherman", "yellow oilskin"))
    )
    Shot.objects.bulk_create(
        Shot(
            story=story,
            segment=segment,
            number=n,
            description=f"shot {n} of the sea",
            camera="wide",
            characters=["Mara"],
            positive=f"positive prompt {n}" if n <= prompted else "",
            negative="blurry" if n <= prompted else "",
        )
        for n in range(1, shots + 1)
    )
    MusicCue.objects.create(story=story, segment=segment, number=1, mood="eerie", description="low strings")
    for step in ("story", "segments", "characters", "shots", "narration", "music"):
        run(story, step, node=node, log=f"asked {MODEL}\ncompleted\n")
    run(story, "prompts", StepRun.RUNNING, output={"parts": shots})
    now = timezone.now()
    StepRun.objects.bulk_create(
        StepRun(
            story=story,
            step="prompts",
            part=n,
            status=StepRun.COMPLETED if n <= prompted else StepRun.PENDING,
            created=now,
        )
        for n in range(1, shots + 1)
    )
    return story


def rendered(story: Story, numbers: range, **fields: Any) -> list[RenderJob]:
    template = Template.objects.get(name="test-video-mp4")
    now = timezone.now()
    return RenderJob.objects.bulk_create(
        RenderJob(
            template=template,
            story=str(story.code),
            target=f"shot:{n}",
            prompt=f"positive prompt {n}",
            status=fields.get("status", RenderJob.COMPLETED),
            finished=now,
            created=now + timedelta(milliseconds=n),
            outputs=[output(f"{story.code}-{n}")],
        )
        for n in numbers
    )


def page(client: Client, story: Story, tab: str = "story", **query: str) -> str:
    answer = client.get(reverse("stories:tab", args=[story.code, tab]), query)
    assert answer.status_code == 200
    return answer.content.decode()


def step_row(html: str, name: str) -> str:
    m = re.search(rf'<li class="step [a-z]+" id="step-{name}" data-status="[a-z]+">.*?</li>', html, re.S)
    assert m, f"no row for the step {name}"
    return m.group(0)


def act(client: Client, story: Story, what: str, status: int = 200, **data: Any) -> str:
    answer = client.post(reverse("stories:action", args=[story.code, what]), data, **HTMX)
    assert answer.status_code == status, answer.content.decode()[:500]
    html = answer.content.decode()
    assert 'id="messages"' in html and 'hx-swap-oob="true"' in html
    return html


def current(story: Story, step: str, part: int = 0) -> StepRun:
    return StepRun.objects.current().get(story=story, step=step, part=part)


# --- a new story ----------------------------------------------------------------------------------


def test_a_story_made_through_the_form_starts_and_opens_its_page(
    logged_in: Client, templates: None, ollama: Node
) -> None:
    answer = logged_in.post(reverse("stories:index"), form())
    story = Story.objects.get()
    assert answer.status_code == 302 and answer["Location"] == reverse("stories:detail", args=[story.code])
    assert (story.idea, story.genre, story.style, story.target_seconds, story.mode, story.model) == (
        FORM["idea"],
        "mystery",
        "film noir",
        60,
        "shots",
        MODEL,
    )
    assert story.auto_render and not story.references and story.reference_template is None
    assert story.template and story.template.name == "wan22-t2v"  # the default for shots
    assert story.render_settings == {
        "width": 832,
        "height": 480,
        "fps": 16,
        "steps": 12,
        "cfg": 4.5,
        "seed": 1234,
    }
    # Started: its first step waits for a runner.
    assert [(r.step, r.status) for r in story.runs.all()] == [("story", "pending")]
    html = logged_in.get(answer["Location"]).content.decode()
    assert "Story started" in html
    assert step_row(html, "story").count('data-status="pending"') == 1


def test_the_form_offers_the_models_the_ollama_nodes_reported(logged_in: Client, templates: None, ollama: Node) -> None:
    html = logged_in.get(reverse("stories:index")).content.decode()
    model = field_errors(html, "model")
    assert '<select name="model"' in model
    assert f'<option value="{MODEL}"' in model and '<option value="qwen2.5:7b"' in model


def test_without_known_models_the_model_is_typed_and_the_story_waits_for_it(logged_in: Client, templates: None) -> None:
    html = logged_in.get(reverse("stories:index")).content.decode()
    model = field_errors(html, "model")
    assert '<input type="text" name="model"' in model
    assert "No Ollama node has reported models yet; the story waits until one with this model is online." in model
    answer = logged_in.post(reverse("stories:index"), form(model="mistral:7b"))
    assert answer.status_code == 302
    assert Story.objects.get().model == "mistral:7b"


def test_scenes_render_with_holocine_and_references_with_a_still_template(
    logged_in: Client, templates: None, ollama: Node
) -> None:
    still = Template.objects.get(name="test-still-image")
    logged_in.post(reverse("stories:index"), form(mode="scenes", references="on", reference_template=still.pk))
    story = Story.objects.get()
    assert story.template and story.template.name == "holocine-t2v"
    assert story.references and story.reference_template == still


def comfyui(name: str, host: str, template: str | None = None, *, simulated: bool = False) -> None:
    """An online ComfyUI node with everything `template` needs (or only a core class; with ""
    nothing known of it yet)."""
    needs = Template.objects.get(name=template).needs if template else {"classes": ["SaveImage"], "files": {}}
    node = Node.objects.create(name=name, host=host, simulated=simulated)
    Capability.objects.create(
        node=node,
        kind=Capability.COMFYUI,
        port=8188,
        status=Capability.ONLINE,
        inventory={"classes": needs["classes"], "files": needs.get("files", {})} if template != "" else {},
    )


@pytest.mark.parametrize(
    ("lab", "mode", "chosen"),
    [
        ([], "shots", "wan22-t2v"),  # nothing known: the preferred one, which says what it waits for
        ([("gpu", "127.0.70.20", None, False)], "shots", "wan22-t2v"),  # a real node that has none
        ([("gpu", "127.0.70.20", "hunyuan15-t2v", False)], "shots", "hunyuan15-t2v"),  # the one it can run
        ([("gpu", "127.0.70.20", "wan22-t2v", False)], "shots", "wan22-t2v"),
        ([("sim", "127.0.70.21", None, True)], "shots", "test-video-prompt"),  # the demo's simulated lab
        ([("sim", "127.0.70.21", None, True)], "scenes", "test-video-prompt"),
        ([("sim", "127.0.70.21", "", True)], "shots", "test-video-prompt"),  # not checked yet: still the demo's
        ([("sim", "127.0.70.21", None, True), ("gpu", "127.0.70.20", None, False)], "shots", "wan22-t2v"),
    ],
)
def test_the_default_render_template_is_one_the_lab_can_run(
    logged_in: Client, templates: None, ollama: Node, lab: list[Any], mode: str, chosen: str
) -> None:
    for name, host, template, simulated in lab:
        comfyui(name, host, template, simulated=simulated)
    response = logged_in.post(reverse("stories:index"), form(mode=mode))
    assert response.status_code == 302
    story = Story.objects.get()
    assert story.template and story.template.name == chosen


def test_the_chosen_render_template_and_auto_render_off_are_kept(
    logged_in: Client, templates: None, ollama: Node
) -> None:
    video = Template.objects.get(name="test-video-mp4")
    data = form(template=video.pk)
    del data["auto_render"]
    logged_in.post(reverse("stories:index"), data)
    story = Story.objects.get()
    assert story.template == video and not story.auto_render


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("idea", "", "Write the idea for the story: a sentence is enough."),
        ("idea", "   ", "Write the idea for the story: a sentence is enough."),
        ("idea", "x" * 100_000, "The idea may be at most 20000 characters long; this one has 100000."),
        ("model", "gpt-5", "No Ollama node has the model gpt-5; the known models are llama3.2:3b, qwen2.5:7b."),
        ("target_seconds", "5", "Ensure this value is greater than or equal to 10."),
        ("target_seconds", "3600", "Ensure this value is less than or equal to 1800."),
        ("steps", "0", "Steps must be between 1 and 200; got 0."),
        ("cfg", "99", "CFG must be between 0 and 30; got 99."),
        ("mode", "opera", "Select a valid choice. opera is not one of the available choices."),
        ("step_models", "shots", "Write each as step=model, as in shots=qwen2.5:7b (not shots)."),
        ("step_models", "renders=qwen2.5:7b", "renders is not a step that asks a model; those are story,"),
        ("step_models", "shots=gpt-5", "No Ollama node has the model gpt-5; the known models are llama3.2:3b,"),
    ],
)
def test_bad_input_is_refused_with_the_reason_and_nothing_is_made(
    logged_in: Client, templates: None, ollama: Node, field: str, value: str, message: str
) -> None:
    answer = logged_in.post(reverse("stories:index"), form(**{field: value}))
    assert answer.status_code == 400
    html = answer.content.decode()
    assert message in field_errors(html, field)
    assert '<details class="card new-story" open>' in html  # the form stays open on the user's input
    assert not Story.objects.exists() and not StepRun.objects.exists()


def test_other_models_for_some_steps_are_kept_and_used_for_those_steps(
    logged_in: Client, templates: None, ollama: Node
) -> None:
    answer = logged_in.post(reverse("stories:index"), form(step_models="shots=qwen2.5:7b, prompts=qwen2.5:7b"))
    assert answer.status_code == 302
    story = Story.objects.get()
    assert story.models_by_step == {"shots": "qwen2.5:7b", "prompts": "qwen2.5:7b"}
    assert (story.model_for("shots"), story.model_for("prompts"), story.model_for("story")) == (
        "qwen2.5:7b",
        "qwen2.5:7b",
        MODEL,
    )


def test_an_idea_of_exactly_20000_characters_is_fine(logged_in: Client, templates: None, ollama: Node) -> None:
    assert logged_in.post(reverse("stories:index"), form(idea="y" * 20_000)).status_code == 302
    assert len(Story.objects.get().idea) == 20_000


# --- the list -------------------------------------------------------------------------------------


def test_the_list_shows_each_story_newest_first_with_its_state_progress_and_step(
    logged_in: Client, templates: None
) -> None:
    older = Story.objects.create(
        idea="An old idea " + "long " * 40, model=MODEL, created=timezone.now() - timedelta(hours=2)
    )
    newer = story_with(title="The Keeper", progress=0.5)
    StepRun.objects.filter(story=newer, step="prompts", part=0).update(status=StepRun.RUNNING)
    run(older, "story", StepRun.PENDING, waiting="No Ollama node is online; the step starts when one is.")
    Story.objects.filter(pk=older.pk).update(state=Story.WAITING)

    html = logged_in.get(reverse("stories:index")).content.decode()
    rows = re.findall(r'<tr id="story-([0-9a-f-]{36})">(.*?)</tr>', html, re.S)
    assert [code for code, _ in rows] == [str(newer.code), str(older.code)]
    new_row, old_row = rows[0][1], rows[1][1]
    assert "The Keeper" in new_row and "Shots (Wan / Hunyuan)" in new_row and "Running" in new_row
    assert 'value="50"' in new_row and "Visual prompts" in new_row
    assert "An old idea long" in old_row and "…" in old_row  # no title yet: the idea, cut short
    assert "Waiting" in old_row and "Story" in old_row and "No Ollama node is online" in old_row
    assert "2\xa0hours ago" in old_row


def test_the_list_comes_25_to_a_page(logged_in: Client, db: None) -> None:
    now = timezone.now()
    Story.objects.bulk_create(
        Story(idea=f"idea {i}", model=MODEL, created=now + timedelta(seconds=i)) for i in range(30)
    )
    first = logged_in.get(reverse("stories:index")).content.decode()
    assert first.count('<tr id="story-') == 25 and "idea 29" in first and "page 1 of 2" in first
    second = logged_in.get(reverse("stories:index"), {"page": "2"}).content.decode()
    assert second.count('<tr id="story-') == 5 and "idea 0<" in second
    # Only the first page follows the list live.
    assert 'ws-connect="/ws/live/?topics=stories"' in first
    assert 'ws-connect="/ws/live/?topics="' in second


# --- StoryDetail ----------------------------------------------------------------------------------


def test_every_step_shows_its_status_time_node_model_and_attempts(logged_in: Client, templates: None) -> None:
    gpu = Node.objects.create(name="writer-1", host="127.0.70.10")
    story = story_with(8, prompted=5, node=gpu)
    html = page(logged_in, story)
    for name in ("story", "segments", "characters", "shots", "narration", "music"):
        row = step_row(html, name)
        assert 'data-status="completed"' in row and "✓" in row
        assert "14.2 s" in row and "writer-1" in row and MODEL in row and "attempt 1/3" in row
    prompts = step_row(html, "prompts")
    assert 'data-status="running"' in prompts and "5/8 shots" in prompts
    assert '<progress class="bar" max="100" value="62"' in prompts
    renders = step_row(html, "renders")
    assert 'data-status="blocked"' in renders and "waits for Visual prompts" in renders
    assert "step-references" not in html  # the story renders no references
    # Steps come in graph order.
    order = re.findall(r'id="step-([a-z]+)"', html)
    assert order == ["story", "segments", "characters", "shots", "prompts", "narration", "music", "renders"]
    head = re.search(r'<header id="story-head".*?</header>', html, re.S)
    assert head and "The Keeper" in head.group(0) and "Running" in head.group(0) and "60% done" in head.group(0)


def test_a_pending_step_says_why_it_waits(logged_in: Client, templates: None) -> None:
    story = Story.objects.create(idea="an idea", model=MODEL, state=Story.WAITING)
    run(story, "story", StepRun.PENDING, waiting="No Ollama node is online; the step starts when one is.")
    row = step_row(page(logged_in, story), "story")
    assert 'data-status="pending"' in row
    assert "No Ollama node is online; the step starts when one is." in row


def test_a_failed_step_shows_its_error_log_and_a_retry_button(logged_in: Client, templates: None) -> None:
    story = story_with()
    StepRun.objects.filter(story=story, step="music").update(
        status=StepRun.FAILED, error="the model's answers did not fit, 3 times", log="12:00:01 asked\n12:00:05 failed\n"
    )
    row = step_row(page(logged_in, story), "music")
    assert 'data-status="failed"' in row and "✗" in row
    assert '<pre class="error small">the model&#x27;s answers did not fit, 3 times</pre>' in row
    log = re.search(r'<details id="log-\d+" class="log"><summary class="small">Log</summary>(.*?)</details>', row, re.S)
    assert log and log.group(1) == '<pre class="small">12:00:01 asked\n12:00:05 failed\n</pre>'
    assert ">Retry</button>" in row
    assert ">Retry</button>" not in step_row(page(logged_in, story), "story")


def test_a_failed_prompt_shows_its_log_with_the_raw_answers_and_the_others_none(
    logged_in: Client, templates: None
) -> None:
    story = story_with()
    parts = StepRun.objects.filter(story=story, step="prompts").exclude(part=0)
    parts.update(log="12:00:01 asked\n12:00:02 completed\n")
    parts.filter(part=2).update(status=StepRun.FAILED, error="did not fit", log="--- the answer ---\n<b>nope</b>\n")
    shots = page(logged_in, story, "shots")
    assert shots.count("Log (with the model's answers)") == 1
    assert "--- the answer ---\n&lt;b&gt;nope&lt;/b&gt;" in shots and "12:00:02 completed" not in shots


def test_earlier_versions_are_listed_under_their_step_with_their_output(logged_in: Client, templates: None) -> None:
    story = story_with()
    StepRun.objects.filter(story=story, step="characters").update(version=2)
    old = run(story, "characters", StepRun.STALE, version=1, output={"characters": [{"name": "<b>Old</b> Mara"}]})
    row = step_row(page(logged_in, story), "characters")
    assert "1 earlier version" in row and "v1 · finished" in row and "v2" in row
    # Its output is fetched when opened (not sent with every change of the steps), as text.
    url = reverse("stories:output", args=[story.code, old.pk])
    assert f'hx-get="{url}"' in row and "Old" not in row
    opened = logged_in.get(url, **HTMX).content.decode()
    assert "&quot;name&quot;: &quot;&lt;b&gt;Old&lt;/b&gt; Mara&quot;" in opened
    other = story_with()
    assert logged_in.get(reverse("stories:output", args=[other.code, old.pk])).status_code == 404


def test_renders_waiting_for_the_user_show_a_render_button(logged_in: Client, templates: None) -> None:
    story = story_with(auto_render=False)
    StepRun.objects.filter(story=story, step="prompts").update(status=StepRun.COMPLETED)
    run(story, "renders", StepRun.PENDING, held=True, waiting="Waiting for you: press Render to queue the shots.")
    html = page(logged_in, story)
    assert "Waiting for you: press Render to queue the shots." in step_row(html, "renders")
    steps = re.search(r'<section id="story-steps".*?</section>', html, re.S)
    assert steps and ">Render</button>" in steps.group(0)
    # The re-run menu offers the completed steps only.
    options = dict(re.findall(r'<option value="([a-z]+)" data-confirm="([^"]*)">', steps.group(0)))
    assert list(options) == ["story", "segments", "characters", "shots", "prompts", "narration", "music"]
    # Each asks first, naming the steps it runs again, and only those, and what that redoes.
    assert options["narration"] == "Re-run from Narration? Narration run again: the narration are written again. " + (
        "Story, Segments, Characters, Shots, Visual prompts, Narration, Music cues, Renders stay as they are."
    ).replace("Narration, ", "", 1)
    assert options["shots"].startswith(
        "Re-run from Shots? Shots, Visual prompts, Renders run again: the 3 shots are planned again; their prompts"
    )
    assert options["shots"].endswith("Story, Segments, Characters, Narration, Music cues stay as they are.")


def test_the_tabs_show_the_story_segments_characters_shots_and_music(logged_in: Client, templates: None) -> None:
    story = story_with(3, prompted=2)
    text = page(logged_in, story, "story")
    assert "<p>Mara keeps the light.</p>" in text and "A lighthouse keeper finds a message in a bottle." in text
    segments = page(logged_in, story, "segments")
    assert "1. The bottle" in segments and "The sea gives back." in segments
    characters = page(logged_in, story, "characters")
    assert "grey coat, red scarf" in characters and "yellow oilskin" in characters
    assert characters.count('<button type="submit">Save ') == 2
    shots = page(logged_in, story, "shots")
    assert re.findall(r'<article class="piece" id="piece-(\d+)">', shots) == ["1", "2", "3"]
    assert "positive prompt 1" in shots and "blurry" in shots
    # The written prompts can be rewritten; the one still waiting cannot.
    assert shots.count("Rewrite this prompt") == 2 and "prompt pending" in shots
    music = page(logged_in, story, "music")
    assert "eerie" in music and "low strings" in music
    narration = page(logged_in, story, "narration")
    assert '<blockquote class="narration">The sea gives back.</blockquote>' in narration
    # The scenes tab belongs to scene stories only.
    assert logged_in.get(reverse("stories:tab", args=[story.code, "scenes"])).status_code == 404
    assert logged_in.get(reverse("stories:tab", args=[story.code, "secrets"])).status_code == 404


def test_a_scene_story_shows_its_scenes_with_their_shots(logged_in: Client, templates: None) -> None:
    story = Story.objects.create(idea="an idea", model=MODEL, mode=Story.SCENES)
    Scene.objects.create(story=story, number=1, title="Dawn", description="the sea", shots=["wide sea", "close face"])
    html = page(logged_in, story, "scenes")
    assert "Scene 1" in html and "Dawn" in html and "<li>wide sea</li><li>close face</li>" in html
    assert logged_in.get(reverse("stories:tab", args=[story.code, "shots"])).status_code == 404


def test_the_gallery_shows_the_latest_render_of_each_shot_in_story_order(logged_in: Client, templates: None) -> None:
    story = story_with(3)
    rendered(story, range(3, 0, -1))  # finished in reverse order
    [newer] = rendered(story, range(2, 3))
    RenderJob.objects.filter(pk=newer.pk).update(outputs=[output("newer")])
    rendered(story, range(1, 2), status=RenderJob.FAILED)  # a later failed try keeps the last good one
    image = Template.objects.get(name="test-still-image")
    RenderJob.objects.create(
        template=image, story="another", target="shot:1", status=RenderJob.COMPLETED, outputs=newer.outputs
    )
    html = page(logged_in, story, "gallery")
    assert re.findall(r'id="gallery-(\d+)"', html) == ["1", "2", "3"]
    item = re.search(r'<figure class="gallery-item" id="gallery-2">.*?</figure>', html, re.S)
    assert item
    media = "/media/renders/newer/00.mp4"
    assert f'<video controls preload="none" src="{media}" poster="{media}.thumb.jpg">' in item.group(0)
    # Named after the story, the shot and the job.
    name = f"the-keeper-shot-02-{str(newer.code)[:8]}.mp4"
    assert f'<a href="/media/renders/newer/00.mp4" download="{name}">Download</a>' in item.group(0)


def test_the_renders_tab_shows_the_story_jobs_through_the_queue_parts(logged_in: Client, templates: None) -> None:
    story = story_with(3)
    [done] = rendered(story, range(1, 2))
    [waiting] = rendered(story, range(2, 3), status=RenderJob.QUEUED)
    [other] = rendered(story_with(1), range(1, 2), status=RenderJob.QUEUED)
    html = page(logged_in, story, "renders")
    queued = re.search(r'<section id="queued".*?</section>', html, re.S)
    finished = re.search(r'<section id="finished".*?</section>', html, re.S)
    assert queued and finished
    assert f"job-{waiting.code}" in queued.group(0) and f"job-{other.code}" not in html
    assert "no ComfyUI in the pool: add a node on the Nodes page" in queued.group(0)  # why it waits
    assert f"job-{done.code}" in finished.group(0) and "Download" in finished.group(0)
    assert '<dd id="renders-queued">1</dd>' in html and '<dd id="renders-completed">1</dd>' in html
    # The queue's own controls; "retry all failed" there retries this story's jobs.
    assert f'hx-vals=\'{{"story": "{story.code}"}}\'' in html and 'id="queue-controls"' in html
    # While renders are under way the tab follows them.
    assert 'data-in-flight="true"' in html
    RenderJob.objects.filter(pk=waiting.pk).update(status=RenderJob.COMPLETED)
    assert "data-in-flight" not in page(logged_in, story, "renders")
    filtered = page(logged_in, story, "renders", status="completed", page="1")
    assert f'hx-get="/stories/{story.code}/renders/?status=completed&amp;page=1"' in filtered


def test_an_htmx_request_for_a_tab_gets_the_tab_alone(logged_in: Client, templates: None) -> None:
    story = story_with()
    answer = logged_in.get(reverse("stories:tab", args=[story.code, "shots"]), **HTMX)
    html = answer.content.decode()
    assert html.lstrip().startswith('<section id="story-tab"') and "<html" not in html and "story-steps" not in html
    assert 'id="piece-1"' in html


def test_a_following_tab_that_would_come_back_the_same_is_not_sent_again(logged_in: Client, templates: None) -> None:
    story = story_with()
    url = reverse("stories:tab", args=[story.code, "characters"])  # its forms carry CSRF tokens
    first = logged_in.get(url, **HTMX)
    shown = first["X-Story-Tab"]
    again = logged_in.get(url, HTTP_X_STORY_TAB=shown, **HTMX)
    assert again.status_code == 204 and again.content == b"" and again["X-Story-Tab"] == shown
    Character.objects.filter(story=story, name="Mara").update(look="a blue coat")
    changed = logged_in.get(url, HTTP_X_STORY_TAB=shown, **HTMX)
    assert changed.status_code == 200 and "a blue coat" in changed.content.decode()
    assert changed["X-Story-Tab"] != shown


def test_an_unknown_story_is_not_found(logged_in: Client, db: None) -> None:
    assert logged_in.get(reverse("stories:detail", args=["5b0e9a2c-0000-4000-8000-000000000000"])).status_code == 404


# --- the user's controls --------------------------------------------------------------------------


def test_stop_cancels_what_runs_and_resume_goes_on(logged_in: Client, templates: None) -> None:
    story = story_with(3, prompted=1)
    assert "Stopped" in act(logged_in, story, "stop")
    story.refresh_from_db()
    assert story.stopped and story.state == Story.STOPPED
    assert set(StepRun.objects.filter(story=story, step="prompts").values_list("status", flat=True)) == {
        "cancelled",
        "completed",
    }
    html = page(logged_in, story)
    assert ">Resume</button>" in html and ">Stop</button>" not in html
    assert "The story is not running" in act(logged_in, story, "stop", 400)

    assert "Resumed" in act(logged_in, story, "resume")
    story.refresh_from_db()
    assert not story.stopped and story.state == Story.RUNNING
    assert current(story, "prompts").status == "running" and current(story, "prompts", 2).status == "pending"
    assert current(story, "prompts", 1).status == "completed"
    assert "The story is not stopped." in act(logged_in, story, "resume", 400)


def test_retry_runs_a_failed_step_again(logged_in: Client, templates: None) -> None:
    story = story_with()
    StepRun.objects.filter(story=story, step="music").update(status=StepRun.FAILED, error="boom", attempts=3)
    music = current(story, "music")
    assert "Music cues runs again" in act(logged_in, story, "retry", run=music.pk)
    music.refresh_from_db()
    assert (music.status, music.attempts, music.finished) == ("pending", 0, None)
    assert "retried by the user" in music.log


def test_a_retry_of_a_run_that_did_not_fail_is_refused(logged_in: Client, templates: None) -> None:
    story = story_with()
    done = current(story, "story")
    html = act(logged_in, story, "retry", 400, run=done.pk)
    assert "Only a failed step can be retried; Story is completed." in html
    assert current(story, "story").status == "completed"


def test_retrying_one_failed_prompt_gathers_its_step_again(logged_in: Client, templates: None) -> None:
    story = story_with(3)
    part = current(story, "prompts", 2)
    StepRun.objects.filter(pk=part.pk).update(status=StepRun.FAILED, error="the answers did not fit")
    StepRun.objects.filter(story=story, step="prompts", part=0).update(status=StepRun.FAILED, error="1 of 3 parts")
    shots = page(logged_in, story, "shots")
    piece = re.search(r'<article class="piece" id="piece-2">.*?</article>', shots, re.S)
    assert piece and "the answers did not fit" in piece.group(0) and ">Retry</button>" in piece.group(0)
    assert "Visual prompts of shot 2 runs again" in act(logged_in, story, "retry", run=part.pk)
    assert (current(story, "prompts", 2).status, current(story, "prompts").status) == ("pending", "running")


def test_a_run_of_another_story_is_not_found(logged_in: Client, templates: None) -> None:
    story, other = story_with(), story_with()
    StepRun.objects.filter(story=other, step="music").update(status=StepRun.FAILED)
    theirs = current(other, "music")
    assert "not one of this story" in act(logged_in, story, "retry", 404, run=theirs.pk)
    assert "not one of this story" in act(logged_in, story, "retry", 404, run="nope")
    assert current(other, "music").status == "failed"


def test_rerun_from_a_step_marks_it_and_what_follows_stale_and_leaves_the_rest(
    logged_in: Client, templates: None
) -> None:
    story = story_with()
    before = {r.step: r.pk for r in StepRun.objects.current().filter(story=story, part=0)}
    html = act(logged_in, story, "rerun", step="characters")
    assert "Re-running from Characters: Characters, Shots, Visual prompts, Renders run again" in html
    for step in ("story", "segments", "narration", "music"):
        assert current(story, step).pk == before[step]
    for step in ("characters", "shots", "prompts"):
        assert StepRun.objects.get(pk=before[step]).status == "stale"
    again = current(story, "characters")
    assert (again.version, again.status) == (2, "pending")
    row = step_row(page(logged_in, story), "characters")
    assert "1 earlier version" in row and 'data-status="pending"' in row


def test_rerun_from_an_unknown_or_unfinished_step_is_refused(logged_in: Client, templates: None) -> None:
    story = story_with()
    runs = list(StepRun.objects.values_list("pk", "status", "version"))
    assert "&#x27;explode&#x27; is not a step of this story." in act(logged_in, story, "rerun", 400, step="explode")
    assert "&#x27;scenes&#x27; is not a step of this story." in act(logged_in, story, "rerun", 400, step="scenes")
    assert "Visual prompts has not completed" in act(logged_in, story, "rerun", 400, step="prompts")
    assert list(StepRun.objects.values_list("pk", "status", "version")) == runs


def test_rewriting_one_prompt_runs_that_part_again(logged_in: Client, templates: None) -> None:
    story = story_with(3)
    StepRun.objects.filter(story=story, step="prompts", part=0).update(status=StepRun.COMPLETED)
    old = current(story, "prompts", 2)
    assert "Shot 2&#x27;s prompt is written again" in act(logged_in, story, "rewrite", part="2")
    assert StepRun.objects.get(pk=old.pk).status == "stale"
    new = current(story, "prompts", 2)
    assert (new.version, new.status) == (2, "pending")
    assert current(story, "prompts").status == "running"
    assert current(story, "prompts", 1).status == "completed"
    assert "is being written now" in act(logged_in, story, "rewrite", 400, part="2")
    assert "Shot 9 has no prompt" in act(logged_in, story, "rewrite", 400, part="9")
    assert "has no prompt" in act(logged_in, story, "rewrite", 400, part="x")


def test_render_now_releases_the_renders_waiting_for_the_user(logged_in: Client, templates: None) -> None:
    story = story_with(auto_render=False)
    StepRun.objects.filter(story=story, step="prompts").update(status=StepRun.COMPLETED)
    held = run(story, "renders", StepRun.PENDING, held=True, waiting="Waiting for you")
    assert "Rendering" in act(logged_in, story, "render")
    held.refresh_from_db()
    assert (held.held, held.waiting, held.status) == (False, "", "pending")
    assert "No renders are waiting for you." in act(logged_in, story, "render", 400)


def test_editing_a_character_makes_a_new_version_and_reruns_what_depends_on_it(
    logged_in: Client, user: User, templates: None
) -> None:
    story = story_with()
    mara = story.characters.get(name="Mara")
    old = current(story, "characters")
    url = reverse("stories:character", args=[story.code, mara.pk])
    answer = logged_in.post(
        url, {"role": "keeper", "look": "white hair, blue coat", "personality": "stubborn"}, follow=True
    )
    html = answer.content.decode()
    assert "Saved Mara. What depends on the characters runs again: Shots, Visual prompts, Renders." in html
    mara.refresh_from_db()
    assert (mara.look, mara.personality) == ("white hair, blue coat", "stubborn")
    new = current(story, "characters")
    assert (new.version, new.status, new.edited) == (2, "completed", True)
    assert new.output == {  # the shape of the step's own answer
        "characters": [
            {"name": "Mara", "role": "keeper", "look": "white hair, blue coat", "personality": "stubborn"},
            {"name": "Tom", "role": "fisherman", "look": "yellow oilskin", "personality": "calm"},
        ]
    }
    assert f"edited by hand by {user.username}" in new.log
    assert StepRun.objects.get(pk=old.pk).status == "stale"
    assert current(story, "shots").status == "pending" and current(story, "story").status == "completed"


def test_a_character_edit_while_the_characters_are_written_again_is_refused(logged_in: Client, templates: None) -> None:
    story = story_with()
    mara = story.characters.get(name="Mara")
    StepRun.objects.filter(story=story, step="characters").update(status=StepRun.STALE)
    run(story, "characters", StepRun.RUNNING, version=2)
    url = reverse("stories:character", args=[story.code, mara.pk])
    answer = logged_in.post(url, {"role": "keeper", "look": "white hair", "personality": "stubborn"})
    assert answer.status_code == 409
    assert "Mara was not saved: Characters has not completed" in answer.content.decode()
    mara.refresh_from_db()
    assert mara.look != "white hair"
    assert current(story, "characters").status == StepRun.RUNNING and not current(story, "characters").edited


def test_actions_on_a_stopped_story_ask_to_resume_first(logged_in: Client, templates: None) -> None:
    story = story_with()
    Story.objects.filter(pk=story.pk).update(stopped=True, state=Story.STOPPED)
    html = act(logged_in, story, "rerun", 409, step="characters")
    assert "The story is stopped: resume it first." in html
    assert current(story, "characters").status == StepRun.COMPLETED


def test_a_prompt_edited_by_hand_becomes_its_part_s_new_version_and_its_render_follows(
    logged_in: Client, user: User, templates: None
) -> None:
    story = story_with()
    url = reverse("stories:prompt", args=[story.code, 2])
    assert f'action="{url}"' in page(logged_in, story, "shots")
    old = current(story, "prompts", 2)
    answer = logged_in.post(url, {"positive": "  a lantern at dawn ", "negative": "text"}, follow=True)
    assert "Saved Shot 2&#x27;s prompt; its render is queued again." in answer.content.decode()
    shot = story.shots.get(number=2)
    assert (shot.positive, shot.negative) == ("a lantern at dawn", "text")
    new = current(story, "prompts", 2)
    assert (new.version, new.status, new.edited) == (2, "completed", True)
    written = {k: v for k, v in new.output.items() if k != "asked"}
    assert written == {"positive": "a lantern at dawn", "negative": "text"}
    assert f"edited by hand by {user.username}" in new.log and StepRun.objects.get(pk=old.pk).status == "stale"
    assert current(story, "prompts", 1).version == 1 and current(story, "shots").version == 1
    assert current(story, "renders").status == "pending"  # the renders step runs again


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"positive": "", "negative": "x"}, 400, "Write the prompt: what the shot shows."),
        ({"positive": "p" * 4001}, 400, "at most 4000 characters"),
    ],
)
def test_a_bad_prompt_edit_is_refused_and_changes_nothing(
    logged_in: Client, templates: None, data: dict[str, str], status: int, message: str
) -> None:
    story = story_with()
    answer = logged_in.post(reverse("stories:prompt", args=[story.code, 1]), data, **HTMX)
    assert answer.status_code == status and message in answer.content.decode()
    assert story.shots.get(number=1).positive == "positive prompt 1"
    assert current(story, "prompts", 1).version == 1


def test_a_prompt_not_written_yet_cannot_be_edited(logged_in: Client, templates: None) -> None:
    story = story_with(3, prompted=2)
    answer = logged_in.post(reverse("stories:prompt", args=[story.code, 3]), {"positive": "mine"}, **HTMX)
    assert answer.status_code == 409 and "it can be edited once it is written" in answer.content.decode()
    assert story.shots.get(number=3).positive == "" and current(story, "prompts", 3).status == "pending"
    assert logged_in.post(reverse("stories:prompt", args=[story.code, 9]), {"positive": "x"}).status_code == 404


def test_narration_and_music_cues_corrected_by_hand_become_their_steps_new_versions(
    logged_in: Client, templates: None
) -> None:
    story = story_with()
    narration_url = reverse("stories:narration", args=[story.code, 1])
    music_url = reverse("stories:music", args=[story.code, 1])
    assert f'action="{narration_url}"' in page(logged_in, story, "narration")
    assert f'action="{music_url}"' in page(logged_in, story, "music")
    before = {s: current(story, s).pk for s in ("story", "segments", "characters", "shots", "prompts")}

    answer = logged_in.post(narration_url, {"narration": " The tide brings it back. "}, follow=True)
    assert "Saved the narration of segment 1." in answer.content.decode()
    assert story.segments.get(number=1).narration == "The tide brings it back."
    narration = current(story, "narration")
    assert (narration.version, narration.edited, narration.status) == (2, True, "completed")
    assert narration.output == {"lines": [{"segment": 1, "text": "The tide brings it back."}]}

    answer = logged_in.post(music_url, {"mood": "hopeful", "description": "a solo cello"}, follow=True)
    assert "Saved music cue 1." in answer.content.decode()
    music = current(story, "music")
    assert (music.version, music.edited) == (2, True)
    assert music.output == {"cues": [{"segment": 1, "mood": "hopeful", "description": "a solo cello"}]}
    # Nothing else depends on them: every other step keeps its run.
    assert {s: current(story, s).pk for s in before} == before


@pytest.mark.parametrize(
    ("what", "data", "message"),
    [
        ("narration", {"narration": "n" * 5001}, "at most 5000 characters"),
        ("music", {"mood": "", "description": "strings"}, "Say the mood: tense, wistful…"),
        ("music", {"mood": "calm", "description": ""}, "Describe the music."),
    ],
)
def test_a_bad_narration_or_cue_is_refused_and_changes_nothing(
    logged_in: Client, templates: None, what: str, data: dict[str, str], message: str
) -> None:
    story = story_with()
    answer = logged_in.post(reverse(f"stories:{what}", args=[story.code, 1]), data, **HTMX)
    assert answer.status_code == 400 and message in answer.content.decode()
    assert current(story, what).version == 1
    assert story.segments.get().narration == "The sea gives back." and story.music_cues.get().mood == "eerie"


def test_narration_being_written_again_cannot_be_corrected(logged_in: Client, templates: None) -> None:
    story = story_with()
    StepRun.objects.filter(story=story, step="narration").update(status=StepRun.STALE)
    run(story, "narration", StepRun.RUNNING, version=2)
    assert "Edit this narration by hand" not in page(logged_in, story, "narration")
    answer = logged_in.post(reverse("stories:narration", args=[story.code, 1]), {"narration": "mine"}, **HTMX)
    assert answer.status_code == 409 and "Narration has not completed" in answer.content.decode()
    assert story.segments.get().narration == "The sea gives back."
    assert logged_in.post(reverse("stories:music", args=[story.code, 7]), {"mood": "x"}).status_code == 404


def test_a_character_edit_that_does_not_fit_is_refused(logged_in: Client, templates: None) -> None:
    story = story_with()
    mara = story.characters.get(name="Mara")
    answer = logged_in.post(reverse("stories:character", args=[story.code, mara.pk]), {"look": "x" * 2001})
    assert answer.status_code == 400
    html = answer.content.decode()
    assert "Mara was not saved" in html and "Ensure this value has at most 2000 characters (it has 2001)." in html
    mara.refresh_from_db()
    assert mara.look == "grey coat, red scarf" and current(story, "characters").version == 1
    other = story_with()
    theirs = other.characters.get(name="Tom")
    assert logged_in.post(reverse("stories:character", args=[story.code, theirs.pk]), {"look": "x"}).status_code == 404


def test_actions_work_without_htmx_too(logged_in: Client, templates: None) -> None:
    story = story_with()
    answer = logged_in.post(reverse("stories:action", args=[story.code, "stop"]))
    assert answer.status_code == 302 and answer["Location"] == reverse("stories:detail", args=[story.code])
    assert "Stopped" in logged_in.get(answer["Location"]).content.decode()
    refused = logged_in.post(reverse("stories:action", args=[story.code, "stop"]))
    html = refused.content.decode()
    assert refused.status_code == 400 and "there is nothing to stop" in html
    # The page shown follows the story from its own address, not from the action's.
    assert f'hx-get="/stories/{story.code}/story/"' in html


def test_an_unknown_action_is_not_found_and_actions_need_a_post(logged_in: Client, templates: None) -> None:
    story = story_with()
    assert logged_in.post(reverse("stories:action", args=[story.code, "explode"])).status_code == 404
    assert logged_in.get(reverse("stories:action", args=[story.code, "stop"])).status_code == 405
    assert not Story.objects.get(pk=story.pk).stopped


# --- login, CSRF, escaping ------------------------------------------------------------------------


def story_urls(story: Story) -> list[str]:
    return [
        reverse("stories:index"),
        reverse("stories:detail", args=[story.code]),
        *(reverse("stories:tab", args=[story.code, tab]) for tab in ("story", "shots", "renders", "gallery")),
        reverse("stories:output", args=[story.code, story.runs.first().pk]),  # type: ignore[union-attr]
    ]


def test_an_anonymous_visitor_is_sent_to_log_in_and_cannot_act(client: Client, templates: None) -> None:
    story = story_with()
    for url in story_urls(story):
        answer = client.get(url)
        assert answer.status_code == 302 and answer["Location"] == f"{reverse('login')}?next={url}", url
        assert client.get(url, **HTMX).status_code == 302
    mara = story.characters.get(name="Mara")
    for url in (
        reverse("stories:action", args=[story.code, "stop"]),
        reverse("stories:character", args=[story.code, mara.pk]),
        reverse("stories:index"),
    ):
        assert client.post(url, {**FORM, "look": "x"}).status_code == 302
    assert not Story.objects.get(pk=story.pk).stopped and Story.objects.count() == 1
    assert Character.objects.get(pk=mara.pk).look == "grey coat, red scarf"


def test_the_posts_need_the_csrf_token(user: User, templates: None, ollama: Node) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    story = story_with()
    mara = story.characters.get(name="Mara")
    failed = current(story, "music")
    StepRun.objects.filter(pk=failed.pk).update(status=StepRun.FAILED)
    for url, data in (
        (reverse("stories:index"), form()),
        (reverse("stories:action", args=[story.code, "stop"]), {}),
        (reverse("stories:action", args=[story.code, "retry"]), {"run": failed.pk}),
        (reverse("stories:action", args=[story.code, "rerun"]), {"step": "story"}),
        (reverse("stories:action", args=[story.code, "rewrite"]), {"part": "1"}),
        (reverse("stories:character", args=[story.code, mara.pk]), {"look": "x"}),
    ):
        assert client.post(url, data, **HTMX).status_code == 403, url
    assert Story.objects.count() == 1 and not Story.objects.get(pk=story.pk).stopped
    assert StepRun.objects.get(pk=failed.pk).status == "failed" and not StepRun.objects.filter(status="stale").exists()

    client.get(reverse("stories:detail", args=[story.code]))
    token = client.cookies["csrftoken"].value
    stop = reverse("stories:action", args=[story.code, "stop"])
    assert client.post(stop, HTTP_X_CSRFTOKEN=token, **HTMX).status_code == 200  # as htmx sends it
    assert Story.objects.get(pk=story.pk).stopped


def test_text_from_the_models_is_escaped(logged_in: Client, templates: None) -> None:
    story = story_with(title=SCRIPT)
    Character.objects.filter(story=story, name="Mara").update(look=SCRIPT, role=SCRIPT)
    Shot.objects.filter(story=story, number=1).update(positive=SCRIPT, description=SCRIPT)
    StepRun.objects.filter(story=story, step="music").update(status=StepRun.FAILED, log=SCRIPT, error=SCRIPT)
    Segment.objects.filter(story=story).update(title=SCRIPT, narration=SCRIPT)
    Story.objects.filter(pk=story.pk).update(text=SCRIPT, idea=SCRIPT)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for tab in ("story", "segments", "characters", "shots"):
        html = page(logged_in, story, tab)
        assert "<script>alert(" not in html, tab
        assert escaped in html, tab
    assert "<script>alert(" not in logged_in.get(reverse("stories:index")).content.decode()
    pushed = live.detail_fragments(str(story.code)) + live.list_fragments()
    assert "<script>alert(" not in pushed and pushed.count(escaped) >= 4


# --- live -----------------------------------------------------------------------------------------


def test_the_live_fragments_are_the_page_partials(logged_in: Client, templates: None) -> None:
    story = story_with(8, prompted=5)
    # A running step shows how long it has run so far: the page and the push are compared as
    # rendered at the same moment, however long the machine takes between the two.
    with time_machine.travel(timezone.now(), tick=False):
        pushed = live.detail_fragments(str(story.code))
        html = page(logged_in, story)
    assert pushed.lstrip().startswith('<header id="story-head"') and '<section id="story-steps"' in pushed
    assert "5/8 shots" in step_row(pushed, "prompts")
    # The same markup as the page's.
    steps = re.search(r'<section id="story-steps".*?</section>', html, re.S)
    assert steps and re.sub(r'<input type="hidden" name="csrfmiddlewaretoken"[^>]*>', "", steps.group(0)) in pushed
    assert live.detail_fragments("5b0e9a2c-0000-4000-8000-000000000000") == ""
    assert live.detail_fragments("not-a-code") == ""
    listed = live.list_fragments()
    assert listed.lstrip().startswith('<section id="story-list"') and f'id="story-{story.code}"' in listed


@pytest.mark.django_db(transaction=True)
async def test_a_story_socket_gets_the_page_parts_then_every_change(user: User) -> None:
    def make() -> Story:
        load()
        return story_with(3, prompted=1)

    story = await sync_to_async(make)()
    ws = communicator(await sync_to_async(session_for)(user), topics=f"story-{story.code}")
    connected, _ = await ws.connect()
    assert connected
    snapshot = await ws.receive_from(timeout=10)
    assert 'id="story-head"' in snapshot and 'data-status="running"' in step_row(snapshot, "prompts")
    await sync_to_async(graph.stop)(story)
    while 'data-status="cancelled"' not in step_row(html := await ws.receive_from(timeout=10), "prompts"):
        pass
    assert ">Resume</button>" in html and "Stopped" in html
    await ws.disconnect()
    await relay.stop()


@pytest.mark.django_db(transaction=True)
def test_a_live_fragment_never_mixes_rows_from_before_and_after_a_commit(monkeypatch: Any) -> None:
    """A story stopped between two of a fragment's reads (by another process, say) shows in
    neither: the head and the steps are drawn from one moment, and the next push shows both."""
    from django.db import connections

    from spoonfeeder import live as topics

    load()
    story = story_with(3, prompted=1)

    def stop_elsewhere() -> None:
        try:
            graph.stop(Story.objects.get(pk=story.pk))
        finally:
            connections.close_all()

    def head_then_steps(code: str) -> str:
        stopped = Story.objects.get(code=code).stopped
        elsewhere = threading.Thread(target=stop_elsewhere)
        elsewhere.start()
        elsewhere.join()
        cancelled = StepRun.objects.filter(story__code=code, status=StepRun.CANCELLED).count()
        return f"stopped={stopped} cancelled={cancelled}"

    monkeypatch.setitem(topics.PER_OBJECT, "story-", head_then_steps)
    assert topics.render(f"story-{story.code}") == "stopped=False cancelled=0"
    assert Story.objects.get(pk=story.pk).stopped and StepRun.objects.filter(status=StepRun.CANCELLED).exists()


def test_the_detail_page_follows_its_story_topic(logged_in: Client, templates: None) -> None:
    story = story_with()
    html = page(logged_in, story)
    assert f'ws-connect="/ws/live/?topics=story-{story.code}"' in html
    assert 'hx-trigger="story:changed"' in html and "js/story.js" in html


# --- a constant number of queries -----------------------------------------------------------------

TABS = ("story", "segments", "characters", "shots", "music", "renders", "gallery")


def queries_for(client: Client, story: Story, tab: str) -> int:
    page(client, story, tab)  # warm: the session, the queue row
    with CaptureQueriesContext(connection) as captured:
        page(client, story, tab)
    return len(captured)


def big(shots: int) -> Story:
    """A story with its runs, earlier versions, characters, shots and renders all grown with `shots`."""
    story = story_with(shots, prompted=shots - 1, node=Node.objects.get_or_create(name="w", host="127.0.70.11")[0])
    Character.objects.bulk_create(Character(story=story, name=f"extra {i}", look="x") for i in range(shots // 30))
    StepRun.objects.bulk_create(
        StepRun(story=story, step="shots", version=v, status=StepRun.STALE, output={"shots": []})
        for v in range(shots // 30)
    )
    StepRun.objects.bulk_create(
        StepRun(story=story, step="prompts", part=n, status=StepRun.STALE) for n in range(1, shots + 1)
    )
    rendered(story, range(1, shots))
    rendered(story, range(shots, shots + 1), status=RenderJob.QUEUED)
    return story


def test_story_detail_uses_as_many_queries_with_300_shots_as_with_3(logged_in: Client, templates: None) -> None:
    few, many = big(3), big(300)
    assert many.shots.count() == 300 and StepRun.objects.filter(story=many).count() > 600
    for tab in TABS:
        assert queries_for(logged_in, many, tab) == queries_for(logged_in, few, tab), tab
    with CaptureQueriesContext(connection) as captured:
        live.detail_fragments(str(few.code))
    pushed = len(captured)
    with CaptureQueriesContext(connection) as captured:
        live.detail_fragments(str(many.code))
    assert len(captured) == pushed


def test_the_list_uses_as_many_queries_for_25_stories_as_for_1(logged_in: Client, templates: None) -> None:
    story_with()
    logged_in.get(reverse("stories:index"))
    with CaptureQueriesContext(connection) as captured:
        logged_in.get(reverse("stories:index"))
    one = len(captured)
    for _ in range(30):
        story_with(2)
    with CaptureQueriesContext(connection) as captured:
        logged_in.get(reverse("stories:index"))
    assert len(captured) == one


def written_and_queued(shots: int = 3) -> Story:
    """A story whose every step is done: its shots' renders are queued (none has started)."""
    story = story_with(shots)
    StepRun.objects.filter(story=story, step="prompts", part=0).update(status=StepRun.COMPLETED)
    run(story, "renders", output={"queued": shots, "kept": 0})
    template = Template.objects.get(name="test-video-mp4")
    RenderJob.objects.bulk_create(
        RenderJob(template=template, story=str(story.code), target=f"shot:{n}", prompt=f"p{n}", position=n)
        for n in range(1, shots + 1)
    )
    return story


def shot_job(story: Story, n: int) -> RenderJob:
    return RenderJob.objects.get(story=str(story.code), target=f"shot:{n}")


def gallery_item(html: str, n: int) -> str:
    m = re.search(rf'<figure class="gallery-item[^"]*" id="gallery-{n}".*?</figure>', html, re.S)
    assert m, f"no gallery item for shot {n}"
    return m.group(0)


def test_a_story_is_rendering_until_its_last_shot_has_rendered_and_says_how_far(
    logged_in: Client, templates: None
) -> None:
    from io import StringIO

    from django.core.management import call_command

    story = written_and_queued(3)
    RenderJob.objects.filter(pk=shot_job(story, 1).pk).update(
        status=RenderJob.COMPLETED, outputs=[output("one")], finished=timezone.now()
    )
    RenderJob.objects.filter(pk=shot_job(story, 2).pk).update(status=RenderJob.RENDERING, progress=0.4)
    graph.advance(story.pk)
    story.refresh_from_db()
    steps = len(graph.steps_for(story))
    assert (story.state, round(story.progress, 4)) == (Story.RENDERING, round((steps - 1 + 1 / 3) / steps, 4))
    html = page(logged_in, story, "gallery")
    head = re.search(r'<header id="story-head".*?</header>', html, re.S)
    assert head and '<span class="status rendering">Rendering</span>' in head.group(0)
    assert '<span class="small" id="story-renders">Rendering 1/3 shots</span>' in head.group(0)
    assert "Completed" not in head.group(0) and "100%" not in head.group(0)
    # The gallery: the rendered shot, and a placeholder with where each other one is.
    assert "<video" in gallery_item(html, 1)
    assert 'data-status="rendering"' in gallery_item(html, 2) and "rendering 40%" in gallery_item(html, 2)
    assert 'value="40"' in gallery_item(html, 2)
    assert 'data-status="queued"' in gallery_item(html, 3)
    assert "no ComfyUI in the pool: add a node on the Nodes page" in gallery_item(html, 3)
    out = StringIO()
    call_command("story", "show", str(story.code), stdout=out)
    assert "  Rendering, 92% done\n  Rendering 1/3 shots\n" in out.getvalue()

    # A shot that fails says so on the story, which fails; retried from the queue, it renders again.
    failed = shot_job(story, 2)
    failed.transition(RenderJob.FAILED, expect=(RenderJob.RENDERING,), error="ComfyUI ran out of memory")
    RenderJob.objects.filter(pk=shot_job(story, 3).pk).update(status=RenderJob.COMPLETED, outputs=[output("three")])
    graph.advance(story.pk)
    story.refresh_from_db()
    assert story.state == Story.FAILED
    html = page(logged_in, story, "gallery")
    assert "1 of 3 shots did not render; shot 2: ComfyUI ran out of memory" in html
    assert "did not render" in gallery_item(html, 2) and "ComfyUI ran out of memory" in gallery_item(html, 2)
    assert failed.retry()
    assert story.pk in runner.rendering_stories()  # the sweeper follows it again
    runner.sweep()
    assert Story.objects.get(pk=story.pk).state == Story.RENDERING
    RenderJob.objects.filter(pk=failed.pk).update(status=RenderJob.COMPLETED, outputs=[output("two")])
    runner.sweep()
    story.refresh_from_db()
    assert (story.state, story.progress) == (Story.COMPLETED, 1.0)
    assert story.pk not in runner.rendering_stories()


def test_the_gallery_says_when_a_shot_renders_shorter_than_planned(logged_in: Client, templates: None) -> None:
    story = story_with(2)
    Shot.objects.filter(story=story, number=1).update(duration=8)
    one, two = rendered(story, range(1, 3))
    RenderJob.objects.filter(pk=one.pk).update(settings={"frames": 81, "fps": 16})
    RenderJob.objects.filter(pk=two.pk).update(settings={"frames": 80, "fps": 16})  # 5 s, as planned
    html = page(logged_in, story, "gallery")
    assert "5.1 s of the 8 s planned: test-video-mp4 renders at most 81 frames" in gallery_item(html, 1)
    assert "planned" not in gallery_item(html, 2)


def test_a_correction_that_reruns_other_steps_says_which_and_what_they_redo_before_saving(
    logged_in: Client, templates: None
) -> None:
    story = written_and_queued(3)
    RenderJob.objects.filter(story=str(story.code), target="shot:1").update(status=RenderJob.COMPLETED)
    html = page(logged_in, story, "characters")
    forms = re.findall(r'<form method="post" action="[^"]+" class="character-form" data-confirm="([^"]+)">', html)
    assert (
        forms
        == [
            "Saving this re-runs what depends on the characters: Shots, Visual prompts, Renders "
            "(the 3 shots are planned again; their prompts are written again (a shot planned as before keeps its "
            "prompt); the finished render is redone, except where the prompt comes out the same). Save?"
        ]
        * 2
    )
    shots = page(logged_in, story, "shots")
    assert 'class="prompt-form" data-confirm="Saving this prompt renders shot 2 again' in shots
    # A correction that makes nothing else run again saves without a question.
    narration = page(logged_in, story, "narration")
    form = re.search(rf'<form method="post" action="/stories/{story.code}/segments/1/narration/"[^>]*>', narration)
    assert form and "data-confirm" not in form.group(0)


def a_pending_step(name: str = "story", **fields: Any) -> tuple[Story, StepRun]:
    story = Story.objects.create(idea="A lighthouse keeper.", model=MODEL, state=Story.WAITING)
    return story, StepRun.objects.create(story=story, step=name, **fields)


def waiting_on_page(client: Client, story: Story, step: str = "story") -> str:
    row = step_row(page(client, story), step)
    m = re.search(r'<span class="waiting">([^<]*)</span>', row)
    assert m, row
    return m.group(1)


def test_a_step_a_free_node_takes_now_says_it_is_starting(logged_in: Client, ollama: Node) -> None:
    story, _ = a_pending_step()
    assert waiting_on_page(logged_in, story) == "starting: a free node takes it now"


def test_a_step_waiting_for_its_retry_says_which_attempt_and_when(logged_in: Client, ollama: Node) -> None:
    at = timezone.now() + timedelta(seconds=90)
    story, _ = a_pending_step(attempts=1, not_before=at)
    assert waiting_on_page(logged_in, story) == f"retry 2/3 at {timezone.localtime(at):%H:%M:%S}"


def test_a_step_whose_nodes_are_all_busy_says_so_and_how_many_are_ahead(logged_in: Client, ollama: Node) -> None:
    cap = ollama.capabilities.get()
    other, _ = a_pending_step()
    StepRun.objects.create(
        story=other, step="segments", status=StepRun.RUNNING, capability=cap, heartbeat=timezone.now()
    )
    story, _ = a_pending_step()
    assert waiting_on_page(logged_in, story) == f"every Ollama node with {MODEL} is busy (1 ahead of it)"
    assert waiting_on_page(logged_in, other) == f"every Ollama node with {MODEL} is busy (0 ahead of it)"


def test_a_step_no_node_can_take_says_why_as_the_feed_found_it(logged_in: Client) -> None:
    story, run = a_pending_step()
    runner.feed()  # the look that finds no node for it
    assert waiting_on_page(logged_in, story) == "No Ollama node is online; the step starts when one is."
    Node.objects.create(name="small", host="127.0.70.8").capabilities.create(
        kind=Capability.OLLAMA, port=11434, status=Capability.ONLINE, inventory={"models": [{"name": "phi3"}]}
    )
    runner.feed()
    assert waiting_on_page(logged_in, story) == (
        f"No online Ollama node has the model {MODEL}: pull it on a node, or choose another model."
    )


def test_a_step_waiting_for_others_names_them(logged_in: Client, templates: None) -> None:
    story = story_with(2, references=True)
    StepRun.objects.filter(story=story, step="prompts").update(status=StepRun.COMPLETED)
    run(story, "references", StepRun.RUNNING)
    html = page(logged_in, story)
    assert 'data-status="blocked"' in step_row(html, "renders")
    assert "waits for Character references" in step_row(html, "renders")
