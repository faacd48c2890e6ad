"""Silver as an MCP client, and the steps that shape an answer before the engine is called.

:func:`wrap_answer_steps` puts them around a tier's (already resilience-wrapped) engine,
outermost first::

    ResultCacheStep   Silver, Gold   a repeated prompt answered from Redis     workers/cache/result_step.py
    ToolContext       tiers with tools (policy)  MCP calls → prompt context    workers/tools/context.py
    <wrap_engine(...)>                timeout, deadline cut, breakers, substitute

The cache comes first so a hit costs no tool call; tools come before the breaker guard so a slow
tool is never counted against the engine.
"""

from __future__ import annotations

from pipeline.config import Settings
from topics.catalogue import Tier
from topics.policy import RoutingPolicy
from workers.cache.result_step import ResultCacheStep
from workers.cache.results import ResultCache
from workers.engines.base import Engine
from workers.tools.client import McpToolClient, target_of
from workers.tools.context import ToolContext

__all__ = ["McpToolClient", "ToolContext", "wrap_answer_steps"]


def wrap_answer_steps(engine: Engine, settings: Settings, tier: Tier, policy: RoutingPolicy) -> Engine:
    """``engine`` with the tool step (if the tier offers tools and an MCP server is configured) and
    the result-cache step (if the tier is in ``NPCFLOW_RESULT_CACHE`` and Redis is configured)."""
    wrapped = engine
    target = target_of(settings.tools)
    if target is not None and policy.tiers[tier].tools:
        wrapped = ToolContext(wrapped, McpToolClient(target), settings.tools)
    if settings.redis_url and tier.value in settings.result_cache.tiers:
        cache = ResultCache(settings.redis_url, prefix=settings.topic_prefix)
        wrapped = ResultCacheStep(wrapped, cache, tier.value, any_tier=tier is not Tier.GOLD)
    return wrapped
