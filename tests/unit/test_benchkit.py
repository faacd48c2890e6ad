"""The benchmarks' shared load kit: the pacing every load sends by, and how replies are matched.

Every benchmark's latencies go through these two, on both sides of its comparison, so a fault
here would move a benchmark and its baseline alike and no benchmark could show it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import Reply

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    # By file, not by putting benchmarks/ on sys.path: its replay.py would shadow the replay package.
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


benchkit = _load("benchkit")
gold_common = _load("gold_common")
TP = TopicPartition("p.npc.replies", 0)


def record(key: bytes, value: bytes = b"{}") -> ConsumerRecord:
    return ConsumerRecord(TP.topic, 0, 0, 0, 0, key, value, None, len(key), len(value), [])


#: A Gold reply from the router's near cache, but for its request id.
GOLD_REPLY = {"npc_id": "npc-1", "tenant_id": "bench", "tier": Tier.GOLD, "status": ReplyStatus.OK}


def reply(request_id: str) -> bytes:
    return Reply(request_id=request_id, served_by=ServedBy.CACHE, replied_at_ms=1, **GOLD_REPLY).to_bytes()


class ScriptedConsumer:
    """Hands out the given batches, one per poll, then polls empty for the poll's timeout."""

    def __init__(self, batches: list[list[ConsumerRecord]]) -> None:
        self.batches = batches

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumerRecord]]:
        if self.batches:
            await asyncio.sleep(0)
            return {TP: self.batches.pop(0)}
        await asyncio.sleep(timeout_ms / 1000)
        return {}


class Producer:
    flushed = False

    async def flush(self) -> None:
        self.flushed = True


def test_pace_sends_what_each_tick_owes_after_its_hook() -> None:
    ticks: list[float] = []
    sent: list[int] = []

    def on_tick(elapsed: float) -> None:
        # 50/s in 5 ms ticks owes a quarter of a request a tick: one send every fourth tick,
        # none of this tick's sent yet when the hook runs.
        assert len(sent) == len(ticks) // 4
        ticks.append(elapsed)

    async def send(n: int) -> None:
        sent.append(n)

    total = asyncio.run(benchkit.pace(50.0, 0.2, send, on_tick))
    assert total == len(sent) == len(ticks) // 4 and total >= 5
    assert sent == list(range(total))
    assert ticks == sorted(ticks) and ticks[-1] < 0.2


def test_pending_replies_answers_each_request_once_and_skips_the_rest() -> None:
    seen: list[tuple[bytes, str]] = []

    async def scenario() -> None:
        pending = benchkit.PendingReplies(lambda r, noted, arrived: seen.append((r.key, noted)))
        pending.sent |= {b"a": "A", b"b": "B"}
        consumer = ScriptedConsumer([[record(b"x"), record(b"a")], [record(b"a"), record(b"b")]])
        pending.start(consumer)
        await pending.finish(Producer())
        assert not pending.sent

    asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert seen == [(b"a", "A"), (b"b", "B")]  # the foreign x and the second a are skipped


def test_finish_gives_up_on_a_missing_reply_after_drain_s() -> None:
    async def scenario() -> float:
        pending = benchkit.PendingReplies(lambda *_: None, drain_s=0.2)
        pending.sent[b"lost"] = 0.0
        pending.start(ScriptedConsumer([]))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pending.finish(Producer())
        return loop.time() - started

    assert 0.15 <= asyncio.run(scenario()) < 2.0


def test_gold_matcher_matches_by_the_carried_request_id_and_counts_duplicates() -> None:
    seen: list[tuple[str, float]] = []

    async def scenario() -> gold_common.ReplyMatcher:
        matcher = gold_common.ReplyMatcher(
            lambda r, created, arrived_ms: seen.append((r.request_id, created))
        )
        matcher.sent[b"g1"] = 100.0
        # The record key is not the request id here: the id the reply carries is what matches.
        consumer = ScriptedConsumer([[record(b"npc-1", reply("g1")), record(b"npc-1", reply("g1"))]])
        matcher.start(consumer)
        await matcher.finish(Producer())
        return matcher

    matcher = asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert seen == [("g1", 100.0)] and matcher.duplicates == 1
