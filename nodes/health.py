"""Health checks: ask every enabled node's services how they are, and store the answers.

The network part (probe) runs concurrently and touches no database; the answers are stored as they
come in, those that come together in one short transaction, so a check of 50 nodes costs a handful
of queries per node. Each node's probe ends by its deadline, however slowly the node answers: one
slow node holds up neither the other nodes' statuses nor the worker running the check.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from nodes.clients import ServiceError, ServiceTimeout
from nodes.clients.comfyui import ComfyUI
from nodes.clients.ollama import Model, Ollama
from nodes.models import Capability, Node, Sample
from spoonfeeder.models import Event

# A health check's question must be answered quickly; a server that takes longer is busy.
CHECK_TIMEOUT = 5.0
# The longest a node's status questions may take in all (version and loaded models, or
# system_stats): their answers are a few KB, so a node still sending them by then is trickling
# and is given up on. Well under the minute between scheduled checks.
CHECK_DEADLINE = 10.0
# And its inventory questions, in a full check: a big ComfyUI install takes seconds to build its
# object_info of several MB.
INVENTORY_DEADLINE = 30.0
# How old an inventory may get before a routine check fetches it again.
INVENTORY_MAX_AGE = timedelta(minutes=10)
# ComfyUI model folders worth listing for placement; the rest rarely matter to a workflow.
MODEL_FOLDERS = (
    "checkpoints",
    "loras",
    "vae",
    "upscale_models",
    "diffusion_models",
    "text_encoders",
    "clip_vision",
    "controlnet",
    "embeddings",
)


@dataclass
class Outcome:
    ok: bool
    slow: bool = False
    error: str = ""
    ms: float | None = None
    version: str = ""
    inventory: dict[str, Any] | None = None


def probe_ollama(url: str, full: bool, previous: dict[str, Any]) -> Outcome:
    with Ollama(url) as client:
        started = time.monotonic()
        deadline = started + CHECK_DEADLINE
        version = client.version(timeout=CHECK_TIMEOUT, deadline=deadline)
        ms = (time.monotonic() - started) * 1000
        loaded = [m["name"] for m in client.ps(timeout=CHECK_TIMEOUT, deadline=deadline)]
        models = previous.get("models", [])
        if full:
            models = [describe_model(m) for m in client.tags(deadline=time.monotonic() + INVENTORY_DEADLINE)]
    return Outcome(True, ms=ms, version=version, inventory={"models": models, "loaded": loaded})


def describe_model(m: Model) -> dict[str, Any]:
    details = m.get("details", {})
    return {
        "name": m["name"],
        "size": m.get("size", 0),
        "family": details.get("family", ""),
        "parameters": details.get("parameter_size", ""),
        "quantization": details.get("quantization_level", ""),
    }


def probe_comfyui(url: str, full: bool, previous: dict[str, Any]) -> Outcome:
    with ComfyUI(url) as client:
        started = time.monotonic()
        stats = client.system_stats(timeout=CHECK_TIMEOUT, deadline=started + CHECK_DEADLINE)
        ms = (time.monotonic() - started) * 1000
        devices: list[dict[str, Any]] = [
            {
                "name": d.get("name", ""),
                "type": d.get("type", ""),
                "vram_total": d.get("vram_total") or 0,
                "vram_free": d.get("vram_free") or 0,
            }
            for d in stats.get("devices", [])
        ]
        inventory: dict[str, Any] = {
            "devices": devices,
            "vram_total": sum(d["vram_total"] for d in devices),
            "vram_free": sum(d["vram_free"] for d in devices),
            "classes": previous.get("classes", []),
            "files": previous.get("files", {}),
        }
        if full:
            deadline = time.monotonic() + INVENTORY_DEADLINE
            inventory["classes"] = sorted(client.object_info(deadline=deadline))
            folders = set(client.model_folders(deadline=deadline))
            inventory["files"] = {f: client.models(f, deadline=deadline) for f in MODEL_FOLDERS if f in folders}
    version = str(stats.get("system", {}).get("comfyui_version", ""))
    return Outcome(True, ms=ms, version=version, inventory=inventory)


PROBES = {Capability.OLLAMA: probe_ollama, Capability.COMFYUI: probe_comfyui}


def probe(cap: Capability, full: bool) -> Outcome:
    """Ask one service how it is. Network only: no database access here."""
    try:
        return PROBES[cap.kind](cap.url, full, cap.inventory)
    except ServiceTimeout as e:
        return Outcome(False, slow=True, error=str(e))
    except ServiceError as e:
        return Outcome(False, error=str(e))
    except Exception as e:  # a bug or a shape we did not expect must not stop the other checks
        return Outcome(False, error=f"unexpected answer: {e.__class__.__name__}: {e}"[:500])


def needs_inventory(cap: Capability) -> bool:
    return cap.inventory_checked is None or cap.inventory_checked < timezone.now() - INVENTORY_MAX_AGE


def check(caps: list[Capability], *, full: bool = False) -> list[Capability]:
    """Check the given capabilities concurrently and store each outcome as soon as it is known.
    Returns those whose status changed."""
    if not caps:
        return []
    changed = []
    # Slow I/O outside any transaction: each probe ends by its deadline, and the outcomes are
    # stored as they come, so the nodes that answer at once are not left waiting for one that
    # takes its time.
    with ThreadPoolExecutor(max_workers=min(32, len(caps))) as pool:
        asking = {pool.submit(probe, cap, full or needs_inventory(cap)): cap for cap in caps}
        while asking:
            done, _ = wait(asking, return_when=FIRST_COMPLETED)
            changed += store([(asking.pop(future), future.result()) for future in done])
    return changed


def store(answers: list[tuple[Capability, Outcome]]) -> list[Capability]:
    """Store outcomes in one short transaction; those whose status changed."""
    changed = []
    with transaction.atomic():
        # Count from the rows as they are now, locked: another check of the same capability (the
        # schedule and "check now") may have stored its outcome while we were asking.
        pks = [cap.pk for cap, _ in answers]
        rows = Capability.objects.select_for_update().filter(pk__in=pks).order_by("pk")
        fresh = {row.pk: row for row in rows.only("status", "failures", "latency")}
        for cap, outcome in answers:
            row = fresh.get(cap.pk)
            if row is None:
                continue  # removed while we asked it
            cap.status, cap.failures, cap.latency = row.status, row.failures, row.latency
            if cap.record_check(
                outcome.ok,
                error=outcome.error,
                slow=outcome.slow,
                ms=outcome.ms,
                version=outcome.version,
                inventory=outcome.inventory,
            ):
                changed.append(cap)
        # The timeline's line of free VRAM: one sample per ComfyUI that said how much it has.
        Sample.objects.bulk_create(
            [
                Sample(
                    capability_id=cap.pk,
                    taken=cap.last_checked or timezone.now(),
                    vram_free=inv["vram_free"],
                    vram_total=total,
                )
                for cap, outcome in answers
                if cap.pk in fresh
                and cap.kind == Capability.COMFYUI
                and (inv := outcome.inventory or {})
                and (total := inv.get("vram_total"))
            ]
        )
        Sample.prune()
        # One event per page for what was stored together: the pages re-render from the rows (the
        # timeline's time axis moves on with the checks, once a minute, even when the pool is idle).
        Event.objects.bulk_create(
            [Event(topic=topic, kind="nodes.checked") for topic in ("nodes", "dashboard", "timeline")]
        )
    return changed


def check_all(*, full: bool = False) -> list[Capability]:
    caps = list(Capability.objects.filter(node__enabled=True).select_related("node"))
    return check(caps, full=full)


def check_node(node: Node, *, full: bool = True) -> list[Capability]:
    return check(list(node.capabilities.select_related("node")), full=full)
