"""A batch's items, planned when it is created (issue 12): seed variations, a prompt list, or a
parameter grid of up to three axes. Every item's prompt, seed and settings are fixed here, so any
item renders again exactly; what cannot be made is refused with a message that says what to do,
before anything is created.

    items = seed_variations("a lighthouse", {"steps": 20}, template, count=50)
    listed = prompt_list(text)  # listed.prompts, and the blank and repeated lines it left out
    items = grid("a lighthouse", {}, template, [axis("cfg=4,6,8"), axis("steps=20,30")])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from renders import workflows

MAX_SEEDS = 1000
MAX_PROMPTS = 10_000
MAX_ITEMS = 10_000
MAX_AXES = 3
MAX_PROMPT_FILE = 5 * 1024 * 1024  # bytes: 10,000 prompts of 500 characters
MAX_PROMPT = 5000  # characters, as the render form takes
SEED_TOP = 2**64 - 1
# What a grid can vary, and the workflow parameter each needs a place for in the template.
AXES: dict[str, str | None] = {
    "seed": "seed",
    "cfg": "cfg",
    "steps": "steps",
    "size": "width",
    "lora": "loras",
    "lora_strength": "loras",
    "prompt": "positive",
    "template": None,
}
# The settings an axis sets on its items (the batch's own value of them is not every item's).
SETS = {"size": ("width", "height"), "lora": ("lora", "loras"), "lora_strength": ("lora", "loras")}


class BatchError(ValueError):
    """A batch that cannot be made: the message says what is wrong and what to do."""


class Takes(Protocol):
    """A template as far as planning needs it (renders.models.Template)."""

    name: str

    def takes(self, parameter: str) -> bool: ...


@dataclass(frozen=True)
class Item:
    """One item of a batch: a render job once it is queued."""

    index: int
    prompt: str
    settings: dict[str, Any]
    template: str = ""  # another template than the batch's (a grid over templates)
    # A grid item's place: axis -> the value shown on the grid's rows and columns.
    labels: dict[str, str] = field(default_factory=dict)


def random_seeds(count: int) -> list[int]:
    return [workflows.random_seed() for _ in range(count)]


def check_count(count: Any) -> int:
    try:
        number = int(str(count).strip())
    except ValueError:
        raise BatchError(f"How many images: a whole number from 1 to {MAX_SEEDS:,}, not {count!r}.") from None
    if not 1 <= number <= MAX_SEEDS:
        raise BatchError(f"How many images: from 1 to {MAX_SEEDS:,}; {number:,} was asked.")
    return number


def check_start(start: Any, count: int) -> int:
    try:
        number = int(str(start).strip())
    except ValueError:
        raise BatchError(f"The start seed must be a whole number, not {start!r}.") from None
    if not 0 <= number <= SEED_TOP - (count - 1):
        raise BatchError(
            f"The start seed must be from 0 to {SEED_TOP - (count - 1):,} (so that {count:,} seeds in a row fit "
            f"below 2^64); {number:,} was given."
        )
    return number


def seed_variations(
    prompt: str,
    settings: Mapping[str, Any],
    template: Takes,
    *,
    count: Any,
    sequential: bool = False,
    start: Any = None,
) -> list[Item]:
    """The same prompt and settings with `count` seeds: random ones, or `start`, start + 1, …"""
    if not template.takes("seed"):
        raise BatchError(f"{template.name} takes no seed: seed variations need a template with a seed input.")
    n = check_count(count)
    if sequential:
        first = check_start(0 if start in (None, "") else start, n)
        seeds = list(range(first, first + n))
    else:
        seeds = random_seeds(n)
    prompt = check_prompt(prompt)
    return [Item(i, prompt, {**settings, "seed": seed}) for i, seed in enumerate(seeds)]


def check_prompt(prompt: str, where: str = "The prompt") -> str:
    prompt = prompt.strip()
    if not prompt:
        raise BatchError(f"{where} is empty: write what to render.")
    if len(prompt) > MAX_PROMPT:
        raise BatchError(f"{where} has {len(prompt):,} characters; at most {MAX_PROMPT:,} are taken.")
    return prompt


@dataclass
class PromptList:
    """The prompts of a pasted list or an uploaded text file, one per line, and the lines left
    out: blank ones, and ones that repeat an earlier line (each with that line's number)."""

    prompts: list[str]
    blank: list[int]
    repeated: list[tuple[int, int]]

    def summary(self) -> str:
        """What the list gave, in words, for the page shown before queueing."""
        said = [f"{len(self.prompts):,} prompt{'s' if len(self.prompts) != 1 else ''}"]
        if self.blank:
            said.append(
                f"{len(self.blank):,} blank line{'s' if len(self.blank) != 1 else ''} left out ({lines(self.blank)})"
            )
        if self.repeated:
            shown = ", ".join(f"line {n} repeats line {first}" for n, first in self.repeated[:5])
            more = f" and {len(self.repeated) - 5:,} more" if len(self.repeated) > 5 else ""
            said.append(
                f"{len(self.repeated):,} repeated line{'s' if len(self.repeated) != 1 else ''} left out ({shown}{more})"
            )
        return "; ".join(said) + "."


def lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}" + (
        f" and {len(numbers) - 10:,} more" if len(numbers) > 10 else ""
    )


