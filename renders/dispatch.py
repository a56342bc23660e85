"""Driving renders on the pool's ComfyUI servers, as tasks of the worker cluster.

`feed()` claims, for every ComfyUI with room (its limit plus PREFETCH: the next job already waits
in the node's own queue, so the GPU never waits for us between jobs), the best runnable job (the
plan by measured speeds: see PoolView) and queues one `attempt` task for it. The claim is a
guarded update of the job's row, which from then on holds the node's unit: the row is the lease.

An attempt (`Attempt.run`, one task, one worker) sends the job under the prompt_id stored before
the POST, follows it on a WebSocket of its own, beats its row, acts on the user's controls
(cancel, pause, a better job first), collects the outputs and records every change on the row.
It feeds the pool again when the node's unit comes free. A worker that dies leaves a heartbeat
that stops; the sweeper (`sweep()`) finds it and queues the attempt again, which asks the node
about the prompt_id before anything else: a job is never rendered twice and never lost.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, IntegerField, JSONField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Now
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from nodes.clients import AnswerTooLarge, ServiceError
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
from nodes.models import PREFETCH, Capability, none_can_run
from renders import media, workflows
from renders.models import Batch, JobInput, Queue, RenderJob, Speed, Template, inputs_ready, wake
from spoonfeeder import work
from spoonfeeder.models import Event
from spoonfeeder.tasks import enqueue

log = logging.getLogger(__name__)

POLL = 2.0  # seconds between looks at the node's queue for a job, socket or not
CONTROLS = 0.3  # seconds between looks at the user's cancel, pause and reorder
PROGRESS_EVERY = 0.2  # seconds between progress writes of one job
SETTLE_LOOK = 0.25  # seconds between asks about a job taken off a node's queue
SEND_IN_ORDER = 5.0  # seconds a job waits for the ones claimed ahead of it on its node to be sent
SILENCE = 10.0  # seconds without a socket message while the job runs before the socket is reopened
# Seconds an attempt waits for each read of its node's answer; a whole answer ends by twice
# that (nodes.clients.http.DEADLINE_READS): a node that hangs, or answers a byte at a time,
# holds up that attempt for no longer, and is then treated as silent.
NODE_TIMEOUT = 5.0
# The longest an attempt follows its jobs, in seconds: the task's own deadline.
RENDER_DEADLINE = float(settings.LONGEST_TASK)


def params_of(job: RenderJob) -> dict[str, Any]:
    params = {k: v for k, v in job.settings.items() if v not in (None, "")}
    if params.get("seed") in (None, "random", -1):
        params["seed"] = random.randrange(2**48)
    if "lora" in params:
        params["loras"] = [params.pop("lora")]
    params.update(positive=job.prompt, negative=job.negative, filename_prefix=f"spoonfeeder/{job.code}")
    return params


def feed() -> int:
    """Claim the best runnable job for every ComfyUI with room and queue an attempt for each;
    the number claimed. Batches put their next items in the queue first (Batch.feed)."""
    Batch.feed()
    if Queue.get().paused or not RenderJob.objects.runnable().exists():
        return 0
    queued = 0
    caps = feedable()
    room_left = False
    for cap in caps:
        while cap.has_room(PREFETCH):
            if next_job(cap, alone=len(caps) == 1) is None:
                room_left = True
                break
            queued += 1
            cap.load = cap.busy() + 1  # type: ignore[attr-defined]
    if room_left:
        say_what_no_node_has(caps)
    return queued


def claimable() -> bool:
    """Whether a ComfyUI with room would take a runnable job now (what a feed task would claim);
    when none would, the jobs no node can run say why."""
    if Queue.get().paused or not RenderJob.objects.runnable().exists():
        return False
    caps = feedable()
    with_room = [cap for cap in caps if cap.has_room(PREFETCH)]
    if any(best_fit(cap, alone=len(caps) == 1) for cap in with_room):
        return True
    if with_room:
        say_what_no_node_has(caps)
    return False


def feedable() -> list[Capability]:
    return list(Capability.objects.usable(Capability.COMFYUI).with_load().select_related("node"))


def first_attempt(media_root: Path | None = None) -> Attempt | None:
    """On a pool with room, the best job for the first ComfyUI that has room, claimed for this
    worker to send at once, before anything else is fed: a job queued on an idle pool reaches its
    node one broker hop sooner, with nothing but its own claim before the POST. The feed task
    sends it, then feeds the rest of the pool (Attempt's `first`). A pass that begins while the
    queue is paused claims nothing: its choice would be of the queue before the resume."""
    if Queue.get().paused:
        return None
    me = work.worker_id()
    caps = feedable()
    for cap in caps:
        if cap.has_room(PREFETCH):
            claimed = next_job(cap, me, alone=len(caps) == 1)
            if claimed is not None:
                job, ahead = claimed
                return Attempt(job, cap, me, media_root, first=ahead == 0)
    return None


LACKING = "no online ComfyUI has what its template needs: "  # a queued job's error, said by say_what_no_node_has


def say_what_no_node_has(caps: list[Capability]) -> None:
    """A queued job that no usable ComfyUI can run (each lacks a node class or a model file its
    template needs) says so, and what each lacks, instead of waiting without a word."""
    if not caps or not all(c.inventory.get("classes") for c in caps):
        return  # a node whose inventory is not known yet may have it: ComfyUI's validation decides
    templates = Template.objects.filter(pk__in=RenderJob.objects.runnable().filter(pin=None).values("template"))
    for template in templates:
        lacking = none_can_run(template.requirements(), caps)
        if not lacking:
            continue
        reason = LACKING + lacking
        waiting = RenderJob.objects.runnable().filter(pin=None, template=template).exclude(error=reason)
        with transaction.atomic():
            if waiting.update(error=reason[:5000]):
                Event.emit("renders", "job.waiting")


def next_job(cap: Capability, worker: str = "", *, alone: bool | None = None) -> tuple[RenderJob, int] | None:
    """The best queued job this node can run, claimed for it (the job's row takes a unit of the
    node's capacity: guarded, within its limit plus the prefetch), with its attempt queued in
    the same transaction; or, given a `worker`, claimed for that worker to send at once (should
    it die first, the sweeper finds the claim orphaned and queues the attempt). With it, how many
    jobs held the node as it was claimed. `alone`: whether this is the only usable ComfyUI, when
    the caller knows."""
    tried: set[int] = set()
    while True:
        job = best_fit(cap, exclude=tried, alone=alone)
        if job is None:
            return None
        tried.add(job.pk)
        with cap.room(extra=PREFETCH) as free:
            if not free:
                return None  # the node is full
            fields: dict[str, Any] = dict(
                status=RenderJob.ASSIGNED,
                node_id=cap.node_id,
                capability_id=cap.pk,
                prompt_id=str(uuid.uuid4()),
                client_id="",
                sent=None,
                worker=worker,
                attempts=job.attempts + 1,
                error="",
            )
            # The pause is read again by the claim itself: a pass that began before the queue was
            # paused claims nothing queued after it.
            # So is its batch's: nothing of a paused batch is claimed once the pause is committed.
            claimed = (
                RenderJob.objects.filter(pk=job.pk, status=RenderJob.QUEUED)
                .filter(~Exists(Queue.objects.filter(paused=True)), fed(), inputs_ready())
                .update(**fields, claimed=Now(), heartbeat=Now())
            )
            if not claimed and Queue.get().paused:
                return None
            if claimed:
                for name, value in fields.items():
                    setattr(job, name, value)
                # Set by the database's clock: read from the row if ever asked for.
                job.__dict__.pop("claimed", None)
                job.__dict__.pop("heartbeat", None)
                job.changed("job.assigned")
                if not worker:
                    enqueue("renders.tasks.attempt", job.pk, job.prompt_id, timeout=RENDER_DEADLINE)
                return job, cap.limit + PREFETCH - free
        # another runner took that job first


def fed() -> Q:
    """A job of no batch, or of one that feeds the queue (not paused, not ended). Its batch is
    looked up by a subquery of the row itself, never a join: Django makes an update with a join
    `id IN (SELECT ...)`, which PostgreSQL does not check again against a row another claimer has
    just changed, so two guarded claims of one job would both succeed."""
    return Q(batch=None) | Q(Exists(Batch.objects.filter(pk=OuterRef("batch_id"), status__in=Batch.FED)))


def best_fit(cap: Capability, exclude: set[int] | None = None, alone: bool | None = None) -> RenderJob | None:
    """The first runnable job, in dispatch order, that this node has what it takes to render and
    should render (see worth_it)."""
    if alone is None:
        alone = not Capability.objects.usable(Capability.COMFYUI).exclude(pk=cap.pk).exists()
    view: PoolView | None = None
    for job in fitting(cap, exclude, alone):
        if job.pin_id is not None or alone:
            return job  # pinned here, or the only node: there is no other to plan for
        view = view or PoolView.read()
        if worth_it(cap, job, view):
            return job
    return None


def fitting(cap: Capability, exclude: set[int] | None, alone: bool) -> Iterator[RenderJob]:
    queued = (
        RenderJob.objects.runnable()
        .filter(Q(pin=None) | Q(pin=cap.node_id))
        .exclude(pk__in=exclude or ())
        .select_related("template")
    )
    if not alone:
        # A retry goes to another node when there is one; a job pinned here may go nowhere else.
        queued = queued.exclude(Q(avoid=cap.node_id) & ~Q(pin=cap.node_id))
    # Most often the first job fits: fetch a few rows first, more only when they do not.
    ordered = queued.in_dispatch_order()
    for batch in (ordered[:5], ordered[5:50]):
        for job in batch:
            if fits(job, cap):
                yield job


PLAN_AHEAD = 500  # queued jobs the speed-aware plan looks at


@dataclasses.dataclass
class PoolView:
    """The pool as the speed-aware choice sees it, read once per dispatch pass: measured speeds,
    the work each node already has, and the queue ahead in dispatch order."""

    rates: dict[tuple[int, int], float]  # (capability, template) -> seconds per unit of work
    usable: set[int]
    backlog: dict[int, float]  # capability -> seconds of work already sent to it
    # (job, template, work, pinned node, node to avoid, the node that has its input, seconds to
    # upload that input elsewhere), in dispatch order
    queued: Sequence[tuple[int, int, float, int | None, int | None, int | None, float]]
    node_of: dict[int, int]  # capability -> its node
    # A held item (of a batch that runs) -> (its batch, its template): work not in the queue yet.
    held: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)
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
        for c, t, units, progress in active.values_list("node__capabilities__pk", "template_id", "work", "progress"):
            backlog[c] += units * (1 - progress) * rates.get((c, t), mean.get(c, 0.0))
        fields = ("pk", "template_id", "work", "pin_id", "avoid_id", "at", "taken", "priority", "batch_id")
        # Where a job's input is (the node that made it) and what it holds (its outputs: their size).
        taken = JobInput.objects.filter(job=OuterRef("pk"))
        queued = list(
            RenderJob.objects.runnable()
            .annotate(
                at=Subquery(taken.values("source__node_id")[:1]),
                taken=Subquery(taken.values("source__outputs")[:1], output_field=JSONField()),
            )
            .in_dispatch_order()
            .values_list(*fields)[:PLAN_AHEAD]
        )
        # A running batch's held items are queued work too, only not in the queue yet (it is fed
        # a window at a time): each comes after what is queued at its priority.
        held = list(
            RenderJob.objects.filter(status=RenderJob.HELD, batch__status__in=Batch.FED)
            .annotate(at=Value(None, output_field=IntegerField()), taken=Value(None, output_field=JSONField()))
            .order_by("-priority", "batch__created", "batch_id", "index")
            .values_list(*fields)[: PLAN_AHEAD - len(queued)]
        )
        if held:
            queued = sorted(queued + held, key=lambda row: -row[7])  # stable: each kept in its order
        planned = [(*row[:5], row[5], upload_seconds(row[6])) for row in queued]
        return cls(rates, set(node_of), backlog, planned, node_of, {row[0]: (row[8], row[1]) for row in held})

    def plan(self, cap: Capability) -> set[int]:
        """The queued jobs this node would render if every job, in dispatch order, went to the
        node that would finish it first (earliest finish time, by measured speeds and the work
        each node already has). A node that has never rendered a template is not planned for it,
        so a job only some nodes can run is never planned onto one that cannot; nor is a retry
        planned onto the node it failed on while another can take it (as `fitting` honours). A
        job whose input a node made goes to that node when it would finish it there no later than
        elsewhere with the upload's time added (upload_seconds): the input is there already."""
        if cap.pk not in self.plans:
            free = dict(self.backlog)
            free.setdefault(cap.pk, 0.0)
            mine: set[int] = set()
            by_node = {node: c for c, node in self.node_of.items()}
            for pk, template, work, pin, avoid, at, upload in self.queued:
                if pin is not None:
                    if pin in by_node:
                        c = by_node[pin]
                        free[c] += work * self.rates.get((c, template), 0.0)
                    continue
                able = [c for c in free if (c, template) in self.rates]
                if len(self.node_of) > 1:
                    able = [c for c in able if self.node_of.get(c) != avoid]
                finish = {c: free[c] + work * self.rates[(c, template)] for c in able}
                if not finish:
                    continue
                best = min(finish, key=lambda c: (finish[c], c != cap.pk))
                local = by_node.get(at) if at is not None and upload >= 0 else None
                if local is not None and local in finish and finish[local] <= finish[best] + upload:
                    best = local
                free[best] = finish[best]
                if best == cap.pk:
                    mine.add(pk)
            self.plans[cap.pk] = mine
        return self.plans[cap.pk]

    def batch_work(self, cap: Capability) -> set[tuple[int, int]]:
        """(batch, template) of the held items the plan gives this node: any item of that batch
        and template in the queue now stands for one of them (the window lets in only the first)."""
        return {self.held[pk] for pk in self.plan(cap) if pk in self.held}


UPLOAD_LATENCY = 0.2  # seconds an upload to a node costs besides its bytes (the POST, ComfyUI's write)


def upload_seconds(outputs: Any) -> float:
    """How long sending a job's input (its source's first output) to another node takes, by
    settings.RENDER_UPLOAD_RATE; -1 when where inputs are is ignored (a rate of 0)."""
    rate = float(settings.RENDER_UPLOAD_RATE)
    if rate <= 0:
        return -1.0
    size = outputs[0].get("size", 0) if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict) else 0
    return UPLOAD_LATENCY + float(size or 0) / (rate * 1e6)


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
    if job.pk in planned or (job.batch_id, job.template_id) in view.batch_work(cap):
        return True
    # Beyond the plan's horizon, or a job the plan did not see (queued since): keep busy.
    return job.pk not in view.seen


def fits(job: RenderJob, cap: Capability) -> bool:
    """Whether the node has what the job's template needs; a node whose inventory has not been
    fetched yet is let try (ComfyUI's validation decides)."""
    return not cap.inventory.get("classes") or not cap.lacks(job.template.requirements())


MAX_OUTPUTS = 200  # files kept of one job; the rest are left on the node, and the job says so
STREAMED_OUTPUT = "SaveImageWebsocket"  # an output node whose images come only over the socket
MAX_OUTPUT_BYTES = 4 * 1024**3  # bytes kept of one job's outputs in all
COPY_RETRY = (2.0, 60.0)  # first and longest wait between tries of a copy that failed on our side
COPY_DEADLINE = 900.0  # seconds to keep trying a copy our disk refuses before the job fails


HAND_ON_SPAN = 3600.0  # seconds one attempt task goes on from job to job on its node
STARVING = 2.0  # seconds a job on a node may wait for a worker before the others let go (starving)


def attempt(job_pk: int, prompt_id: str, media_root: Path | None = None) -> str:
    """One attempt at one job (the task): nothing if the row is no longer this attempt's. When
    the job has finished on the node, the task goes on with the node's next job (claimed and sent
    at once, before this one's outputs are copied), as long as there is one, within HAND_ON_SPAN."""
    run = Attempt.take(job_pk, prompt_id, media_root)
    if run is None:
        return "not this attempt's any more"
    return follow_on(run)


def follow_on(run: Attempt | None) -> str:
    """Follow `run` to its end, then each job handed on to this worker, within HAND_ON_SPAN."""
    ends = time.monotonic() + HAND_ON_SPAN
    outcomes: list[str] = []
    while run is not None:
        outcomes.append(run.run())
        # Only a job handed on can be let go: no query for it otherwise (this runs at every job's end).
        # A job handed on and pulled back is settled by this worker (once it is this run's turn).
        if run.next is not None and run.next.pulled is None and (time.monotonic() >= ends or starving()):
            run.let_go()
        run = run.next
    return f"{len(outcomes)} job(s): {outcomes[-1]}" if len(outcomes) > 1 else outcomes[0]


def starving() -> bool:
    """Whether a job on a node has waited longer than STARVING seconds for a worker to follow it
    (its attempt queued: re-driven after its worker died, or let go): every worker is following
    jobs of its own. The next to end one then lets the job it would go on with have a task of
    its own, and takes a task from the queue, where the waiting attempt comes first."""
    return RenderJob.objects.active().filter(worker="", heartbeat__lt=work.stale_before(STARVING)).exists()


class Attempt:
    """One worker following one job on its node, from the POST (or the re-attach) to its end."""

    def __init__(
        self, job: RenderJob, cap: Capability, me: str, media_root: Path | None = None, *, first: bool | None = None
    ) -> None:
        """`first`: claimed by first_attempt, before the pool was fed (it is fed once this job is
        sent); True if nothing held the node then, so no job claimed ahead is waited for."""
        self.job = job
        self.cap = cap
        self.me = me
        self.media_root = media_root or Path(settings.MEDIA_ROOT)
        self.client = ComfyUI(cap.url, timeout=NODE_TIMEOUT)
        self.events: Events | None = None
        self.next_socket = 0.0  # when to try opening the socket again after it failed
        # The worker's clock for every wait measured here (a test moves it on: time travel).
        self.clock: Callable[[], float] = time.monotonic
        self.heard = self.clock()  # when the socket last said anything
        self.ended = False  # the socket said the prompt ended: ask the node now
        self.report: dict[str, Any] = {}  # what the node reported, written every PROGRESS_EVERY s
        self.last_progress = 0.0
        # When it was taken off the node's queue to go back to ours (monotonic): only
        # HISTORY_SETTLE seconds of "never heard of it" prove that it did not run.
        self.pulled: float | None = None
        self.silent_since: float | None = None
        self.dropped = ""  # outputs ComfyUI refused to run (node_errors), said on the job
        self.next: Attempt | None = None  # the node's next job, handed on to this worker
        self.interrupted = False  # interrupted on the node because its batch was paused
        self.frames: list[str] = []  # streamed outputs kept, relative to the media folder
        self.first = first
        self.upload_inputs = False  # upload every input, even one the node made (it refused its own)
        self.loaded_here = False  # the last send had the node load a file of its own output folder
        # When the next looks at the controls and at the node are due (monotonic): a job sent or
        # re-attached is looked at at once.
        self.next_controls = self.next_poll = 0.0

    @classmethod
    def take(cls, job_pk: int, prompt_id: str, media_root: Path | None = None) -> Attempt | None:
        """The job's row made this worker's (guarded: no other worker follows it)."""
        me = work.worker_id()
        mine = RenderJob.objects.active().filter(pk=job_pk, prompt_id=prompt_id, worker="")
        if not mine.update(worker=me, heartbeat=Now()):
            return None
        job = RenderJob.objects.select_related("template", "node").get(pk=job_pk)
        cap = Capability.objects.select_related("node").filter(node=job.node_id, kind=Capability.COMFYUI).first()
        if cap is None:
            job.transition(
                RenderJob.QUEUED,
                expect=(RenderJob.ASSIGNED, RenderJob.RENDERING),
                node_id=None,
                worker="",
                attempts=max(job.attempts - 1, 0),
                heartbeat=None,
                error="its node's ComfyUI was removed; it went back to the queue",
                **RenderJob.NOT_STARTED,
            )
            return None
        return cls(job, cap, me, media_root)

    def run(self) -> str:
        # The heartbeat comes from a thread of its own: a node that hangs (each of its answers
        # waited for up to NODE_TIMEOUT) does not make the job look orphaned.
        beat = work.beating(RenderJob.objects.filter(pk=self.job.pk, worker=self.me))
        try:
            with work.stop_on_sigterm(), beat:
                # Taken by a cluster that is stopping: leave it to the next one. Its status as last
                # read: the first look at the node after the POST reads it again.
                work.stopping(read=False)
                if not self.job.client_id:  # never sent: send it (else the node says where it is)
                    sent = self.send()
                    if sent:
                        return sent
                    if self.first is not None:
                        feed()
                return self.follow()
        except work.Stopped:
            # A clean stop hands the job back (no heartbeat): the attempt queued for it again
            # asks the node where it stands, and counts no crash.
            mine = [self.job.pk] + ([self.next.job.pk] if self.next else [])
            RenderJob.objects.filter(pk__in=mine, worker=self.me).update(worker="", heartbeat=None)
            self.next = None
            work.leave()
            return "stopped: handed back"
        finally:
            if self.events:
                self.events.close()

    def done(self, outcome: str) -> str:
        """The attempt is over: the pool is fed (this node's unit may be free)."""
        feed()
        return outcome

    # --- sending -------------------------------------------------------------------------------

    def send(self) -> str:
        """POST the job under its prompt_id; an outcome if the attempt ended here, else ""."""
        job = self.job
        params = params_of(job)
        try:
            if job.settings.get("input_image"):
                params["image"] = self.upload_input(str(job.settings["input_image"]))
            params.update(self.place_inputs())
            workflow = workflows.apply(job.template.workflow, job.template.mapping, params)
        except media.MediaError as e:
            job.fail(str(e), permanent=True)
            return self.done("failed: input")
        except ServiceError as e:
            return self.node_fault(f"could not send the input to {self.cap.node.name}: {e}")
        except (workflows.WorkflowError, KeyError, ValueError) as e:
            job.fail(f"the settings do not fit the template: {e}", permanent=True)
            return self.done("failed: settings")
        client_id = f"spoonfeeder-{job.prompt_id}"
        # Stored before the POST: after a crash, the node is asked about this prompt_id. Not for
        # an item of a batch paused since its claim: it goes back unsent (its batch holds it).
        mine = RenderJob.objects.filter(pk=job.pk, worker=self.me)
        if not mine.filter(fed()).update(workflow=workflow, client_id=client_id):
            if mine.exists():
                return self.back_to_batch("its batch was paused before it was sent")
            return "not this attempt's any more"
        job.workflow, job.client_id = workflow, client_id
        self.open_socket()  # before the POST: a quick job's first messages are not missed
        if not self.first:
            self.after_better_ones()
        try:
            submitted = self.client.submit(workflow, prompt_id=job.prompt_id, client_id=client_id, number=rank(job))
        except WorkflowRejected as e:
            if self.loaded_here and not self.upload_inputs:
                # The node no longer has a file it made (its output folder was cleaned): send the
                # job again with the file uploaded.
                log.info("%s refused a job loading its own output (%s); uploading it instead", self.cap.url, e)
                self.upload_inputs = True
                self.close_socket()
                return self.send()
            job.fail(f"ComfyUI refused the workflow: {e}", permanent=True)
            return self.done("failed: refused")
        except ServiceError as e:
            if not e.reached:
                return self.node_fault(f"could not send the job to {self.cap.node.name}: {e}")
            # It may have reached the node all the same: follow it, and let the node say (standing)
            # whether it runs, ran or never arrived.
            self.cap.rest(f"could not send a job to it: {e}")
            return ""
        RenderJob.objects.filter(pk=job.pk).update(sent=timezone.now())
        Capability.objects.filter(pk=self.cap.pk, faults__gt=0).update(faults=0, resting_until=None)
        if submitted["node_errors"]:
            self.dropped = "ComfyUI dropped part of the workflow: " + "; ".join(
                f"node {node}: {dropped_reason(errors)}" for node, errors in submitted["node_errors"].items()
            )
        return ""

    def after_better_ones(self) -> None:
        """Wait (briefly) until the jobs claimed for this node ahead of this one are sent: an idle
        node starts whatever arrives first, and jobs claimed together are sent by several workers
        at once."""
        job = self.job
        ahead = (
            RenderJob.objects.filter(capability=self.cap, status=RenderJob.ASSIGNED, sent=None)
            .filter(Q(priority__gt=job.priority) | Q(priority=job.priority, position__lt=job.position))
            .exclude(pk=job.pk)
        )
        deadline = time.monotonic() + SEND_IN_ORDER
        while ahead.exists() and time.monotonic() < deadline:
            time.sleep(0.005)

    def back_to_batch(self, why: str) -> str:
        """An item of a paused batch back to the queue, this attempt not counted: never sent, or
        interrupted on the node at the pause. Its batch holds it again (Batch.feed) until resumed."""
        self.job.transition(
            RenderJob.QUEUED,
            expect=RenderJob.ON_NODE,
            node_id=None,
            worker="",
            client_id="",
            attempts=max(self.job.attempts - 1, 0),
            heartbeat=None,
            error=why,
            **RenderJob.NOT_STARTED,
        )
        return self.done(why)

    def node_fault(self, error: str) -> str:
        """The node, not the job, failed before the job reached it (refused, down): the job goes
        back to the queue with this attempt not counted (to another node if one can take it), and
        the node rests."""
        self.job.transition(
            RenderJob.QUEUED,
            expect=(RenderJob.ASSIGNED,),
            node_id=None,
            avoid_id=self.cap.node_id,
            worker="",
            client_id="",
            attempts=max(self.job.attempts - 1, 0),
            heartbeat=None,
            error=f"{error}; it went back to the queue (not counted as an attempt)",
            **RenderJob.NOT_STARTED,
        )
        self.cap.rest(error)
        return self.done("node fault: back in the queue")

    def place_inputs(self) -> dict[str, str]:
        """The outputs of other jobs this job takes (JobInput), by parameter, as the node will load
        them: from its own output folder when it made the file (no transfer), else uploaded. How
        each went is stored on its row, for the figures."""
        placed: dict[str, str] = {}
        self.loaded_here = False
        for taken in JobInput.objects.filter(job=self.job).select_related("source"):
            file = taken.file
            if file is None:
                raise media.MediaError(f"its {taken.parameter} input has no output to take: {taken.waiting() or ''}")
            here = taken.source is not None and taken.source.node_id == self.cap.node_id and file.get("remote")
            if here and not self.upload_inputs:
                placed[taken.parameter] = str(file["remote"])
                local, sent = True, 0
                self.loaded_here = True
            else:
                placed[taken.parameter] = self.upload_input(str(file["path"]), taken.parameter)
                local, sent = False, int(file.get("size") or 0)
            JobInput.objects.filter(pk=taken.pk).update(local=local, uploaded=sent)
        return placed

    def upload_input(self, relative: str, parameter: str = "image") -> str:
        """Put an input of the job (a file in our media folder: an image, or a video) on the node,
        under a name of ours; the name the node gave it, for the workflow's input."""
        what = "input video" if parameter == "video" else "input image"
        path = media.inside(self.media_root, relative)
        if path is None or not path.is_file():
            raise media.MediaError(f"the {what} {relative!r} is not in the media folder (was it deleted?)")
        limit = media.MAX_INPUT_VIDEO if parameter == "video" else media.MAX_INPUT
        if path.stat().st_size > limit:
            raise media.MediaError(f"the {what} {relative!r} is over {limit // 1048576} MB")
        kept = media.VIDEO_INPUTS if parameter == "video" else media.IMAGE_INPUTS
        suffix = path.suffix.lower() if path.suffix.lower() in kept else kept[0]
        # In the input folder itself, where LoadImage and LoadVideo list their choices.
        tail = "" if parameter == "image" else f"-{parameter}"
        name = f"spoonfeeder-{self.job.code}{tail}{suffix}"
        uploaded = self.client.upload_image(name, path.read_bytes(), overwrite=True)
        return f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded["subfolder"] else uploaded["name"]

    def open_socket(self) -> None:
        if self.events is not None or self.clock() < self.next_socket:
            return
        try:
            events = self.client.events(self.job.client_id)
            events.open()
        except ServiceError as e:
            log.info("no WebSocket to %s (%s); polling instead", self.cap.url, e)
            self.next_socket = self.clock() + POLL
            return
        self.events = events
        self.heard = self.clock()

    def close_socket(self) -> None:
        if self.events:
            self.events.close()
            self.events = None

    # --- following -----------------------------------------------------------------------------

    def follow(self) -> str:
        """Until the job has ended: one look after another, listening to the node between them."""
        while not (outcome := self.handle_one_look()):
            self.listen(max(min(self.next_controls, self.next_poll) - self.clock(), 0.01))
        return outcome

    def handle_one_look(self) -> str:
        """One look at the job: the user's controls when they are due, then the node when it is
        due (or the socket said the prompt ended); the attempt's outcome once it is over, else ""."""
        work.stopping()
        now = self.clock()
        if now >= self.next_controls:
            outcome = self.controls()
            if outcome:
                return outcome
            self.next_controls = now + CONTROLS
        if self.pulled is not None:
            return self.settle_pulled_back()
        if self.ended or now >= self.next_poll:
            outcome = self.check()
            self.next_poll = self.clock() + (POLL if self.events else 0.5)
            return outcome
        return ""

    def listen(self, timeout: float) -> None:
        self.open_socket()
        if self.events is None:
            with work.interruptible():
                time.sleep(min(timeout, 0.1))
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.ended:
            try:
                with work.interruptible():
                    message = self.events.receive(max(deadline - time.monotonic(), 0.001))
            except ServiceError:
                self.close_socket()  # polling takes over until the socket is back
                return
            if message is None:
                return
            self.heard = self.clock()
            self.handle(message)

    def handle(self, message: Any) -> None:
        job = self.job
        if getattr(message, "prompt_id", None) != job.prompt_id:
            return  # the node's status, or another client's prompt
        if self.pulled is not None:  # it started after all before it was taken off: follow it
            self.keep()
        if isinstance(message, ExecutionStart):
            job.transition(RenderJob.RENDERING, expect=(RenderJob.ASSIGNED,), started=timezone.now())
        elif isinstance(message, Executing) and message.node:
            node = (job.workflow or {}).get(message.node, {})
            self.report["current"] = f"{message.node} {node.get('class_type', '')}".strip()
            self.progressed()
        elif isinstance(message, Progress):
            # Step x/y of the node that counts steps (a sampler); the bar follows the whole graph.
            self.report.update(step=message.value, steps=message.max)
            self.progressed()
        elif isinstance(message, ProgressState) and message.nodes:
            total = max(len(job.workflow or {}), len(message.nodes))
            done = sum(
                min(float(n.get("value") or 0) / max(float(n.get("max") or 1), 1e-9), 1.0)
                for n in message.nodes.values()
            )
            self.report["progress"] = done / total
            self.progressed()
        elif isinstance(message, Preview):
            if self.streamed_output(message):
                self.keep_frame(message)
            else:
                self.save_preview(message.image)
        elif isinstance(message, (ExecutionSuccess, ExecutionError, ExecutionInterrupted)):
            self.ended = True

    def progressed(self) -> None:
        """Write what the node reported, at most every PROGRESS_EVERY seconds."""
        now = self.clock()
        if self.report and now - self.last_progress >= PROGRESS_EVERY:
            self.last_progress = now
            with transaction.atomic():
                RenderJob.objects.filter(pk=self.job.pk, status=RenderJob.RENDERING).update(**self.report)
                self.job.changed("job.progress")
            self.report = {}

    def streams(self) -> bool:
        """Whether the job's workflow has an output whose images come only over the socket."""
        return STREAMED_OUTPUT in {n.get("class_type") for n in (self.job.workflow or {}).values()}

    def streamed_output(self, message: Preview) -> bool:
        """Whether this image is an output that comes only over the socket (SaveImageWebsocket
        sends its images as frames and leaves nothing in the history), not a preview."""
        node = str((message.metadata or {}).get("node_id", ""))
        return (self.job.workflow or {}).get(node, {}).get("class_type") == STREAMED_OUTPUT

    def keep_frame(self, message: Preview) -> None:
        """Write a streamed output frame where its outputs go (checked and listed when the job ends)."""
        if len(self.frames) >= MAX_OUTPUTS:
            return
        suffix = ".jpg" if str(message.format).lower() in ("jpeg", "jpg") else ".png"
        relative = media.local_name(str(self.job.code), len(self.frames), f"frame{suffix}")
        path = self.media_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(message.image)
        self.frames.append(relative)

    def save_preview(self, image: bytes) -> None:
        relative = Path("renders") / str(self.job.code)[:2] / str(self.job.code) / "preview.img"
        path = self.media_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image[: 20 * 1024 * 1024])
        RenderJob.objects.filter(pk=self.job.pk).update(preview=str(relative))

    def check(self) -> str:
        """Ask the node's queue about the job (the fallback when the socket is quiet or down)."""
        if not self.ended:
            try:
                queue = self.client.queue()
            except ServiceError as e:
                if isinstance(e, AnswerTooLarge):
                    return self.unreadable(e)
                self.silent(str(e))
                return ""
            self.heard_from_node()
            if self.job.prompt_id in queue:
                running = queue.position(self.job.prompt_id) == 0
                if running and self.job.status == RenderJob.ASSIGNED:
                    self.job.transition(RenderJob.RENDERING, expect=(RenderJob.ASSIGNED,), started=timezone.now())
                if running and self.clock() - self.heard > SILENCE:
                    self.close_socket()  # silenced (another socket took our client id?): reopen it
                return ""
        return self.finish()

    def heard_from_node(self) -> None:
        if self.silent_since is not None:
            self.silent_since = None
            if self.job.error.startswith(f"{self.cap.node.name} has not answered"):
                with transaction.atomic():
                    RenderJob.objects.filter(pk=self.job.pk).update(error="")
                    self.job.error = ""
                    self.job.changed("job.heard")

    def unreadable(self, e: ServiceError) -> str:
        """The node answers, but with what can never be read (an answer over every limit): asking
        again would get the same. The job fails with the reason (a retry is the user's call)."""
        self.job.fail(f"could not read {self.cap.node.name}'s record of the job: {e}", permanent=True)
        return self.done("failed: unreadable answer")

    def silent(self, error: str) -> None:
        """The node does not answer. That proves nothing about the job (a node that hangs may go
        on rendering): after a while it says so and the node gets no new work, but the job stays
        its until it answers again and says where the job stands."""
        now = self.clock()
        if self.silent_since is None:
            self.silent_since = now
            return
        since = now - self.silent_since
        if since < settings.RENDER_NODE_TIMEOUT or self.job.error.startswith(f"{self.cap.node.name} has not"):
            return
        note = (
            f"{self.cap.node.name} has not answered for {since:.0f} s ({error}); the job is followed again "
            "when it answers (cancel it to render it elsewhere)"
        )
        with transaction.atomic():
            RenderJob.objects.filter(pk=self.job.pk, status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING)).update(
                error=note[:5000]
            )
            self.job.error = note
            self.job.changed("job.silent")
        self.close_socket()
        self.cap.rest(f"it has not answered for {since:.0f} s")

    def finish(self) -> str:
        """The prompt ended, or left the node's queue: settle the job as the node says it stands
        (its history entry may come a moment after the run ends: see ComfyUI.standing)."""
        self.ended = False
        job = self.job
        try:
            where = self.client.standing(job.prompt_id)
        except ServiceError as e:
            if isinstance(e, AnswerTooLarge):
                return self.unreadable(e)
            self.silent(str(e))
            return ""  # the node proves nothing: ask again at the next look
        if where.where in (QUEUED, RUNNING):
            return ""  # still on the node: go on following it
        job.refresh_from_db()
        if job.status == RenderJob.CANCELLED:
            job.release()
            return self.done("cancelled")
        entry = where.entry
        batch = job.batch_id
        if entry is None and batch is not None and Batch.objects.filter(pk=batch, status__in=Batch.HELD_BACK).exists():
            return self.back_to_batch("taken off its node's queue when its batch was paused")
        if entry is None:
            # In neither /queue nor /history, for longer than an entry can lag: it never ran (taken
            # off the node's queue), or the server restarted and forgot it. Not done, either way.
            lost = (
                f"{self.cap.node.name} lost the run (restarted?)"
                if job.status == RenderJob.RENDERING
                else f"it was no longer in {self.cap.node.name}'s queue (taken off it, or the node restarted)"
            )
            job.fail(f"{lost}; it will be rendered again", permanent=False)
            return self.done("lost on the node")
        failed = failure(entry)
        if failed and self.interrupted and failed["type"] == "execution_interrupted":
            if not outputs_of(entry):
                return self.back_to_batch(
                    "interrupted when its batch was paused: it renders again when the batch goes on"
                )
            failed = None  # interrupted after its outputs were saved: it rendered, and is kept
        if failed:
            kind = str(failed.get("exception_type") or failed["type"])
            message = str(failed.get("exception_message", "")).strip()
            at = f"node {failed.get('node_id', '?')} ({failed.get('node_type', '?')})"
            retry = "OutOfMemory" in kind or failed["type"] == "execution_interrupted"
            job.fail(f"{kind} at {at}: {message}".strip(": "), permanent=not retry)
            return self.done("failed on the node")
        job.release()  # the GPU is free: the node takes its next job while we copy
        self.close_socket()  # not read while we copy (broadcasts of the next job would pile up)
        self.hand_on()
        feed()
        return self.collect(entry)

    def hand_on(self) -> None:
        """Take the node's next job for this worker and send it now: the node gets it without
        waiting for a task to be queued and picked up. First one already claimed for this node
        whose own task has not started (it goes first: it came first), else the best queued one."""
        if work.STOP.is_set() or Queue.get().paused:
            return
        if not Capability.objects.usable(Capability.COMFYUI).filter(pk=self.cap.pk).exists():
            return
        self.cap.refresh_from_db()
        unsent = RenderJob.objects.filter(capability=self.cap, status=RenderJob.ASSIGNED, worker="", client_id="")
        job = unsent.in_dispatch_order().first()
        if job is None or not unsent.filter(pk=job.pk).update(worker=self.me, heartbeat=Now()):
            claimed = next_job(self.cap, worker=self.me)  # its own task, when it comes, finds it taken
            if claimed is None:
                return
            job = claimed[0]
        following = Attempt(
            RenderJob.objects.select_related("template", "node").get(pk=job.pk), self.cap, self.me, self.media_root
        )
        if not following.send():  # sent: followed once this job's outputs are in
            # Not read until then: a socket held unread stalls every client of the node once its
            # messages pile up (PROTOCOL.md, surprise 13). It is opened again to follow the job,
            # unless the job's outputs come over it (held for the copy of this job's outputs).
            if not following.streams():
                following.close_socket()
            self.next = following

    def let_go(self) -> None:
        """The task has gone on long enough: the job handed on gets a task of its own."""
        if self.next is not None:
            with transaction.atomic():
                if RenderJob.objects.filter(pk=self.next.job.pk, worker=self.me).update(worker="", heartbeat=Now()):
                    enqueue("renders.tasks.attempt", self.next.job.pk, self.next.job.prompt_id, timeout=RENDER_DEADLINE)
            self.next.close_socket()
            self.next = None

    def collect(self, entry: Any) -> str:
        """Copy the outputs off the node and complete the job (beating it, and the job handed on,
        meanwhile: a copy may take long)."""
        mine = [self.job.pk] + ([self.next.job.pk] if self.next else [])
        with work.beating(RenderJob.objects.filter(pk__in=mine, worker=self.me)):
            return self.copy_and_complete(entry)

    def copy_and_complete(self, entry: Any) -> str:
        """A copy our side cannot write (a full disk) is tried again, with the job still
        rendering, until COPY_DEADLINE."""
        wait, deadline = COPY_RETRY[0], time.monotonic() + COPY_DEADLINE
        while True:
            try:
                outputs, note = self.copy_outputs(entry)
                break
            except (ServiceError, media.MediaError) as e:
                self.job.fail(f"could not copy the output off {self.cap.node.name}: {e}", permanent=True)
                return "failed: copy"
            except OSError as e:
                if time.monotonic() + wait > deadline:
                    self.job.fail(
                        f"could not store the outputs ({e.strerror or e}) for {COPY_DEADLINE:.0f} s", permanent=True
                    )
                    return "failed: storage"
                with transaction.atomic():
                    RenderJob.objects.filter(pk=self.job.pk).update(
                        error=f"could not store the outputs ({e.strerror or e}); trying again in {wait:.0f} s"
                    )
                    self.job.changed("job.storage")
                self.wait_watching_next(wait)
                wait = min(wait * 2, COPY_RETRY[1])
        now = timezone.now()
        job = self.job
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
            error="; ".join(n for n in (self.dropped, note) if n)[:5000],
        ):
            Speed.record(self.cap.pk, job.template_id, seconds, job.work)
        return "completed"

    def copy_outputs(self, entry: Any) -> tuple[list[dict[str, Any]], str]:
        """The outputs copied, and what was left on the node (over the caps), in words."""
        refs = outputs_of(entry)
        if not refs and self.streams():
            return self.streamed_outputs()
        outputs: list[dict[str, Any]] = []
        total = 0
        left = ""
        for index, ref in enumerate(refs):
            if index >= MAX_OUTPUTS:
                left = f"only the first {MAX_OUTPUTS} of its {len(refs)} outputs were kept"
                break
            budget = MAX_OUTPUT_BYTES - total
            try:
                out = media.collect(
                    self.client,
                    ref,
                    str(self.job.code),
                    index,
                    media_root=self.media_root,
                    limit=min(media.DOWNLOAD_LIMIT, budget),
                )
            except AnswerTooLarge:
                if not (outputs and budget < media.DOWNLOAD_LIMIT):
                    raise
                # Larger than what is left of the job's allowance (not than one file may be).
                left = f"{len(refs) - index} of its {len(refs)} outputs were left on the node: {over_cap()}"
                break
            total += out.size
            outputs.append(dataclasses.asdict(out))
            if total >= MAX_OUTPUT_BYTES and index + 1 < len(refs):
                left = f"{len(refs) - index - 1} of its {len(refs)} outputs were left on the node: {over_cap()}"
                break
        return outputs, left

    def streamed_outputs(self) -> tuple[list[dict[str, Any]], str]:
        """The frames a SaveImageWebsocket output sent over the socket, as the job's outputs."""
        outputs = []
        for relative in self.frames:
            try:
                outputs.append(dataclasses.asdict(media.describe(self.media_root / relative, relative)))
            except media.MediaError as e:
                log.info("a streamed frame of %s was not kept: %s", self.job.code, e)
        if not outputs:
            return [], (
                f"its workflow saves with {STREAMED_OUTPUT}, whose images come only over the live socket, "
                "and none came (the socket was closed): nothing was kept"
            )
        return outputs, f"the {len(outputs)} images {STREAMED_OUTPUT} sent over the socket were kept as its outputs"

    # --- the user's controls, acted on at the node ---------------------------------------------

    def controls(self) -> str:
        """A cancelled job is interrupted or taken off the node's queue; one still waiting in the
        node's queue is pulled back when the queue is paused or a better job was queued."""
        fields = ("status", "priority", "position", "worker", "claimed")
        row = RenderJob.objects.filter(pk=self.job.pk).values(*fields, "batch__status", "batch__interrupt").first()
        if row is None:
            return self.done("the job was deleted")
        if row["worker"] != self.me:
            return "the job is no longer this worker's"
        for name in fields:
            setattr(self.job, name, row[name])
        if row["status"] == RenderJob.CANCELLED:
            return self.take_off()
        held = row["batch__status"] in Batch.HELD_BACK
        if held and row["batch__interrupt"] and row["status"] == RenderJob.RENDERING:
            self.interrupt()
        if row["status"] != RenderJob.ASSIGNED or self.pulled is not None:
            return ""
        if held or Queue.get().paused or self.outranked():
            self.pull_back()
        return ""

    def wait_watching_next(self, seconds: float) -> None:
        """Wait, acting on the user's controls of the job handed on meanwhile (it may be waiting
        in the node's queue, or running there, for as long as this copy is retried)."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            self.watch_next()
            with work.interruptible():
                time.sleep(min(left, CONTROLS))

    def watch_next(self) -> None:
        """The user's controls act on the job handed on while this one's copy is retried (taken
        off the node when cancelled, pulled back or interrupted when its batch is paused), not
        only once this one is complete."""
        following = self.next
        if following is not None and following.pulled is None and following.controls():
            self.next = None  # ended here (taken off the node): nothing more to follow

    def interrupt(self) -> None:
        """Stop the job running on the node (its batch was paused with "interrupt"): it goes back
        to its batch when the node says it ended (finish)."""
        if self.interrupted:
            return
        # Its batch's items waiting behind it are taken off first: else the node starts one the
        # moment this one stops.
        take_back(self.job.batch_id, self.cap)
        try:
            self.client.interrupt(self.job.prompt_id)
        except ServiceError:
            return  # asked again at the next look
        self.interrupted = True

    def outranked(self) -> bool:
        """Whether a runnable job that this node should take was put before this one (queued or
        moved by the user) since this one's node was claimed for it. A job the plan had left for
        another node then does not count: a plan that changes its mind would pull back job after
        job, and the node would sit idle while they settle."""
        job = self.job
        if job.claimed is None:
            return False
        ahead = RenderJob.objects.runnable().filter(
            Q(priority__gt=job.priority) | Q(priority=job.priority, position__lt=job.position), moved__gt=job.claimed
        )
        if not ahead.exists():
            return False
        best = best_fit(self.cap)
        return (
            best is not None
            and best.moved > job.claimed
            and (best.priority, -best.position) > (job.priority, -job.position)
        )

    def pull_back(self) -> None:
        """Take the job waiting in the node's queue back to ours (paused, or a better job came).
        It goes back only once the node has shown, for HISTORY_SETTLE seconds, that it never ran
        it; meanwhile the node's unit is free for another job."""
        try:
            self.client.delete_queued([self.job.prompt_id])
            where = self.client.standing(self.job.prompt_id, settle=0).where
        except ServiceError:
            return  # a node that cannot be asked proves nothing: try again later (its follower
            # meets a permanent error itself)
        if where == GONE:
            self.pulled = self.clock()
            RenderJob.objects.filter(pk=self.job.pk, status=RenderJob.ASSIGNED).update(capability=None)
            feed()
        # Still queued there (try again), running or finished: it is followed as before.

    def keep(self) -> None:
        """A job taken off the node's queue that ran there after all: followed to its end."""
        self.pulled = None
        RenderJob.objects.filter(pk=self.job.pk, status__in=(RenderJob.ASSIGNED, RenderJob.RENDERING)).update(
            capability=self.cap.pk
        )

    def settle_pulled_back(self) -> str:
        time.sleep(SETTLE_LOOK)
        try:
            where = self.client.standing(self.job.prompt_id, settle=0).where
        except AnswerTooLarge:
            self.keep()  # it cannot be settled: followed as before, where it meets the error
            return ""
        except ServiceError:
            return ""
        if where != GONE:
            self.keep()
            if where == FINISHED:
                return self.finish()
            return ""
        if self.clock() - (self.pulled or 0.0) < HISTORY_SETTLE:
            return ""
        self.job.transition(
            RenderJob.QUEUED,
            expect=(RenderJob.ASSIGNED,),
            node_id=None,
            worker="",
            client_id="",
            attempts=max(self.job.attempts - 1, 0),
            heartbeat=None,
        )
        return self.done("pulled back to the queue")

    def take_off(self) -> str:
        """The cancelled job comes off the node: taken off its queue, or interrupted if it runs."""
        try:
            self.client.delete_queued([self.job.prompt_id])
            where = self.client.standing(self.job.prompt_id, settle=0).where
            if where == RUNNING:
                self.client.interrupt(self.job.prompt_id)
        except AnswerTooLarge:
            where = GONE  # it can never be asked: the job is let go as the user asked
        except ServiceError:
            return ""  # a node that cannot be asked proves nothing: ask again later
        if where == QUEUED:
            return ""  # the delete has not taken yet: again at the next look
        self.job.release()
        return self.done("cancelled")


