"""Batch planning's figures (issue 12, "How fast", the part that exists so far): how long
renders.batches takes to plan a 1,000-item seed batch, a 10,000-prompt list and a 10,000-item
grid, in this process, median of 5 runs each. The issue's targets are from the form to the rows
(1,000 items <= 1 s, a 10,000-item grid <= 5 s); planning is the first part of that, so it is
held to the same targets until the rows exist.

    python bench/batches.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "spoonfeeder.settings")

import django  # noqa: E402

django.setup()

from bench.common import machine, verdict  # noqa: E402
from renders import batches, workflows  # noqa: E402
from renders.models import Template  # noqa: E402


def timed(make: Callable[[], list[Any]], runs: int = 5) -> tuple[float, int]:
    """Median seconds of `runs` plans, and how many items one made."""
    seconds, made = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        made = len(make())
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), made


def main() -> int:
    # An unsaved template: planning reads only its name and mapping.
    sdxl = next(
        Template(name=t["name"], mapping=t["mapping"]) for t in workflows.shipped() if t["name"] == "sdxl-still"
    )
    print(f"Batch planning benchmarks ({machine()})")
    seeds, n1 = timed(lambda: batches.seed_variations("a lighthouse at dusk", {"steps": 20}, sdxl, count=1000))
    text = "\n".join(f"a lighthouse at dusk, variation {i}, oil painting" for i in range(10_000))
    listed, n2 = timed(lambda: batches.prompt_items(batches.prompt_list(text), {}, sdxl))
    axes = ["cfg=" + ",".join(f"{i / 10:g}" for i in range(40, 140)), "steps=" + ",".join(map(str, range(1, 101)))]
    grid, n3 = timed(lambda: batches.grid("a lighthouse", {}, sdxl, [batches.axis(a) for a in axes]))
    print(f"  {n1:,} seed variations: median {seeds * 1000:.1f} ms")
    print(f"  {n2:,}-prompt list (parsed, checked, seeded): median {listed * 1000:.1f} ms")
    print(f"  {n3:,}-item grid (100 cfg x 100 steps): median {grid * 1000:.1f} ms")
    print(f"{verdict(seeds <= 1 and grid <= 5)}: planning within the form-to-rows targets (1 s; 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
