from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import IntegerField, Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now
from django.utils import timezone

from spoonfeeder.models import Event

OLLAMA_PORT = 11434
COMFYUI_PORT = 8188
# A capability is marked offline after this many failed checks in a row, not at the first blip.
OFFLINE_AFTER = 3
# The rows that hold a unit of a capability, by the reverse name of their `capability` field: a
# render job (renders.RenderJob: a node's test render is one) and a story step run (stories.StepRun). A row
# says it holds the capability from its claim to the transition that ends it; a capability's
# load is the number of rows holding it.
HOLDERS = ("held_renders", "held_steps")
# Renders a ComfyUI holds beyond its limit: the next job already waits in its own queue while one
# runs, so the GPU never waits for us between jobs.
PREFETCH = 1
# Workers of the cluster beyond the pool's slots, for the short tasks (the sweeper, feeding,
# checks, discovery).
SPARE_WORKERS = 2


class Node(models.Model):
    """One machine of the lab. What it can do are its capabilities (Ollama, ComfyUI)."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=255, unique=True, help_text="Host name or IP address.")
    enabled = models.BooleanField(default=True)
    # Simulated nodes (make demo) are labelled as such on every screen.
    simulated = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def capability(self, kind: str) -> Capability | None:
        return next((c for c in self.capabilities.all() if c.kind == kind), None)

    @property
    def ollama(self) -> Capability | None:
        return self.capability(Capability.OLLAMA)

    @property
    def comfyui(self) -> Capability | None:
        return self.capability(Capability.COMFYUI)

    def busy_reason(self) -> str:
        """Why the node cannot be removed now, or "" if it can."""
        held = sum(cap.busy() for cap in Capability.objects.filter(node=self).with_load())  # one query
        if held:
            return f"{held} job{'s' if held != 1 else ''} running on it; wait for them or cancel them first"
        return ""

    def set_enabled(self, enabled: bool) -> None:
        with transaction.atomic():
            Node.objects.filter(pk=self.pk).update(enabled=enabled)
            self.enabled = enabled
            self.changed("node.toggled")

    def remove(self) -> str:
        """Forget this node, unless work runs on it: then nothing changes and the reason is returned."""
        reason = self.busy_reason()
        if not reason:
            with transaction.atomic():
                self.changed("node.removed")
                self.delete()
        return reason

    def changed(self, kind: str = "node.changed") -> None:
        """Tell the pages that show nodes (call inside the change's transaction)."""
        Event.objects.bulk_create(
            [Event(topic=topic, kind=kind, ref=str(self.code)) for topic in ("nodes", "dashboard", "timeline")]
        )


def held_sql() -> str:
    """SQL for the number of rows holding the capability of the query's row."""
    quote = connection.ops.quote_name
    outer = f"{quote(Capability._meta.db_table)}.{quote('id')}"
    counts = []
    for name in HOLDERS:
        field: Any = Capability._meta.get_field(name).remote_field
        table, column = quote(field.model._meta.db_table), quote(field.column)
        counts.append(f"(SELECT COUNT(*) FROM {table} WHERE {table}.{column} = {outer})")
    return " + ".join(counts)


class CapabilityQuerySet(models.QuerySet["Capability"]):
    def with_load(self) -> CapabilityQuerySet:
        """Each capability with `load`, the number of rows holding it, in the same query.

        Written as SQL: the same sum of correlated counts built as ORM subqueries took 3 ms of
        Python per query, and every claim and every feed runs one."""
        return self.annotate(load=RawSQL(held_sql(), (), output_field=IntegerField()))

    def usable(self, kind: str) -> CapabilityQuerySet:
        """Enabled, answering, and not resting after a fault: may be given new work."""
        rested = Q(resting_until=None) | Q(resting_until__lte=Now())
        return self.filter(rested, kind=kind, node__enabled=True, status__in=Capability.ANSWERING)


class Capability(models.Model):
    """One service on a node, with its health, limits and inventory."""

    OLLAMA, COMFYUI = "ollama", "comfyui"
    KINDS = [(OLLAMA, "Ollama"), (COMFYUI, "ComfyUI")]
    DEFAULT_PORTS = {OLLAMA: OLLAMA_PORT, COMFYUI: COMFYUI_PORT}

    UNKNOWN, ONLINE, LOADING, OFFLINE = "unknown", "online", "loading", "offline"
    STATUSES = [(UNKNOWN, "Not checked yet"), (ONLINE, "Online"), (LOADING, "Loading"), (OFFLINE, "Offline")]
    # A loading server is alive and will take work, just slowly at first.
    ANSWERING = (ONLINE, LOADING)

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="capabilities")
    kind = models.CharField(max_length=10, choices=KINDS)
    port = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=STATUSES, default=UNKNOWN)
    limit = models.PositiveSmallIntegerField(default=1, help_text="How many jobs may run on it at once.")
    version = models.CharField(max_length=64, blank=True)
    # Ollama: {"models": [{name, size, family, parameters, quantization}], "loaded": [names]}
    # ComfyUI: {"devices": [...], "vram_total", "vram_free", "classes": [names], "files": {folder: [names]}}
    inventory = models.JSONField(default=dict, blank=True)
    inventory_checked = models.DateTimeField(null=True, blank=True)
    last_checked = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    failures = models.PositiveSmallIntegerField(default=0)
    # Smoothed answer time of health checks, in milliseconds: "the faster node" is measured.
    latency = models.FloatField(null=True, blank=True)
    # Work that failed on it in a row (a refused or garbled answer), and until when it gets no
    # new work for that (Capability.rest: the one back-off rule).
    faults = models.PositiveSmallIntegerField(default=0)
    resting_until = models.DateTimeField(null=True, blank=True)

    objects = CapabilityQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["node", "kind"], name="one_capability_per_kind")]
        ordering = ["node__name", "kind"]

    def __str__(self) -> str:
        return f"{self.node.name} {self.get_kind_display()}"

    @property
    def url(self) -> str:
        host = self.node.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def holders(self) -> int:
        """How many rows hold this capability now (one query)."""
        held = Capability.objects.filter(pk=self.pk).with_load().values_list("load", flat=True)  # type: ignore[misc]
        return held.first() or 0

    def busy(self) -> int:
        load = getattr(self, "load", None)
        return load if load is not None else self.holders()

    def has_room(self, extra: int = 0) -> bool:
        """Whether its load (as read with it, or counted now) leaves room for one more holder
        within its limit plus `extra`: a look, not a claim (see room())."""
        return self.busy() < self.limit + extra

    @property
    def display_status(self) -> str:
        if self.status in self.ANSWERING and self.busy() >= self.limit:
            return "busy"
        return self.status

    def model_names(self) -> list[str]:
        return [m["name"] for m in self.inventory.get("models", [])]

    def class_names(self) -> frozenset[str]:
        """The node classes its inventory lists, as a set made once per inventory (a ComfyUI has
        thousands, and placement asks about every job it looks at)."""
        listed = self.inventory.get("classes", [])
        made = self.__dict__.get("_class_names")
        if made is None or made[0] is not listed:
            made = self.__dict__["_class_names"] = (listed, frozenset(listed))
        return made[1]

    def has(self, requires: Requirements) -> bool:
        return not self.lacks(requires)

    def lacks(self, requires: Requirements) -> list[str]:
        """What of `requires` this capability does not have, in words, as its inventory says."""
        inv = self.inventory
        missing = []
        if requires.model and requires.model not in self.model_names():
            missing.append(f"the model {requires.model}")
        classes = self.class_names()
        missing += [f"the node class {c}" for c in requires.classes if c not in classes]
        files = inv.get("files", {})
        missing += [f"{folder}/{name}" for folder, name in requires.files if name not in files.get(folder, [])]
        return missing

    @contextmanager
    def room(self, *, extra: int = 0) -> Iterator[int]:
        """A claim of one unit of this capability: inside the block, how many more holders it has
        room for (0: none; its limit, plus `extra`: a render waiting in ComfyUI's own queue so the
        GPU never idles between jobs). The caller's guarded update that makes its row hold the
        capability goes inside the block, which is one transaction that every other claimer of
        this capability waits for: on PostgreSQL the capability's row is locked; SQLite takes its
        write lock when the transaction begins (IMMEDIATE). So two claimers never both see the
        last free unit.

            with cap.room() as free:
                if free and Job.objects.filter(pk=..., status=QUEUED).update(capability=cap, ...):
                    ...
        """
        with transaction.atomic():
            # Two statements: on PostgreSQL a count in the locking statement would come from the
            # snapshot taken before the lock was granted, and two claimers could share a unit.
            limit = Capability.objects.select_for_update().filter(pk=self.pk).values_list("limit", flat=True).first()
            if limit is None:
                yield 0  # removed
                return
            self.limit = limit  # as locked: how many hold it is then limit + extra - free
            yield max(limit + extra - self.holders(), 0)

    def rest(self, error: str) -> None:
        """Give this capability no new work for a while after a fault (a refused or garbled
        answer), twice as long at each fault in a row (from BEAT up to MAX_REST seconds), and say
        so on its card: the one back-off rule, shared by every worker (it is on the row). A
        success clears it (faults=0)."""
        faults = (Capability.objects.filter(pk=self.pk).values_list("faults", flat=True).first() or 0) + 1
        seconds = min(settings.BEAT * 2 ** (faults - 1), settings.MAX_REST)
        with transaction.atomic():
            Capability.objects.filter(pk=self.pk).update(
                faults=faults,
                resting_until=timezone.now() + timedelta(seconds=seconds),
                last_error=f"{error}; no new jobs for it for {seconds:.0f} s"[:2000],
            )
            self.node.changed("node.resting")

    def record_check(
        self,
        ok: bool,
        *,
        error: str = "",
        slow: bool = False,
        ms: float | None = None,
        version: str = "",
        inventory: dict[str, Any] | None = None,
    ) -> bool:
        """Store a health check's outcome. Returns True if the status changed."""
        now = timezone.now()
        before = self.status
        self.last_checked = now
        if ok:
            self.status = self.LOADING if slow else self.ONLINE
            self.failures = 0
            self.last_seen = now
            self.last_error = ""
            if version:
                self.version = version
            if ms is not None:
                self.latency = ms if self.latency is None else 0.7 * self.latency + 0.3 * ms
        elif slow:
            # Connected but no answer in time: alive and busy (a model loading), not down.
            self.status = self.LOADING
            self.last_seen = now
            self.last_error = error
        else:
            self.failures += 1
            self.last_error = error
            if self.failures >= OFFLINE_AFTER or self.status == self.UNKNOWN:
                self.status = self.OFFLINE
        fields = ["status", "failures", "last_checked", "last_seen", "last_error", "version", "latency"]
        if inventory is not None:
            self.inventory = inventory
            self.inventory_checked = now
            fields += ["inventory", "inventory_checked"]
        self.save(update_fields=fields)
        return self.status != before


