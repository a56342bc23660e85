"""Worker tasks for the node pool. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from nodes import discovery, health
from nodes.models import Discovery, Node
from spoonfeeder.models import Event


def check_nodes(full: bool = False) -> str:
    """Scheduled every minute: refresh every enabled node's status (and stale inventories)."""
    changed = health.check_all(full=full)
    return f"{len(changed)} status change(s)"


def check_node(code: str) -> str:
    node = Node.objects.filter(code=code).first()
    if node is None:
        return "node is gone"
    changed = health.check_node(node, full=True)
    return f"checked {node.name}: {len(changed)} status change(s)"


def run_discovery(code: str) -> str:
    run = Discovery.objects.filter(code=code, finished=None).first()
    if run is None:
        return "discovery already finished"
    try:
        run = discovery.discover(run.targets, run=run)
    except Exception as e:
        with transaction.atomic():
            Discovery.objects.filter(pk=run.pk).update(finished=timezone.now(), error=str(e)[:1000])
            Event.emit("nodes", "discovery.failed", str(run.code))
        raise
    return f"probed {run.probed} host(s), found {len(run.found)}"
