"""What both Gold benchmark modes share: the pipeline's processes, the two-hop floor, pacing, reads.

:mod:`gold_path` is the entry point (``--mode game``, the default, in :mod:`gold_game`;
``--mode requests`` in :mod:`gold_path` itself).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import ConsumerRecord
from benchkit import PendingReplies, ReplyReader, create_fresh_topics, load_clients, pace

from devstack.processes import PipelineProcesses
from pipeline.config import Settings
from pipeline.intents import IntentCache
from pipeline.observability.metrics import percentiles
from pipeline.observability.scrape import Scrape, scrape
from topics.catalogue import REPLIES, REQUESTS, Tier
from topics.fields import Sla
from topics.schemas import Reply, Request

ARCHETYPES = ("guard", "merchant", "villager", "wolf", "bandit", "child")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def share_within(latencies_ms: list[float], budget_ms: float, sent: int | None = None) -> float | None:
    """The share of ``sent`` (default: of the samples) answered within ``budget_ms``; None if none."""
    total = len(latencies_ms) if sent is None else sent
    return round(sum(ms <= budget_ms for ms in latencies_ms) / total, 4) if total else None


def archetype(index: int) -> str:
    return ARCHETYPES[index % len(ARCHETYPES)]


def gold_request(n: int, npc_id: str, kind: str, budget_ms: int) -> Request:
    """The ``n``-th Gold request of a load: a game event near an NPC of archetype ``kind``, created now."""
    return Request(
        request_id=f"g{n:08d}-{uuid.uuid4().hex[:6]}",
        npc_id=npc_id,
        tenant_id="bench",
        prompt="A wolf jumps out of the bushes.",
        max_tokens=8,
        sla=Sla.REALTIME,
        latency_budget_ms=budget_ms,
        context={"archetype": kind},
        created_at_ms=int(time.time() * 1000),
    )


@dataclass
class GoldReplies:
    """The requests a Gold load sent once measuring, and the replies to them (both modes' tally)."""

    #: Request id → when it was created (epoch ms), for the requests measured.
    created_ms: dict[str, float] = field(default_factory=dict)
    reply_ms: list[float] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    replied: int = 0
    duplicates: int = 0

    def measured(self, request: Request) -> None:
        self.created_ms[request.request_id] = request.created_at_ms
        self.sent += 1

    def count(self, reply: Reply, created: float, arrived_ms: float) -> bool:
        """Count ``reply`` if its request was measured (else it is the warm-up's); says which."""
        if reply.request_id not in self.created_ms:
            return False
        self.replied += 1
        self.reply_ms.append(arrived_ms - created)
        self.served_by[reply.served_by.value] += 1
        return True


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


async def floor_segment(settings: Settings, prefix: str, rate: float, duration: float) -> list[float]:
    """Produce → relay process → consume (two hops), keyed by request id; milliseconds per record."""
    intake = REQUESTS.name(prefix)
    producer, consumer = await load_clients(settings, "bench-floor", REPLIES.name(prefix))
    latencies: list[float] = []
    pending: PendingReplies[float] = PendingReplies(
        lambda _record, t0, now: latencies.append((now - t0) * 1000)
    )

    async def send(n: int) -> None:
        key = f"f{n:08d}".encode()
        pending.sent[key] = time.perf_counter()
        await producer.send(intake, b'{"floor":true,"pad":"' + b"x" * 200 + b'"}', key=key)

    pending.start(consumer)
    await pace(rate, duration, send)
    await pending.finish(producer)
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


class ReplyMatcher(ReplyReader[float]):
    """Gold's replies matched by the request id they carry: each counted once, a second copy as a duplicate.

    :attr:`sent` maps a request id (bytes) to when it was created (epoch ms), and
    ``on_reply(reply, created_ms, arrived_ms)`` runs once a request, on the same clock.
    """

    def __init__(self, on_reply: Callable[[Reply, float, float], None]) -> None:
        super().__init__(drain_s=15.0, poll_ms=20, clock=lambda: time.time() * 1000)
        self._on_reply = on_reply
        self.answered: set[str] = set()
        self.duplicates = 0

    def _match(self, record: ConsumerRecord, arrived: float) -> None:
        reply = Reply.from_bytes(record.value)
        if reply.request_id in self.answered:
            self.duplicates += 1
            return
        created = self.sent.pop(reply.request_id.encode(), None)
        if created is None:
            return  # not this run's
        self.answered.add(reply.request_id)
        self._on_reply(reply, created, arrived)
