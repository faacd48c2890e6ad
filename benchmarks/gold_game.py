"""Gold as a game uses it: a small active set kept fresh, read every frame, asked in realtime.

The default mode of ``benchmarks/gold_path.py``. 1,000 NPCs, of which 200 are active: the game
server watches them (``IntentCache.watch``), and every 10 s 10 % of the active set changes (20
unwatched, 20 others watched). A game-loop thread reads every active NPC's intent at 60 Hz from
the SDK's near cache; Gold requests at 200 req/s go to the active NPCs, through the real router
(answers from its near cache) with a Gold worker process running a scripted 5 ms engine, whose
scheduler refreshes each active NPC at ``NPCFLOW_GOLD_REFRESH_HZ``. After a 5 s warm-up it measures
what the game sees: the share of frame reads that got a model intent, their age, replies' latency,
reads' cost, and the refresh rate achieved against the rate asked.

Then a **capacity** segment on fresh topics: a 50 ms engine with 4 engine slots (80 refreshes/s)
for 200 active NPCs at 2 Hz (400 asked). The scheduler must lower every NPC's rate evenly (the
per-NPC rates' min/median/max) and keep each intent's age bounded (read with a TTL long enough to
see the real age), instead of queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import load_clients, pace
from gold_common import (
    FrameReader,
    GoldReplies,
    ReplyMatcher,
    archetype,
    gold_processes,
    gold_request,
    log,
    scrape_procs,
    share_within,
)

from devstack.processes import PipelineProcesses
from pipeline.config import Settings
from pipeline.intents import IntentCache
from pipeline.observability.metrics import percentiles
from topics.catalogue import REPLIES, REQUESTS
from topics.schemas import Intent, Reply

CHURN_EVERY_S = 10.0
CHURN_SHARE = 0.10
PROMPT = "Players are nearby."


@dataclass
class ActiveSet:
    """The game's active NPCs; the frame reader and the request sender read ``members`` as is."""

    all_npcs: list[str]
    size: int
    rng: random.Random
    members: list[tuple[str, str]] = field(default_factory=list)
    #: npc_id → when it last joined (monotonic s), for NPCs active now.
    joined: dict[str, float] = field(default_factory=dict)

    def start(self, cache: IntentCache) -> None:
        chosen = self.rng.sample(range(len(self.all_npcs)), self.size)
        self._watch(cache, chosen)

    def churn(self, cache: IntentCache, share: float) -> None:
        """Unwatch ``share`` of the set, watch as many others."""
        count = max(1, int(self.size * share))
        leaving = self.rng.sample([n for n, _ in self.members], count)
        cache.unwatch(leaving)
        for npc in leaving:
            self.joined.pop(npc, None)
        staying = [m for m in self.members if m[0] not in set(leaving)]
        active = {n for n, _ in staying} | set(leaving)
        free = [i for i, n in enumerate(self.all_npcs) if n not in active]
        self.members = staying
        self._watch(cache, self.rng.sample(free, count))

    def _watch(self, cache: IntentCache, indices: list[int]) -> None:
        now = time.monotonic()
        by_kind: dict[str, list[str]] = {}
        for i in indices:
            by_kind.setdefault(archetype(i), []).append(self.all_npcs[i])
        for kind, npcs in by_kind.items():
            cache.watch(npcs, archetype=kind, prompt=PROMPT)
            for npc in npcs:
                self.joined[npc] = now
        self.members = self.members + [(self.all_npcs[i], archetype(i)) for i in indices]


@dataclass
class Replies(GoldReplies):
    #: Created → the router answered (the reply's replied_at_ms): the rest is the reply's way back.
    answered_ms: list[float] = field(default_factory=list)


async def requests(settings: Settings, prefix: str, active: ActiveSet, args: argparse.Namespace) -> Replies:
    """Gold requests at ``args.rate`` over the active NPCs for the warm-up and the measured window."""
    producer, consumer = await load_clients(settings, "bench-game", REPLIES.name(prefix))
    out = Replies()
    measuring = {"on": False}

    def on_reply(reply: Reply, created: float, arrived_ms: float) -> None:
        if out.count(reply, created, arrived_ms):
            out.answered_ms.append(reply.replied_at_ms - created)

    matcher = ReplyMatcher(on_reply)

    async def send(n: int) -> None:
        members = active.members
        npc_id, kind = members[n * 7919 % len(members)]
        request = gold_request(n, npc_id, kind, args.budget_ms)
        matcher.sent[request.request_id.encode()] = request.created_at_ms
        if measuring["on"]:
            out.measured(request)
        await producer.send(REQUESTS.name(prefix), request.to_bytes(), key=npc_id.encode())

    matcher.start(consumer)
    await pace(args.rate, args.warmup, send)
    measuring["on"] = True
    await pace(args.rate, args.duration, send)
    await matcher.finish(producer)
    out.duplicates = matcher.duplicates
    await consumer.stop()
    await producer.stop()
    return out


class IntentArrivals:
    """Intents seen on ``npc.intents`` per NPC, with their arrival time (monotonic s)."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}

    def __call__(self, intent: Intent) -> None:
        if intent.engine != "game":
            self.at.setdefault(intent.npc_id, []).append(time.monotonic())

    def rates(self, npcs: list[str], start: float, end: float) -> list[float]:
        """Each NPC's refreshes per second within [start, end)."""
        span = end - start
        return [sum(start <= t < end for t in self.at.get(n, ())) / span for n in npcs]


