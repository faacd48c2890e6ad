"""The engine wrapper that refuses while a breaker is open and reports every outcome to it.

The breakers themselves (state, rules, the shared store, one process's board) are in
:mod:`pipeline.breakers`, below the router that reads them and the workers that trip them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from pipeline.breakers.board import Breaker
from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, Engine, EngineResult, EngineWrapper
from workers.resilience.exceptions import BreakerOpen, DeadlineReached


class BreakerGuard(EngineWrapper):
    """Refuse a call when any of its breakers is open; report every outcome to all of them.

    A tier's engine is guarded by the tier's breaker (which the router reads) and the engine
    endpoint's (shared by every tier using that endpoint). A deadline cut counts as a failure only
    when the call had at least ``stall_evidence_ms`` to answer: a request that spent its budget
    queueing says nothing about the engine (shedding's business, not the breaker's).
    """

    def __init__(
        self, inner: Engine, breakers: Iterable[Breaker], *, tier: str, stall_evidence_ms: float = 0.0
    ) -> None:
        super().__init__(inner)
        self.breakers = list(breakers)
        self.tier = tier
        self.stall_evidence_ms = stall_evidence_ms

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        for breaker in self.breakers:
            if not await breaker.allow():
                raise BreakerOpen(breaker.name, breaker.snapshot.reason, tier=self.tier)
        started = time.monotonic()
        given_ms = deadline_ms - time.time() * 1000
        try:
            result = await self.inner.generate(request, deadline_ms, call)
        except asyncio.CancelledError:
            raise
        except DeadlineReached:
            if given_ms >= self.stall_evidence_ms:
                await asyncio.gather(*(b.failure("no result by the deadline") for b in self.breakers))
            raise
        except Exception as exc:
            await asyncio.gather(*(b.failure(f"{type(exc).__name__}: {exc}") for b in self.breakers))
            raise
        latency_ms = (time.monotonic() - started) * 1000
        # One after the other, not gathered: on the hot path a closed breaker's success does no I/O,
        # and gather would make a task per breaker for every request.
        for breaker in self.breakers:
            await breaker.success(latency_ms)
        return result
