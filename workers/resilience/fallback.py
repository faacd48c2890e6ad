"""When an engine call is given up on, and where the request goes then: the fallback chain Gold →
Silver → Bronze, as engine wrappers and one serving step.

- **Gold** answers in time from the NPC's intent (the router's part); its engine serves the
  *refresh*. :class:`Substitute` serves that refresh with Silver's engine when Gold's engine is
  down or its breaker open, and says so on the result (the reply records the fallback).
- **Silver** cannot answer in time (engine error, breaker open, stall at the deadline, or a
  queue that predicts a miss) → :class:`FallbackStep` turns the request into a
  :class:`Forwarded` outcome: the original bytes re-published to the Bronze tier topic with
  fallback headers. The worker loop produces it like a reply and commits only after the ack,
  so the fallback survives a worker crash. :class:`CutAtDeadline` makes a stalled engine
  (no result, no error) fall back at the deadline, not at the grace timeout; its call goes on,
  and a late result only updates the outputs (never a second reply).
- **Bronze** is last: an ``error`` reply naming every tier tried and why.
- The router diverts Silver traffic straight to Bronze while Silver's breaker is open
  (:class:`pipeline.router.breakers.RouterFallback`), with the same headers.

The chain itself (which tier forwards to which, :data:`topics.policy.FORWARD`) and the fallback
headers (:mod:`topics.headers`) are the shared contract. The new deadline is the later of the
original one and now + the next tier's budget (:meth:`topics.policy.RoutingPolicy.next_deadline`).

Two wrappers give up on a call, at two moments: :class:`CutAtDeadline` at the deadline (the
request falls back; the call goes on and may still update the outputs), and :class:`Timeout` at
``min(deadline - now, cap) + grace`` (the call is abandoned: a stalled engine, no result and no
error, would otherwise hold its slot for ever; a result a little late is still worth replying
with, ``late: true``, and for Gold it refreshes the intent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pipeline.observability import metrics
from topics.catalogue import ROUTING, TIER_TOPICS, Tier
from topics.headers import Headers, attempt, fallback_headers
from topics.policy import FORWARD, RoutingPolicy
from topics.schemas import Request, RoutingDecision, TierAttempt
from workers.engines.base import (
    PLAIN_CALL,
    CallContext,
    Engine,
    EngineError,
    EngineResult,
    EngineWrapper,
    Substitution,
)
from workers.replies import Outbound
from workers.resilience.exceptions import DeadlineReached, EngineTimeout, reason_kind


class FallbackJob(Protocol):
    """What a fallback needs of a served job (:class:`workers.serving.Job`)."""

    request: Request
    raw: bytes
    deadline_ms: int
    chain: tuple[TierAttempt, ...]
    attempt: int


@dataclass(frozen=True)
class Forwarded:
    """A serving outcome: the request re-published to the next tier, plus its routing record.

    ``late`` is the abandoned engine call of a deadline cut; when it finishes the loop records
    its result as an output only (:meth:`workers.serving.Serving.late_output`).
    """

    topic: str
    key: bytes
    value: bytes
    headers: Headers
    decision: RoutingDecision
    routing_topic: str
    from_tier: Tier
    to_tier: Tier
    job: Any = None
    late: asyncio.Future[EngineResult] | None = None

    def records(self) -> list[Outbound]:
        """The request at once (the next tier's budget runs); its routing record batched."""
        decision = Outbound(self.routing_topic, self.decision.request_id.encode(), self.decision.to_bytes())
        return [Outbound(self.topic, self.key, self.value, self.headers, urgent=True), decision]


class FallbackStep:
    """The serving step that turns "this tier cannot answer in time" into a :class:`Forwarded`."""

    def __init__(self, tier: Tier, policy: RoutingPolicy, prefix: str = "", enabled: bool = True) -> None:
        self.tier = tier
        self.policy = policy
        self.prefix = prefix
        self.to_tier = FORWARD.get(tier) if enabled else None
        self._routing = ROUTING.name(prefix)

    def forward(
        self, job: FallbackJob, reason: str, kind: str, *, outcome: str = "failed", late: Any = None
    ) -> Forwarded | None:
        """The re-published request, or None when this tier is the last (the caller replies)."""
        to = self.to_tier
        if to is None:
            return None
        now = int(time.time() * 1000)
        deadline = self.policy.next_deadline(to, job.deadline_ms, now)
        chain = (*job.chain, attempt(self.tier, outcome, reason))
        original = job.deadline_ms
        request = job.request
        headers = fallback_headers(
            to,
            deadline,
            attempt=job.attempt + 1,
            from_tier=self.tier,
            reason=f"{kind}: {reason}",
            chain=chain,
            original_deadline_ms=original,
        )
        decision = RoutingDecision(
            request_id=request.request_id,
            npc_id=request.npc_id,
            tenant_id=request.tenant_id,
            tier=to,
            sla=self.policy.classify(request)[0],
            reason=f"{self.tier.value} → {to.value} ({kind}): {reason}"[:500],
            deadline_ms=deadline,
            decided_at_ms=now,
            fallback_from=self.tier,
            stage="worker",
        )
        metrics.FALLBACKS.labels(self.tier.value, to.value, kind).inc()
        return Forwarded(
            topic=TIER_TOPICS[to].name(self.prefix),
            key=request.npc_id.encode(),
            value=job.raw,
            headers=headers,
            decision=decision,
            routing_topic=self._routing,
            from_tier=self.tier,
            to_tier=to,
            job=job,
            late=late,
        )


class CutAtDeadline(EngineWrapper):
    """Give up waiting at the deadline (raise :class:`DeadlineReached`); the call itself goes on.

    The inner call (bounded by :class:`~workers.resilience.fallback.Timeout` at deadline + grace)
    keeps running in ``DeadlineReached.late`` so its result can still refresh caches and outputs.
    Only a tier with somewhere to fall back to is cut; the last tier waits out the grace.
    """

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        pending = asyncio.ensure_future(self.inner.generate(request, deadline_ms, call))
        remaining_s = max(0.0, (deadline_ms - time.time() * 1000) / 1000.0)
        try:
            done, _ = await asyncio.wait({pending}, timeout=remaining_s)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        if pending in done:
            return pending.result()
        pending.add_done_callback(_consume_exception)
        raise DeadlineReached(self.name, late=pending)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Substitute(EngineWrapper):
    """Serve with ``substitute`` (another tier's engine, own breakers) when the inner engine fails.

    Used for Gold's refresh: Gold's engine down or its breaker open → Silver's engine answers,
    and the result says so (:class:`~workers.engines.base.Substitution`). If both fail, the error
    names both.
    """

    def __init__(self, inner: Engine, substitute: Engine, *, from_tier: Tier, to_tier: Tier) -> None:
        super().__init__(inner)
        self.substitute = substitute
        self.from_tier = from_tier
        self.to_tier = to_tier

    async def _start(self) -> None:
        await self.inner.start()
        await self.substitute.start()

    async def _stop(self) -> None:
        await self.inner.stop()
        await self.substitute.stop()

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        try:
            return await self.inner.generate(request, deadline_ms, call)
        except EngineError as first:
            kind = reason_kind(first)
            metrics.FALLBACKS.labels(self.from_tier.value, self.to_tier.value, kind).inc()
            try:
                result = await self.substitute.generate(request, deadline_ms, call)
            except EngineError as second:
                tiers = f"{self.from_tier.value}: {first}; {self.to_tier.value}"
                raise EngineError(f"{tiers} ({self.substitute.name}): {second}") from second
            note = Substitution(
                tier=self.to_tier.value,
                engine=self.substitute.name,
                from_tier=self.from_tier.value,
                reason=f"{kind}: {first}",
            )
            return replace(result, substituted=note)


async def watch_late(late: asyncio.Future[EngineResult], on_result: Callable[[EngineResult], Any]) -> None:
    """Await an abandoned call; hand its result (if any) to ``on_result``. Never raises."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        result = await late
        outcome = on_result(result)
        if asyncio.iscoroutine(outcome):
            await outcome


DEFAULT_GRACE_S = 30.0
#: The longest any engine call may take, whatever deadline the request claims.
DEFAULT_CAP_S = 600.0


class Timeout(EngineWrapper):
    """Abandon an engine call at ``min(deadline - now, cap_s) + grace_s``; raises :class:`EngineTimeout`."""

    def __init__(
        self, inner: Engine, *, grace_s: float = DEFAULT_GRACE_S, cap_s: float = DEFAULT_CAP_S
    ) -> None:
        super().__init__(inner)
        self.grace_s = grace_s
        self.cap_s = cap_s

    def timeout_s(self, deadline_ms: int, now_ms: float | None = None) -> float:
        now = time.time() * 1000 if now_ms is None else now_ms
        remaining_s = max(0.0, min((deadline_ms - now) / 1000.0, self.cap_s))
        return remaining_s + self.grace_s

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        timeout_s = self.timeout_s(deadline_ms)
        try:
            return await asyncio.wait_for(self.inner.generate(request, deadline_ms, call), timeout_s)
        except TimeoutError:
            raise EngineTimeout(self.name, timeout_s) from None
