"""The relay: runs inside each web process, moves event rows to the pages that watch them.

Any process (web or worker) that changes state writes an Event row in the same transaction.
The relay claims new rows, coalesces them by topic, renders each topic's fragments once from the
database as it is now, and sends the HTML to the topic's Channels group. Sending state rather
than deltas means a dropped or repeated message never leaves a page wrong, and a page that
(re)connects is brought up to date by a snapshot (see consumers.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections

from spoonfeeder import live
from spoonfeeder.models import Event

log = logging.getLogger(__name__)

_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
# The relay's database work runs in a thread of its own that keeps its connection, rather than
# through database_sync_to_async, which would open a new connection for every poll (a new
# server process each time, on PostgreSQL).
_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay")


def ensure_running() -> None:
    """Start this process's relay on the running event loop, once."""
    loop = asyncio.get_running_loop()
    task = _tasks.get(loop)
    if task is None or task.done():
        _tasks[loop] = loop.create_task(run(), name="spoonfeeder-relay")


async def stop() -> None:
    loop = asyncio.get_running_loop()
    task = _tasks.pop(loop, None)
    if task:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await loop.run_in_executor(_thread, connections.close_all)


def claim_and_render(ticking: frozenset[str], last: dict[str, str]) -> dict[str, str]:
    """One pass: the HTML to send, by topic. Runs in the relay's thread."""
    try:
        changed = {e.topic for e in Event.objects.claim()}
        topics = {t for t in changed | {f for c in changed for f in live.DRAWN_WITH.get(c, ())} if live.known(t)}
        out = {}
        for topic in topics | ticking:
            html = live.render(topic)
            if topic in topics or last.get(topic) != html:
                out[topic] = last[topic] = html
        return out
    except Exception:
        connections.close_all()  # the next pass starts on a fresh connection
        raise


async def run() -> None:
    layer = get_channel_layer()
    last: dict[str, str] = {}
    next_tick = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            now = time.monotonic()
            ticking: frozenset[str] = frozenset()
            if now >= next_tick:
                ticking, next_tick = live.TICKING, now + settings.RELAY_TICK
            sends = await loop.run_in_executor(_thread, claim_and_render, ticking, last)
            for topic, html in sends.items():
                await layer.group_send(topic, {"type": "live.fragment", "html": html})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay pass failed; trying again")
            await asyncio.sleep(1)
            continue
        await asyncio.sleep(settings.RELAY_POLL)
