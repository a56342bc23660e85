from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from spoonfeeder import live, relay, security

# Close codes in the 4000s: htmx's ws extension does not reconnect on them, which is what we
# want for a socket that will never be allowed (a refusal before accept() would look like 1006,
# and the browser would retry forever).
NOT_LOGGED_IN = 4401
UNKNOWN_TOPIC = 4404


class LiveConsumer(AsyncWebsocketConsumer):
    """Forwards the HTML fragments of the topics a page shows. Nothing else happens here."""

    topics: list[str]
    watch: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.topics = []
        await self.accept()
        user, session = self.scope["user"], self.scope["session"]
        if not user.is_authenticated:
            await self.close(code=NOT_LOGGED_IN)
            return
        # Logging out closes the session's sockets at once; an expired session, a deactivated
        # user or a changed password within SOCKET_RECHECK seconds.
        self.session_group = security.session_group(session.session_key)
        await self.channel_layer.group_add(self.session_group, self.channel_name)
        self.watch = asyncio.create_task(self.recheck(session.session_key, user.pk))
        query = parse_qs(self.scope["query_string"].decode())
        topics = [t for part in query.get("topics", []) for t in part.split(",") if t]
        if any(not live.known(t) for t in topics):
            await self.close(code=UNKNOWN_TOPIC)
            return
        self.topics = topics
        # Join before the snapshot, so nothing that happens in between is missed.
        for topic in topics:
            await self.channel_layer.group_add(topic, self.channel_name)
        relay.ensure_running()
        for topic in topics:
            await self.send(text_data=await database_sync_to_async(live.render)(topic))

    async def recheck(self, session_key: str, user_pk: Any) -> None:
        while True:
            await asyncio.sleep(settings.SOCKET_RECHECK)
            if not await database_sync_to_async(security.still_logged_in)(session_key, user_pk):
                await self.close(code=NOT_LOGGED_IN)
                return

    async def disconnect(self, code: int) -> None:
        if self.watch:
            self.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch
            await self.channel_layer.group_discard(self.session_group, self.channel_name)
        for topic in self.topics:
            await self.channel_layer.group_discard(topic, self.channel_name)

    async def live_logout(self, event: dict[str, Any]) -> None:
        await self.close(code=NOT_LOGGED_IN)

    async def live_fragment(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["html"])
