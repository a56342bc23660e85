"""What the pages show of the pool: every node with its capabilities and their load."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch

from nodes.models import Capability, Discovery, Node


def nodes() -> list[Node]:
    caps = Capability.objects.with_load().order_by("kind")
    return list(Node.objects.prefetch_related(Prefetch("capabilities", queryset=caps), "test_renders"))


def summary(all_nodes: list[Node]) -> dict[str, int]:
    caps = [c for n in all_nodes if n.enabled for c in n.capabilities.all()]
    return {
        "nodes": len(all_nodes),
        "answering": sum(c.status in Capability.ANSWERING for c in caps),
        "offline": sum(c.status == Capability.OFFLINE for c in caps),
        "busy": sum(c.display_status == "busy" for c in caps),
        "simulated": sum(n.simulated for n in all_nodes),
    }


def context() -> dict[str, Any]:
    all_nodes = nodes()
    return {"nodes": all_nodes, "pool": summary(all_nodes), "discoveries": list(Discovery.objects.all()[:5])}