def slots() -> int:
    """Units of work the pool can hold at once, each a worker of the cluster while it runs: every
    enabled ComfyUI's limit plus PREFETCH, every enabled Ollama's limit."""
    caps = Capability.objects.filter(node__enabled=True).values_list("kind", "limit")
    return sum(limit + (PREFETCH if kind == Capability.COMFYUI else 0) for kind, limit in caps)


def cluster_workers() -> int:
    """Worker processes of the running clusters, as they report themselves (this machine's
    SPOONFEEDER_WORKERS when none reports)."""
    from django_q.status import Stat

    try:
        running = sum(len(s.workers) for s in Stat.get_all())
    except Exception:
        running = 0
    return running or int(settings.Q_WORKERS)


def worker_shortfall() -> str:
    """What to set when the pool has more slots than the cluster has workers (beyond a few for
    short tasks), in words; "" when it has enough."""
    needed = slots() + SPARE_WORKERS
    workers = cluster_workers()
    if workers >= needed:
        return ""
    return (
        f"The pool can run {needed - SPARE_WORKERS} jobs at once, but the worker cluster has {workers} "
        f"workers (and keeps {SPARE_WORKERS} for short tasks): work beyond that waits for a worker. "
        f"Set SPOONFEEDER_WORKERS={needed} and restart, or start another cluster (manage.py qcluster)."
    )