def take_back(batch_pk: int | None, only: Capability | None = None, timeout: float = NODE_TIMEOUT) -> int:
    """A paused batch's items waiting in nodes' queues (on `only`, else on any node), taken off
    them at once: a node would start one the moment its running job ends, before that item's
    attempt looks at the controls. Their attempts find them gone and give them back (pull_back);
    a node that cannot be asked is asked again by them. How many were asked off."""
    waiting = RenderJob.objects.filter(batch=batch_pk, status=RenderJob.ASSIGNED, capability__isnull=False)
    if only is not None:
        waiting = waiting.filter(capability=only)
    by_cap: dict[int, list[str]] = {}
    for cap_pk, prompt_id in waiting.exclude(client_id="").values_list("capability", "prompt_id"):
        by_cap.setdefault(cap_pk, []).append(prompt_id)
    asked = 0
    for cap in [only] if only is not None else Capability.objects.filter(pk__in=by_cap).select_related("node"):
        if by_cap.get(cap.pk):
            try:
                ComfyUI(cap.url, timeout=timeout).delete_queued(by_cap[cap.pk])
            except ServiceError:
                continue
            asked += len(by_cap[cap.pk])
    return asked


def over_cap() -> str:
    return f"a job keeps at most {filesizeformat(MAX_OUTPUT_BYTES)} of outputs".replace("\xa0", " ")


