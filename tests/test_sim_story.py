"""What the simulated Ollama writes when the real story pipeline asks it (`make demo`'s language
model): a story that reads like one, drawn from the idea, whose segments, cast, shots, prompts,
narration and music cues follow one another; answers the steps accept at the first try; the same
story again from the same seed and another from another seed; and the story page saying that a
simulated model wrote it, when one did."""

from __future__ import annotations

import re
from typing import Any

from django.test import Client

from nodes.models import Node
from stories.models import StepRun, Story
from tests.conftest import Cluster
from tests.test_pipeline import Lab, fast, lab, new_story, pipeline, wait_state

__all__ = ["fast", "lab", "pipeline"]  # the fixtures, shared with the pipeline's tests

IDEA = "A lighthouse keeper finds a message in a bottle"
IDEA_WORDS = {"lighthouse", "keeper", "message", "bottle"}
# What the simulated Ollama used to fill its sentences with.
FILLER = {"story", "light", "river", "city", "night", "quiet", "old", "bright", "journey", "morning", "voice"}


def mystery(lab: Lab, **fields: Any) -> Story:
    fields = {"idea": IDEA, "genre": "mystery", "style": "film noir", "target_seconds": 60, **fields}
    # Written in full, its renders queued (the lab has no ComfyUI: they wait).
    story = wait_state(new_story(**fields), Story.RENDERING, timeout=60)
    # Its shots add up to the length asked for, within a tenth, as every answer must.
    assert abs(sum(p.duration for p in story.planned.objects.filter(story=story)) - story.target_seconds) <= 6
    return story


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def assert_reads(text: str, what: str) -> None:
    """Every sentence starts with a capital, ends with a full stop, says no word twice in a row
    and is more than filler."""
    assert text.strip(), f"{what} is empty"
    for s in sentences(text):
        assert s[0].isupper() and s.endswith("."), f"{what}: {s!r}"
        words = re.findall(r"[a-z']+", s.lower())
        assert not [a for a, b in zip(words, words[1:], strict=False) if a == b], f"{what} repeats a word: {s!r}"
        assert set(words) - FILLER - {"a", "the", "and", "of", "in"}, f"{what} is filler: {s!r}"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def shared_run(a: str, b: str, n: int = 4) -> bool:
    """Whether `a` and `b` have `n` words in a row in common."""
    wa, wb = re.findall(r"[a-z']+", a.lower()), re.findall(r"[a-z']+", b.lower())
    grams = {tuple(wb[i : i + n]) for i in range(len(wb) - n + 1)}
    return any(tuple(wa[i : i + n]) in grams for i in range(len(wa) - n + 1))


def written(story: Story) -> dict[str, Any]:
    """What the steps wrote, as plain values to compare."""
    return {
        "title": story.title,
        "text": story.text,
        "segments": list(story.segments.values_list("title", "summary", "narration")),
        "characters": list(story.characters.values_list("name", "role", "look", "personality")),
        "shots": list(story.shots.values_list("description", "camera", "duration", "characters", "positive")),
        "music": list(story.music_cues.values_list("mood", "description")),
    }


