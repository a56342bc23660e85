"""Health checks: ask every enabled node's services how they are, and store the answers.

The network part (probe) runs concurrently and touches no database; the answers are then stored
in one short transaction, so a check of 50 nodes costs a handful of queries per node.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from nodes.clients import ServiceError, ServiceTimeout
from nodes.clients.comfyui import ComfyUI
from nodes.clients.ollama import Model, Ollama
from nodes.models import Capability, Node
from spoonfeeder.models import Event

# A health check's question must be answered quickly; a server that takes longer is busy.
CHECK_TIMEOUT = 5.0
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
        version = client.version(timeout=CHECK_TIMEOUT)
        ms = (time.monotonic() - started) * 1000
        loaded = [m["name"] for m in client.ps(timeout=CHECK_TIMEOUT)]
        models = previous.get("models", []) if not full else [describe_model(m) for m in client.tags()]
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
    client = ComfyUI(url)
    started = time.monotonic()
    stats = client.system_stats(timeout=CHECK_TIMEOUT)
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
        inventory["classes"] = sorted(client.object_info())
        folders = set(client.model_folders())
        inventory["files"] = {f: client.models(f) for f in MODEL_FOLDERS if f in folders}
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
    """Check the given capabilities concurrently and store the outcomes. Returns those whose
    status changed."""
    if not caps:
        return []
    # Slow I/O first, outside any transaction.
    with ThreadPoolExecutor(max_workers=min(32, len(caps))) as pool:
        outcomes = list(pool.map(lambda c: probe(c, full or needs_inventory(c)), caps))
    changed = []
    with transaction.atomic():
        # Count from the rows as they are now, locked: another check of the same capability (the
        # schedule and "check now") may have stored its outcome while we were asking.
        rows = Capability.objects.select_for_update().filter(pk__in=[c.pk for c in caps]).order_by("pk")
        fresh = {row.pk: row for row in rows.only("status", "failures", "latency")}
        for cap, outcome in zip(caps, outcomes, strict=True):
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
        # One event per page for the whole check: the pages re-render from the rows anyway.
        Event.objects.bulk_create([Event(topic=topic, kind="nodes.checked") for topic in ("nodes", "dashboard")])
    return changed


def check_all(*, full: bool = False) -> list[Capability]:
    caps = list(Capability.objects.filter(node__enabled=True).select_related("node"))
    return check(caps, full=full)


def check_node(node: Node, *, full: bool = True) -> list[Capability]:
    return check(list(node.capabilities.select_related("node")), full=full)
