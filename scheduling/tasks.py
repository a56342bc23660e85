"""Worker tasks of the scheduler. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

from scheduling import fire


def tick() -> str:
    """Scheduled every minute (a django-q2 cron schedule): fire what is due, follow what runs."""
    return fire.tick()


def run(pk: int) -> str:
    """One scheduled run (idempotent: a run already taken or ended is left alone)."""
    return fire.execute(pk)
