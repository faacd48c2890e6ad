"""Resilience as engine wrappers and serving steps, each small and tested alone.

Engine wrappers (each an :class:`~workers.engines.base.Engine` around another), composed per
tier by :func:`wrap_engine`, innermost first::

    Timeout(engine)                  no call outlives deadline + grace          fallback.py
    CutAtDeadline(...)               Silver: give up waiting at the deadline    fallback.py
    BreakerGuard(..., tier, engine)  refuse while a breaker is open; count      breaker.py
    Substitute(..., BreakerGuard(Timeout(silver engine)))
                                     Gold: refresh with Silver's engine         fallback.py

Serving steps: :class:`~workers.resilience.fallback.FallbackStep` (re-publish to the next
tier), :class:`~workers.resilience.admission.LoadShedder` (degrade before queueing into a miss).
The worker loop's engine slots are a :class:`~workers.resilience.admission.FairShare`. The
breakers themselves live below the router and the workers (:mod:`pipeline.breakers`); the router
reads them and diverts in :mod:`pipeline.router.breakers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.breakers.board import BreakerBoard
from pipeline.config import Settings
from topics.catalogue import Tier
from topics.policy import FORWARD, SUBSTITUTE, RoutingPolicy
from workers.engines.base import Engine
from workers.resilience.breaker import BreakerGuard
from workers.resilience.exceptions import BreakerOpen, DeadlineReached, EngineTimeout
from workers.resilience.fallback import DEFAULT_CAP_S, DEFAULT_GRACE_S, CutAtDeadline, Substitute, Timeout

__all__ = [
    "BreakerOpen",
    "DeadlineReached",
    "EngineTimeout",
    "TierResilience",
    "Timeout",
    "wrap_engine",
]


@dataclass
class TierResilience:
    """What a tier's engine is wrapped with beyond the timeout."""

    tier: Tier
    board: BreakerBoard
    policy: RoutingPolicy
    fallback: bool = True
    #: The next tier's engine, for a tier that substitutes (Gold's refresh → Silver's engine).
    substitute: Engine | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, tier: Tier, policy: RoutingPolicy, substitute: Engine | None = None
    ) -> TierResilience:
        """Breakers shared through ``NPCFLOW_REDIS_URL`` (this process's own without one)."""
        board = BreakerBoard.from_settings(settings.redis_url, settings.topic_prefix, settings.resilience)
        return cls(tier, board, policy, settings.resilience.fallback, substitute)

    def latency_budget_ms(self, tier: Tier) -> float | None:
        """The budget the latency trigger compares p95 with; Gold's engine only refreshes: none."""
        return None if tier is Tier.GOLD else float(self.policy.tiers[tier].default_budget_ms)

    def guard(self, engine: Engine, tier: Tier, endpoint: str) -> BreakerGuard:
        budget = self.latency_budget_ms(tier)
        breakers = [self.board.tier(tier.value, budget), self.board.engine(endpoint)]
        # A deadline cut is evidence of a stall only if the call had half the tier's budget.
        return BreakerGuard(engine, breakers, tier=tier.value, stall_evidence_ms=(budget or 0) / 2)


def wrap_engine(
    engine: Engine,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    cap_s: float = DEFAULT_CAP_S,
    resilience: TierResilience | None = None,
) -> Engine:
    """The wrappers a tier worker puts around its engine (see the module docstring)."""
    wrapped: Engine = Timeout(engine, grace_s=grace_s, cap_s=cap_s)
    r = resilience
    if r is None:
        return wrapped
    if r.fallback and r.tier in FORWARD:
        wrapped = CutAtDeadline(wrapped)
    wrapped = r.guard(wrapped, r.tier, engine.name)
    if r.fallback and r.substitute is not None and r.tier in SUBSTITUTE:
        to = SUBSTITUTE[r.tier]
        other = r.guard(Timeout(r.substitute, grace_s=grace_s, cap_s=cap_s), to, r.substitute.name)
        wrapped = Substitute(wrapped, other, from_tier=r.tier, to_tier=to)
    return wrapped
