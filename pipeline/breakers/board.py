"""Circuit breakers per tier and per engine endpoint as one process uses them.

The state and its rules (closed / open / half-open, the pure :func:`transition`, the memory and
Redis stores) are in :mod:`pipeline.breakers.state`; this module is the process side:

- :class:`Breaker`: one named breaker, a cached snapshot in front of the shared store, plus the
  latency trigger (:class:`LatencyWindow`: windowed p95 of successful calls over ``budget * factor``).
- :class:`BreakerBoard`: every breaker of one process over one store.

Its users: the tier workers' engine wrapper (:class:`workers.resilience.breaker.BreakerGuard`,
which refuses while a breaker is open and reports outcomes), the router's background view
(:class:`pipeline.router.breakers.BreakerReader`) and ``npcflow validate``.

A process keeps each breaker's last state for ``cache_s``: a closed breaker costs no Redis round
trip per request; failures, transitions and probes do.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.breakers.state import (
    BreakerPolicy,
    BreakerStore,
    MemoryStore,
    Op,
    RedisStore,
    Snapshot,
    State,
)
from pipeline.config import ResilienceSettings
from pipeline.lifecycle import Lifecycle
from pipeline.observability import metrics

log = logging.getLogger("npcflow.breaker")

#: Gauge values of ``npcflow_breaker_state``.
STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


@dataclass
class LatencyWindow:
    """Successful-call latencies of the last ``window_s`` seconds (at most ``cap`` samples)."""

    window_s: float = 10.0
    min_samples: int = 20
    cap: int = 2000
    #: The p95 is judged at most this often: sorting the window on every call cost the Gold worker
    #: ≈ 0.3 ms of CPU per request at 500 req/s, and a trigger a quarter second late changes nothing.
    check_every_s: float = 0.25
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    _checked_at: float = float("-inf")

    def add(self, latency_ms: float, at_s: float) -> None:
        self.samples.append((at_s, latency_ms))
        while self.samples and (len(self.samples) > self.cap or self.samples[0][0] < at_s - self.window_s):
            self.samples.popleft()

    def due(self, at_s: float) -> bool:
        """Whether the p95 should be judged now (and note that it is): enough samples, not judged lately."""
        if len(self.samples) < self.min_samples or at_s - self._checked_at < self.check_every_s:
            return False
        self._checked_at = at_s
        return True

    def p95(self) -> float | None:
        if len(self.samples) < self.min_samples:
            return None
        values = sorted(v for _, v in self.samples)
        return values[min(len(values) - 1, int(0.95 * len(values)))]

    def clear(self) -> None:
        self.samples.clear()


class Breaker:
    """One named breaker as one process uses it: a cached snapshot in front of the shared store."""

    def __init__(
        self,
        name: str,
        store: BreakerStore,
        policy: BreakerPolicy,
        *,
        cache_s: float = 0.25,
        latency: LatencyWindow | None = None,
        latency_limit_ms: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.store = store
        self.policy = policy
        self.cache_s = cache_s
        self.latency = latency
        self.latency_limit_ms = latency_limit_ms
        self._clock = clock
        self._snapshot = Snapshot()
        self._read_at = float("-inf")
        #: States this process saw, in order (tests and the chaos benchmark read it).
        self.history: list[State] = [State.CLOSED]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _seen(self, snapshot: Snapshot) -> None:
        if snapshot.state is not self._snapshot.state:
            log.warning(
                "breaker %s: %s → %s %s", self.name, self._snapshot.state, snapshot.state, snapshot.reason
            )
            metrics.BREAKER_TRANSITIONS.labels(self.name, snapshot.state.value).inc()
            self.history.append(snapshot.state)
            if snapshot.state is not State.CLOSED and self.latency is not None:
                self.latency.clear()
        metrics.BREAKER_STATE.labels(self.name).set(STATE_VALUE[snapshot.state])
        self._snapshot = snapshot
        self._read_at = self._clock()

    async def _apply(self, op: Op, reason: str = "") -> bool:
        try:
            snapshot, allowed = await self.store.apply(self.name, op, self._now_ms(), self.policy, reason)
        except Exception as exc:  # Redis away: decide on what we last knew rather than stop serving
            log.warning("breaker %s: store unavailable (%s); using the cached state", self.name, exc)
            self._read_at = self._clock()
            return self._snapshot.allows_without_asking(self._now_ms()) is not False
        self._seen(snapshot)
        return allowed

    async def refresh(self) -> Snapshot:
        """Read the shared state if the cached copy is older than ``cache_s``."""
        if self._clock() - self._read_at >= self.cache_s:
            await self._apply(Op.READ)
        return self._snapshot

    async def allow(self) -> bool:
        """May a call go ahead now? Closed: yes, from the cache; open: no; otherwise ask the store."""
        snapshot = await self.refresh()
        decided = snapshot.allows_without_asking(self._now_ms())
        if decided is not None:
            return decided
        return await self._apply(Op.ACQUIRE)

    async def success(self, latency_ms: float) -> None:
        if self._snapshot.state is not State.CLOSED or self._snapshot.failures:
            await self._apply(Op.SUCCESS)
        if self.latency is None or self.latency_limit_ms is None:
            return
        now = self._clock()
        self.latency.add(latency_ms, now)
        if not self.latency.due(now):
            return
        p95 = self.latency.p95()
        if p95 is not None and p95 > self.latency_limit_ms:
            await self._apply(Op.TRIP, f"p95 latency {p95:.0f} ms over {self.latency_limit_ms:.0f} ms")

    async def failure(self, reason: str) -> None:
        await self._apply(Op.FAILURE, reason)

    def is_open(self) -> bool:
        """From the cache only: open and not yet due to half-open (the router's question)."""
        return self._snapshot.allows_without_asking(self._now_ms()) is False


class BreakerBoard(Lifecycle):
    """Every breaker of one process, over one store; ``tier(t)`` and ``engine(name)`` name them."""

    def __init__(
        self,
        store: BreakerStore,
        settings: ResilienceSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or ResilienceSettings()
        self.policy = BreakerPolicy.from_settings(self.settings)
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    @classmethod
    def from_settings(cls, redis_url: str | None, prefix: str, settings: ResilienceSettings) -> BreakerBoard:
        """Shared through Redis when one is configured; otherwise this process's own."""
        store: BreakerStore = (
            RedisStore(redis_url, f"npcflow:breaker:{prefix}") if redis_url else MemoryStore()
        )
        return cls(store, settings)

    async def _start(self) -> None:
        return None

    async def _stop(self) -> None:
        await self.store.close()

    def get(self, name: str, budget_ms: float | None = None) -> Breaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            s = self.settings
            latency = None
            limit = None
            if budget_ms and s.breaker_latency_factor > 0:
                latency = LatencyWindow(s.breaker_latency_window_s, s.breaker_latency_min_samples)
                limit = budget_ms * s.breaker_latency_factor
            breaker = Breaker(
                name,
                self.store,
                self.policy,
                cache_s=s.breaker_cache_s,
                latency=latency,
                latency_limit_ms=limit,
                clock=self._clock,
            )
            self._breakers[name] = breaker
        elif budget_ms and breaker.latency is None and self.settings.breaker_latency_factor > 0:
            breaker.latency = LatencyWindow(
                self.settings.breaker_latency_window_s, self.settings.breaker_latency_min_samples
            )
            breaker.latency_limit_ms = budget_ms * self.settings.breaker_latency_factor
        return breaker

    def tier(self, tier: str, budget_ms: float | None = None) -> Breaker:
        return self.get(f"tier:{tier}", budget_ms)

    def engine(self, name: str) -> Breaker:
        return self.get(f"engine:{name}")
