"""Worker tasks for the node pool. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from nodes import discovery, health, render
from nodes.clients import ServiceError
from nodes.models import Discovery, Node, TestRender
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


def test_render(code: str) -> str:
    """Render a model-free workflow on the node's ComfyUI and keep the image."""
    run = TestRender.objects.select_related("node").filter(code=code).first()
    if run is None or not TestRender.objects.filter(pk=run.pk, status=TestRender.QUEUED).update(
        status=TestRender.RUNNING
    ):
        return "not queued any more"
    run.status = TestRender.RUNNING
    with transaction.atomic():
        run.node.changed("node.test_render")
    cap = run.node.comfyui
    if cap is None:
        run.finish(error="This node has no ComfyUI.")
        return "no ComfyUI"
    with cap.room() as free:
        held = free and TestRender.objects.filter(pk=run.pk, status=TestRender.RUNNING).update(capability=cap)
    if not held:
        run.finish(error=f"{run.node.name}'s ComfyUI is busy ({cap.limit} job(s) running); try again later.")
        return "busy"
    try:
        image = render.test_image(cap.url, run.prompt_id, str(run.code))
    except ServiceError as e:
        run.finish(error=str(e))
        return f"failed: {e}"
    run.finish(image=image)  # and the capacity it held goes back
    return f"rendered {image}"