def rank(job: RenderJob) -> float:
    """Where the job goes in its node's queue: ComfyUI runs prompts by this number, so jobs sent
    at once by several workers run in our dispatch order (priority, then position), after any
    prompt someone queued there directly (its counter counts from 0)."""
    return 1e12 - job.priority * 1e9 + job.position


def dropped_reason(errors: Any) -> str:
    found = errors.get("errors", []) if isinstance(errors, dict) else []
    reasons = [str(e.get("message") or e.get("type") or "") for e in found if isinstance(e, dict)]
    return ", ".join(r for r in reasons if r) or "refused"


# --- the sweeper's part ----------------------------------------------------------------------------


def sweep() -> bool:
    """Re-drive every job whose worker stopped (queue its attempt again: it asks the node first),
    quarantine one whose workers keep dying while running it, and feed the pool; True while
    any job is queued or on a node."""
    active = RenderJob.objects.active()
    workers = active.exclude(worker="").values_list("worker", flat=True)
    for job in active.filter(work.orphaned(workers)).only("pk", "prompt_id", "worker", "heartbeat", "crashes"):
        crashes = job.crashes + work.crashed(job.worker, job.heartbeat)
        if crashes >= work.QUARANTINE_AFTER:
            full = RenderJob.objects.select_related("template").get(pk=job.pk)
            full.fail(f"quarantined: the worker running this job died {crashes} times", permanent=True)
            continue
        # Guarded: still that worker's, and still orphaned (a heartbeat written by the database's
        # clock is compared by the same clock, never matched as a value).
        still = active.filter(work.orphaned([job.worker]), pk=job.pk, worker=job.worker)
        with transaction.atomic():
            if still.update(worker="", heartbeat=Now(), crashes=crashes):
                enqueue("renders.tasks.attempt", job.pk, job.prompt_id, timeout=RENDER_DEADLINE)
    Batch.feed()
    if claimable():
        # A feed task claims it and sends it itself; claimed here, it would wait for an attempt
        # task, and race the feed task of the change that made it runnable.
        wake()
    return (
        RenderJob.objects.filter(status__in=(RenderJob.QUEUED, RenderJob.ASSIGNED, RenderJob.RENDERING)).exists()
        or Batch.objects.filter(status=Batch.PAUSING).exists()
    )
