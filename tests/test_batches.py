"""Planning a batch's items (issue 12, point 1): seed variations, prompt lists and parameter grids,
every item's prompt, seed and settings fixed at creation, and bad input refused with what to do
(renders.batches; no database: the shipped templates as read from their files)."""

from __future__ import annotations

from typing import Any

import pytest

from renders import batches, workflows
from renders.batches import BatchError, axis, grid, prompt_items, prompt_list, seed_variations
from renders.models import Template

SHIPPED = {t["name"]: Template(name=t["name"], mapping=t["mapping"]) for t in workflows.shipped()}  # unsaved
SDXL, WAN, TEST = SHIPPED["sdxl-still"], SHIPPED["wan22-t2v"], SHIPPED["test-still-image"]


def test_seed_variations_fix_a_seed_per_item_random_or_in_a_row() -> None:
    items = seed_variations("a lighthouse", {"steps": 20}, SDXL, count="50")
    assert [i.index for i in items] == list(range(50))
    assert {i.prompt for i in items} == {"a lighthouse"} and all(i.settings["steps"] == 20 for i in items)
    seeds = [i.settings["seed"] for i in items]
    assert len(set(seeds)) == 50 and all(isinstance(s, int) and 0 <= s < 2**53 for s in seeds)
    in_a_row = seed_variations("a lighthouse", {}, SDXL, count=3, sequential=True, start="1000")
    assert [i.settings["seed"] for i in in_a_row] == [1000, 1001, 1002]
    top = seed_variations("x", {}, SDXL, count=2, sequential=True, start=2**64 - 2)
    assert [i.settings["seed"] for i in top] == [2**64 - 2, 2**64 - 1]


@pytest.mark.parametrize(
    ("count", "start", "message"),
    [
        (0, None, "How many images: from 1 to 1,000; 0 was asked."),
        (1001, None, "How many images: from 1 to 1,000; 1,001 was asked."),
        ("abc", None, "How many images: a whole number from 1 to 1,000, not 'abc'."),
        (3, -1, "The start seed must be from 0 to 18,446,744,073,709,551,613"),
        (3, 2**64, "The start seed must be from 0 to 18,446,744,073,709,551,613"),
        (3, "1e3", "The start seed must be a whole number, not '1e3'."),
    ],
)
def test_bad_seed_variations_are_refused_with_what_to_do(count: Any, start: Any, message: str) -> None:
    with pytest.raises(BatchError) as e:
        seed_variations("a lighthouse", {}, SDXL, count=count, sequential=start is not None, start=start)
    assert str(e.value).startswith(message)


def test_seed_variations_need_a_template_with_a_seed() -> None:
    with pytest.raises(BatchError, match="test-still-image takes no seed"):
        seed_variations("x", {}, TEST, count=3)


def test_a_prompt_list_reports_the_blank_and_repeated_lines_it_leaves_out() -> None:
    listed = prompt_list(b"\xef\xbb\xbfa cat\n\n  a dog  \na cat\n\na bird\na dog\n")
    assert listed.prompts == ["a cat", "a dog", "a bird"]
    assert (listed.blank, listed.repeated) == ([2, 5], [(4, 1), (7, 3)])
    assert listed.summary() == (
        "3 prompts; 2 blank lines left out (lines 2, 5); "
        "2 repeated lines left out (line 4 repeats line 1, line 7 repeats line 3)."
    )
    items = prompt_items(listed, {"steps": 12}, SDXL)
    assert [(i.index, i.prompt) for i in items] == [(0, "a cat"), (1, "a dog"), (2, "a bird")]
    assert len({i.settings["seed"] for i in items}) == 3 and all(i.settings["steps"] == 12 for i in items)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The prompt list has no prompts: write one per line."),
        ("\n  \n\n", "The prompt list has no prompts: write one per line."),
        (b"x" * (50 * 1024 * 1024), "The prompt file is 50.0 MB; at most 5 MB"),
        (b"\xff\xfe a cat", "The prompt file is not UTF-8 text"),
        ("\n".join(f"prompt {i}" for i in range(10_001)), "The list has 10,001 prompts; at most 10,000 are taken"),
        ("a cat\n" + "y" * 5001, "Line 2 has 5,001 characters; at most 5,000 are taken."),
    ],
)
def test_a_bad_prompt_list_is_refused_with_what_to_do(text: str | bytes, message: str) -> None:
    with pytest.raises(BatchError) as e:
        prompt_list(text)
    assert str(e.value).startswith(message)


def test_ten_thousand_prompts_are_taken() -> None:
    assert len(prompt_list("\n".join(f"prompt {i}" for i in range(10_000))).prompts) == 10_000