def spread(rates: list[float]) -> dict[str, float | None]:
    if not rates:
        return {"min": None, "median": None, "max": None}
    return {
        "min": round(min(rates), 3),
        "median": round(statistics.median(rates), 3),
        "max": round(max(rates), 3),
    }


async def game_segment(settings: Settings, prefix: str, args: argparse.Namespace) -> dict[str, object]:
    """The main segment (router and worker already running under ``prefix``)."""
    rng = random.Random(args.seed)
    active = ActiveSet([f"npc-{i:04d}" for i in range(args.npcs)], args.active, rng)
    arrivals = IntentArrivals()
    async with IntentCache(
        settings, prefix=prefix, client_id="bench-game-server", tenant_id="bench"
    ) as cache:
        cache.add_listener(arrivals)
        active.start(cache)
        reader = FrameReader(cache, lambda: active.members, args.frame_hz)
        reader.start()
        start = time.monotonic()

        async def churn() -> None:
            while True:
                await asyncio.sleep(CHURN_EVERY_S)
                active.churn(cache, CHURN_SHARE)
                log(f"  churn: {int(args.active * CHURN_SHARE)} NPCs out, as many in; intents {len(cache)}")

        async def measure_from_warmup() -> None:
            await asyncio.sleep(args.warmup)
            reader.measuring.set()
            log(f"measuring {args.duration:.0f} s")

        tasks = [asyncio.create_task(churn()), asyncio.create_task(measure_from_warmup())]
        try:
            replies = await requests(settings, prefix, active, args)
        finally:
            end = time.monotonic()
            for task in tasks:
                task.cancel()
            reader.stop_event.set()
            reader.join()
    window = (start + args.warmup, end)
    # The refresh rate per NPC, over NPCs active for the whole measured window.
    stable = [n for n, _ in active.members if active.joined.get(n, end) <= window[0]]
    rates = arrivals.rates(stable, *window)
    return {
        **reader.reads.summary(),
        "refresh_hz": {
            "asked": settings.intents.refresh_hz,
            "achieved": round(statistics.mean(rates), 3) if rates else None,
            "per_npc": spread(rates),
            "npcs_measured": len(stable),
        },
        "sent": replies.sent,
        "replied": replies.replied,
        "lost": replies.sent - replies.replied,
        "duplicates": replies.duplicates,
        "reply_ms": percentiles(replies.reply_ms),
        "answered_ms": percentiles(replies.answered_ms),
        "within_budget": share_within(replies.reply_ms, args.budget_ms, replies.sent),
        "served_by": dict(replies.served_by),
    }


async def capacity_segment(
    settings: Settings, prefix: str, args: argparse.Namespace, procs: PipelineProcesses
) -> dict[str, object]:
    """Watch ``args.active`` NPCs and read their real ages (TTL 10 min) while the engine falls short."""
    npcs = [(f"cap-{i:04d}", archetype(i)) for i in range(args.active)]
    arrivals = IntentArrivals()
    cache = IntentCache(
        settings, prefix=prefix, client_id="bench-capacity", tenant_id="bench", ttl_ms=600_000
    )
    async with cache:
        cache.add_listener(arrivals)
        cache.watch([n for n, _ in npcs], prompt=PROMPT)
        reader = FrameReader(cache, lambda: npcs, args.capacity_read_hz)
        reader.start()
        await asyncio.sleep(args.warmup)
        start = time.monotonic()
        reader.measuring.set()
        await asyncio.sleep(args.capacity_duration)
        end = time.monotonic()
        reader.stop_event.set()
        reader.join()
        metrics = scrape_procs(procs)  # the worker's own view, before the set empties
        cache.unwatch([n for n, _ in npcs])
        await asyncio.sleep(0.2)
    rates = arrivals.rates([n for n, _ in npcs], start, end)
    achieved_total = sum(rates)
    ages = list(reader.reads.age_ms)
    return {
        "engine": f"scripted:latency_ms={args.capacity_engine_ms:g}",
        "slots": args.capacity_slots,
        "active": args.active,
        "asked_per_s": round(args.active * settings.intents.refresh_hz, 1),
        "capacity_per_s": round(args.capacity_slots * 1000 / args.capacity_engine_ms, 1),
        "achieved_per_s": round(achieved_total, 1),
        "per_npc_hz": spread(rates),
        # Oldest first at the achieved rate: each NPC waits for every other once, so about N / rate.
        "age_bound_ms": round(1000 * args.active / achieved_total) if achieved_total else None,
        "age_ms": {**percentiles(ages, (50, 95, 99)), "max": round(max(ages), 1) if ages else None},
        "worker": {
            "shortfall": round(metrics.total("npcflow_gold_refresh_shortfall"), 3),
            "achieved_hz": round(metrics.total("npcflow_gold_refresh_hz", kind="achieved"), 3),
            "active_npcs": metrics.total("npcflow_gold_active_npcs"),
        },
    }


def run_capacity(settings: Settings, prefix: str, work: Path, args: argparse.Namespace) -> dict[str, object]:
    procs = gold_processes(
        settings,
        prefix,
        work / "capacity",
        engine=f"scripted:latency_ms={args.capacity_engine_ms:g}",
        router=False,
        extra_env={"NPCFLOW_MAX_IN_FLIGHT": str(args.capacity_slots)},
    )
    try:
        result = asyncio.run(capacity_segment(settings, prefix, args, procs))
    finally:
        procs.stop()
    log(f"capacity: {result}")
    return result
