"""What the pages show of the pool: every node with its capabilities and their load."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch

from nodes.models import Capability, Discovery, Node, worker_shortfall

# A node's test render is a render job pinned to it with this target (renders.RenderJob).
TEST_TARGET = "test"


def nodes() -> list[Node]:
    """Every node with its capabilities and their load, and its latest test render
    (`node.test_jobs`), in a constant number of queries."""
    caps = Capability.objects.with_load().order_by("kind")
    jobs: Any = Node._meta.get_field("pinned_jobs").related_model
    tests = jobs.objects.filter(target=TEST_TARGET).order_by("-created")
    return list(
        Node.objects.prefetch_related(
            Prefetch("capabilities", queryset=caps), Prefetch("pinned_jobs", queryset=tests, to_attr="test_jobs")
        )
    )


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
    return {
        "nodes": all_nodes,
        "pool": summary(all_nodes),
        "discoveries": list(Discovery.objects.all()[:5]),
        "shortfall": worker_shortfall(),
    }
