"""Worker tasks of the render queue. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

from renders import dispatch


def feed() -> str:
    """Claim runnable jobs for the ComfyUI nodes with room, and queue their attempts."""
    return f"queued {dispatch.feed()} attempt(s)"


def attempt(job_pk: int, prompt_id: str) -> str:
    """Send one job to the node it was claimed for and follow it to its end."""
    return dispatch.attempt(job_pk, prompt_id)