class Sample(models.Model):
    """A ComfyUI's VRAM as one health check read it: the timeline's line of free VRAM. Kept for
    KEEP only (health.store prunes at each check), so there are a few hundred rows per node at most."""

    KEEP = timedelta(hours=2)

    capability = models.ForeignKey(Capability, on_delete=models.CASCADE, related_name="samples")
    taken = models.DateTimeField(default=timezone.now)
    vram_free = models.BigIntegerField()
    vram_total = models.BigIntegerField()

    class Meta:
        indexes = [
            # Read by nodes.timeline (the last hour of every ComfyUI) and pruned by taken alone.
            models.Index(fields=["taken"], name="sample_taken"),
        ]

    def __str__(self) -> str:
        return f"{self.capability} at {self.taken:%H:%M:%S}: {self.vram_free} of {self.vram_total} free"

    @classmethod
    def prune(cls) -> int:
        deleted, _ = cls.objects.filter(taken__lt=timezone.now() - cls.KEEP).delete()
        return deleted


class Requirements:
    """What a job needs of a capability: an Ollama model, ComfyUI node classes and model files."""

    def __init__(self, model: str = "", classes: tuple[str, ...] = (), files: tuple[tuple[str, str], ...] = ()):
        self.model = model
        self.classes = classes
        self.files = files


