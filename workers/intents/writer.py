"""Gold's intent writer: a model result becomes the NPC's intent (docs/architecture.md, "Gold's two paths").

Every Gold model result, on time or late, becomes the NPC's intent: written to Redis with a TTL
(:class:`~pipeline.intents.store.IntentStore`, for readers that ask Redis) and published on the
compacted ``npc.intents`` topic (for near caches: routers and game servers). :class:`IntentRefresh`
builds the intent from an engine result (:func:`intent_text`) and writes Redis; the worker loop
produces the :class:`IntentUpdate` record. A refresh (a Gold request the router already answered)
is served by its own serving step (:mod:`workers.intents.refresh_step`) and ends in a
:class:`Refreshed` outcome: an intent to publish, or none, never a reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.intents.store import IntentStore
from pipeline.lifecycle import Lifecycle
from topics.catalogue import INTENTS
from topics.fields import MAX_INTENT_CHARS
from topics.schemas import Intent, Request
from workers.engines.base import EngineResult
from workers.replies import Outbound

log = logging.getLogger("npcflow.intents")


def intent_text(text: str) -> str:
    """An engine's text as an intent: its first non-empty line, cut to the schema's limit."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:MAX_INTENT_CHARS]


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
