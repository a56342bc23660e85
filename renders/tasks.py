"""Worker tasks of the render queue. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

from renders import dispatch


def feed() -> str:
    """Claim a runnable job for a ComfyUI with room and follow it here (it reaches its node
    without waiting for a task to be picked up); once it is sent, claim jobs for every other
    unit with room and queue their attempts."""
    first = dispatch.first_attempt()
    if first is None:
        return f"claimed {dispatch.feed()} job(s)"
    return dispatch.follow_on(first)


def attempt(job_pk: int, prompt_id: str) -> str:
    """Send one job to the node it was claimed for and follow it to its end."""
    return dispatch.attempt(job_pk, prompt_id)


def take_back(batch_pk: int) -> str:
    """A batch was paused: its items waiting in nodes' queues come off them now."""
    return f"asked {dispatch.take_back(batch_pk)} item(s) off their nodes"
