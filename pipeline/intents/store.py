"""The intent store: each NPC's current intent in Redis, for readers that ask Redis instead of a topic.

Written by Gold's intent writer (:mod:`workers.intents.writer`) beside the compacted
``npc.intents`` topic that near caches follow (docs/architecture.md, "Gold's two paths"). It
needs nothing above ``topics``, so it sits in the shared half of the intents capability.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from pipeline.lifecycle import Lifecycle
from topics.schemas import Intent


class IntentStore(Lifecycle):
    """Each NPC's current intent in Redis at ``<prefix>npcflow:intent:<npc_id>``, expiring after the TTL."""

    def __init__(self, url: str, *, prefix: str = "", ttl_ms: int = 1000) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self._redis: aioredis.Redis | None = None

    def key(self, npc_id: str) -> str:
        return f"{self.prefix}npcflow:intent:{npc_id}"

    async def _start(self) -> None:
        self._redis = aioredis.from_url(self.url)

    async def _stop(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def put(self, intent: Intent) -> None:
        """Store the intent for the rest of its TTL (counted from when it was generated)."""
        assert self._redis is not None, "start() first"
        left_ms = intent.generated_at_ms + self.ttl_ms - int(time.time() * 1000)
        if left_ms <= 0:
            return  # already expired: readers would fall back to the default anyway
        await self._redis.set(self.key(intent.npc_id), intent.to_bytes(), px=left_ms)

    async def get(self, npc_id: str) -> Intent | None:
        assert self._redis is not None, "start() first"
        raw = await self._redis.get(self.key(npc_id))
        return Intent.from_bytes(raw) if raw else None
