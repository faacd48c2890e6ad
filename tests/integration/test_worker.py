"""The tier worker in-process against the real broker: deadlines, failures, reply topics and shared load."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from pipeline import kafka as kafka_clients
from pipeline.client import NPCClient
from pipeline.config import Settings
from pipeline.topic_admin import create_reply_topics
from tests.integration.kafka_util import eventually, read_topic
from topics.catalogue import DLQ, OUTPUTS, REPLIES, TIER_TOPICS, Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.headers import deadline_headers, now_ms
from topics.rejections import DeadLetter
from topics.schemas import Output, Reply, Request
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.tier_worker import TierWorker, WorkerConfig


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, prefix: str, tier: Tier, engine: ScriptedEngine, **config: object
) -> AsyncIterator[TierWorker]:
    """A worker consuming in the background; yields once its group assigned it partitions."""
    worker_config = WorkerConfig.from_settings(settings.with_(topic_prefix=prefix), tier, **config)
    worker = TierWorker(worker_config, engine)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.assigned.wait(), 30)
        yield worker
    finally:
        worker.request_stop()
        await task
        await worker.stop()


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = kafka_clients.producer(settings, "npcflow-test")
    await p.start()
    yield p
    await p.stop()


async def serve_one(
    kafka: str,
    prefix: str,
    producer: AIOKafkaProducer,
    tier: Tier,
    request: Request,
    deadline_in_ms: int,
    then: bytes | None = None,
    reply_topic: str | None = None,
) -> Reply:
    """Put one routed request on the tier topic (and ``then`` raw bytes after it); await its reply.

    The deadline header is ``deadline_in_ms`` from the moment the request is produced.
    """
    topic = TIER_TOPICS[tier].name(prefix)
    async with NPCClient(kafka, "gs-test", prefix=prefix, reply_topic=reply_topic) as client:
        waiter = asyncio.create_task(client.request(request, timeout_s=20))
        await asyncio.sleep(0.2)  # the client registers the request before the reply can exist
        await producer.send_and_wait(
            topic,
            request.to_bytes(),
            key=request.npc_id.encode(),
            headers=deadline_headers(now_ms() + deadline_in_ms, tier.value),
        )
        if then is not None:
            await producer.send_and_wait(topic, then, key=request.npc_id.encode())
        return await waiter


def make_request(i: int, **kw: object) -> Request:
    fields = {
        "request_id": f"w-{i}-{time.time_ns()}",
        "npc_id": f"npc-{i}",
        "tenant_id": "gs-test",
        "prompt": "Wave.",
        "max_tokens": 8,
        "sla": Sla.REALTIME,
        "created_at_ms": now_ms(),
    } | kw
    return Request(**fields)  # type: ignore[arg-type]


async def test_expired_request_is_answered_expired_without_an_engine_call(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    engine = ScriptedEngine()
    async with running_worker(settings, prefix, Tier.GOLD, engine):
        request = make_request(1, created_at_ms=now_ms() - 1000)
        reply = await serve_one(kafka, prefix, producer, Tier.GOLD, request, -500)
        assert reply.status is ReplyStatus.EXPIRED and reply.served_by is ServedBy.NONE
        assert "deadline passed" in (reply.error or "")
        assert engine.calls == 0
        outputs = [
            Output.from_bytes(r.value) for r in await read_topic(kafka, OUTPUTS.name(prefix), expect=1)
        ]
        assert any(o.reply.request_id == request.request_id and o.reply.status == "expired" for o in outputs)


async def test_late_result_is_still_replied_and_marked_late(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    engine = ScriptedEngine(ScriptedProfile(latency_ms=1500))
    async with running_worker(settings, prefix, Tier.GOLD, engine):
        reply = await serve_one(kafka, prefix, producer, Tier.GOLD, make_request(2), 1000)
        assert reply.status is ReplyStatus.OK and reply.late is True and engine.calls == 1
        assert reply.latency.engine_ms >= 1500


async def test_engine_failure_becomes_an_error_reply_and_poison_goes_to_the_dlq(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    # Bronze: the last tier answers an engine failure with an error reply (Silver would fall back
    # to Bronze: tests/integration/test_resilience.py).
    engine = ScriptedEngine(ScriptedProfile(fail_every=1))
    topic = TIER_TOPICS[Tier.BRONZE].name(prefix)
    async with running_worker(settings, prefix, Tier.BRONZE, engine):
        request = make_request(3, sla=Sla.ASYNC)
        reply = await serve_one(kafka, prefix, producer, Tier.BRONZE, request, 5000, then=b"\x00garbage")
        assert reply.status is ReplyStatus.ERROR and "scripted failure" in (reply.error or "")
        letters = [
            DeadLetter.from_bytes(r.value) for r in await read_topic(kafka, DLQ.name(prefix), expect=1)
        ]
        poison = [d for d in letters if d.original() == b"\x00garbage"]
        assert len(poison) == 1 and poison[0].stage == "worker" and poison[0].source_topic == topic


async def test_a_stalled_engine_is_abandoned_at_deadline_plus_grace_with_an_error_reply(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    engine = ScriptedEngine(ScriptedProfile(latency_ms=60_000))
    async with running_worker(settings, prefix, Tier.GOLD, engine, engine_grace_s=0.3):
        started = time.monotonic()
        reply = await serve_one(kafka, prefix, producer, Tier.GOLD, make_request(4), 200)
        assert reply.status is ReplyStatus.ERROR and "gave no result within" in (reply.error or "")
        assert time.monotonic() - started < 10


async def test_a_reply_goes_to_the_reply_topic_the_request_names_and_nowhere_else(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    custom = REPLIES.name(prefix) + ".gs-test.worker"
    await create_reply_topics(settings, [custom], prefix)
    async with running_worker(settings, prefix, Tier.GOLD, ScriptedEngine()):
        request = make_request(5, reply_topic=custom)
        reply = await serve_one(kafka, prefix, producer, Tier.GOLD, request, 5000, reply_topic=custom)
        assert reply.request_id == request.request_id and reply.status is ReplyStatus.OK
        default = await read_topic(kafka, REPLIES.name(prefix), timeout_s=1)
        assert request.request_id not in {Reply.from_bytes(r.value).request_id for r in default}


async def test_a_reply_topic_that_does_not_exist_is_dead_lettered_never_created(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    missing = REPLIES.name(prefix) + ".gs-test.never-registered"
    engine = ScriptedEngine()
    async with running_worker(settings, prefix, Tier.GOLD, engine) as worker:
        request = make_request(6, reply_topic=missing)
        await producer.send_and_wait(
            TIER_TOPICS[Tier.GOLD].name(prefix),
            request.to_bytes(),
            key=request.npc_id.encode(),
            headers=deadline_headers(now_ms() + 5000, "gold"),
        )
        letters = await read_topic(
            kafka,
            DLQ.name(prefix),
            until=lambda rs: any(
                request.request_id.encode() in DeadLetter.from_bytes(r.value).original() for r in rs
            ),
        )
        [letter] = [
            d
            for d in map(lambda r: DeadLetter.from_bytes(r.value), letters)
            if request.request_id.encode() in d.original()
        ]
        assert "does not exist" in letter.reason and "--reply-topic" in letter.reason
        assert engine.calls == 0 and worker.reply_topics.missing >= 1
        admin = kafka_clients.admin(settings)
        await admin.start()
        try:
            assert missing not in set(await admin.list_topics())
        finally:
            await admin.close()


async def test_two_workers_of_one_tier_share_the_load(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    group = f"{prefix}bronze-share"
    engines = [ScriptedEngine(ScriptedProfile(latency_ms=5)), ScriptedEngine(ScriptedProfile(latency_ms=5))]
    async with contextlib.AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(running_worker(settings, prefix, Tier.BRONZE, e, group_id=group))
            for e in engines
        ]
        every = set(range(TIER_TOPICS[Tier.BRONZE].partitions))

        def settled() -> bool:
            # While the group rebalances the old owner still reports its partitions until its revoke
            # runs: judge the assignment once it has settled (each some, none shared, all owned).
            owned = [w.partitions() for w in workers]
            return all(owned) and not set.intersection(*owned) and set.union(*owned) == every

        assert await eventually(settled, timeout_s=30), [w.partitions() for w in workers]
        topic = TIER_TOPICS[Tier.BRONZE].name(prefix)
        requests = [make_request(100 + i, sla=Sla.ASYNC) for i in range(60)]
        deadline = now_ms() + 60_000
        for r in requests:
            await producer.send(
                topic, r.to_bytes(), key=r.npc_id.encode(), headers=deadline_headers(deadline, "bronze")
            )
        await producer.flush()
        assert await eventually(lambda: sum(e.calls for e in engines) >= 60, timeout_s=30)
        assert all(e.calls > 0 for e in engines), [e.calls for e in engines]
        records = await read_topic(kafka, REPLIES.name(prefix), expect=60)
        ids = [Reply.from_bytes(r.value).request_id for r in records]
        wanted = {r.request_id for r in requests}
        assert sorted(i for i in ids if i in wanted) == sorted(wanted)


async def test_a_rebalance_mid_load_hands_over_queued_records_and_commits_go_on(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    """Worker A is busy (one slow engine slot) when B joins: A gives up the records it has not
    started, B serves them, every request is answered, and both keep committing afterwards."""
    group = f"{prefix}gold-rebalance"
    topic = TIER_TOPICS[Tier.GOLD].name(prefix)
    slow = ScriptedEngine(ScriptedProfile(latency_ms=100))
    other = ScriptedEngine(ScriptedProfile(latency_ms=100))
    requests = [make_request(300 + i) for i in range(40)]
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            running_worker(settings, prefix, Tier.GOLD, slow, group_id=group, max_in_flight=1, max_pending=2)
        )
        deadline = now_ms() + 120_000
        for r in requests:
            await producer.send(
                topic, r.to_bytes(), key=r.npc_id.encode(), headers=deadline_headers(deadline, "gold")
            )
        await producer.flush()
        assert await eventually(lambda: slow.calls >= 3, timeout_s=20)
        b = await stack.enter_async_context(
            running_worker(settings, prefix, Tier.GOLD, other, group_id=group, max_in_flight=1)
        )
        assert await eventually(lambda: bool(a.partitions()) and bool(b.partitions()), timeout_s=30)
        assert await eventually(lambda: slow.calls + other.calls >= len(requests), timeout_s=60)
        assert other.calls > 0
        assert a.stats.handed_back > 0  # the revoke found records queued in A and handed them over
        wanted = {r.request_id for r in requests}
        records = await read_topic(kafka, REPLIES.name(prefix), expect=len(requests))
        answered = {Reply.from_bytes(r.value).request_id for r in records}
        assert wanted <= answered
        # Commits were not wedged by the revoke: each worker's committed offsets reach its partitions' ends.
        for w in (a, b):
            for _ in range(50):
                if await w.lag() == 0:
                    break
                await asyncio.sleep(0.2)
            assert await w.lag() == 0
