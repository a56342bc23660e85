"""Worker tasks of the render queue. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

from renders import dispatch
from renders.models import RenderJob


def feed() -> str:
    """Claim runnable jobs for the ComfyUI nodes with room, queue their attempts, and follow the
    first one here (it reaches its node without waiting for a task to be picked up)."""
    kept: list[RenderJob] = []
    claimed = dispatch.feed(kept)
    if not kept:
        return f"claimed {claimed} job(s)"
    return f"claimed {claimed} job(s); {dispatch.attempt(kept[0].pk, kept[0].prompt_id)}"


def attempt(job_pk: int, prompt_id: str) -> str:
    """Send one job to the node it was claimed for and follow it to its end."""
    return dispatch.attempt(job_pk, prompt_id)
