"""The intent store and the serving step that keeps it current (docs/architecture.md, "Gold's two paths").

Every Gold model result, on time or late, becomes the NPC's intent: written to Redis with a TTL
(:class:`IntentStore`, for readers that ask Redis) and published on the compacted ``npc.intents``
topic (for near caches: routers and game servers). :class:`IntentRefresh` builds the intent from
an engine result and writes Redis; the worker loop produces the :class:`IntentUpdate` record. A
refresh (a Gold request the router already answered) is served by its own serving step
(:mod:`workers.cache.refresh_serving`) and ends in a :class:`Refreshed` outcome: an intent to
publish, or none, never a reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from pipeline.config import Settings
from pipeline.intents import intent_text
from pipeline.lifecycle import Lifecycle
from topics.catalogue import INTENTS
from topics.schemas import Intent, Request
from workers.engines.base import EngineResult
from workers.outbound import Outbound

log = logging.getLogger("npcflow.intents")


@dataclass(frozen=True)
class IntentUpdate:
    """One record for ``npc.intents`` (key = npc_id)."""

    intent: Intent
    topic: str

    @property
    def key(self) -> bytes:
        return self.intent.npc_id.encode()

    @property
    def value(self) -> bytes:
        return self.intent.to_bytes()

    def outbound(self) -> Outbound:
        return Outbound(self.topic, self.key, self.value)


@dataclass(frozen=True)
class Refreshed:
    """A refresh served: the intent to publish, or None (engine error, expired) with the reason."""

    request: Request
    update: IntentUpdate | None
    reason: str = "written"

    def records(self) -> list[Outbound]:
        """The router answered already: only the intent goes out, batched with the outputs."""
        return [self.update.outbound()] if self.update is not None else []


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


class IntentRefresh(Lifecycle):
    """Gold's intent writer: engine result → intent → Redis, and the record for ``npc.intents``."""

    def __init__(self, store: IntentStore | None, *, prefix: str = "") -> None:
        self.store = store
        self.topic = INTENTS.name(prefix)
        #: Redis writes of replies' intents, still running (finished before the store closes).
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> IntentRefresh:
        """Redis when ``NPCFLOW_REDIS_URL`` is set; the topic alone otherwise."""
        store = None
        if settings.redis_url:
            store = IntentStore(
                settings.redis_url, prefix=settings.topic_prefix, ttl_ms=settings.intents.ttl_ms
            )
        else:
            log.warning("NPCFLOW_REDIS_URL is not set: intents go to npc.intents only, not to Redis")
        return cls(store, prefix=settings.topic_prefix)

    async def _start(self) -> None:
        if self.store is not None:
            await self.store.start()

    async def _stop(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self.store is not None:
            await self.store.stop()

    def update(self, request: Request, result: EngineResult, engine: str) -> IntentUpdate | None:
        """The NPC's new intent from a model result, written to Redis in the background.

        Redis is written off the reply's path: the topic record (produced by the loop with the
        reply) is what near caches follow, Redis a convenience for readers that ask it, so its
        failure is logged and nothing else.
        """
        update = self._build(request, result, engine)
        if update is not None and self.store is not None:
            task = asyncio.create_task(self._store(update.intent))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return update

    async def record(self, request: Request, result: EngineResult, engine: str) -> IntentUpdate | None:
        """The NPC's new intent from a model result, in Redis once this returns (a refresh's path)."""
        update = self._build(request, result, engine)
        if update is not None and self.store is not None:
            await self._store(update.intent)
        return update

    def _build(self, request: Request, result: EngineResult, engine: str) -> IntentUpdate | None:
        text = intent_text(result.text)
        if not text:
            return None
        intent = Intent(
            npc_id=request.npc_id,
            intent=text,
            generated_at_ms=int(time.time() * 1000),
            request_id=request.request_id,
            engine=engine[:128],
        )
        return IntentUpdate(intent, self.topic)

    async def _store(self, intent: Intent) -> None:
        assert self.store is not None
        try:
            await self.store.put(intent)
        except Exception as exc:
            log.warning("intent for %s not stored in Redis: %s", intent.npc_id, exc)
