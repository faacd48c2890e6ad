"""Circuit breakers shared by every process: the router reads them, the tier workers trip them.

They live here, below both, so neither imports the other. Users: the tier workers' engine wrapper
(:class:`workers.resilience.breaker.BreakerGuard`, which refuses while a breaker is open and
reports outcomes), the router's background view (:class:`pipeline.router.breakers.BreakerReader`)
and ``npcflow validate``.

**The rules**, all of them (docs/architecture.md, "Resilience"):

- **closed** → **open** after ``failures`` consecutive failed calls (any process's: the count is
  shared), or when the windowed p95 latency of successful calls exceeds ``budget * factor`` (that
  trigger is measured by :class:`Breaker` and applied as ``Op.TRIP``).
- **open** → **half-open** once ``cooldown_s`` has passed since it opened.
- **half-open** admits at most ``probes`` calls; one success closes the breaker, one failure
  opens it again for another cooldown. Probes admitted by a process that died are forgotten after
  a further cooldown, so a crash never leaves a breaker half-open for ever.

:func:`transition` is the whole state machine as a pure function of the stored fields, so the
in-memory store (one process, unit tests) and the Redis store (every router and worker) run the
same code, and the rules test alone.

**One process's side**:

- :class:`Breaker`: one named breaker, a cached snapshot in front of the shared store, plus the
  latency trigger (:class:`LatencyWindow`: windowed p95 of successful calls over ``budget * factor``).
- :class:`BreakerBoard`: every breaker of one process over one store.

A process keeps each breaker's last state for ``cache_s``: a closed breaker costs no Redis round
trip per request; failures, transitions and probes do.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pipeline.config import ResilienceSettings
from pipeline.lifecycle import Lifecycle
from pipeline.observability import metrics

#: Breaker state lives at least this long in Redis after its last change.
STATE_TTL_MS = 24 * 3600 * 1000


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Op(StrEnum):
    READ = "read"
    ACQUIRE = "acquire"  # may this call go ahead? (admits half-open probes)
    SUCCESS = "success"
    FAILURE = "failure"
    TRIP = "trip"  # the latency trigger: open now


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    cooldown_ms: int = 60_000
    probes: int = 1

    @classmethod
    def from_settings(cls, settings: ResilienceSettings) -> BreakerPolicy:
        return cls(
            failures=max(1, settings.breaker_failures),
            cooldown_ms=int(settings.breaker_cooldown_s * 1000),
            probes=max(1, settings.breaker_probes),
        )


@dataclass(frozen=True)
class Snapshot:
    """A breaker's shared state as one process last saw it."""

    state: State = State.CLOSED
    failures: int = 0
    #: Open: when it may half-open. Half-open: when unanswered probes are forgotten.
    until_ms: int = 0
    reason: str = ""

    def allows_without_asking(self, now_ms: int) -> bool | None:
        """True/False when the snapshot decides alone; None when the store must admit a probe."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN and now_ms < self.until_ms:
            return False
        return None


Fields = dict[str, str]


def snapshot_of(fields: Mapping[str, str]) -> Snapshot:
    return Snapshot(
        state=State(fields.get("state", State.CLOSED.value)),
        failures=int(fields.get("failures", 0)),
        until_ms=int(fields.get("until_ms", 0)),
        reason=fields.get("reason", ""),
    )


def transition(
    fields: Mapping[str, str], op: Op, now_ms: int, policy: BreakerPolicy, reason: str = ""
) -> tuple[Fields, bool]:
    """Apply ``op`` to a breaker's stored fields: (new fields, whether the call may go ahead)."""
    state = State(fields.get("state", State.CLOSED.value))
    failures = int(fields.get("failures", 0))
    until = int(fields.get("until_ms", 0))
    probes = int(fields.get("probes", 0))
    new = dict(fields)

    def open_(why: str) -> None:
        new.update(state=State.OPEN.value, until_ms=str(now_ms + policy.cooldown_ms), probes="0", reason=why)

    allowed = True
    if op is Op.ACQUIRE:
        if state is State.OPEN and now_ms >= until:
            state, probes = State.HALF_OPEN, 0
            new.update(state=state.value, probes="0", until_ms=str(now_ms + policy.cooldown_ms))
        elif state is State.HALF_OPEN and now_ms >= until:
            probes = 0  # probes admitted a cooldown ago never answered: their process died
            new.update(until_ms=str(now_ms + policy.cooldown_ms))
        if state is State.OPEN:
            allowed = False
        elif state is State.HALF_OPEN:
            allowed = probes < policy.probes
            if allowed:
                new["probes"] = str(probes + 1)
    elif op is Op.SUCCESS:
        if state is State.HALF_OPEN:
            new.update(state=State.CLOSED.value, failures="0", probes="0", until_ms="0", reason="")
        elif failures:
            new["failures"] = "0"
    elif op is Op.FAILURE:
        failures += 1
        new["failures"] = str(failures)
        if state is State.HALF_OPEN:
            open_(f"probe failed: {reason}")
        elif state is State.CLOSED and failures >= policy.failures:
            open_(f"{failures} consecutive failures, last: {reason}")
    elif op is Op.TRIP:
        if state is not State.OPEN:
            open_(reason)
    return new, allowed


class BreakerStore(Protocol):
    """Where breakers keep their state; ``apply`` runs :func:`transition` atomically."""

    async def apply(
        self, name: str, op: Op, now_ms: int, policy: BreakerPolicy, reason: str = ""
    ) -> tuple[Snapshot, bool]: ...

    async def close(self) -> None: ...


class MemoryStore:
    """One process's breakers (no Redis configured, and unit tests)."""

    def __init__(self) -> None:
        self.fields: dict[str, Fields] = {}

    async def apply(
        self, name: str, op: Op, now_ms: int, policy: BreakerPolicy, reason: str = ""
    ) -> tuple[Snapshot, bool]:
        new, allowed = transition(self.fields.get(name, {}), op, now_ms, policy, reason)
        self.fields[name] = new
        return snapshot_of(new), allowed

    async def close(self) -> None:
        return None


class RedisStore:
    """Breakers shared by every process through one Redis hash each (``<namespace><name>``).

    Each change is an optimistic transaction (WATCH, read, MULTI/EXEC, retried on a conflict)
    running :func:`transition`, so two workers failing at once both count.
    """

    def __init__(self, url: str, namespace: str) -> None:
        import redis.asyncio as redis

        self.namespace = namespace
        self._redis: Any = redis.Redis.from_url(url, decode_responses=True, socket_timeout=1.0)

    def key(self, name: str) -> str:
        return f"{self.namespace}{name}"

    async def apply(
        self, name: str, op: Op, now_ms: int, policy: BreakerPolicy, reason: str = ""
    ) -> tuple[Snapshot, bool]:
        from redis.exceptions import WatchError

        key = self.key(name)
        if op is Op.READ:
            return snapshot_of(await self._redis.hgetall(key)), True
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    fields = await pipe.hgetall(key)
                    new, allowed = transition(fields, op, now_ms, policy, reason)
                    pipe.multi()
                    if new != fields:
                        pipe.hset(key, mapping=new)
                        pipe.pexpire(key, STATE_TTL_MS)
                    await pipe.execute()
                    return snapshot_of(new), allowed
                except WatchError:
                    continue

    async def close(self) -> None:
        await self._redis.aclose()


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
