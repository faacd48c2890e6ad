"""Gold micro-batching: refreshes that arrive within a short window go to the engine as one batch.

A Gold worker refreshes many NPCs' intents at once (1-2 Hz per active NPC). An engine that runs
a list of prompts as one batch (:class:`BatchEngine`: one forward pass per token for the whole
list) serves a group faster than the same calls one by one. :class:`MicroBatcher` holds each call
for at most ``window_ms`` (or until ``max_batch`` calls wait), then hands the group over; while
the engine is busy with a batch, the group goes on collecting until it ends. An engine
without ``generate_batch`` gets the calls as before, at once and unbatched: grouping buys nothing
there and must not cost a window. Engines with in-flight batching of their own (vLLM's
``AsyncLLM``, TensorRT-LLM's ``generate_async``) already batch concurrent calls; they need no
window either. Measured with the embedded engine: docs/architecture.md, "Production inference engines".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, Engine, EngineError, EngineResult, EngineWrapper


@runtime_checkable
class BatchEngine(Protocol):
    """An engine that can run several requests as one batch; results in the requests' order.

    A request that fails alone is an :class:`EngineError` in its slot; raising fails the batch.
    It takes no :class:`~workers.engines.base.CallContext`: the micro-batcher sits right around the
    engine (innermost, ``workers/engine_stack.py``), and nothing in a call's context changes how a
    model runs a prompt; the wrappers that read it are all outside.
    """

    async def generate_batch(
        self, requests: list[Request], deadline_ms: int
    ) -> list[EngineResult | EngineError]: ...


@dataclass
class _Group:
    requests: list[Request] = field(default_factory=list)
    deadlines: list[int] = field(default_factory=list)
    waiters: list[asyncio.Future[EngineResult]] = field(default_factory=list)


@dataclass
class BatchStats:
    batches: int = 0
    calls: int = 0

    @property
    def mean_size(self) -> float:
        return self.calls / self.batches if self.batches else 0.0


class MicroBatcher(EngineWrapper):
    """Groups calls arriving within ``window_ms`` (at most ``max_batch``) into one engine batch."""

    def __init__(self, inner: Engine, *, window_ms: float, max_batch: int = 16) -> None:
        super().__init__(inner)
        if window_ms <= 0 or max_batch < 2:
            raise ValueError("a micro-batch needs a window > 0 ms and room for 2 calls or more")
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._group: _Group | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: Read once: a runtime Protocol check walks the class's attributes, too slow for every call.
        self._batching = isinstance(inner, BatchEngine)

    @property
    def max_concurrency(self) -> int | None:
        """A batching engine takes ``max_batch`` calls per call it can run: let that many wait here."""
        inner = self.inner.max_concurrency
        return inner * self.max_batch if self.batching and inner is not None else inner

    @property
    def batching(self) -> bool:
        """Whether the engine inside runs batches; if not, calls pass straight through."""
        return self._batching

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if not self._batching:
            return await self.inner.generate(request, deadline_ms, call)
        loop = asyncio.get_running_loop()
        if self._group is None:
            self._group = _Group()
            self._timer = loop.call_later(self.window_s, self._flush)
        group = self._group
        waiter: asyncio.Future[EngineResult] = loop.create_future()
        group.requests.append(request)
        group.deadlines.append(deadline_ms)
        group.waiters.append(waiter)
        if len(group.requests) >= self.max_batch:
            self._flush(full=True)
        return await waiter

    def _busy(self) -> bool:
        """The engine runs as many batches as it can at once: a new one would only wait behind them."""
        limit = self.inner.max_concurrency
        return limit is not None and len(self._running) >= limit

    def _flush(self, *, full: bool = False) -> None:
        """Hand the group over, unless the engine is busy and the group has room: then it keeps
        collecting until the running batch ends, so the calls that arrive meanwhile share one batch
        instead of queueing one by one (refreshes spread over time, docs/architecture.md, "Keeping
        the active set fresh", would otherwise arrive singly)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group = self._group
        if group is None or not group.requests or (not full and self._busy()):
            return
        self._group = None
        task = asyncio.get_running_loop().create_task(self._run(group))
        self._running.add(task)
        task.add_done_callback(self._ran)

    def _ran(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._group is not None and self._timer is None:  # its window passed while the engine ran
            self._flush()

    async def _run(self, group: _Group) -> None:
        self.stats.batches += 1
        self.stats.calls += len(group.requests)
        assert isinstance(self.inner, BatchEngine)
        try:
            # The batch ends when its most urgent member must: nobody in it waits past their own.
            results = await self.inner.generate_batch(group.requests, min(group.deadlines))
            if len(results) != len(group.requests):
                raise EngineError(f"{self.name}: {len(results)} results for a batch of {len(group.requests)}")
        except Exception as exc:  # the whole batch failed: every caller hears why
            error = exc if isinstance(exc, EngineError) else EngineError(f"{self.name}: batch failed: {exc}")
            results = [error] * len(group.requests)
        for waiter, result in zip(group.waiters, results, strict=True):
            if waiter.done():  # the caller gave up (its timeout): nothing to hand over
                continue
            if isinstance(result, EngineError):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)

    async def _stop(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await super()._stop()
