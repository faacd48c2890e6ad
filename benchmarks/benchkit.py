"""What every benchmark shares: the broker it ran on, fresh topics, and what the broker holds.

Every measured segment starts on topics of its own (a new prefix, :func:`fresh_prefix`) created
with the benchmark retention (:data:`topics.catalogue.BENCHMARK_TOPIC_CONFIG`), so segments never
read each other's traffic, and the JSON says which broker it was and how many records each
partition held at the end of a segment.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devstack.kafka_dist import broker_identity
from devstack.stack import EmbeddedStack
from pipeline import kafka
from pipeline.config import Settings
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import BENCHMARK_TOPIC_CONFIG, TopicSpec
from topics.fields import Sla
from topics.schemas import Request


@dataclass
class Broker:
    """The broker a benchmark runs on; ``pid`` only when the benchmark started it."""

    settings: Settings
    identity: dict[str, str] = field(default_factory=dict)
    pid: int | None = None

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid) if self.pid else 0.0

    def rss_mib(self) -> float | None:
        return round(psutil.Process(self.pid).memory_info().rss / 2**20, 1) if self.pid else None


def start_broker(settings: Settings, work: Path, stack: ExitStack) -> Broker:
    """The broker ``NPCFLOW_KAFKA_BOOTSTRAP`` names, else the embedded stack's (stopped with ``stack``)."""
    if settings.kafka_bootstrap:
        return Broker(settings, broker_identity(started=False))
    embedded = EmbeddedStack(work / "stack", settings=settings)
    endpoints = embedded.start()
    stack.callback(embedded.stop)
    pid = next(p.pid for p in embedded.processes if p.name == "kafka")
    return Broker(endpoints.apply_to(settings), broker_identity(started=True), pid)


def fresh_prefix(label: str) -> str:
    return f"bench.{label}.{uuid.uuid4().hex[:6]}."


def create_fresh_topics(settings: Settings, prefix: str) -> None:
    asyncio.run(create_embedded_topics(settings, prefix, overrides=BENCHMARK_TOPIC_CONFIG))


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def records_per_partition(
    settings: Settings, prefix: str, specs: tuple[TopicSpec, ...]
) -> dict[str, int]:
    """``{topic: records held in its fullest partition}`` (end offset minus start offset)."""
    consumer = kafka.consumer(settings, "bench-records")
    await consumer.start()
    try:
        base = {spec.name(prefix): spec.base for spec in specs}
        tps = [
            TopicPartition(spec.name(prefix), p)
            for spec in specs
            for p in sorted(await kafka.partitions(consumer, spec.name(prefix)))
        ]
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        result: dict[str, int] = {}
        for tp in tps:
            held = max(0, ends[tp] - starts[tp])
            result[base[tp.topic]] = max(result.get(base[tp.topic], 0), held)
        return result
    finally:
        await consumer.stop()


async def load_clients(
    settings: Settings, client_id: str, replies: str
) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
    """A started producer, and a consumer assigned to ``replies`` from its end: a load generator's clients."""
    producer, consumer = kafka.producer(settings, client_id), kafka.consumer(settings, client_id)
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(replies, p) for p in sorted(await kafka.partitions(consumer, replies))]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return producer, consumer


def realtime_request(n: int, tenant: str, letter: str, npcs: int = 300) -> Request:
    """The ``n``-th request of a load: realtime, 8 tokens, a long budget (latency is measured, not judged)."""
    return Request(
        request_id=f"{letter}{n:08d}-{uuid.uuid4().hex[:8]}",
        npc_id=f"npc-{n % npcs}",
        tenant_id=tenant,
        prompt="Wave at the player.",
        max_tokens=8,
        sla=Sla.REALTIME,
        latency_budget_ms=600_000,
        created_at_ms=int(time.time() * 1000),
    )
