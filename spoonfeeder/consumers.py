from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from spoonfeeder import live, relay

# Close codes in the 4000s: htmx's ws extension does not reconnect on them, which is what we
# want for a socket that will never be allowed (a refusal before accept() would look like 1006,
# and the browser would retry forever).
NOT_LOGGED_IN = 4401
UNKNOWN_TOPIC = 4404


class LiveConsumer(AsyncWebsocketConsumer):
    """Forwards the HTML fragments of the topics a page shows. Nothing else happens here."""

    topics: list[str]

    async def connect(self) -> None:
        self.topics = []
        await self.accept()
        if not self.scope["user"].is_authenticated:
            await self.close(code=NOT_LOGGED_IN)
            return
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

    async def disconnect(self, code: int) -> None:
        for topic in self.topics:
            await self.channel_layer.group_discard(topic, self.channel_name)

    async def live_fragment(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["html"])
