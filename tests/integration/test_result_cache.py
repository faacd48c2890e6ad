"""The result cache end to end on real Redis: a Silver answer goes through npc.outputs and the Redis
sink into the cache, and the same story prompt asked again is answered from it without the engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from tests.integration.test_worker import make_request, producer, running_worker, serve_one
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from workers.cache.results import ResultCache
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.sinks.redis import RedisSink
from workers.sinks.runner import SinkRunner

__all__ = ["producer"]  # the fixture, shared with test_worker


@contextlib.asynccontextmanager
async def redis_sink(settings: Settings) -> AsyncIterator[SinkRunner]:
    runner = SinkRunner(RedisSink.from_settings(settings), settings)
    await runner.start()
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.request_stop()
        await task
        await runner.stop()


async def test_a_repeated_story_prompt_is_served_from_the_result_cache(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    scoped = settings.with_(topic_prefix=prefix)
    engine = ScriptedEngine(ScriptedProfile(latency_ms=30))
    story = "Tell me the story of the ember gate."
    async with redis_sink(scoped), running_worker(settings, prefix, Tier.SILVER, engine):
        first = await serve_one(
            kafka, prefix, producer, Tier.SILVER, make_request(1, sla=Sla.INTERACTIVE, prompt=story), 2000
        )
        assert first.served_by is ServedBy.ENGINE and engine.calls == 1, first
        async with ResultCache(settings.redis_url or "", prefix=prefix) as cache:
            for _ in range(200):  # the sink writes within its batch linger
                if await cache.get_by_prompt(None, story) is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the Redis sink never stored the first answer")
        # Same words, other spacing and case: the normalised prompt finds the same answer.
        again = make_request(2, sla=Sla.INTERACTIVE, prompt="  tell me the STORY of the ember   gate.")
        second = await serve_one(kafka, prefix, producer, Tier.SILVER, again, 2000)
    assert second.served_by is ServedBy.RESULT_CACHE and second.status is ReplyStatus.OK, second
    assert second.text == first.text and engine.calls == 1
    assert second.cost_usd == 0.0 and second.engine == ""
