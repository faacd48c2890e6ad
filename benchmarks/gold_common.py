"""What both Gold benchmark modes share: the pipeline's processes, the two-hop floor, pacing, reads.

:mod:`gold_path` is the entry point (``--mode game``, the default, in :mod:`gold_game`;
``--mode requests`` in :mod:`gold_path` itself).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from benchkit import create_fresh_topics, load_clients

from devstack.processes import PipelineProcesses
from pipeline.config import Settings
from pipeline.intents import IntentCache
from pipeline.observability.metrics import percentiles
from pipeline.observability.scrape import Scrape, scrape
from topics.catalogue import REPLIES, REQUESTS, Tier
from topics.schemas import Reply

ARCHETYPES = ("guard", "merchant", "villager", "wolf", "bandit", "child")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def archetype(index: int) -> str:
    return ARCHETYPES[index % len(ARCHETYPES)]


def gold_processes(
    settings: Settings,
    prefix: str,
    work: Path,
    *,
    engine: str,
    router: bool = True,
    extra_env: dict[str, str] | None = None,
) -> PipelineProcesses:
    """A Gold worker (``engine``) and, if asked, a router on fresh topics under ``prefix``; started.

    Every process serves /metrics on a free port (``metrics_targets()`` names them).
    """
    create_fresh_topics(settings, prefix)
    env = {
        k: v
        for k, v in {
            "NPCFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "NPCFLOW_REDIS_URL": settings.redis_url,
        }.items()
        if v
    }
    env |= {"NPCFLOW_TOPIC_PREFIX": prefix, "NPCFLOW_METRICS_PORT": "0", **(extra_env or {})}
    procs = PipelineProcesses(
        env, work, routers=int(router), workers={Tier.GOLD: 1}, engines={Tier.GOLD: engine}
    )
    procs.start()
    return procs


def scrape_procs(procs: PipelineProcesses) -> Scrape:
    return scrape(procs.metrics_targets().values())


@dataclass
class Reads:
    """What a game loop's reads saw (only while ``measuring``)."""

    read_ns: array = field(default_factory=lambda: array("q"))
    age_ms: array = field(default_factory=lambda: array("d"))
    model: int = 0
    default: int = 0
    frames: int = 0
    overruns: int = 0

    def summary(self) -> dict[str, object]:
        reads = sorted(self.read_ns)
        total = self.model + self.default
        return {
            "reads": total,
            "model_intent_share": round(self.model / total, 4) if total else None,
            "freshness_ms": percentiles(list(self.age_ms), (50, 95)),
            "read_us": {
                "p50": round(reads[len(reads) // 2] / 1000, 2) if reads else None,
                "p99": round(reads[min(len(reads) - 1, int(0.99 * len(reads)))] / 1000, 2) if reads else None,
            },
            "frame_overruns": self.overruns,
        }


class FrameReader(threading.Thread):
    """A synchronous game loop: ``get_intent`` for every NPC of ``npcs()``, ``hz`` times a second.

    ``npcs`` is called once per frame, so the game may change its active set between frames.
    """

    def __init__(self, cache: IntentCache, npcs: Callable[[], list[tuple[str, str]]], hz: float) -> None:
        super().__init__(name="frame-reader", daemon=True)
        self.cache, self.npcs, self.period = cache, npcs, 1.0 / hz
        self.reads = Reads()
        self.measuring = threading.Event()
        self.stop_event = threading.Event()

    def run(self) -> None:
        get, clock, reads = self.cache.get_intent, time.perf_counter_ns, self.reads
        next_frame = time.perf_counter()
        while not self.stop_event.is_set():
            measuring = self.measuring.is_set()
            for npc_id, kind in self.npcs():
                t0 = clock()
                seen = get(npc_id, kind)
                elapsed = clock() - t0
                if not measuring:
                    continue
                reads.read_ns.append(elapsed)
                if seen.from_model:
                    reads.model += 1
                    reads.age_ms.append(seen.age_ms or 0.0)
                else:
                    reads.default += 1
            reads.frames += 1
            next_frame += self.period
            pause = next_frame - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                reads.overruns += measuring
                next_frame = time.perf_counter()


async def pace(
    rate: float,
    duration: float,
    send: Callable[[int], Awaitable[None]],
    on_tick: Callable[[float], None] | None = None,
) -> int:
    """Call ``send(n)`` ``rate`` times a second for ``duration`` seconds, in 5 ms ticks."""
    tick, owed, n = 0.005, 0.0, 0
    start = next_tick = time.perf_counter()
    while time.perf_counter() - start < duration:
        owed += rate * tick
        while owed >= 1:
            owed -= 1
            await send(n)
            n += 1
        if on_tick is not None:
            on_tick(time.perf_counter() - start)
        next_tick += tick
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    return n


async def floor_segment(settings: Settings, prefix: str, rate: float, duration: float) -> list[float]:
    """Produce → relay process → consume (two hops), keyed by request id; milliseconds per record."""
    intake, replies = REQUESTS.name(prefix), REPLIES.name(prefix)
    producer, consumer = await load_clients(settings, "bench-floor", replies)
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def receive() -> None:
        while not (done.is_set() and not sent_at):
            batches = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batches.values():
                for r in records:
                    t0 = sent_at.pop(r.key or b"", None)
                    if t0 is not None:
                        latencies.append((now - t0) * 1000)

    async def send(n: int) -> None:
        key = f"f{n:08d}".encode()
        sent_at[key] = time.perf_counter()
        await producer.send(intake, b'{"floor":true,"pad":"' + b"x" * 200 + b'"}', key=key)

    receiver = asyncio.create_task(receive())
    await pace(rate, duration, send)
    await producer.flush()
    done.set()
    try:
        await asyncio.wait_for(receiver, timeout=10.0)
    except TimeoutError:
        receiver.cancel()
    await consumer.stop()
    await producer.stop()
    return latencies


@contextmanager
def floor_relay(settings: Settings, floor: str, work: Path, label: str) -> Iterator[None]:
    """The floor's relay process (``floor``'s intake → its replies) while the block runs."""
    relay = Path(__file__).with_name("relay.py")
    argv = [sys.executable, str(relay), "--bootstrap", settings.require_kafka()]
    argv += ["--source", REQUESTS.name(floor), "--target", REPLIES.name(floor), "--group", f"floor-{label}"]
    with PipelineProcesses({}, work / f"floor-{label}", routers=0, workers={}) as relays:
        relays.spawn("relay", argv)
        relays.wait_ready()
        yield


def floor_run(
    settings: Settings, floor: str, work: Path, rate: float, duration: float, label: str
) -> list[float]:
    """The two-hop floor on topics ``floor``; the relay runs only while measured (no CPU otherwise)."""
    with floor_relay(settings, floor, work, label):
        latencies = asyncio.run(floor_segment(settings, floor, rate, duration))
    log(f"floor (2 hops) {label}: {percentiles(latencies)}")
    return latencies


@dataclass
class ReplyMatcher:
    """Replies matched to the requests sent: each counted once, a second copy as a duplicate."""

    #: Request id → when it was created (epoch ms), until its reply arrives.
    pending: dict[str, float] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    duplicates: int = 0
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def start(self, consumer: AIOKafkaConsumer, on_reply: Callable[[Reply, float, float], None]) -> None:
        """Read replies in the background until :meth:`finish`."""
        self._reader = asyncio.create_task(self.read(consumer, self._done, on_reply))

    async def finish(self, producer: AIOKafkaProducer, timeout_s: float = 15.0) -> None:
        """Flush the requests, then wait (at most ``timeout_s``) for the replies still pending."""
        await producer.flush()
        self._done.set()
        assert self._reader is not None, "start() first"
        try:
            await asyncio.wait_for(self._reader, timeout=timeout_s)
        except TimeoutError:
            self._reader.cancel()

    async def read(
        self, consumer: AIOKafkaConsumer, done: asyncio.Event, on_reply: Callable[[Reply, float, float], None]
    ) -> None:
        """Until ``done`` and nothing pending: ``on_reply(reply, created_ms, arrived_ms)`` once a request."""
        while not (done.is_set() and not self.pending):
            batches = await consumer.getmany(timeout_ms=20)
            arrived_ms = time.time() * 1000
            for records in batches.values():
                for r in records:
                    reply = Reply.from_bytes(r.value)
                    if reply.request_id in self.answered:
                        self.duplicates += 1
                        continue
                    created = self.pending.pop(reply.request_id, None)
                    if created is None:
                        continue  # not this run's
                    self.answered.add(reply.request_id)
                    on_reply(reply, created, arrived_ms)
