"""A breaker's shared state: its stored fields, the rules that change them, and where they live.

The rules, all of them (docs/architecture.md, "Resilience"):

- **closed** → **open** after ``failures`` consecutive failed calls (any process's: the count is
  shared), or when the windowed p95 latency of successful calls exceeds ``budget * factor`` (that
  trigger is measured in :mod:`pipeline.breakers.board` and applied here as ``Op.TRIP``).
- **open** → **half-open** once ``cooldown_s`` has passed since it opened.
- **half-open** admits at most ``probes`` calls; one success closes the breaker, one failure
  opens it again for another cooldown. Probes admitted by a process that died are forgotten after
  a further cooldown, so a crash never leaves a breaker half-open for ever.

:func:`transition` is the whole state machine as a pure function of the stored fields, so the
in-memory store (one process, unit tests) and the Redis store (every router and worker) run the
same code. Kept apart from :mod:`pipeline.breakers.board` (how one process uses its breakers:
cache, latency window) so the rules and their storage read, and test, alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pipeline.config import ResilienceSettings

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
