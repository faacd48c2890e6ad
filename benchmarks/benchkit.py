"""What every benchmark shares: the broker it ran on, fresh topics, the load's pacing and reply
matching, CPU accounting, and what the broker holds.

Every measured segment starts on topics of its own (a new prefix, :func:`fresh_topics`) created
with the benchmark retention (:data:`topics.catalogue.BENCHMARK_TOPIC_CONFIG`), so segments never
read each other's traffic, and the JSON says which broker it was and how many records each
partition held at the end of a segment. A load sends at a steady rate (:func:`pace`) and matches
each reply to its request (:class:`ReplyReader`); both sides of a comparison go through the same
two, so neither is measured by a different clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from devstack.kafka_dist import broker_identity
from devstack.stack import EmbeddedStack
from pipeline import eventloop, kafka
from pipeline.config import Settings
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import BENCHMARK_TOPIC_CONFIG, TopicSpec
from topics.fields import Sla
from topics.schemas import Request

#: What a load notes about a request when it sends it (its send time, and whatever it judges by).
Noted = TypeVar("Noted")


def bench_settings() -> Settings:
    """The settings from the environment only, with the event loop they name installed.

    A stack.env left in .npcflow must not pick the broker by accident.
    """
    settings = Settings.from_env(stack_file=False)
    eventloop.install(settings.process.event_loop)
    return settings


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


def fresh_topics(settings: Settings, label: str) -> str:
    """A new prefix for one of ``label``'s segments, with its topics created; returns the prefix."""
    prefix = fresh_prefix(label)
    create_fresh_topics(settings, prefix)
    return prefix


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class CpuMeter:
    """CPU seconds each named process has spent since the meter was made."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def spent(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}

    def cores(self, wall_s: float) -> dict[str, float]:
        """Cores each process kept busy over ``wall_s`` seconds."""
        return {name: round(sec / wall_s, 2) for name, sec in self.spent().items()}


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


async def pace(
    rate: float,
    duration: float,
    send: Callable[[int], Awaitable[None]],
    on_tick: Callable[[float], None] | None = None,
    *,
    tick: float = 0.005,
) -> int:
    """Call ``send(n)`` ``rate`` times a second for ``duration`` seconds; returns how many were sent.

    The sends owed are sent at the start of each ``tick`` (a steady rate, not a closed loop that
    slows down with the system under test); ``on_tick(elapsed)`` runs first, before them.
    """
    owed, n = 0.0, 0
    start = next_tick = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        if on_tick is not None:
            on_tick(elapsed)
        owed += rate * tick
        while owed >= 1:
            owed -= 1
            await send(n)
            n += 1
        next_tick += tick
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    return n


class ReplyReader(Generic[Noted]):
    """Reads a load's replies in the background, from :meth:`start` until :meth:`finish`.

    A load puts what it notes about a request at sending (its send time, whatever it judges by)
    in :attr:`sent` under the key its reply will be matched by; :meth:`_match` takes it out again
    when the reply comes. Every batch is stamped once, with ``clock()``, as it comes back; once
    sending stopped, replies are awaited for ``drain_s`` at most.
    """

    def __init__(
        self, *, drain_s: float = 10.0, poll_ms: int = 50, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.sent: dict[bytes, Noted] = {}
        self._drain_s, self._poll_ms, self._clock = drain_s, poll_ms, clock
        self._done = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def start(self, consumer: AIOKafkaConsumer) -> None:
        self._reader = asyncio.create_task(self._read(consumer))

    async def finish(self, producer: AIOKafkaProducer) -> None:
        """Flush the requests, then wait (at most ``drain_s``) for the replies still pending."""
        await producer.flush()
        self._done.set()
        assert self._reader is not None, "start() first"
        try:
            await asyncio.wait_for(self._reader, timeout=self._drain_s)
        except TimeoutError:
            self._reader.cancel()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while not (self._done.is_set() and not self.sent):
            batches = await consumer.getmany(timeout_ms=self._poll_ms)
            arrived = self._clock()
            for records in batches.values():
                for r in records:
                    self._match(r, arrived)

    def _match(self, record: ConsumerRecord, arrived: float) -> None:
        raise NotImplementedError


class PendingReplies(ReplyReader[Noted]):
    """Replies matched to their requests by the reply's key (the request id).

    ``on_reply(record, noted, arrived)`` runs once per request, ``arrived`` a ``perf_counter``
    reading; a reply with nothing pending (another load's, or a second copy) is skipped.
    """

    def __init__(
        self, on_reply: Callable[[ConsumerRecord, Noted, float], None], drain_s: float = 10.0
    ) -> None:
        super().__init__(drain_s=drain_s)
        self._on_reply = on_reply

    def _match(self, record: ConsumerRecord, arrived: float) -> None:
        noted = self.sent.pop(record.key or b"", None)
        if noted is not None:
            self._on_reply(record, noted, arrived)
