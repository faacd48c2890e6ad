"""Gold micro-batching: calls within the window become one engine batch; nothing else changes."""

from __future__ import annotations

import asyncio
import time

import pytest

from topics.headers import now_ms
from topics.schemas import Request
from workers.engines.base import EngineError, EngineResult
from workers.engines.batching import MicroBatcher
from workers.engines.scripted import ScriptedEngine


def request(i: int) -> Request:
    return Request(
        request_id=f"r-{i}",
        npc_id=f"npc-{i}",
        tenant_id="t",
        prompt="Act.",
        max_tokens=8,
        created_at_ms=now_ms(),
    )


class Batching(ScriptedEngine):
    """Runs lists as one call; ``fail`` names request ids that fail alone, ``broken`` fails batches."""

    def __init__(self, fail: set[str] | None = None, broken: bool = False) -> None:
        super().__init__()
        self.max_concurrency = 1
        self.batches: list[list[str]] = []
        self.deadlines: list[int] = []
        self.fail = fail or set()
        self.broken = broken
        self.delay_s = 0.001

    async def generate_batch(
        self, requests: list[Request], deadline_ms: int
    ) -> list[EngineResult | EngineError]:
        self.batches.append([r.request_id for r in requests])
        self.deadlines.append(deadline_ms)
        if self.broken:
            raise RuntimeError("device lost")
        await asyncio.sleep(self.delay_s)
        return [
            EngineError(f"{r.request_id} refused")
            if r.request_id in self.fail
            else EngineResult(r.request_id, 1, 1)
            for r in requests
        ]


async def test_calls_within_the_window_are_one_batch_and_each_gets_its_own_result() -> None:
    engine = Batching()
    batcher = MicroBatcher(engine, window_ms=20, max_batch=8)
    deadlines = [now_ms() + 5000 - i for i in range(3)]
    results = await asyncio.gather(*(batcher.generate(request(i), d) for i, d in enumerate(deadlines)))
    assert [r.text for r in results] == ["r-0", "r-1", "r-2"]
    assert engine.batches == [["r-0", "r-1", "r-2"]]
    assert engine.deadlines == [min(deadlines)]  # the batch ends when its most urgent member must
    assert batcher.max_concurrency == 8  # the worker lets a batch's worth of calls wait here


async def test_a_full_batch_goes_at_once_and_the_rest_waits_for_the_next_window() -> None:
    engine = Batching()
    batcher = MicroBatcher(engine, window_ms=200, max_batch=2)
    started = time.monotonic()
    first = await asyncio.gather(*(batcher.generate(request(i), now_ms() + 5000) for i in range(2)))
    assert time.monotonic() - started < 0.15 and [r.text for r in first] == ["r-0", "r-1"]
    await batcher.generate(request(2), now_ms() + 5000)
    assert engine.batches == [["r-0", "r-1"], ["r-2"]]
    assert batcher.stats.batches == 2 and batcher.stats.mean_size == 1.5


async def test_calls_arriving_while_the_engine_is_busy_share_the_next_batch() -> None:
    engine = Batching()
    engine.delay_s = 0.1
    batcher = MicroBatcher(engine, window_ms=5, max_batch=8)
    first = asyncio.create_task(batcher.generate(request(0), now_ms() + 5000))
    await asyncio.sleep(0.02)  # its window passed: the engine runs r-0 alone
    later = []
    for i in range(1, 4):  # each arrives after the one before's window: singly they would be 3 batches
        later.append(asyncio.create_task(batcher.generate(request(i), now_ms() + 5000)))
        await asyncio.sleep(0.015)
    await asyncio.gather(first, *later)
    assert engine.batches == [["r-0"], ["r-1", "r-2", "r-3"]]


async def test_one_failure_fails_its_caller_alone_and_a_broken_batch_fails_everyone() -> None:
    batcher = MicroBatcher(Batching(fail={"r-1"}), window_ms=10)
    results = await asyncio.gather(
        *(batcher.generate(request(i), now_ms() + 5000) for i in range(3)), return_exceptions=True
    )
    assert isinstance(results[1], EngineError) and [r.text for r in (results[0], results[2])] == [
        "r-0",
        "r-2",
    ]

    broken = MicroBatcher(Batching(broken=True), window_ms=10)
    results = await asyncio.gather(
        *(broken.generate(request(i), now_ms() + 5000) for i in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, EngineError) and "device lost" in str(r) for r in results)


async def test_a_caller_that_gave_up_does_not_break_the_batch() -> None:
    engine = Batching()
    batcher = MicroBatcher(engine, window_ms=30)
    impatient = asyncio.create_task(batcher.generate(request(0), now_ms() + 5000))
    patient = asyncio.create_task(batcher.generate(request(1), now_ms() + 5000))
    await asyncio.sleep(0.005)
    impatient.cancel()
    assert (await patient).text == "r-1" and engine.batches == [["r-0", "r-1"]]


async def test_an_engine_that_cannot_batch_gets_every_call_at_once() -> None:
    engine = ScriptedEngine()
    batcher = MicroBatcher(engine, window_ms=500)
    started = time.monotonic()
    result = await batcher.generate(request(0), now_ms() + 5000)
    assert result.text and time.monotonic() - started < 0.1  # no window for an engine without batches
    assert not batcher.batching and batcher.stats.batches == 0


def test_a_window_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        MicroBatcher(ScriptedEngine(), window_ms=0)