class Discovery(models.Model):
    """One run of discovery: what was asked, and what was found."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    targets = models.TextField()
    ollama_port = models.PositiveIntegerField(default=OLLAMA_PORT)
    comfyui_port = models.PositiveIntegerField(default=COMFYUI_PORT)
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)
    probed = models.PositiveIntegerField(default=0)
    # [{"host", "ollama": version | "", "comfyui": version | "", "node": name, "new": bool}]
    found = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"discovery of {self.targets}"

    def summary(self) -> str:
        """Which of the hosts that answered were added to the pool, and which were in it already."""
        answered = [f for f in self.found if f.get("node")]
        added = [f["node"] for f in answered if f.get("new")]
        known = [f["node"] for f in answered if not f.get("new")]
        parts = [f"{len(added)} new: {', '.join(added)}"] if added else []
        if known:
            parts.append(f"{len(known)} already in the pool: {', '.join(known)}")
        return "; ".join(parts) or "nothing answered"


def none_can_run(needs: Requirements, caps: list[Capability]) -> str:
    """What each of these ComfyUIs lacks of `needs` ("a lacks X; b lacks Y") when none of them can
    run it; "" when one can, or one's inventory is not known yet (ComfyUI's validation decides)."""
    known = [c for c in caps if c.inventory.get("classes")]
    if not known or len(known) < len(caps):
        return ""
    lacking = {c.node.name: c.lacks(needs) for c in known}
    if not all(lacking.values()):
        return ""
    return "; ".join(f"{name} lacks {', '.join(missing)}" for name, missing in sorted(lacking.items()))


def placement_order(cap: Capability, *, story_node: int | None = None, model: str = "") -> tuple[Any, ...]:
    loaded = bool(model) and model in cap.inventory.get("loaded", [])
    return (
        cap.node_id != story_node,  # the node that served the same story last comes first
        not loaded,  # then one with the model already loaded
        cap.busy() / max(cap.limit, 1),  # then the least loaded
        cap.latency if cap.latency is not None else float("inf"),  # then the fastest
        cap.node.name,
    )


def candidates(
    kind: str, requires: Requirements, *, story_node: int | None = None, exclude: Collection[int] = ()
) -> list[Capability]:
    """Capabilities of `kind` that have what is required and free capacity, best first."""
    found = [
        c
        for c in Capability.objects.usable(kind).with_load().select_related("node").exclude(pk__in=exclude)
        if c.busy() < c.limit and c.has(requires)
    ]
    found.sort(key=lambda c: placement_order(c, story_node=story_node, model=requires.model))
    return found


def place(kind: str, requires: Requirements | None = None, *, story_node: int | None = None) -> Capability | None:
    """The best capability of `kind` for a job, without claiming it."""
    best = candidates(kind, requires or Requirements(), story_node=story_node)
    return best[0] if best else None


def place_and_claim(
    kind: str,
    claim: Callable[[Capability], bool],
    requires: Requirements | None = None,
    *,
    story_node: int | None = None,
) -> Capability | None:
    """Place and claim in one go: the best capability for which `claim` (a guarded update of the
    claiming row, made inside `room()`) succeeded; if another worker took the best unit first,
    the next best."""
    tried: set[int] = set()
    while best := candidates(kind, requires or Requirements(), story_node=story_node, exclude=tried):
        with best[0].room() as free:
            if free and claim(best[0]):
                return best[0]
        tried.add(best[0].pk)
    return None
