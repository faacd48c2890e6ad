"""Which Kafka-protocol broker the stack runs, and checks of the broker behaviour npcflow relies on.

Two product work-arounds exist only because Tansu answers ListOffsets wrongly:
``pipeline.client.NPCClient`` also drops replies older than its start by timestamp, and
``TierWorker.lag`` uses fetch high-water marks. :func:`check_offsets` tells, for the broker at
hand, whether ListOffsets(latest) and ``offsets_for_times`` are right (real Kafka and noida-db:
yes; Tansu 0.6: no), so those work-arounds can be kept behind a fact instead of a guess.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from devstack.launchers import broker_launcher
from pipeline import kafka
from pipeline.config import Settings

_CLIENT_ID = "npcflow-broker-check"


def broker_identity(settings: Settings, started: bool) -> dict[str, str]:
    """``{"broker", "broker_version"}``: the embedded broker the settings pick, or ``external``.

    ``started``: whether the stack started the broker (it did not when ``NPCFLOW_KAFKA_BOOTSTRAP``
    named one); an external broker's version is not asked for.
    """
    if not started:
        return {"broker": "external", "broker_version": "unknown"}
    launcher = broker_launcher(settings)
    return {"broker": launcher.broker, "broker_version": launcher.version_of()}


@dataclass(frozen=True)
class OffsetsBehaviour:
    """What the broker answered for a partition holding exactly ``records`` records."""

    records: int
    #: ListOffsets(latest): must be ``records``.
    latest: int
    #: ``offsets_for_times`` for a time inside the second burst: the first record at or after it.
    for_time: int | None
    for_time_expected: int

    @property
    def latest_ok(self) -> bool:
        return self.latest == self.records

    @property
    def for_time_ok(self) -> bool:
        return self.for_time == self.for_time_expected

    @property
    def ok(self) -> bool:
        return self.latest_ok and self.for_time_ok

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"latest_ok": self.latest_ok, "for_time_ok": self.for_time_ok}


async def check_offsets(settings: Settings, *, first: int = 200, second: int = 100) -> OffsetsBehaviour:
    """Write two bursts with known timestamps to a fresh one-partition topic; ask for offsets.

    Each burst goes out unawaited, so it lands as batches of several records: Tansu 0.6 answers
    ListOffsets(latest) from the last batch's base offset (right only when that batch holds one
    record). Record timestamps are given, one ms apart, so ``offsets_for_times`` has one right answer.
    """
    topic = f"npcflow.broker-check.{uuid.uuid4().hex[:8]}"
    admin = kafka.admin(settings, _CLIENT_ID)
    await admin.start()
    try:
        await kafka.create_missing_topics(admin, [NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = kafka.producer(settings, _CLIENT_ID)
    consumer = kafka.consumer(settings, _CLIENT_ID)
    await producer.start()
    await consumer.start()
    try:
        base_ms = int(time.time() * 1000)
        await _burst(producer, topic, first, base_ms - 10 * first)
        await _burst(producer, topic, second, base_ms)
        # A time inside the second burst (one batch): the answer is a record, not a batch start.
        between_ms = base_ms + second // 2
        tp = TopicPartition(topic, 0)
        latest = (await consumer.end_offsets([tp]))[tp]
        found = (await consumer.offsets_for_times({tp: between_ms}))[tp]
    finally:
        await consumer.stop()
        await producer.stop()
    return OffsetsBehaviour(
        records=first + second,
        latest=latest,
        for_time=None if found is None else found.offset,
        for_time_expected=first + second // 2,
    )


async def _burst(producer: AIOKafkaProducer, topic: str, count: int, first_ms: int) -> None:
    """``count`` records with timestamps ``first_ms``, ``first_ms + 1`` …, sent before any is awaited."""
    sends = [
        await producer.send(topic, b"x" * 100, partition=0, timestamp_ms=first_ms + i) for i in range(count)
    ]
    await asyncio.gather(*sends)
