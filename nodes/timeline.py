"""The pool's last hour as a picture: one lane per service (a node's ComfyUI or Ollama) with the
render jobs and story steps it ran as bars placed by time, so idle gaps show, and under each
ComfyUI its free VRAM as the health checks read it (nodes.models.Sample).

Plain data for the partial templates/nodes/index.html#timeline (the Nodes page and the dashboard),
in four queries however long the history: the services, the jobs, the steps and the samples. A
lane shows its newest BARS_PER_LANE bars of the hour (and says how many it left out), so a busy
hour of thousands of short jobs stays a page that draws fast.

Positions are in thousandths of the window (0-1000); the template writes them as percentages of
the lane's width, since the content security policy allows no style attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, F, Q, Window
from django.db.models.functions import RowNumber
from django.urls import reverse
from django.utils import timezone

from nodes.models import Capability, Node, Sample
from renders.models import RenderJob
from stories.graph import STEPS
from stories.models import StepRun

WINDOW = timedelta(hours=1)
SCALE = 1000
TICK = timedelta(minutes=10)
BARS_PER_LANE = 150
# Thousandths of the window: a job of a few seconds is still a visible sliver.
MIN_WIDTH = 1.5
# Bars that overlap in time (a service running several at once) go in rows, up to this many.
MAX_ROWS = 3
# Bars that overlap by less than this (thousandths) share a row: a sliver of a short job, or the
# next job beginning as the last one's outputs are copied, is no second row of work.
SLACK = 2.0
ROW, BAR = 22, 18  # pixels: the pitch of a lane's rows and a bar's height
VRAM_HEIGHT = 16
# Samples further apart than this are not joined: the node was not answering in between.
SAMPLE_GAP = timedelta(minutes=5)
# A lane draws at most this many samples (the schedule checks once a minute; "check now" adds some).
SAMPLES_PER_LANE = 240
# What a bar's status is drawn as (a class of static/css/timeline.css), and said as.
DRAWN = {
    RenderJob.RENDERING: ("running", "rendering"),
    RenderJob.COMPLETED: ("completed", "completed"),
    RenderJob.FAILED: ("failed", "failed"),
    RenderJob.CANCELLED: ("cancelled", "cancelled"),
    StepRun.RUNNING: ("running", "running"),
    StepRun.STALE: ("stale", "completed, since re-run"),
}


@dataclass
class Bar:
    x: float
    width: float
    label: str
    status: str
    said: str
    started: datetime
    finished: datetime | None
    url: str
    row: int = 0

    @property
    def end(self) -> float:
        return self.x + self.width

    @property
    def left(self) -> str:
        return f"{self.x / 10:.2f}"

    @property
    def span(self) -> str:
        return f"{self.width / 10:.2f}"

    @property
    def y(self) -> int:
        return 2 + self.row * ROW


@dataclass
class Vram:
    area: str  # SVG path data in a 1000 x 100 box: the free share of the VRAM, filled
    line: str
    free: int
    total: int


@dataclass
class Lane:
    cap: Capability
    bars: list[Bar] = field(default_factory=list)
    left_out: int = 0
    rows: int = 1
    busy: int = 0  # per cent of the window with something running
    vram: Vram | None = None

    @property
    def id(self) -> str:
        return f"lane-{self.cap.node.code}-{self.cap.kind}"

    @property
    def name(self) -> str:
        return f"{self.cap.node.name} {self.cap.get_kind_display()}"

    @property
    def bars_height(self) -> int:
        return 2 + self.rows * ROW

    @property
    def height(self) -> int:
        return self.bars_height + (VRAM_HEIGHT + 2 if self.cap.kind == Capability.COMFYUI else 0)


@dataclass
class Tick:
    x: float
    label: str

    @property
    def left(self) -> str:
        return f"{self.x / 10:.2f}"


@dataclass
class Timeline:
    lanes: list[Lane]
    ticks: list[Tick]
    since: datetime
    now: datetime


def timeline(nodes: list[Node] | None = None, now: datetime | None = None) -> Timeline:
    """The last hour of every service, of `nodes` (read with their capabilities, as the Nodes page
    has them) or of every node."""
    now = now or timezone.now()
    since = now - WINDOW

    def x(t: datetime) -> float:
        return min(max((t - since) / WINDOW * SCALE, 0.0), float(SCALE))

    if nodes is None:
        caps = list(Capability.objects.select_related("node").order_by("node__name", "kind"))
    else:
        caps = sorted((c for n in nodes for c in n.capabilities.all()), key=lambda c: (c.node.name, c.kind))
    lanes = {(c.node_id, c.kind): Lane(c) for c in caps}
    left_out: dict[tuple[int, str], int] = {}

    def add(key: tuple[int, str], row: Any, label: str, url: str) -> None:
        lane = lanes.get(key)
        if lane is None:  # the node no longer has that service
            return
        status, said = DRAWN.get(row.status, (row.status, row.get_status_display().lower()))
        start = x(row.started)
        end = x(row.finished or now)
        if getattr(row, "seconds", None):  # the node's own time on it: the GPU was free while we copied
            end = min(end, x(row.started + timedelta(seconds=row.seconds)))
        lane.bars.append(Bar(start, max(end - start, MIN_WIDTH), label, status, said, row.started, row.finished, url))
        left_out[key] = row.of - BARS_PER_LANE if row.of > BARS_PER_LANE else 0

    for job in newest(
        RenderJob.objects.filter(node__isnull=False, started__isnull=False).filter(
            Q(status=RenderJob.RENDERING) | Q(status__in=RenderJob.ENDED, finished__gt=since)
        )
    ).only("code", "prompt", "status", "started", "finished", "seconds", "node_id"):
        code = str(job.code)[:8]
        label = f"{code} {' '.join(job.prompt.split())[:80]}".strip()
        add((job.node_id, Capability.COMFYUI), job, label, reverse("renders:job", args=[job.code]))

    ended = (*StepRun.ENDED, StepRun.STALE)
    runs = newest(
        StepRun.objects.filter(node__isnull=False, started__isnull=False).filter(
            Q(status=StepRun.RUNNING) | Q(status__in=ended, finished__gt=since)
        )
    )
    for run in runs.select_related("story").only(
        "step", "part", "status", "started", "finished", "node_id", "story__code", "story__title", "story__idea"
    ):
        step = STEPS[run.step].label if run.step in STEPS else run.step
        label = f"{step}{f' {run.part}' if run.part else ''} · {run.story}"
        add((run.node_id, Capability.OLLAMA), run, label, reverse("stories:detail", args=[run.story.code]))

    for key, lane in lanes.items():
        lane.left_out = left_out.get(key, 0)
        lane.rows = stack(lane.bars)
        lane.busy = round(busy(lane.bars) / (x(now) or 1) * 100)

    comfy = [c for c in caps if c.kind == Capability.COMFYUI]
    samples = (
        Sample.objects.filter(capability__in=comfy, taken__gt=since - SAMPLE_GAP)
        .order_by("capability_id", "taken")
        .values_list("capability_id", "taken", "vram_free", "vram_total")
    )
    by_cap: dict[int, list[tuple[datetime, int, int]]] = {}
    for cap_id, taken, free, total in samples if comfy else ():
        by_cap.setdefault(cap_id, []).append((taken, free, total))
    for cap in comfy:
        if points := by_cap.get(cap.pk):
            lanes[cap.node_id, cap.kind].vram = vram(points, x)

    return Timeline(list(lanes.values()), ticks(since, now, x), since, now)


def newest(rows: Any) -> Any:
    """Each node's newest BARS_PER_LANE rows of `rows`, with `of`, how many it has in all: one
    query, whatever the number of nodes."""
    return (
        rows.annotate(
            rank=Window(RowNumber(), partition_by=[F("node_id")], order_by=F("started").desc()),
            of=Window(Count("id"), partition_by=[F("node_id")]),
        )
        .filter(rank__lte=BARS_PER_LANE)
        .order_by("started")
    )


def stack(bars: list[Bar]) -> int:
    """Put bars that overlap in time in rows of their own (the first that is free by then), up to
    MAX_ROWS; returns how many rows the lane needs."""
    ends: list[float] = []
    for bar in sorted(bars, key=lambda b: b.x):
        free = next((i for i, end in enumerate(ends) if end <= bar.x + SLACK), None)
        if free is None:
            if len(ends) < MAX_ROWS:
                ends.append(0.0)
                free = len(ends) - 1
            else:
                free = min(range(len(ends)), key=lambda i: ends[i])
        bar.row = free
        ends[free] = max(ends[free], bar.end)
    return max(len(ends), 1)


def busy(bars: list[Bar]) -> float:
    """How much of the window (in thousandths) has at least one bar."""
    total, reach = 0.0, 0.0
    for bar in sorted(bars, key=lambda b: b.x):
        start, end = max(bar.x, reach), bar.x + bar.width
        if end > start:
            total += end - start
            reach = end
    return min(total, float(SCALE))


def vram(points: list[tuple[datetime, int, int]], x: Any) -> Vram:
    """The free share of VRAM over the window as SVG paths: a filled area and its top line, broken
    where the samples are further apart than SAMPLE_GAP (the node did not answer)."""
    if len(points) > SAMPLES_PER_LANE:
        points = points[:: -(-len(points) // SAMPLES_PER_LANE)] + points[-1:]
    runs: list[list[tuple[float, float]]] = []
    last: datetime | None = None
    for taken, free, total in points:
        xy = (x(taken), 100 - 100 * min(max(free / total, 0), 1) if total else 100.0)
        if last is None or taken - last > SAMPLE_GAP:
            runs.append([])
        runs[-1].append(xy)
        last = taken
    area, line = [], []
    for run in runs:
        if len(run) == 1:  # a lone reading: a short step, so it shows
            run = [(max(run[0][0] - 2, 0), run[0][1]), (min(run[0][0] + 2, SCALE), run[0][1])]
        path = " L".join(f"{px:.1f} {py:.1f}" for px, py in run)
        line.append(f"M{path}")
        area.append(f"M{run[0][0]:.1f} 100 L{path} L{run[-1][0]:.1f} 100 Z")
    _, free, total = points[-1]
    return Vram(" ".join(area), " ".join(line), free, total)


def ticks(since: datetime, now: datetime, x: Any) -> list[Tick]:
    """A tick every TICK on the clock (local time), and none so close to "now" that they collide."""
    local = timezone.localtime(since)
    step = int(TICK.total_seconds() // 60)
    first = local.replace(second=0, microsecond=0) + timedelta(minutes=step - local.minute % step)
    found = []
    t = first
    while t < now:
        if x(t) < SCALE - 60:
            found.append(Tick(x(t), f"{t:%H:%M}"))
        t += TICK
    return found


def context(nodes: list[Node] | None = None) -> dict[str, Any]:
    return {"timeline": timeline(nodes)}
