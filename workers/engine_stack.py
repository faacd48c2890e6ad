"""A tier's engine as its worker calls it: the engine inside every wrapper the tier puts around it.

Innermost first: Gold's micro-batcher (refreshes of many NPCs as one batch, where the engine runs
batches), the timeout and resilience wrappers (:func:`workers.resilience.wrap_engine`), then the
answer steps that may answer without the engine (result cache, MCP tools: :mod:`workers.tools`).
"""

from __future__ import annotations

from topics.catalogue import Tier
from topics.policy import RoutingPolicy
from workers.engines.base import Engine
from workers.engines.batching import MicroBatcher
from workers.resilience import TierResilience, wrap_engine
from workers.tools import wrap_answer_steps
from workers.worker_config import WorkerConfig


def tier_engine(
    engine: Engine, config: WorkerConfig, policy: RoutingPolicy, resilience: TierResilience
) -> Engine:
    """``engine`` wrapped for ``config.tier`` (see the module docstring)."""
    batching = config.settings.worker
    if config.tier is Tier.GOLD and batching.gold_batch_window_ms > 0:
        engine = MicroBatcher(
            engine, window_ms=batching.gold_batch_window_ms, max_batch=batching.gold_max_batch
        )
    grace_s, cap_s = config.engine_grace_s, config.engine_timeout_cap_s
    inner = wrap_engine(engine, grace_s=grace_s, cap_s=cap_s, resilience=resilience)
    return wrap_answer_steps(inner, config.settings, config.tier, policy)
