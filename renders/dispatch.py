"""Driving renders on the pool's ComfyUI servers.

A dispatcher process (`manage.py dispatcher`, started by `run`) owns the ComfyUI nodes it can reach,
one at a time each (a guarded claim on the capability's `runner`, refreshed by a heartbeat). For
every owned node a Runner thread keeps one WebSocket open, keeps the node's own queue filled with
up to `limit + PREFETCH` jobs (so the GPU never waits for us between jobs), follows progress,
collects outputs and records every change on the job's row. Whatever a dead dispatcher left
behind is found by its stale heartbeats and re-attached by asking the node about our prompt_id:
a job is never rendered twice and never lost.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from nodes.clients import ServiceError
from nodes.clients.comfyui import (
    FINISHED,
    GONE,
    HISTORY_SETTLE,
    QUEUED,
    RUNNING,
    ComfyUI,
    Events,
    Executing,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Preview,
    Progress,
    ProgressState,
    WorkflowRejected,
    failure,
    node_seconds,
    outputs_of,
)
from nodes.models import Capability
from renders import media, workflows
from renders.models import Queue, RenderJob, Speed

log = logging.getLogger(__name__)

PREFETCH = 1
BEAT = 2.0  # seconds between heartbeats
POLL = 2.0  # seconds between /history checks of in-flight jobs, socket or not
CONTROLS = 0.3  # seconds between looks at the user's cancel, pause and reorder
QUARANTINE_AFTER = 3  # dispatcher deaths while holding one job
PROGRESS_EVERY = 0.2  # seconds between progress writes of one job
MAX_REST = 60.0  # the longest a node that keeps failing is left without new jobs, in seconds
SETTLE_LOOK = 0.25  # seconds between asks about a job taken off a node's queue
# Seconds a runner waits for one answer of its node: a node that hangs holds up its own runner
# for no longer than this at a time, and is then treated as silent.
NODE_TIMEOUT = 5.0


def params_of(job: RenderJob) -> dict[str, Any]:
    params = {k: v for k, v in job.settings.items() if v not in (None, "")}
    if params.get("seed") in (None, "random", -1):
        params["seed"] = random.randrange(2**48)
    if "lora" in params:
        params["loras"] = [params.pop("lora")]
    params.update(positive=job.prompt, negative=job.negative, filename_prefix=f"spoonfeeder/{job.code}")
    return params


def next_job(cap: Capability) -> RenderJob | None:
    """The best queued job this node can run, claimed for it: the job's row takes a unit of the
    node's capacity (guarded, within its limit plus the prefetch)."""
    if Queue.get().paused:
        return None
    tried: set[int] = set()
    while True:
        job = best_fit(cap, exclude=tried)
        if job is None:
            return None
        tried.add(job.pk)
        with cap.room(extra=PREFETCH) as free:
            if not free:
                return None  # the node is full
            claimed = RenderJob.objects.filter(pk=job.pk, status=RenderJob.QUEUED).update(
                status=RenderJob.ASSIGNED,
                node=cap.node_id,
                capability=cap,
                prompt_id=str(uuid.uuid4()),
                client_id="",
                attempts=job.attempts + 1,
                heartbeat=timezone.now(),
                error="",
            )
            if claimed:
                job.refresh_from_db()
                job.changed("job.assigned")
                return job
        # another runner took that job first


def best_fit(cap: Capability, exclude: set[int] | None = None) -> RenderJob | None:
    """The first runnable job, in dispatch order, that this node has what it takes to render and
    should render (see worth_it)."""
    classes = set(cap.inventory.get("classes", []))
    files = cap.inventory.get("files", {})
    view: PoolView | None = None
    for job in fitting(cap, classes, files, exclude):
        if job.pin_id is not None:
            return job
        view = view or PoolView.read()
        if worth_it(cap, job, view):
            return job
    return None


def fitting(
    cap: Capability, classes: set[str], files: dict[str, list[str]], exclude: set[int] | None
) -> Iterator[RenderJob]:
    queued = (
        RenderJob.objects.runnable()
        .filter(Q(pin=None) | Q(pin=cap.node_id))
        .exclude(pk__in=exclude or ())
        .select_related("template")
    )
    if Capability.objects.usable(Capability.COMFYUI).exclude(pk=cap.pk).exists():
        queued = queued.exclude(avoid=cap.node_id)  # a retry goes to another node when there is one
    # Most often the first job fits: fetch a few rows first, more only when they do not.
    ordered = queued.in_dispatch_order()
    for batch in (ordered[:5], ordered[5:50]):
        for job in batch:
            if fits(job, classes, files):
                yield job


