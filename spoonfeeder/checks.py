"""System checks that stop Spoon Feeder from starting with a dangerous configuration."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register("spoonfeeder")
def check_task_retry(**kwargs: Any) -> list[Error]:
    from django_q.conf import Conf

    from spoonfeeder import work

    workers = max(int(Conf.WORKERS or 1), 1)
    if Conf.TIMEOUT is None or Conf.QUEUE_LIMIT in (None, 0):
        return [
            Error(
                "The worker cluster has no task timeout or an unbounded prefetch queue.",
                hint="Set SPOONFEEDER_TASK_TIMEOUT and leave queue_limit at its default.",
                id="spoonfeeder.E001",
            )
        ]
    # A task that carries its own deadline (enqueue's timeout, one second behind the task's).
    timeout = max([int(Conf.TIMEOUT), *(math.ceil(d) + 1 for d in work.DEADLINES.values())])
    bound = (1 + math.ceil((Conf.QUEUE_LIMIT + 1) / workers)) * timeout
    if Conf.RETRY is not None and bound >= Conf.RETRY:
        longest = max(work.DEADLINES, key=work.DEADLINES.__getitem__, default="")
        which = f"{longest}'s deadline" if longest and timeout > Conf.TIMEOUT else "timeout"
        return [
            Error(
                f"Task retry ({Conf.RETRY} s) is not larger than the longest a task can wait and run "
                f"({bound} s with the {which} {timeout} s, {workers} workers, queue limit {Conf.QUEUE_LIMIT}): "
                "the broker would hand out a task again while it still runs (harmless to renders and "
                "steps, whose rows decide, but every other task would run twice).",
                hint=f"Unset SPOONFEEDER_TASK_RETRY or set it above {bound}.",
                id="spoonfeeder.E002",
            )
        ]
    return []


@register("spoonfeeder")
def check_redis(**kwargs: Any) -> list[Error]:
    if not settings.REDIS_URL:
        return []
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as e:
        return [
            Error(
                f"REDIS_URL does not answer: {e}",
                hint="Start Redis or correct REDIS_URL; unset it to run without Redis.",
                id="spoonfeeder.E003",
            )
        ]
    return []


@register("spoonfeeder")
def check_heartbeats(**kwargs: Any) -> list[Error]:
    if settings.STALE >= 3 * settings.BEAT:
        return []
    return [
        Error(
            f"SPOONFEEDER_STALE ({settings.STALE:g} s) is not at least three heartbeats "
            f"(SPOONFEEDER_BEAT {settings.BEAT:g} s): live work would be taken for orphaned and run again.",
            hint=f"Set SPOONFEEDER_STALE to {3 * settings.BEAT:g} or more, or SPOONFEEDER_BEAT lower.",
            id="spoonfeeder.E004",
        )
    ]
