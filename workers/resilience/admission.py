"""Admission to a worker's engine slots: who gets the next slot, and who should not queue at all.

**Fair share.** A plain semaphore serves waiters in arrival order, so a tenant that floods the
tier topic puts every other tenant behind its flood. :class:`FairShare` keeps one FIFO per tenant
and gives a freed slot to the waiting request with the smallest virtual finish tag (start-time
fair queueing): a tenant of weight ``w`` advances its tag by ``1/w`` per request, a tenant that
was idle starts at the current virtual time. A quiet tenant therefore waits for at most about one
slot turn, whatever the flood; tenants that all flood share the slots by weight. It also measures
how long a slot is held (the observed service time).

**Load shedding.** Before a request waits for a slot, :class:`LoadShedder` compares its deadline
with what the queue predicts: the wait (requests ahead of it, fairly shared, times the observed
service time) plus one service time. If that lands past the deadline the request is degraded at
once (Silver → Bronze, a Gold refresh skipped) instead of queueing into a miss; the decision goes
on its routing record. A free slot never sheds: the engine gets its chance, and the deadline cut
and the breakers deal with an engine that is slow for everyone.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass(order=True)
class _Waiter:
    tag: float
    seq: int
    tenant: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class FairShare:
    """``async with share.slot(tenant):`` holds one of ``slots`` engine slots."""

    def __init__(
        self,
        slots: int,
        weights: Mapping[str, float] | None = None,
        *,
        service_alpha: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self.weights = dict(weights or {})
        self.in_use = 0
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._vtime = 0.0
        self._last_tag: dict[str, float] = {}
        self._waiting: dict[str, int] = {}
        self._alpha = service_alpha
        #: Exponentially weighted slot-hold time in ms (None until a slot was released once).
        self.service_ms: float | None = None
        self._clock = clock
        #: Requests served per tenant (tests, benchmarks).
        self.served: dict[str, int] = {}

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def waiting(self, tenant: str | None = None) -> int:
        return sum(self._waiting.values()) if tenant is None else self._waiting.get(tenant, 0)

    def ahead_of_new(self, tenant: str) -> float:
        """Requests a new request of ``tenant`` would wait behind (weighted fair estimate)."""
        mine = self._waiting.get(tenant, 0) + 1
        w = self.weight(tenant)
        return sum(min(n, mine * self.weight(t) / w) for t, n in self._waiting.items() if t != tenant) + (
            mine - 1
        )

    def expected_wait_ms(self, tenant: str) -> float:
        """Predicted time before a new request of ``tenant`` holds a slot (0 while slots are free)."""
        if self.in_use < self.slots and not self._heap:
            return 0.0
        service = self.service_ms or 0.0
        return (self.ahead_of_new(tenant) // self.slots + 1) * service

    def _tag(self, tenant: str) -> float:
        start = max(self._vtime, self._last_tag.get(tenant, 0.0))
        tag = start + 1.0 / self.weight(tenant)
        self._last_tag[tenant] = tag
        return tag

    async def acquire(self, tenant: str) -> None:
        tag = self._tag(tenant)
        if self.in_use < self.slots and not self._heap:
            self.in_use += 1
            self._vtime = max(self._vtime, tag - 1.0 / self.weight(tenant))
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(tag, next(self._seq), tenant, future)
        heapq.heappush(self._heap, waiter)
        self._waiting[tenant] = self._waiting.get(tenant, 0) + 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release_slot()  # granted just as we were cancelled: pass it on
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: _Waiter) -> None:
        try:
            self._heap.remove(waiter)
        except ValueError:
            return
        heapq.heapify(self._heap)
        self._left(waiter.tenant)

    def _left(self, tenant: str) -> None:
        n = self._waiting.get(tenant, 0) - 1
        if n > 0:
            self._waiting[tenant] = n
        else:
            self._waiting.pop(tenant, None)

    def release_slot(self) -> None:
        while self._heap:
            waiter = heapq.heappop(self._heap)
            self._left(waiter.tenant)
            if waiter.future.done():
                continue
            self._vtime = max(self._vtime, waiter.tag - 1.0 / self.weight(waiter.tenant))
            waiter.future.set_result(None)
            return  # the slot passes straight to the waiter
        self.in_use -= 1

    def _observe(self, held_ms: float) -> None:
        self.service_ms = (
            held_ms
            if self.service_ms is None
            else (self._alpha * held_ms + (1 - self._alpha) * self.service_ms)
        )

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        await self.acquire(tenant)
        started = self._clock()
        try:
            yield
        finally:
            self._observe((self._clock() - started) * 1000)
            self.served[tenant] = self.served.get(tenant, 0) + 1
            self.release_slot()


@dataclass(frozen=True)
class LoadShedder:
    """Degrade a request now when the queue predicts it would miss its deadline."""

    enabled: bool = True
    #: Safety margin on the prediction (1.0: shed only when the estimate alone misses).
    factor: float = 1.0

    def verdict(
        self, deadline_ms: float, now_ms: float, expected_wait_ms: float, service_ms: float | None
    ) -> str | None:
        """Why this request should be degraded now, or None to queue it."""
        if not self.enabled or service_ms is None or expected_wait_ms <= 0:
            return None
        left = deadline_ms - now_ms
        predicted = (expected_wait_ms + service_ms) * self.factor
        if predicted <= left:
            return None
        return (
            f"shed: queue predicts {predicted:.0f} ms (wait {expected_wait_ms:.0f} + service "
            f"{service_ms:.0f}) with {max(0.0, left):.0f} ms left"
        )
