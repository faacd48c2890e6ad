"""The router's one call into resilience: read the tier breakers, divert around an open one.

The workers trip the breakers (shared through Redis, :mod:`pipeline.breakers`); the router only
reads them, in the background, and while a tier's breaker is open sends that tier's new traffic
straight to the next tier of the fallback chain (:data:`topics.policy.FORWARD`) with the same
fallback headers a worker would have written (:mod:`topics.headers`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from pipeline.breakers.board import BreakerBoard
from pipeline.config import Settings
from pipeline.lifecycle import Lifecycle
from pipeline.observability import metrics
from topics.headers import Headers, attempt, fallback_headers
from topics.policy import FORWARD, Route, RoutingPolicy

log = logging.getLogger("npcflow.breaker")


class BreakerReader(Lifecycle):
    """The router's view of the tier breakers: refreshed in the background, read without awaiting.

    ``is_open(tier)`` answers from the last refresh (every ``cache_s``), so routing an event never
    waits for Redis; a Silver breaker opened by a worker diverts new Silver traffic within
    ``cache_s``.
    """

    def __init__(self, board: BreakerBoard, tiers: Iterable[str]) -> None:
        self.board = board
        self.breakers = [board.tier(t) for t in tiers]
        self._task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        await self.board.start()
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="npcflow-breaker-reader")

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.board.stop()

    async def refresh(self) -> None:
        await asyncio.gather(*(b.refresh() for b in self.breakers))

    async def _loop(self) -> None:
        interval = max(0.05, self.board.settings.breaker_cache_s)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as exc:  # never let the reader die: routing goes on with the last view
                log.warning("breaker reader: %s", exc)

    def is_open(self, tier: str) -> bool:
        return self.board.tier(tier).is_open()


class TierHealth(Protocol):
    def is_open(self, tier: str) -> bool: ...


class RouterFallback:
    """Divert a route whose tier's breaker is open (and the next tier's is not) to the next tier."""

    def __init__(
        self, health: TierHealth, policy: RoutingPolicy, *, clock: Callable[[], int] | None = None
    ) -> None:
        self.health = health
        self.policy = policy
        self._clock = clock or (lambda: int(time.time() * 1000))

    def detour(self, route: Route) -> tuple[Route, Headers] | None:
        """(the diverted route, its headers), or None to route as the policy said."""
        to = FORWARD.get(route.tier)
        if to is None or not self.health.is_open(route.tier.value) or self.health.is_open(to.value):
            return None
        now = self._clock()
        reason = f"breaker open on {route.tier.value}"
        deadline = self.policy.next_deadline(to, route.deadline_ms, now)
        headers = fallback_headers(
            to,
            deadline,
            attempt=1,
            from_tier=route.tier,
            reason=f"breaker_open: {reason}",
            chain=[attempt(route.tier, "skipped", reason)],
            original_deadline_ms=route.deadline_ms,
        )
        metrics.FALLBACKS.labels(route.tier.value, to.value, "breaker_open").inc()
        diverted = replace(
            route, tier=to, deadline_ms=deadline, reason=f"{route.reason} → {reason}: fallback to {to.value}"
        )
        return diverted, headers


def breaker_detour(settings: Settings, policy: RoutingPolicy) -> tuple[RouterFallback, BreakerReader] | None:
    """The detour over the tier breakers as the workers share them (Redis); None: fallback off.

    The caller starts and stops the reader with the router (it refreshes in the background).
    """
    if not settings.resilience.fallback:
        return None
    board = BreakerBoard.from_settings(settings.redis_url, settings.topic_prefix, settings.resilience)
    tiers = {t.value for pair in FORWARD.items() for t in pair}
    reader = BreakerReader(board, sorted(tiers))
    return RouterFallback(reader, policy), reader
