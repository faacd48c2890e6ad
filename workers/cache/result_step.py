"""``ResultCacheStep``: answer a repeated prompt from the Redis result cache instead of the engine.

An engine wrapper for Silver and Gold (``NPCFLOW_RESULT_CACHE``; docs/architecture.md, "Game
state over MCP, tools and the result cache"). Before generating it looks the request's prompt up
(:meth:`~workers.cache.results.ResultCache.get_by_prompt`; Silver takes any tier's answer, so
Bronze's story arcs are reused, Gold only Gold's); a hit returns the earlier answer's text with
``cached`` set, and serving replies ``served_by: result_cache``. A miss generates; the answer
reaches the cache through ``npc.outputs`` and the Redis sink (the one writer of results,
:mod:`workers.cache.results`).

Not reused (the engine is called):

- for a Gold intent refresh (it exists to get a new intent);
- an answer to another tenant (one game's NPC lines are not another game's);
- anything for a request that lists a live tool (``game_state_query``): the same words asked
  against a changed world need a new answer, and an answer that was made with live state is not
  reused for a later request either.

The lookup is bounded (``LOOKUP_TIMEOUT_S``, and at most a tenth of the time left): a slow or
unreachable Redis is a miss, never a missed deadline. Hits and misses, and the engine time the
hits saved, are counted (``npcflow_result_cache_total``, ``npcflow_engine_seconds_saved_total``).
"""

from __future__ import annotations

import asyncio
import time

from pipeline.observability import metrics
from topics.schemas import Reply, Request
from workers.cache.results import ResultCache
from workers.engines.base import PLAIN_CALL, CachedAnswer, CallContext, Engine, EngineResult, EngineWrapper

#: Tools whose answers depend on the live game state: their requests bypass the cache.
LIVE_TOOLS = frozenset({"game_state_query"})
LOOKUP_TIMEOUT_S = 0.05


def reusable(hit: Reply, request: Request) -> bool:
    """Whether an earlier reply may answer ``request``: same tenant, text, made without live state."""
    if hit.tenant_id != request.tenant_id or not hit.text:
        return False
    return not any(call.tool in LIVE_TOOLS for call in hit.tools or ())


class ResultCacheStep(EngineWrapper):
    """Looks the prompt up in the result cache before calling the inner engine."""

    def __init__(self, inner: Engine, cache: ResultCache, tier: str, *, any_tier: bool = True) -> None:
        super().__init__(inner)
        self.cache = cache
        self.tier = tier
        #: Silver reuses any tier's answer; Gold only Gold's (a Bronze story is no 8-token intent).
        self.lookup_tier = None if any_tier else tier
        self.hits = 0
        self.misses = 0

    async def _start(self) -> None:
        await self.cache.start()
        await super()._start()

    async def _stop(self) -> None:
        await super()._stop()
        await self.cache.stop()

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if call.refresh:  # a Gold refresh asks for a new intent, not an old answer
            return await self.inner.generate(request, deadline_ms, call)
        if LIVE_TOOLS.intersection(request.tools):
            metrics.RESULT_CACHE.labels(self.tier, "bypass").inc()
            return await self.inner.generate(request, deadline_ms, call)
        hit = await self._lookup(request, deadline_ms)
        if hit is None or not reusable(hit, request):
            self.misses += 1
            metrics.RESULT_CACHE.labels(self.tier, "miss").inc()
            return await self.inner.generate(request, deadline_ms, call)
        self.hits += 1
        metrics.RESULT_CACHE.labels(self.tier, "hit").inc()
        metrics.ENGINE_SECONDS_SAVED.labels(self.tier).inc(hit.latency.engine_ms / 1000)
        answered_by = hit.served_tier or hit.tier
        return EngineResult(
            text=hit.text,
            prompt_tokens=0,
            completion_tokens=0,
            cached=CachedAnswer(hit.request_id, answered_by.value, hit.engine, hit.latency.engine_ms),
        )

    async def _lookup(self, request: Request, deadline_ms: int) -> Reply | None:
        left_s = (deadline_ms - time.time() * 1000) / 1000
        try:
            limit_s = max(0.001, min(LOOKUP_TIMEOUT_S, left_s / 10))
            return await asyncio.wait_for(self.cache.get_by_prompt(self.lookup_tier, request.prompt), limit_s)
        except TimeoutError:
            return None