PLAN_AHEAD = 500  # queued jobs the speed-aware plan looks at


@dataclasses.dataclass
class PoolView:
    """The pool as the speed-aware choice sees it, read once per dispatch pass: measured speeds,
    the work each node already has, and the queue ahead in dispatch order."""

    rates: dict[tuple[int, int], float]  # (capability, template) -> seconds per unit of work
    usable: set[int]
    backlog: dict[int, float]  # capability -> seconds of work already sent to it
    queued: Sequence[tuple[int, int, float, int | None]]  # (job, template, work, pinned node) in order
    node_of: dict[int, int]  # capability -> its node
    plans: dict[int, set[int]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.seen = {pk for pk, *_ in self.queued}

    @classmethod
    def read(cls) -> PoolView:
        rates = {(c, t): r for c, t, r in Speed.objects.values_list("capability_id", "template_id", "seconds_per_unit")}
        usable = Capability.objects.usable(Capability.COMFYUI)
        node_of = dict(usable.values_list("pk", "node_id"))
        backlog = dict.fromkeys(node_of, 0.0)
        active = RenderJob.objects.active().filter(
            node__capabilities__pk__in=list(node_of), node__capabilities__kind=Capability.COMFYUI
        )
        mean = mean_rates(rates)
        for c, t, work, progress in active.values_list("node__capabilities__pk", "template_id", "work", "progress"):
            backlog[c] += work * (1 - progress) * rates.get((c, t), mean.get(c, 0.0))
        queued = list(
            RenderJob.objects.runnable()
            .in_dispatch_order()
            .values_list("pk", "template_id", "work", "pin_id")[:PLAN_AHEAD]
        )
        return cls(rates, set(node_of), backlog, queued, node_of)

    def plan(self, cap: Capability) -> set[int]:
        """The queued jobs this node would render if every job, in dispatch order, went to the
        node that would finish it first (earliest finish time, by measured speeds and the work
        each node already has). A node that has never rendered a template is not planned for it,
        so a job only some nodes can run is never planned onto one that cannot."""
        if cap.pk not in self.plans:
            free = dict(self.backlog)
            free.setdefault(cap.pk, 0.0)
            mine: set[int] = set()
            by_node = {node: c for c, node in self.node_of.items()}
            for pk, template, work, pin in self.queued:
                if pin is not None:
                    if pin in by_node:
                        c = by_node[pin]
                        free[c] += work * self.rates.get((c, template), 0.0)
                    continue
                finish = {c: free[c] + work * self.rates[(c, template)] for c in free if (c, template) in self.rates}
                if not finish:
                    continue
                best = min(finish, key=lambda c: (finish[c], c != cap.pk))
                free[best] = finish[best]
                if best == cap.pk:
                    mine.add(pk)
            self.plans[cap.pk] = mine
        return self.plans[cap.pk]


def mean_rates(rates: dict[tuple[int, int], float]) -> dict[int, float]:
    per_cap: dict[int, list[float]] = {}
    for (c, _), r in rates.items():
        per_cap.setdefault(c, []).append(r)
    return {c: sum(rs) / len(rs) for c, rs in per_cap.items()}


def worth_it(cap: Capability, job: RenderJob, view: PoolView | None = None) -> bool:
    """Whether this node should take this job now, by measured speeds.

    While there is plenty of work every node keeps busy, as the plan gives every node jobs near
    the head of the queue. Near the end it is different: a long job does not land on a slow node
    when a faster one, busy now, would still finish it sooner; the slow node takes a later,
    shorter job instead, or waits.
    """
    if job.pin_id is not None:
        return True  # pinned: no other node may take it
    view = view or PoolView.read()
    if (cap.pk, job.template_id) not in view.rates:
        return True  # never rendered this template here: render, and so measure
    planned = view.plan(cap)
    if job.pk in planned:
        return True
    # Beyond the plan's horizon, or a job the plan did not see (queued since): keep busy.
    return job.pk not in view.seen


def fits(job: RenderJob, classes: set[str], files: dict[str, list[str]]) -> bool:
    if not classes:  # inventory not fetched yet: let ComfyUI's validation decide
        return True
    needs = job.template.needs
    if not set(needs.get("classes", [])) <= classes:
        return False
    return all(name in files.get(folder, []) for folder, names in needs.get("files", {}).items() for name in names)


@dataclasses.dataclass
class Flight:
    """A job this runner has sent to its node and follows."""

    job: RenderJob
    last_progress: float = 0.0
    last_poll: float = 0.0
    # What the node reported last, written to the row at most every PROGRESS_EVERY seconds.
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    # When it was taken off the node's queue to go back to ours (monotonic), while the node is
    # asked whether it ran after all: only HISTORY_SETTLE seconds of "never heard of it" prove
    # that it did not (see Runner.settle_pulled_back).
    pulled: float | None = None


class Runner(threading.Thread):
    """Drives one ComfyUI node for one dispatcher."""

    def __init__(self, cap_id: int, owner: str, media_root: Path | None = None) -> None:
        super().__init__(name=f"runner-{cap_id}", daemon=True)
        self.cap_id = cap_id
        self.owner = owner
        self.media_root = media_root or Path(settings.MEDIA_ROOT)
        self.stopping = threading.Event()
        self.flights: dict[str, Flight] = {}  # by prompt_id
        self.events: Events | None = None
        # Since when the node has not answered (monotonic), and until when not to send it work.
        self.silent_since: float | None = None
        self.resting_until = 0.0
        self.faults = 0  # the node's faults in a row, for its back-off
        # Finished jobs whose outputs are being copied off the node, off the sending path: the
        # node already has its next job, and we keep it fed meanwhile.
        self.copying: dict[str, RenderJob] = {}
        self.copiers = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"copy-{cap_id}")

    # --- ownership -----------------------------------------------------------------------------

    def beat(self) -> bool:
        """Refresh our claim on the node and the heartbeats of our jobs; False if we lost it."""
        now = timezone.now()
        owned = Capability.objects.filter(pk=self.cap_id, runner=self.owner).update(runner_beat=now)
        if self.flights:
            RenderJob.objects.filter(
                prompt_id__in=list(self.flights), status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING)
            ).update(heartbeat=now)
        return bool(owned)

    def run(self) -> None:
        try:
            self.cap = Capability.objects.select_related("node").get(pk=self.cap_id)
            self.client = ComfyUI(self.cap.url, timeout=NODE_TIMEOUT)
            self.client_id = f"spoonfeeder-{self.owner}-{self.cap.node.code}"
            self.adopt()
            next_beat = next_controls = 0.0
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    if not self.beat():
                        break
                    self.cap.refresh_from_db()
                    self.adopt()
                    next_beat = now + BEAT
                if now >= next_controls:
                    self.controls()
                    next_controls = now + CONTROLS
                if self.cap.node.enabled and self.cap.status in Capability.ANSWERING and now >= self.resting_until:
                    self.fill()
                self.listen(0.05 if self.flights else 0.2)
                self.poll()
        except Exception:
            log.exception("runner for capability %s stopped", self.cap_id)
        finally:
            self.copiers.shutdown(wait=True)
            if self.stopping.is_set():
                # A clean stop hands its jobs back (no heartbeat): whoever adopts them next asks
                # the node where they stand, and counts no crash against them.
                RenderJob.objects.filter(
                    prompt_id__in=list(self.flights), status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING)
                ).update(heartbeat=None)
            if self.events:
                self.events.close()
            Capability.objects.filter(pk=self.cap_id, runner=self.owner).update(runner="", runner_beat=None)
            close_old_connections()

    # --- sending -------------------------------------------------------------------------------

    def fill(self) -> None:
        while self.on_node() < self.cap.limit + PREFETCH and time.monotonic() >= self.resting_until:
            job = next_job(self.cap)
            if job is None:
                return
            self.send(job)

    def send(self, job: RenderJob) -> None:
        params = params_of(job)
        try:
            if job.settings.get("input_image"):
                params["image"] = self.upload_input(job, str(job.settings["input_image"]))
            workflow = workflows.apply(job.template.workflow, job.template.mapping, params)
        except media.MediaError as e:
            job.fail(str(e), permanent=True)
            return
        except ServiceError as e:
            self.node_fault(job, f"could not send the input image to {self.cap.node.name}: {e}")
            return
        except (workflows.WorkflowError, KeyError, ValueError) as e:
            job.fail(f"the settings do not fit the template: {e}", permanent=True)
            return
        self.ensure_socket()
        # Stored before the POST: after a crash, the node is asked about this prompt_id.
        RenderJob.objects.filter(pk=job.pk).update(workflow=workflow, client_id=self.client_id)
        job.workflow = workflow
        try:
            self.client.submit(workflow, prompt_id=job.prompt_id, client_id=self.client_id)
        except WorkflowRejected as e:
            job.fail(f"ComfyUI refused the workflow: {e}", permanent=True)
            return
        except ServiceError as e:
            if not e.reached:
                self.node_fault(job, f"could not send the job to {self.cap.node.name}: {e}")
                return
            # It may have reached the node all the same: follow it, and let the node say (standing)
            # whether it runs, ran or never arrived.
            self.rest(f"could not send a job to it: {e}")
        else:
            self.faults = 0
        self.flights[job.prompt_id] = Flight(job, last_poll=time.monotonic())

    def on_node(self) -> int:
        """Jobs of ours the node has, as far as it says (not those taken off its queue)."""
        return sum(f.pulled is None for f in self.flights.values())

    def node_fault(self, job: RenderJob, error: str) -> None:
        """The node, not the job, failed before the job reached it (refused, down): the job goes
        back to the queue with this attempt not counted (to another node if one can take it), and
        this node rests."""
        job.transition(
            RenderJob.QUEUED,
            expect=(RenderJob.ASSIGNED,),
            node_id=None,
            avoid_id=self.cap.node_id,
            attempts=max(job.attempts - 1, 0),
            heartbeat=None,
            error=f"{error}; it went back to the queue (not counted as an attempt)",
            **RenderJob.NOT_STARTED,
        )
        self.rest(error)

    def rest(self, error: str) -> None:
        """Send this node nothing for a while, twice as long at each fault in a row (up to
        MAX_REST), and say so on its card."""
        self.faults += 1
        seconds = min(BEAT * 2 ** (self.faults - 1), MAX_REST)
        self.resting_until = time.monotonic() + seconds
        with transaction.atomic():
            Capability.objects.filter(pk=self.cap_id).update(
                last_error=f"{error}; no new jobs for it for {seconds:.0f} s"[:2000]
            )
            self.cap.node.changed("node.resting")

    def upload_input(self, job: RenderJob, relative: str) -> str:
        """Put the job's input image (a file in our media folder) on the node, under a name of
        ours; the name the node gave it, for the workflow's image input."""
        path = media.inside(self.media_root, relative)
        if path is None or not path.is_file():
            raise media.MediaError(f"the input image {relative!r} is not in the media folder (was it deleted?)")
        if path.stat().st_size > media.MAX_INPUT:
            raise media.MediaError(f"the input image {relative!r} is over {media.MAX_INPUT // 1048576} MB")
        suffix = path.suffix.lower() if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") else ".png"
        # In the input folder itself, where LoadImage lists its choices.
        uploaded = self.client.upload_image(f"spoonfeeder-{job.code}{suffix}", path.read_bytes(), overwrite=True)
        return f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded["subfolder"] else uploaded["name"]

    def ensure_socket(self) -> None:
        if self.events is not None:
            return
        try:
            events = self.client.events(self.client_id)
            events.open()
            self.events = events
        except ServiceError as e:
            log.info("no WebSocket to %s (%s); polling instead", self.cap.url, e)
            self.events = None

    # --- following -----------------------------------------------------------------------------

    def listen(self, timeout: float) -> None:
        if not self.flights:
            time.sleep(timeout)
            return
        self.ensure_socket()
        if self.events is None:
            time.sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.events.receive(max(deadline - time.monotonic(), 0.001))
            except ServiceError:
                self.events.close()
                self.events = None  # polling takes over until the socket is back
                return
            if message is None:
                return
            in_flight = len(self.flights)
            self.handle(message)
            if len(self.flights) < in_flight:
                return  # a slot came free: fill it before the node runs dry

    def handle(self, message: Any) -> None:
        flight = self.flights.get(message.prompt_id or "")
        if flight is None:
            return
        if flight.pulled is not None:  # it started after all before it was taken off: follow it
            self.keep(flight)
        job = flight.job
        if isinstance(message, ExecutionStart):
            job.transition(RenderJob.RENDERING, expect=(RenderJob.ASSIGNED,), started=timezone.now())
        elif isinstance(message, Executing) and message.node:
            node = (job.workflow or {}).get(message.node, {})
            flight.report["current"] = f"{message.node} {node.get('class_type', '')}".strip()
            self.progressed(flight)
        elif isinstance(message, Progress):
            # Step x/y of the node that counts steps (a sampler); the bar follows the whole graph.
            flight.report.update(step=message.value, steps=message.max)
            self.progressed(flight)
        elif isinstance(message, ProgressState) and message.nodes:
            total = max(len(job.workflow or {}), len(message.nodes))
            done = sum(
                min(float(n.get("value") or 0) / max(float(n.get("max") or 1), 1e-9), 1.0)
                for n in message.nodes.values()
            )
            flight.report["progress"] = done / total
            self.progressed(flight)
        elif isinstance(message, Preview):
            self.save_preview(job, message.image)
        elif isinstance(message, (ExecutionSuccess, ExecutionError, ExecutionInterrupted)):
            self.finish(flight)

    def progressed(self, flight: Flight) -> None:
        """Write what the node reported, at most every PROGRESS_EVERY seconds per job."""
        now = time.monotonic()
        if flight.report and now - flight.last_progress >= PROGRESS_EVERY:
            flight.last_progress = now
            with transaction.atomic():
                RenderJob.objects.filter(pk=flight.job.pk, status=RenderJob.RENDERING).update(**flight.report)
                flight.job.changed("job.progress")
            flight.report = {}

    def save_preview(self, job: RenderJob, image: bytes) -> None:
        relative = Path("renders") / str(job.code)[:2] / str(job.code) / "preview.img"
        path = self.media_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image[: 20 * 1024 * 1024])
        RenderJob.objects.filter(pk=job.pk).update(preview=str(relative))

    def poll(self) -> None:
        """Ask the node about jobs whose socket is quiet or down: the fallback the seed asks for."""
        now = time.monotonic()
        self.settle_pulled_back()
        due = [
            f for f in self.flights.values() if f.pulled is None and now - f.last_poll >= (POLL if self.events else 0.5)
        ]
        if not due:
            return
        try:
            queue = self.client.queue()
        except ServiceError as e:
            self.silent(str(e))
            return
        self.silent_since = None
        for flight in due:
            flight.last_poll = now
            if flight.job.prompt_id in queue:
                if queue.position(flight.job.prompt_id) == 0 and flight.job.status == RenderJob.ASSIGNED:
                    flight.job.transition(RenderJob.RENDERING, expect=(RenderJob.ASSIGNED,), started=timezone.now())
                continue
            self.finish(flight)

    def silent(self, error: str) -> None:
        """The node does not answer. That proves nothing about our jobs there (a node that hangs
        may go on rendering): after a while they say so and the node gets no new work, but they
        stay its until it answers again and says where they stand (see finish)."""
        now = time.monotonic()
        if self.silent_since is None:
            self.silent_since = now
            return
        if now - self.silent_since < settings.RENDER_NODE_TIMEOUT:
            return
        since = now - self.silent_since
        note = (
            f"{self.cap.node.name} has not answered for {since:.0f} s ({error}); the job is followed again "
            "when it answers (cancel it to render it elsewhere)"
        )
        waiting = [f.job.pk for f in self.flights.values() if not f.job.error.startswith(f"{self.cap.node.name} has")]
        if waiting:
            with transaction.atomic():
                RenderJob.objects.filter(pk__in=waiting, status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING)).update(
                    error=note[:5000]
                )
                for flight in self.flights.values():
                    if flight.job.pk in waiting:
                        flight.job.error = note
                        flight.job.changed("job.silent")
        if self.events:
            self.events.close()
            self.events = None
        self.resting_until = now + BEAT * 2

    def finish(self, flight: Flight) -> None:
        """The prompt ended, or left the node's queue: settle the job as the node says it stands
        (its history entry may come a moment after the run ends: see ComfyUI.standing)."""
        job = flight.job
        try:
            where = self.client.standing(job.prompt_id)
        except ServiceError:
            return  # try again at the next poll
        if where.where in (QUEUED, RUNNING):
            return  # still on the node: go on following it
        self.flights.pop(job.prompt_id, None)
        job.refresh_from_db()
        if job.status == RenderJob.CANCELLED:
            job.release()
            return
        entry = where.entry
        if entry is None:
            # In neither /queue nor /history, for longer than an entry can lag: the server
            # restarted and forgot it. Lost, not done.
            job.fail(f"{self.cap.node.name} lost the run (restarted?); it will be rendered again", permanent=False)
            return
        failed = failure(entry)
        if failed:
            kind = str(failed.get("exception_type") or failed["type"])
            message = str(failed.get("exception_message", "")).strip()
            at = f"node {failed.get('node_id', '?')} ({failed.get('node_type', '?')})"
            retry = "OutOfMemory" in kind or failed["type"] == "execution_interrupted"
            job.fail(f"{kind} at {at}: {message}".strip(": "), permanent=not retry)
            return
        job.release()  # the GPU is free: the node may take the next job while we copy
        self.copying[job.prompt_id] = job
        self.copiers.submit(self.collect, job, entry)

    def collect(self, job: RenderJob, entry: Any) -> None:
        try:
            self.copy_outputs(job, entry)
        except Exception:
            log.exception("copying the outputs of %s failed", job)
        finally:
            self.copying.pop(job.prompt_id, None)
            close_old_connections()

    def copy_outputs(self, job: RenderJob, entry: Any) -> None:
        outputs = []
        try:
            for index, ref in enumerate(outputs_of(entry)):
                out = media.collect(self.client, ref, str(job.code), index, media_root=self.media_root)
                outputs.append(dataclasses.asdict(out))
        except (ServiceError, media.MediaError) as e:
            job.fail(f"could not copy the output off {self.cap.node.name}: {e}", permanent=False)
            return
        now = timezone.now()
        # The node's own clock, not ours: our row times include sending and copying.
        seconds = node_seconds(entry) or (now - (job.started or job.created)).total_seconds()
        if job.transition(
            RenderJob.COMPLETED,
            expect=(RenderJob.ASSIGNED, RenderJob.RENDERING),
            outputs=outputs,
            finished=now,
            progress=1,
            seconds=seconds,
            heartbeat=None,
            current="",
            error="",
        ):
            Speed.record(self.cap_id, job.template_id, seconds, job.work)

    # --- the user's controls, acted on at the node ---------------------------------------------

    def controls(self) -> None:
        """Cancelled jobs are interrupted or taken out of the node's queue; a job still waiting in
        the node's queue is pulled back when the queue is paused or a better job was queued."""
        if not self.flights:
            return
        rows = {j.prompt_id: j for j in RenderJob.objects.filter(prompt_id__in=list(self.flights))}
        paused = Queue.get().paused
        best = best_fit(self.cap)
        for prompt_id, flight in list(self.flights.items()):
            job = rows.get(prompt_id)
            if job is None:
                self.flights.pop(prompt_id)
                continue
            flight.job = job
            if job.status == RenderJob.CANCELLED:
                self.take_off(job)
                continue
            waiting = job.status == RenderJob.ASSIGNED and flight.pulled is None
            outranked = best is not None and (best.priority, -best.position) > (job.priority, -job.position)
            if waiting and (paused or outranked):
                self.pull_back(flight)

    def pull_back(self, flight: Flight) -> None:
        """Take a job waiting in the node's queue back to ours (paused, or a better job came). It
        goes back only once the node has shown, for HISTORY_SETTLE seconds, that it never ran it:
        meanwhile the runner goes on with its other work, and the node's unit is free for another."""
        job = flight.job
        try:
            self.client.delete_queued([job.prompt_id])
            where = self.client.standing(job.prompt_id, settle=0).where
        except ServiceError:
            return  # a node that cannot be asked proves nothing: try again later
        if where == GONE:
            flight.pulled = time.monotonic()
            RenderJob.objects.filter(pk=job.pk, status=RenderJob.ASSIGNED).update(capability=None)
        # Still queued there (try again), running or finished: it is followed as before.

    def keep(self, flight: Flight) -> None:
        """A job taken off the node's queue that ran there after all: followed to its end."""
        flight.pulled = None
        RenderJob.objects.filter(pk=flight.job.pk, status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING)).update(
            capability=self.cap_id
        )

    def settle_pulled_back(self) -> None:
        now = time.monotonic()
        # Asked at most every SETTLE_LOOK seconds each, not at every turn of the runner's loop.
        for flight in [f for f in self.flights.values() if f.pulled is not None and now - f.last_poll >= SETTLE_LOOK]:
            flight.last_poll = now
            job = flight.job
            try:
                where = self.client.standing(job.prompt_id, settle=0).where
            except ServiceError:
                continue
            if where != GONE:
                self.keep(flight)
                if where == FINISHED:
                    self.finish(flight)
            elif time.monotonic() - (flight.pulled or 0.0) >= HISTORY_SETTLE:
                self.flights.pop(job.prompt_id, None)
                job.transition(
                    RenderJob.QUEUED,
                    expect=(RenderJob.ASSIGNED,),
                    node_id=None,
                    attempts=max(job.attempts - 1, 0),
                    heartbeat=None,
                )

    def take_off(self, job: RenderJob) -> None:
        """A cancelled job comes off the node: taken off its queue, or interrupted if it runs."""
        try:
            self.client.delete_queued([job.prompt_id])
            where = self.client.standing(job.prompt_id, settle=0).where
            if where == RUNNING:
                self.client.interrupt(job.prompt_id)
        except ServiceError:
            return  # a node that cannot be asked proves nothing: ask again later
        if where == QUEUED:
            return  # the delete has not taken yet: again at the next look
        self.flights.pop(job.prompt_id, None)
        job.release()

    # --- re-attaching --------------------------------------------------------------------------

    def adopt(self) -> None:
        """Take over this node's jobs that no live dispatcher follows (we restarted, or another
        dispatcher died) and find out from the node where they stand."""
        stale = timezone.now() - timedelta(seconds=settings.RENDER_STALE)
        orphans = (
            RenderJob.objects.active()
            .filter(node=self.cap.node_id)
            .exclude(prompt_id__in=[*self.flights, *self.copying])
            .filter(Q(heartbeat=None) | Q(heartbeat__lt=stale))
            .select_related("template")
        )
        for job in orphans:
            # Only a heartbeat that stopped is a crash: a job handed back by a clean stop is not.
            crashes = job.crashes + (job.heartbeat is not None)
            if crashes >= QUARANTINE_AFTER:
                job.fail(f"quarantined: a dispatcher died {crashes} times while running this job", permanent=True)
                continue
            if not RenderJob.objects.filter(pk=job.pk, heartbeat=job.heartbeat).update(
                crashes=crashes, heartbeat=timezone.now()
            ):
                continue  # someone else adopted it
            self.flights[job.prompt_id] = Flight(job)
            with transaction.atomic():
                job.changed("job.adopted")


