"""The test render: a model-free workflow, rendered on a node to show it works end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

from django.conf import settings

from nodes.clients import ServiceError
from nodes.clients.comfyui import ComfyUI, failure, outputs_of

WORKFLOW = Path(__file__).resolve().parent / "workflows" / "still_image.json"
TIMEOUT = 120.0


def test_image(url: str, prompt_id: str, name: str) -> str:
    """Render, copy the image into our media folder under a name of ours; returns its path
    relative to MEDIA_ROOT."""
    workflow = json.loads(WORKFLOW.read_text())
    # A fresh colour each time, so ComfyUI renders rather than answering from its cache.
    workflow["1"]["inputs"]["color"] = random.randrange(0x1000000)
    workflow["2"]["inputs"]["filename_prefix"] = "spoonfeeder/test"
    client = ComfyUI(url)
    client_id = f"spoonfeeder-{name}"
    # Listen before submitting: ComfyUI replays nothing a late listener missed.
    with client.events(client_id) as events:
        client.submit(workflow, prompt_id=prompt_id, client_id=client_id)
        entry = client.wait(prompt_id, client_id, timeout=TIMEOUT, events=events)
    failed = failure(entry)
    if failed:
        what = failed.get("exception_type") or failed["type"]
        detail = str(failed.get("exception_message", "")).strip()
        where = failed.get("node_id", "?")
        raise ServiceError(f"the test render failed on node {where}: {what}: {detail}".rstrip(": "))
    images = outputs_of(entry)
    if not images:
        raise ServiceError("the test render finished without an image", permanent=True)
    first = images[0]
    relative = Path("test-renders") / f"{name}.png"
    dest = Path(settings.MEDIA_ROOT) / relative
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The node's file name is only ever a query parameter; the local name is ours.
    client.download(first["filename"], first.get("subfolder", ""), first.get("type", "output"), dest)
    return str(relative)
