"""The broker behaviour npcflow relies on, checked on the stack's Apache Kafka.

Each of these was a work-around on the embedded brokers we used before (docs/architecture.md,
"The broker"): ListOffsets and ``offsets_for_times`` (replay, lag), retention (a bounded dev
stack), a waiting fetch answered as soon as data arrives (no fetch polling on latency paths),
headers and timestamps under load (deadlines), a prompt second group member.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack import kafka_dist
from devstack.kafka_launcher import KafkaLauncher
from pipeline import kafka
from pipeline.config import Settings
from topics.catalogue import GAME_STATE, REQUESTS_GOLD, short_retention
from topics.headers import DEADLINE_HEADER, TIER_HEADER


def _topic(stem: str) -> str:
    return f"broker-test.{stem}.{uuid.uuid4().hex[:6]}"


async def _create(settings: Settings, *topics: NewTopic) -> None:
    admin = kafka.admin(settings)
    await admin.start()
    try:
        await kafka.create_missing_topics(admin, topics)
    finally:
        await admin.close()


async def _burst(producer: AIOKafkaProducer, topic: str, count: int, first_ms: int) -> None:
    """``count`` records one ms apart, all sent before any is awaited: they land as multi-record batches."""
    sends = [
        await producer.send(topic, b"x" * 100, partition=0, timestamp_ms=first_ms + i) for i in range(count)
    ]
    await asyncio.gather(*sends)


def test_list_offsets_and_offsets_for_times_name_records_not_batches(settings: Settings) -> None:
    """Replay starts a window at ``offsets_for_times`` and lag uses ListOffsets(latest): both exact."""
    topic = _topic("offsets")

    async def ask() -> tuple[int, int | None]:
        await _create(settings, NewTopic(topic, 1, 1))
        producer = kafka.producer(settings, "offsets-test")
        consumer = kafka.consumer(settings, "offsets-test")
        await producer.start()
        await consumer.start()
        try:
            base_ms = int(time.time() * 1000)
            await _burst(producer, topic, 200, base_ms - 2000)
            await _burst(producer, topic, 100, base_ms)
            tp = TopicPartition(topic, 0)
            latest = (await consumer.end_offsets([tp]))[tp]
            found = (await consumer.offsets_for_times({tp: base_ms + 50}))[tp]
        finally:
            await consumer.stop()
            await producer.stop()
        return latest, None if found is None else found.offset

    assert asyncio.run(ask()) == (300, 250)


def test_catalogue_overrides_reach_the_broker(settings: Settings) -> None:
    """The dev stack's retention is a per-topic config the broker stores (and reports)."""
    overrides = short_retention(retention_ms=5000, segment_ms=1000)
    gold_name, state_name = _topic("gold"), _topic("state")
    gold = NewTopic(gold_name, 2, 1, topic_configs=REQUESTS_GOLD.config(overrides))
    state = NewTopic(state_name, 2, 1, topic_configs=GAME_STATE.config(overrides))
    assert state.topic_configs == {"cleanup.policy": "compact", "segment.ms": "1000"}

    async def described() -> dict[str, dict[str, str]]:
        await _create(settings, gold, state)
        admin = kafka.admin(settings)
        await admin.start()
        try:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in (gold_name, state_name)]
            )
        finally:
            await admin.close()
        out: dict[str, dict[str, str]] = {}
        for response in responses:
            for _code, _msg, _type, name, entries in response.resources:
                out[name] = {entry[0]: entry[1] for entry in entries}
        return out

    configs = asyncio.run(described())
    assert configs[gold_name]["retention.ms"] == "5000"
    assert configs[gold_name]["segment.ms"] == "1000"
    assert configs[state_name]["cleanup.policy"] == "compact"