class Dispatcher:
    """Owns every ComfyUI node it can, one Runner thread each."""

    def __init__(self, media_root: Path | None = None) -> None:
        self.owner = uuid.uuid4().hex[:12]
        self.media_root = media_root
        self.runners: dict[int, Runner] = {}
        self.stopping = threading.Event()

    def claim_nodes(self) -> None:
        stale = timezone.now() - timedelta(seconds=settings.RENDER_STALE)
        caps = Capability.objects.filter(kind=Capability.COMFYUI, node__enabled=True)
        for cap in caps:
            runner = self.runners.get(cap.pk)
            if runner and runner.is_alive():
                continue
            taken = (
                Capability.objects.filter(pk=cap.pk)
                .filter(Q(runner="") | Q(runner=self.owner) | Q(runner_beat=None) | Q(runner_beat__lt=stale))
                .update(runner=self.owner, runner_beat=timezone.now())
            )
            if taken:
                self.runners[cap.pk] = Runner(cap.pk, self.owner, self.media_root)
                self.runners[cap.pk].start()

    def run_once(self) -> None:
        self.claim_nodes()

    def run(self, tick: float = 1.0) -> None:
        while not self.stopping.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("dispatcher pass failed")
            finally:
                close_old_connections()
            self.stopping.wait(tick)
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for runner in self.runners.values():
            runner.stopping.set()
        for runner in self.runners.values():
            runner.join(timeout=10)
