"""What each language-model step asks, what answer it accepts, and what it writes.

A step's prompt is a file in `stories/prompts/` with the story's idea, genre, style, characters and
what earlier steps wrote filled in. The answer is asked for as JSON against the schema of the
step's pydantic model (Ollama's `format`), then checked twice: its shape by pydantic, its sense
against the story (a shot in a segment that does not exist, a character nobody cast). What does not
fit is sent back to the model with the reasons; what fits is written in one transaction with the
run's completion.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from nodes.clients.http import TooDeep, loads
from stories.models import Character, MusicCue, Scene, Segment, StepRun, Story

PROMPTS = Path(__file__).resolve().parent / "prompts"
SHOT_SECONDS = 5  # a rendered shot is about this long
MAX_SHOTS = 300


class Unfit(Exception):
    """The model's answer does not fit: the reasons, to send back to it and to show."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


# --- the answers ----------------------------------------------------------------------------


class StoryAnswer(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=20, max_length=60_000)


class SegmentPlan(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(min_length=1, max_length=5000)


class SegmentsAnswer(BaseModel):
    segments: list[SegmentPlan] = Field(min_length=1, max_length=24)


class CharacterPlan(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: str = Field(max_length=200)
    look: str = Field(max_length=2000)
    personality: str = Field(max_length=2000)


class CharactersAnswer(BaseModel):
    characters: list[CharacterPlan] = Field(min_length=1, max_length=12)


class ShotPlan(BaseModel):
    segment: int = Field(ge=1)
    description: str = Field(min_length=1, max_length=3000)
    camera: str = Field(max_length=200)
    duration: float = Field(ge=1, le=20)
    characters: list[str] = Field(max_length=12)


class ShotsAnswer(BaseModel):
    shots: list[ShotPlan] = Field(min_length=1, max_length=MAX_SHOTS)


class ScenePlan(BaseModel):
    segment: int = Field(ge=1)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=3000)
    shots: list[str] = Field(min_length=1, max_length=8)
    duration: float = Field(ge=1, le=60)
    characters: list[str] = Field(max_length=12)


class ScenesAnswer(BaseModel):
    scenes: list[ScenePlan] = Field(min_length=1, max_length=MAX_SHOTS)


class PromptAnswer(BaseModel):
    positive: str = Field(min_length=1, max_length=4000)
    negative: str = Field(max_length=2000)


class NarrationLine(BaseModel):
    segment: int = Field(ge=1)
    text: str = Field(min_length=1, max_length=5000)


class NarrationAnswer(BaseModel):
    lines: list[NarrationLine] = Field(min_length=1, max_length=24)


class CuePlan(BaseModel):
    segment: int = Field(ge=1)
    mood: str = Field(min_length=1, max_length=100)
    description: str = Field(min_length=1, max_length=2000)


class MusicAnswer(BaseModel):
    cues: list[CuePlan] = Field(min_length=1, max_length=48)


# --- what each step knows of the story ------------------------------------------------------


def cast_of(story: Story) -> list[str]:
    return list(story.characters.values_list("name", flat=True))


def characters_output(story: Story) -> dict[str, Any]:
    """The characters as they are now, in the shape of the characters step's answer."""
    fields = ("name", "role", "look", "personality")
    return {"characters": list(story.characters.values(*fields))}


def narration_output(story: Story) -> dict[str, Any]:
    """The narration as it is now, in the shape of the narration step's answer."""
    segments = story.segments.exclude(narration="").order_by("number")
    return {"lines": [{"segment": s.number, "text": s.narration} for s in segments]}


def music_output(story: Story) -> dict[str, Any]:
    """The music cues as they are now, in the shape of the music step's answer."""
    cues = story.music_cues.select_related("segment").order_by("number")
    return {
        "cues": [
            {"segment": c.segment.number if c.segment else None, "mood": c.mood, "description": c.description}
            for c in cues
        ]
    }


def segment_count(story: Story) -> int:
    return story.segments.count()


def facts(story: Story, run: StepRun) -> dict[str, str]:
    """What the prompt files may name, as text."""
    segments = list(story.segments.all())
    characters = list(story.characters.all())
    wanted = max(1, min(MAX_SHOTS, round(story.target_seconds / SHOT_SECONDS)))
    values = {
        "idea": story.idea,
        "genre": story.genre or "any genre",
        "style": story.style or "any style",
        "seconds": str(story.target_seconds),
        "title": story.title,
        "text": story.text,
        "shot_count": str(wanted),
        "scene_count": str(max(1, round(wanted / 3))),
        "segment_count": str(max(1, min(12, round(story.target_seconds / 30)))),
        "segments": "\n".join(f"{s.number}. {s.title}: {s.summary}" for s in segments),
        "characters": "\n".join(f"- {c.name} ({c.role}): looks {c.look}; {c.personality}" for c in characters)
        or "(no characters)",
        "shot_seconds": str(SHOT_SECONDS),
    }
    if run.step == "prompts":
        piece = story.planned.objects.filter(story=story, number=run.part).first()
        if piece is not None:
            values["piece"] = f"{piece}: {piece.description}"
            values["piece_characters"] = ", ".join(piece.characters) or "nobody in particular"
            if isinstance(piece, Scene) and piece.shots:
                values["piece"] += "\nIts shots, in order:\n" + "\n".join(f"- {s}" for s in piece.shots)
            looks = {c.name: c.look for c in characters}
            values["looks"] = "\n".join(f"- {n}: {looks[n]}" for n in piece.characters if n in looks) or "(none)"
    return values


# --- checking what the model said against the story -----------------------------------------


def in_segments(story: Story, numbers: list[int], what: str) -> list[str]:
    count = segment_count(story)
    return [
        f"{what} {i} is in segment {n}, but there are only {count} segments (1 to {count})"
        for i, n in enumerate(numbers, 1)
        if not 1 <= n <= count
    ]


def known_characters(story: Story, pieces: list[Any], what: str) -> list[str]:
    cast = set(cast_of(story))
    listed = ", ".join(sorted(cast)) or "none"
    return [
        f"{what} {i} names {name!r}, who is not among the characters ({listed})"
        for i, piece in enumerate(pieces, 1)
        for name in piece.characters
        if name not in cast
    ]


def check_characters(story: Story, answer: CharactersAnswer) -> list[str]:
    names = [c.name.strip() for c in answer.characters]
    return [
        f"two characters are both called {n!r}; give each a name of its own" for n in set(names) if names.count(n) > 1
    ]


LENGTH_SLACK = 0.10  # how far the planned shots may add up from the story's requested length


def adds_up(story: Story, durations: list[float], what: str) -> list[str]:
    """The planned lengths add up to the story's length, within LENGTH_SLACK."""
    total, wanted = sum(durations), story.target_seconds
    low, high = wanted * (1 - LENGTH_SLACK), wanted * (1 + LENGTH_SLACK)
    if low <= total <= high:
        return []
    return [
        f"the {what} add up to {total:g} s, but the film is to last {wanted} s: plan {what} whose lengths "
        f"add up to between {low:g} and {high:g} s"
    ]


def every_segment(story: Story, numbers: list[int], what: str) -> list[str]:
    """Each segment of the story has at least one of these (an answer that leaves some out is
    incomplete, however well it fits the schema)."""
    missing = [n for n in range(1, segment_count(story) + 1) if n not in set(numbers)]
    if not missing:
        return []
    several = len(missing) > 1
    named = ", ".join(map(str, missing))
    has = "have" if several else "has"
    return [f"segment{'s' if several else ''} {named} {has} no {what}: give every segment its {what}"]


def check_shots(story: Story, answer: ShotsAnswer) -> list[str]:
    return (
        in_segments(story, [s.segment for s in answer.shots], "shot")
        + known_characters(story, answer.shots, "shot")
        + adds_up(story, [s.duration for s in answer.shots], "shots")
    )


def check_scenes(story: Story, answer: ScenesAnswer) -> list[str]:
    return (
        in_segments(story, [s.segment for s in answer.scenes], "scene")
        + known_characters(story, answer.scenes, "scene")
        + adds_up(story, [s.duration for s in answer.scenes], "scenes")
    )


def check_narration(story: Story, answer: NarrationAnswer) -> list[str]:
    numbers = [line.segment for line in answer.lines]
    return in_segments(story, numbers, "narration line") + every_segment(story, numbers, "narration")


def check_music(story: Story, answer: MusicAnswer) -> list[str]:
    numbers = [c.segment for c in answer.cues]
    return in_segments(story, numbers, "music cue") + every_segment(story, numbers, "music cue")


# --- writing what fits ----------------------------------------------------------------------


def segments_by_number(story: Story) -> dict[int, Segment]:
    return {s.number: s for s in story.segments.all()}


def write_story(story: Story, run: StepRun, answer: StoryAnswer) -> None:
    story.title, story.text = answer.title.strip(), answer.text.strip()
    Story.objects.filter(pk=story.pk).update(title=story.title, text=story.text)


def write_segments(story: Story, run: StepRun, answer: SegmentsAnswer) -> None:
    story.segments.all().delete()
    Segment.objects.bulk_create(
        Segment(story=story, number=i, title=s.title.strip(), summary=s.summary.strip())
        for i, s in enumerate(answer.segments, 1)
    )


def write_characters(story: Story, run: StepRun, answer: CharactersAnswer) -> None:
    story.characters.all().delete()
    Character.objects.bulk_create(
        Character(story=story, name=c.name.strip(), role=c.role, look=c.look, personality=c.personality)
        for c in answer.characters
    )


def write_shots(story: Story, run: StepRun, answer: ShotsAnswer) -> None:
    write_planned(story, answer.shots, lambda s: {"camera": s.camera})


def write_scenes(story: Story, run: StepRun, answer: ScenesAnswer) -> None:
    write_planned(story, answer.scenes, lambda s: {"title": s.title, "shots": s.shots})


def write_planned(story: Story, plans: list[Any], own: Callable[[Any], dict[str, Any]]) -> None:
    """The shots or scenes of the plan, numbered in its order; `own` gives a kind's own fields."""
    model = story.planned
    segments = segments_by_number(story)
    model.objects.filter(story=story).delete()
    pieces: list[Any] = [
        model(
            story=story,
            number=i,
            segment=segments.get(p.segment),
            description=p.description,
            duration=p.duration,
            characters=p.characters,
            **own(p),
        )
        for i, p in enumerate(plans, 1)
    ]
    model.objects.bulk_create(pieces)


def write_prompt(story: Story, run: StepRun, answer: PromptAnswer) -> None:
    story.planned.objects.filter(story=story, number=run.part).update(
        positive=answer.positive.strip(), negative=answer.negative.strip()
    )


def write_narration(story: Story, run: StepRun, answer: NarrationAnswer) -> None:
    by_segment: dict[int, list[str]] = {}
    for line in answer.lines:
        by_segment.setdefault(line.segment, []).append(line.text.strip())
    for segment in story.segments.all():
        Segment.objects.filter(pk=segment.pk).update(narration="\n\n".join(by_segment.get(segment.number, [])))


def write_music(story: Story, run: StepRun, answer: MusicAnswer) -> None:
    segments = segments_by_number(story)
    story.music_cues.all().delete()
    MusicCue.objects.bulk_create(
        MusicCue(story=story, number=i, segment=segments.get(c.segment), mood=c.mood, description=c.description)
        for i, c in enumerate(answer.cues, 1)
    )


# --- the steps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Asking:
    """A step that asks a language model."""

    answer: type[BaseModel]
    write: Callable[[Story, StepRun, Any], None]
    check: Callable[[Story, Any], list[str]] | None = None
    # Narrow the schema to this story (character names as an enum, segment numbers as a range).
    narrow: bool = False

    def prompt(self, story: Story, run: StepRun) -> str:
        return prompt_file(run.step).safe_substitute(facts(story, run))

    def schema(self, story: Story) -> dict[str, Any]:
        schema = copy.deepcopy(json_schema(self.answer))
        if self.narrow:
            cast, count = cast_of(story), max(segment_count(story), 1)
            for definition in [schema, *schema.get("$defs", {}).values()]:
                props = definition.get("properties", {})
                if "segment" in props:
                    props["segment"]["maximum"] = count
                if "characters" in props and cast and props["characters"].get("type") == "array":
                    props["characters"]["items"] = {"type": "string", "enum": cast}
        return schema

    def read(self, story: Story, text: str) -> BaseModel:
        """The answer if it fits; Unfit with the reasons if not."""
        try:
            value = loads(text)
        except TooDeep as e:
            raise Unfit([f"the answer is {e}: answer with the flat JSON object the schema describes"]) from None
        except ValueError as e:
            cut = " (it looks cut short: answer with less text)" if text.strip()[-1:] not in ("}", "]") else ""
            raise Unfit([f"the answer is not JSON: {e}{cut}"]) from None
        try:
            answer = self.answer.model_validate(value)
        except ValidationError as e:
            raise Unfit([reason(err) for err in e.errors()[:12]]) from None
        problems = self.check(story, answer) if self.check else []
        if problems:
            raise Unfit(problems[:12])
        return answer


def question(story: Story, run: StepRun, prompt: str | None = None) -> str:
    """What step `run` asks, as a digest of its model and its prompt (`prompt` when the caller
    built it already): two runs with the same digest ask the same thing, so one's answer serves
    the other."""
    asked = f"{story.model_for(run.step)}\n{ASKING[run.step].prompt(story, run) if prompt is None else prompt}"
    return hashlib.sha256(asked.encode()).hexdigest()[:32]


@functools.cache
def prompt_file(step: str) -> string.Template:
    return string.Template((PROMPTS / f"{step}.txt").read_text())


@functools.cache
def json_schema(answer: type[BaseModel]) -> dict[str, Any]:
    return answer.model_json_schema()


def reason(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "the answer"
    return f"{where}: {err['msg']}"


ASKING: dict[str, Asking] = {
    "story": Asking(StoryAnswer, write_story),
    "segments": Asking(SegmentsAnswer, write_segments),
    "characters": Asking(CharactersAnswer, write_characters, check_characters),
    "shots": Asking(ShotsAnswer, write_shots, check_shots, narrow=True),
    "scenes": Asking(ScenesAnswer, write_scenes, check_scenes, narrow=True),
    "prompts": Asking(PromptAnswer, write_prompt),
    "narration": Asking(NarrationAnswer, write_narration, check_narration, narrow=True),
    "music": Asking(MusicAnswer, write_music, check_music, narrow=True),
}

SYSTEM = (
    "You write for a film studio that turns story ideas into short AI-rendered films. "
    "Answer with one JSON object that fits the schema you are given, and nothing else."
)