def test_a_waiting_fetch_returns_as_soon_as_a_record_arrives(settings: Settings) -> None:
    """Why latency paths need no fetch polling: with a 2 s fetch wait a record still arrives in ms."""
    topic = _topic("wait")

    async def delays() -> list[float]:
        await _create(settings, NewTopic(topic, 1, 1))
        producer = kafka.producer(settings, "wait-test")
        consumer = kafka.consumer(settings, "wait-test", topic, fetch_max_wait_ms=2000, fetch_min_bytes=1)
        await producer.start()
        await consumer.start()
        out: list[float] = []
        try:
            await producer.send_and_wait(topic, b"warm-up")
            await consumer.getone()
            for _ in range(10):
                await asyncio.sleep(0.3)  # the consumer's fetch is now parked at the broker
                sent = time.perf_counter()
                await producer.send_and_wait(topic, b"x")
                await consumer.getone()
                out.append((time.perf_counter() - sent) * 1000)
        finally:
            await consumer.stop()
            await producer.stop()
        return out

    measured = sorted(asyncio.run(delays()))
    assert measured[len(measured) // 2] < 100, measured


def test_retention_deletes_old_segments(settings: Settings) -> None:
    """Records older than retention.ms leave once their segment rolled: the dev stack stays bounded."""
    topic = _topic("retention")

    async def start_offset_after_retention() -> int:
        config = short_retention(retention_ms=1000, segment_ms=300) | {"file.delete.delay.ms": "0"}
        await _create(settings, NewTopic(topic, 1, 1, topic_configs=config))
        producer = kafka.producer(settings, "retention-test")
        consumer = kafka.consumer(settings, "retention-test")
        await producer.start()
        await consumer.start()
        tp = TopicPartition(topic, 0)
        try:
            for _ in range(50):
                await producer.send_and_wait(topic, b"x" * 100)
            await asyncio.sleep(1.5)
            await producer.send_and_wait(topic, b"new")  # rolls the segment that held the 50
            deadline = time.monotonic() + 60  # the broker's retention check runs every 30 s here
            while time.monotonic() < deadline:
                start = (await consumer.beginning_offsets([tp]))[tp]
                if start >= 50:
                    return start
                await asyncio.sleep(1.0)
            return start
        finally:
            await consumer.stop()
            await producer.stop()

    assert asyncio.run(start_offset_after_retention()) >= 50


def test_headers_and_timestamps_survive_a_busy_partition(settings: Settings) -> None:
    """The deadline travels as a header: every record must come back with its own headers and time."""
    topic = _topic("busy")

    async def roundtrip() -> list[str]:
        await _create(settings, NewTopic(topic, 3, 1))
        producer = kafka.producer(settings, "headers-test")
        consumer = kafka.consumer(settings, "headers-test", topic)
        await producer.start()
        await consumer.start()
        problems: list[str] = []
        try:
            sent = time.time() * 1000
            sends = []
            for i in range(2000):
                headers = [(DEADLINE_HEADER, str(i).encode()), (TIER_HEADER, b"gold")]
                sends.append(
                    await producer.send(topic, str(i).encode(), key=str(i).encode(), headers=headers)
                )
                if i % 100 == 0:
                    await asyncio.sleep(0.005)
            await asyncio.gather(*sends)
            seen = 0
            deadline = time.monotonic() + 20
            while seen < 2000 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        seen += 1
                        if dict(r.headers).get(DEADLINE_HEADER) != r.key:
                            problems.append(f"{r.partition}/{r.offset}: headers {r.headers} for key {r.key}")
                        if abs(r.timestamp - sent) > 60_000:
                            problems.append(
                                f"{r.partition}/{r.offset}: timestamp {r.timestamp}, sent ~{sent:.0f}"
                            )
            if seen != 2000:
                problems.append(f"read {seen} of 2000")
        finally:
            await consumer.stop()
            await producer.stop()
        return problems

    assert asyncio.run(roundtrip()) == []


def test_two_group_members_share_partitions_promptly(settings: Settings) -> None:
    """A second member of a group gets its share within a couple of seconds (no initial delay)."""
    topic, group = _topic("shared"), f"g-{uuid.uuid4().hex[:6]}"

    async def assignments() -> tuple[set[int], set[int], float]:
        await _create(settings, NewTopic(topic, 4, 1))
        quick = settings.with_(kafka=type(settings.kafka)(session_timeout_s=6.0))
        first = kafka.consumer(quick, "m1", topic, group_id=group)
        second = kafka.consumer(quick, "m2", topic, group_id=group)
        await first.start()
        began = time.monotonic()
        await second.start()
        deadline = time.monotonic() + 30
        a: set[int] = set()
        b: set[int] = set()
        while time.monotonic() < deadline:
            await asyncio.gather(first.getmany(timeout_ms=100), second.getmany(timeout_ms=100))
            a = {tp.partition for tp in first.assignment()}
            b = {tp.partition for tp in second.assignment()}
            if a and b and not a & b and len(a | b) == 4:
                break
        took = time.monotonic() - began
        await first.stop()
        await second.stop()
        return a, b, took

    a, b, took = asyncio.run(assignments())
    assert a and b and not a & b and a | b == {0, 1, 2, 3}, (a, b)
    assert took < 10, took


def test_the_stack_names_the_pinned_kafka_version() -> None:
    assert kafka_dist.version() == f"Apache Kafka {kafka_dist.KAFKA_VERSION}"
    assert kafka_dist.broker_identity(started=True) == {"broker": "Apache Kafka 4.4.0"}
    assert kafka_dist.broker_identity(started=False) == {"broker": "external"}


def test_a_three_node_cluster_replicates_every_topic(tmp_path: object) -> None:
    """``stack up --brokers 3``: replication factor 3 and min.insync.replicas 2 for every topic."""
    launcher = KafkaLauncher(state_dir=tmp_path, port=0, nodes=3)  # type: ignore[arg-type]
    props = [launcher.properties(node) for node in (1, 2, 3)]
    assert {p["default.replication.factor"] for p in props} == {"3"}
    assert {p["min.insync.replicas"] for p in props} == {"2"}
    assert {p["offsets.topic.replication.factor"] for p in props} == {"3"}
    assert len({p["listeners"] for p in props}) == 3
    assert len({p["controller.quorum.voters"] for p in props}) == 1