def prompt_list(text: str | bytes) -> PromptList:
    """The prompts of `text`, one per line; BatchError for a file too large, not text, empty, or
    over MAX_PROMPTS prompts."""
    if isinstance(text, bytes):
        if len(text) > MAX_PROMPT_FILE:
            raise BatchError(
                f"The prompt file is {len(text) / 1048576:.1f} MB; at most {MAX_PROMPT_FILE // 1048576} MB "
                f"(that is {MAX_PROMPTS:,} prompts) are taken: split it into several batches."
            )
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BatchError("The prompt file is not UTF-8 text: save it as plain text, one prompt per line.") from None
    prompts: list[str] = []
    blank: list[int] = []
    repeated: list[tuple[int, int]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        prompt = line.strip()
        if not prompt:
            blank.append(number)
        elif prompt in seen:
            repeated.append((number, seen[prompt]))
        else:
            check_prompt(prompt, f"Line {number}")
            seen[prompt] = number
            prompts.append(prompt)
    if not prompts:
        raise BatchError("The prompt list has no prompts: write one per line.")
    if len(prompts) > MAX_PROMPTS:
        raise BatchError(
            f"The list has {len(prompts):,} prompts; at most {MAX_PROMPTS:,} are taken: split it into several batches."
        )
    return PromptList(prompts, blank, repeated)


def prompt_items(listed: PromptList, settings: Mapping[str, Any], template: Takes) -> list[Item]:
    """One item per prompt, each with a seed of its own (when the template takes one)."""
    if not template.takes("positive"):
        raise BatchError(f"{template.name} takes no prompt: a prompt list needs a template with a prompt input.")
    seeds: list[int | None] = (
        list(random_seeds(len(listed.prompts))) if template.takes("seed") else [None] * len(listed.prompts)
    )
    return [
        Item(i, prompt, {**settings, **({"seed": seed} if seed is not None else {})})
        for i, (prompt, seed) in enumerate(zip(listed.prompts, seeds, strict=True))
    ]


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[Any, ...]
    shown: tuple[str, ...]  # each value as typed, for the grid's labels


def axis(text: str) -> Axis:
    """`cfg=4,6,8`, `size=512x512,768x768`, `lora=ink.safetensors,none`, `prompt=a cat|a dog`
    (prompts are split on |, as they may hold commas): the axis and its values, checked."""
    name, sep, rest = text.partition("=")
    name = name.strip().lower()
    if not sep or name not in AXES:
        raise BatchError(f"Write each axis as name=values, one of {', '.join(AXES)} (as in cfg=4,6,8), not {text!r}.")
    raw = [v.strip() for v in rest.split("|" if name == "prompt" else ",")]
    if not all(raw):
        raise BatchError(f"The {name} axis has an empty value: write its values separated by commas.")
    if len(set(raw)) != len(raw):
        raise BatchError(f"The {name} axis has a value twice: give each once.")
    return Axis(name, tuple(axis_value(name, v) for v in raw), tuple(raw))


def axis_value(name: str, text: str) -> Any:
    if name == "size":
        width, x, height = text.lower().partition("x")
        errors = workflows.validate_settings({"width": width, "height": height}) if x else {"size": ""}
        if errors or not (width.isdigit() and height.isdigit()):
            raise BatchError(f"The size {text!r} is not WIDTHxHEIGHT in multiples of 8 (as 832x480).")
        return (int(width), int(height))
    if name == "seed":  # a number here ("-1" is not "random")
        if not text.isdigit() or int(text) > SEED_TOP:
            raise BatchError(f"The seed axis: a seed is a whole number from 0 to 2^64 - 1, not {text!r}.")
        return int(text)
    if name in ("steps", "cfg"):
        errors = workflows.validate_settings({name: text})
        if errors:
            raise BatchError(f"The {name} axis: {errors[name]}")
        return float(text) if name == "cfg" else int(text)
    if name == "lora_strength":
        try:
            strength = float(text)
        except ValueError:
            raise BatchError(f"A LoRA strength is a number (as 0.8), not {text!r}.") from None
        if not -10 <= strength <= 10:
            raise BatchError(f"A LoRA strength is from -10 to 10; {text} was given.")
        return strength
    if name == "prompt":
        return check_prompt(text, "A prompt of the prompt axis")
    return text  # a LoRA's file name ("none": without one) or a template's name


def grid(
    prompt: str,
    settings: Mapping[str, Any],
    template: Takes,
    axes: Iterable[Axis],
    templates: Mapping[str, Takes] | None = None,
) -> list[Item]:
    """Every combination of the axes' values (the first axis slowest), each item with the batch's
    prompt and settings changed by its place on the grid and a random seed when the seed is not
    an axis. The count is checked before anything is built."""
    axes = list(axes)
    if not 1 <= len(axes) <= MAX_AXES:
        raise BatchError(f"A grid has from 1 to {MAX_AXES} axes; {len(axes)} were given.")
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise BatchError("An axis is given twice: give each axis once, with all its values.")
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_ITEMS:
        raise BatchError(
            f"The grid has {count:,} items ({' x '.join(str(len(a.values)) for a in axes)}), over the limit of "
            f"{MAX_ITEMS:,}: take fewer values."
        )
    chosen = {a.name: a for a in axes}
    by_name = dict(templates or {})
    if "template" in chosen:
        unknown = [t for t in chosen["template"].values if t not in by_name]
        if unknown:
            raise BatchError(
                f"No template is called {', '.join(map(repr, unknown))}: use the names on the Templates page."
            )
    used = [by_name[t] for t in chosen["template"].values] if "template" in chosen else [template]
    for a in axes:
        needs = AXES[a.name]
        lacking = [t.name for t in used if needs and not t.takes(needs)]
        if lacking:
            what = {"loras": "LoRA loader", "positive": "prompt", "width": "size"}.get(needs or "", needs)
            raise BatchError(
                f"The {a.name} axis needs a template with a {what} input; {', '.join(lacking)} has none: "
                "drop the axis, or choose another template."
            )
    if "lora_strength" in chosen and "lora" not in chosen and not settings.get("lora"):
        raise BatchError("A LoRA strength axis needs a LoRA: set the LoRA, or add a lora axis.")
    prompt = prompt.strip() if "prompt" in chosen else check_prompt(prompt)
    seeded = "seed" not in chosen
    items = []
    for i, place in enumerate(itertools.product(*(zip(a.values, a.shown, strict=True) for a in axes))):
        values = {a.name: value for a, (value, _) in zip(axes, place, strict=True)}
        item_settings = dict(settings)
        for name, value in values.items():
            if name == "size":
                item_settings["width"], item_settings["height"] = value
            elif name in ("seed", "steps", "cfg"):
                item_settings[name] = value
        lora = values.get("lora", item_settings.pop("lora", None))
        if lora and lora != "none":
            strength = values.get("lora_strength")
            item_settings["loras"] = [{"name": lora, "strength": strength} if strength is not None else lora]
        template_name = values.get("template", "")
        takes_seed = (by_name[template_name] if template_name else template).takes("seed")
        if seeded and takes_seed:
            item_settings["seed"] = workflows.random_seed()
        labels = {a.name: shown for a, (_, shown) in zip(axes, place, strict=True)}
        items.append(Item(i, values.get("prompt", prompt), item_settings, template_name, labels))
    return items