def test_a_grid_is_every_combination_with_its_labels_and_a_seed_each() -> None:
    items = grid("a lighthouse", {"steps": 20}, SDXL, [axis("cfg=4,6,8"), axis("steps=20, 30")])
    assert [(i.labels["cfg"], i.labels["steps"]) for i in items] == [
        ("4", "20"),
        ("4", "30"),
        ("6", "20"),
        ("6", "30"),
        ("8", "20"),
        ("8", "30"),
    ]
    assert [(i.settings["cfg"], i.settings["steps"]) for i in items] == [
        (4.0, 20),
        (4.0, 30),
        (6.0, 20),
        (6.0, 30),
        (8.0, 20),
        (8.0, 30),
    ]
    assert len({i.settings["seed"] for i in items}) == 6  # fixed now, one each: any item renders again
    sizes = grid("x", {}, SDXL, [axis("size=512x512,832x480"), axis("seed=1,2")])
    assert [(i.settings["width"], i.settings["height"], i.settings["seed"]) for i in sizes] == [
        (512, 512, 1),
        (512, 512, 2),
        (832, 480, 1),
        (832, 480, 2),
    ]
    prompts = grid("", {}, SDXL, [axis("prompt=a cat, sitting|a dog")])
    assert [i.prompt for i in prompts] == ["a cat, sitting", "a dog"]


def test_a_grid_over_templates_and_loras_names_them_on_each_item() -> None:
    lora_still = Template(name="lora-still", mapping={**SDXL.mapping, "loras": [["9", "lora_name"]]})
    shipped = {**SHIPPED, "lora-still": lora_still}
    items = grid(
        "a lighthouse",
        {},
        shipped["lora-still"],
        [axis("lora=ink.safetensors,none"), axis("lora_strength=0.5,1")],
        shipped,
    )
    assert [i.settings.get("loras") for i in items] == [
        [{"name": "ink.safetensors", "strength": 0.5}],
        [{"name": "ink.safetensors", "strength": 1.0}],
        None,
        None,
    ]
    over = grid("a lighthouse", {}, SDXL, [axis("template=sdxl-still,flux-still")], SHIPPED)
    assert [i.template for i in over] == ["sdxl-still", "flux-still"]


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        (["cfg=" + ",".join(str(i / 100) for i in range(100)), "steps=" + ",".join(map(str, range(1, 101))),
          "seed=" + ",".join(map(str, range(100)))],
         "The grid has 1,000,000 items (100 x 100 x 100), over the limit of 10,000: take fewer values."),
        (["cfg=4", "steps=20", "seed=1", "size=512x512"], "A grid has from 1 to 3 axes; 4 were given."),
        (["lora=ink.safetensors"], "The lora axis needs a template with a LoRA loader input; sdxl-still has none"),
        (["template=nope"], "No template is called 'nope'"),
        (["cfg=4", "cfg=6"], "An axis is given twice"),
    ],
)  # fmt: skip
def test_a_bad_grid_is_refused_with_what_to_do(axes: list[str], message: str) -> None:
    with pytest.raises(BatchError) as e:
        grid("a lighthouse", {}, SDXL, [axis(a) for a in axes], SHIPPED)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour=red", "Write each axis as name=values, one of seed, cfg, steps, size"),
        ("cfg=4,,6", "The cfg axis has an empty value"),
        ("cfg=4,4", "The cfg axis has a value twice"),
        ("cfg=99", "The cfg axis: CFG must be between 0 and 30; got 99."),
        ("steps=2.5", "The steps axis: Steps must be a whole number"),
        ("size=500x500", "The size '500x500' is not WIDTHxHEIGHT in multiples of 8"),
        ("seed=-1", "The seed axis: a seed is a whole number from 0 to 2^64 - 1, not '-1'."),
        ("lora_strength=strong", "A LoRA strength is a number (as 0.8), not 'strong'."),
    ],
)
def test_a_bad_axis_is_refused_with_what_to_do(text: str, message: str) -> None:
    with pytest.raises(BatchError) as e:
        axis(text)
    assert str(e.value).startswith(message)


def test_the_limits_are_those_of_the_issue() -> None:
    assert (batches.MAX_SEEDS, batches.MAX_PROMPTS, batches.MAX_ITEMS, batches.MAX_AXES) == (1000, 10_000, 10_000, 3)
    assert len(grid("x", {}, SDXL, [axis("cfg=" + ",".join(str(i / 10) for i in range(100))), axis(
        "steps=" + ",".join(map(str, range(1, 101))))])) == 10_000  # fmt: skip
    assert WAN.takes("frames")