def test_a_story_from_an_idea_reads_like_one_from_the_story_to_the_music(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm")
    story = mystery(lab)
    # Every step took the first answer: each fitted its schema and the story's sense.
    runs = StepRun.objects.filter(story=story).exclude(step="renders")
    assert all(r.status == StepRun.COMPLETED and "did not fit" not in r.log for r in runs), [r.log for r in runs]

    assert words(story.title) & IDEA_WORDS, story.title
    assert "finds a message in a bottle" in story.text
    assert_reads(story.text, "the story")

    segments = list(story.segments.all())
    assert len(segments) == 2
    assert [s.number for s in segments] == [1, 2]
    assert len({s.title for s in segments}) == 2 and all(s.title for s in segments)
    assert words(segments[0].title + segments[0].summary) & IDEA_WORDS
    for s in segments:
        assert_reads(s.summary, f"segment {s.number}")
        assert s.summary in " ".join(story.text.split())  # each segment tells its part of the story
        assert_reads(s.narration, f"the narration of segment {s.number}")

    cast = list(story.characters.all())
    names = [c.name for c in cast]
    assert len(cast) >= 2 and all(re.fullmatch(r"[A-Z][a-z]+", n) for n in names), names
    assert "lighthouse keeper" in cast[0].role
    for c in cast:
        assert c.name in story.text
        assert_reads(c.look, f"{c.name}'s look")
        assert_reads(c.personality, f"{c.name}'s personality")

    shots = list(story.shots.select_related("segment"))
    assert len(shots) >= 10  # about 12 shots of 5 s in a minute
    assert {s.segment.number for s in shots if s.segment} == {1, 2}
    later = " ".join([*(s.description for s in shots), *(s.narration for s in segments)])
    assert all(n in later for n in names[:2]), names  # the cast comes back in the shots and the narration
    for shot in shots:
        assert shot.segment is not None
        assert_reads(shot.description, f"shot {shot.number}")
        assert shared_run(shot.description, shot.segment.summary), (shot.description, shot.segment.summary)
        assert all(n in names for n in shot.characters)
        assert 1 <= shot.duration <= 20 and shot.camera
        # Its prompt shows what the shot says, and its characters as they were cast.
        assert shot.description in shot.positive
        for name in shot.characters:
            look = next(c.look for c in cast if c.name == name)
            assert look[2:].rstrip(".") in shot.positive
        assert "film noir" in shot.positive.lower()
        assert_reads(shot.positive, f"the prompt of shot {shot.number}")
        assert_reads(shot.negative, f"the negative prompt of shot {shot.number}")

    cues = list(story.music_cues.select_related("segment"))
    assert [c.segment.number for c in cues if c.segment] == [1, 2]
    for cue in cues:
        assert cue.mood and cue.segment and cue.segment.title in cue.description
        assert_reads(cue.description, f"music cue {cue.number}")


def test_scenes_follow_their_segments_too(pipeline: Cluster, lab: Lab) -> None:
    lab.ollama("llm")
    story = mystery(lab, mode=Story.SCENES, template="holocine-t2v")
    scenes = list(story.scenes.select_related("segment"))
    assert scenes and all(s.segment for s in scenes)
    for scene in scenes:
        assert scene.segment is not None and scene.description in scene.segment.summary
        assert 2 <= len(scene.shots) <= 8
        for line in scene.shots:
            assert_reads(line, f"a shot of scene {scene.number}")
            assert shared_run(line, scene.description), (line, scene.description)
        assert all(line in scene.positive for line in scene.shots)


def test_the_same_seed_writes_the_same_story_and_another_seed_another(pipeline: Cluster, lab: Lab) -> None:
    sim = lab.ollama("llm", seed=7)
    first = written(mystery(lab))
    again = written(mystery(lab))
    assert again == first
    sim.set(seed=8)
    other = written(mystery(lab))
    assert other["text"] != first["text"] and other["characters"] != first["characters"]
    assert "finds a message in a bottle" in other["text"]


def test_the_story_page_says_a_simulated_model_wrote_it_when_one_did(
    pipeline: Cluster, lab: Lab, logged_in: Client
) -> None:
    lab.ollama("sim")
    Node.objects.filter(name="sim").update(simulated=True)
    by_sim = mystery(lab)
    lab.ollama("gpu", models=("qwen2.5:7b",))
    by_gpu = mystery(lab, model="qwen2.5:7b")
    assert by_gpu.node is not None and by_gpu.node.name == "gpu"

    for tab in ("story", "segments", "characters", "shots", "narration", "music"):
        html = logged_in.get(f"/stories/{by_sim.code}/{tab}/").content.decode()
        head = re.search(r'<header id="story-head".*?</header>', html, re.S)
        assert head and "Written by a simulated model" in head.group(0), tab
        assert "Written by a simulated model" not in logged_in.get(f"/stories/{by_gpu.code}/{tab}/").content.decode()
    assert "Written by a simulated model" in logged_in.get(f"/stories/{by_sim.code}/").content.decode()
