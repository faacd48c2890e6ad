"""``npcflow demo``: the whole pipeline on the embedded stack, driven by a simulated game server.

It starts (or reuses, when configured) the stack, creates the topics, runs the router and
the three tier workers as separate processes, and sends a gold/silver/bronze mix from a few
hundred NPCs at a rate the embedded engine can serve on a laptop. Like a game, it keeps a handful
of NPCs *active* (``IntentCache.watch``): the Gold worker re-thinks their intents at 1-2 Hz, Gold
requests go to them, and the live table shows each one's current intent, its age and whether the
model produced it. It ends with a summary; ``--json`` prints one summary line instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.processes import PipelineProcesses, background_yields, yield_cpu
from devstack.stack import EmbeddedStack
from pipeline import kafka
from pipeline.client import NPCClient, ReplyTimeout
from pipeline.config import TIERS, ConfigError, Settings
from pipeline.intents import GAME_ENGINE, IntentCache
from pipeline.observability.metrics import percentiles
from pipeline.observability.validate import group_lag
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import DLQ, OUTPUTS, REQUESTS, Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.schemas import Intent, Reply, Request
from workers.sinks import SINKS
from workers.sinks import counts as sink_counts

log = logging.getLogger("npcflow.demo")

#: Share of traffic per tier and what each request asks for.
MIX: dict[Tier, float] = {Tier.GOLD: 0.5, Tier.SILVER: 0.35, Tier.BRONZE: 0.15}
SHAPES: dict[Tier, dict[str, Any]] = {
    Tier.GOLD: {"sla": Sla.REALTIME, "max_tokens": 8, "latency_budget_ms": 16},
    Tier.SILVER: {"sla": Sla.INTERACTIVE, "max_tokens": 32, "latency_budget_ms": 250},
    Tier.BRONZE: {"sla": Sla.ASYNC, "max_tokens": 96, "latency_budget_ms": 60_000},
}
PROMPTS: dict[Tier, list[str]] = {
    Tier.GOLD: [
        "A wolf jumps out of the bushes.",
        "The player draws a sword.",
        "It starts to rain.",
        "A merchant cart passes by.",
        "The player steals an apple.",
    ],
    Tier.SILVER: [
        "The player asks where the old mill is.",
        "The player asks what you sell.",
        "The player asks about the dragon rumours.",
        "The player greets you warmly.",
    ],
    Tier.BRONZE: [
        "Write how this villager lost their farm.",
        "Tell the legend of the northern tower.",
        "Describe the festival the village prepares for.",
    ],
}
#: Gold NPCs' archetypes, for their default intents (pipeline/intents/default_intents.yaml).
ARCHETYPES = ("guard", "merchant", "villager", "blacksmith", "wolf")
#: Requests per second the embedded engines keep up with at this mix on 2 cores: three one-thread
#: SmolLM2 workers measured ≈ 1.4 req/s (`npcflow demo` prints the figure it sees), so 1.0 leaves headroom.
DEFAULT_EMBEDDED_RATE = 1.0
DEFAULT_SCRIPTED_RATE = 50.0
#: One malformed event every this many seconds, to show dead-lettering while traffic flows.
INVALID_EVERY_S = 10.0
#: Active NPCs by default: the embedded Gold model (≈ 0.3 s a refresh on 2 cores, several in one
#: batch) keeps each of 3 at ≈ 1.45 Hz beside Silver's and Bronze's models, and every Gold reply
#: after the first 10 s came from a model intent in three runs; with 4 (≈ 1.4 Hz) some intents
#: outlived their 1 s TTL before the next refresh landed, and 0.57-0.86 of those replies did
#: (docs/architecture.md, "Keeping the active set fresh"). With more, the scheduler lowers every
#: rate evenly.
DEFAULT_ACTIVE = 3
#: Gold's model-intent share counts replies to requests sent after this much of the run: the
#: first intents need the first refreshes.
GOLD_SETTLE_S = 10.0
#: The stores that keep one record per reply (S3 keeps only Bronze's story arcs).
EVERY_REPLY = ("postgres_rows", "opensearch_documents", "redis_results")
#: What the active NPCs face; each refresh asks the model about it.
ACTIVE_PROMPT = "Players walk through the village square."


@dataclass
class TierTally:
    sent: int = 0
    replied: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)
    samples: deque[str] = field(default_factory=lambda: deque(maxlen=2))
    served_by: Counter[str] = field(default_factory=Counter)
    #: Replies that reached the game server within the request's budget, from ``created_at_ms``.
    within_budget: int = 0
    intent_age_ms: list[float] = field(default_factory=list)
    #: Gold replies to requests sent after GOLD_SETTLE_S, and how many of them a model intent served.
    settled: int = 0
    settled_model: int = 0

    def gold_summary(self) -> dict[str, Any]:
        """Gold's promise as the game server sees it (docs/architecture.md, "Gold's two paths")."""
        fresh = percentiles(self.intent_age_ms, (50, 95))
        return {
            "within_budget": round(self.within_budget / self.sent, 4) if self.sent else None,
            "served_by": dict(self.served_by),
            "freshness_ms": fresh,
            "model_intent_share": round(self.settled_model / self.settled, 4) if self.settled else None,
        }


class GameServer:
    """Sends the mix at a steady rate and tallies replies per tier; Gold asks about the active NPCs."""

    def __init__(
        self, client: NPCClient, rate: float, npcs: int, active: int = DEFAULT_ACTIVE, seed: int = 7
    ) -> None:
        self.client = client
        self.rate = rate
        self.npcs = npcs
        self.rng = random.Random(seed)
        #: The NPCs near the players: (npc_id, archetype); watched, so Gold keeps their intents fresh.
        self.active = [(f"npc-{i:04d}", ARCHETYPES[i % len(ARCHETYPES)]) for i in range(min(active, npcs))]
        #: Model intents seen per active NPC (a listener on the game's near cache).
        self.refreshes: Counter[str] = Counter()
        self.started_ms = time.time() * 1000
        self.tally = {t: TierTally() for t in Tier}
        self.lost = 0
        #: Asynchronous jobs (SageMaker) per tier the request was sent to: submitted/completed/failed.
        self.jobs: dict[Tier, Counter[str]] = {t: Counter() for t in Tier}
        self._tasks: set[asyncio.Task[None]] = set()

    def _pick_tier(self) -> Tier:
        x = self.rng.random()
        for tier, share in MIX.items():
            if x < share:
                return tier
            x -= share
        return Tier.BRONZE

    async def _one(self, tier: Tier, request: Request, sent_at: float) -> None:
        tally = self.tally[tier]
        try:
            reply: Reply = await self.client.request(request, timeout_s=180.0)
        except ReplyTimeout:
            self.lost += 1
            self.jobs[tier]["submitted"] += request.request_id in self.client.jobs
            return
        if reply.job_id is not None or request.request_id in self.client.jobs:
            jobs = self.jobs[tier]
            jobs["submitted"] += 1
            jobs["completed" if reply.status in (ReplyStatus.OK, ReplyStatus.FALLBACK) else "failed"] += 1
        tally.replied += 1
        tally.statuses["late" if reply.late else reply.status] += 1
        tally.served_by[reply.served_by.value] += 1
        budget = request.latency_budget_ms
        tally.within_budget += budget is not None and time.time() * 1000 - request.created_at_ms <= budget
        if reply.intent_age_ms is not None:
            tally.intent_age_ms.append(reply.intent_age_ms)
        if tier is Tier.GOLD and request.created_at_ms >= self.started_ms + GOLD_SETTLE_S * 1000:
            tally.settled += 1
            tally.settled_model += reply.served_by == ServedBy.CACHE
        tally.latencies.append((time.perf_counter() - sent_at) * 1000)
        if reply.served_by == "engine":
            tally.engine_ms.append(reply.latency.engine_ms)
        if reply.text:
            tally.samples.append(f"{reply.npc_id}: {reply.text.splitlines()[0][:90]}")

    def watch(self, intents: IntentCache) -> None:
        """Make the active NPCs active: Gold refreshes them at 1-2 Hz from now on."""
        intents.add_listener(self._refreshed)
        for kind in sorted({kind for _, kind in self.active}):
            npcs = [npc for npc, k in self.active if k == kind]
            intents.watch(npcs, archetype=kind, prompt=ACTIVE_PROMPT)

    def _refreshed(self, intent: Intent) -> None:
        if intent.engine != GAME_ENGINE:
            self.refreshes[intent.npc_id] += 1

    async def run(self, duration: float) -> None:
        interval = 1.0 / self.rate
        start = time.perf_counter()
        self.started_ms = time.time() * 1000
        n = 0
        while time.perf_counter() - start < duration:
            tier = self._pick_tier()
            index = self.rng.randrange(self.npcs)
            npc = f"npc-{index:04d}"
            shape = dict(SHAPES[tier])
            if tier is Tier.GOLD and self.active:  # Gold asks about the NPCs near the players
                npc, kind = self.rng.choice(self.active)
                shape["context"] = {"archetype": kind}  # the NPC's archetype picks its default intent
            request = self.client.build_request(npc, self.rng.choice(PROMPTS[tier]), **shape)
            self.tally[tier].sent += 1
            task = asyncio.create_task(self._one(tier, request, time.perf_counter()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.perf_counter()))

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks))

    def sustainable_rate(self) -> float | None:
        """What one worker per tier can serve at this mix, from the engine times seen so far."""
        limits = []
        for tier, share in MIX.items():
            times = self.tally[tier].engine_ms
            if times:
                limits.append((1000.0 / (sum(times) / len(times))) / share)
        return round(min(limits), 2) if limits else None


def render_active(server: GameServer, intents: IntentCache, elapsed: float) -> list[str]:
    """Each active NPC as the game sees it this frame: its intent, how old, and where it came from."""
    lines = [f"\nactive NPCs (watched; Gold re-thinks each at {intents.settings.intents.refresh_hz:g} Hz):"]
    for npc, kind in server.active:
        seen = intents.get_intent(npc, kind)
        source = "model" if seen.from_model else ("game" if not seen.is_default else "default")
        age = f"{seen.age_ms:6.0f} ms" if seen.age_ms is not None else "       -"
        rate = server.refreshes[npc] / elapsed if elapsed > 0 else 0.0
        lines.append(f"  {npc} {kind:10} {source:7} {age}  {rate:4.1f}/s  {seen.intent[:70]}")
    return lines


def render(server: GameServer, elapsed: float, duration: float, engines: dict[Tier, str]) -> str:
    lines = [f"npcflow demo  {elapsed:5.1f}/{duration:.0f} s  rate {server.rate:g} req/s", ""]
    lines.append(f"{'tier':7} {'engine':24} {'sent':>5} {'replied':>7} {'p50 ms':>8} {'p95 ms':>8}  statuses")
    for tier in Tier:
        t = server.tally[tier]
        p = percentiles(t.latencies)
        p50, p95 = p["p50"], p["p95"]
        statuses = " ".join(f"{k}={v}" for k, v in sorted(t.statuses.items()))
        lines.append(
            f"{tier.value:7} {engines[tier][:24]:24} {t.sent:5} {t.replied:7} "
            f"{p50 or '-':>8} {p95 or '-':>8}  {statuses}"
        )
    gold = server.tally[Tier.GOLD].gold_summary()
    if gold["within_budget"] is not None:
        fresh = gold["freshness_ms"]
        share = gold["model_intent_share"]
        lines.append(
            f"\ngold within budget {gold['within_budget']:.1%}  served_by {gold['served_by']}  "
            f"intent age p50/p95 {fresh['p50']}/{fresh['p95']} ms"
            + (f"  model intents {share:.0%} (after {GOLD_SETTLE_S:.0f} s)" if share is not None else "")
        )
    rate = server.sustainable_rate()
    if rate:
        lines.append(f"\nengines sustain ≈ {rate} req/s at this mix (one worker per tier; --rate to change)")
    lines.append("\nNPC lines:")
    for tier in Tier:
        for sample in server.tally[tier].samples:
            lines.append(f"  [{tier.value}] {sample}")
    return "\n".join(lines)


async def send_invalid_events(settings: Settings, prefix: str, duration: float) -> int:
    """A game-server bug, simulated: malformed events that must land in the DLQ, not stop anything."""
    bad = [b"{not json", b'{"request_id": "x"}', b'{"max_tokens": -1}', b"\xff\xfe\xfd"]
    producer = kafka.producer(settings, "npcflow-demo-buggy-server")
    await producer.start()
    sent = 0
    try:
        start = time.monotonic()
        while time.monotonic() - start < duration:
            await producer.send_and_wait(REQUESTS.name(prefix), bad[sent % len(bad)], key=b"buggy-server")
            sent += 1
            await asyncio.sleep(INVALID_EVERY_S)
    finally:
        await producer.stop()
    return sent


async def count_dead_letters(settings: Settings, prefix: str, expected: int, timeout_s: float = 10.0) -> int:
    consumer = kafka.consumer(settings, "npcflow-demo-dlq", DLQ.name(prefix))
    await consumer.start()
    seen = 0
    try:
        deadline = time.monotonic() + timeout_s
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            seen += sum(len(v) for v in batches.values())
    finally:
        await consumer.stop()
    return seen


async def drive(
    settings: Settings,
    prefix: str,
    duration: float,
    rate: float,
    npcs: int,
    as_json: bool,
    engines: dict[Tier, str],
    active: int = DEFAULT_ACTIVE,
) -> dict[str, Any]:
    game = IntentCache(settings, prefix=prefix, client_id="npcflow-demo-game", tenant_id="demo-game-server")
    async with NPCClient(settings, tenant_id="demo-game-server", prefix=prefix) as client, game as intents:
        server = GameServer(client, rate, npcs, active)
        server.watch(intents)
        invalid_task = asyncio.create_task(send_invalid_events(settings, prefix, duration))
        run_task = asyncio.create_task(server.run(duration))
        start = time.perf_counter()
        tty = sys.stdout.isatty()
        while not run_task.done() or server._tasks:
            await asyncio.sleep(1.0)
            if not as_json:
                elapsed = time.perf_counter() - start
                screen = render(server, elapsed, duration, engines)
                screen += "\n" + "\n".join(render_active(server, intents, elapsed))
                print(("\x1b[2J\x1b[H" if tty else "\n") + screen, flush=True)
            if run_task.done() and time.perf_counter() - start > duration + 200:
                break
        await run_task
        await server.drain()
        elapsed = time.perf_counter() - start
        intents.unwatch([npc for npc, _ in server.active])
        invalid_sent = await invalid_task
        dead = await count_dead_letters(settings, prefix, invalid_sent)
    gold = server.tally[Tier.GOLD].gold_summary()
    gold["active"] = {npc: round(server.refreshes[npc] / elapsed, 2) for npc, _ in server.active}
    return {
        "sent": {t.value: server.tally[t].sent for t in Tier},
        "replied": {t.value: server.tally[t].replied for t in Tier},
        "statuses": {t.value: dict(server.tally[t].statuses) for t in Tier},
        "dead_letters": dead,
        "invalid_sent": invalid_sent,
        "lost": server.lost,
        "latency_ms": {t.value: percentiles(server.tally[t].latencies) for t in Tier},
        "engine": {t.value: engines[t] for t in Tier},
        "sustainable_rate": server.sustainable_rate(),
        "duplicates_dropped": client.stats.duplicates,
        "rate": rate,
        "duration_s": duration,
        "gold": gold,
        "bronze": {
            "requests": server.tally[Tier.BRONZE].sent,
            **{k: server.jobs[Tier.BRONZE][k] for k in ("submitted", "completed", "failed")},
            # Silver requests that fell back to Bronze and ran as jobs too.
            "fallback_jobs": dict(server.jobs[Tier.SILVER]),
        },
    }


async def settled_sink_counts(settings: Settings, replies: int, timeout_s: float = 30.0) -> dict[str, int]:
    """What the sinks wrote, once every sink's group has committed all of ``npc.outputs`` and the
    stores that keep every reply hold ``replies`` of them.

    A sink commits a batch only after writing it, so lag 0 means every output on the topic is in
    its store; but a reply reaches the game before its output (the output goes out on the batching
    producer), so lag 0 alone once counted a store short by the last batch. Past ``timeout_s`` the
    counts are what they are, and the summary shows the shortfall.
    """
    prefix = settings.topic_prefix
    outputs = OUTPUTS.name(prefix)
    deadline = time.monotonic() + timeout_s
    while True:
        lags = [await group_lag(settings, f"{prefix}npcflow-sink-{name}", outputs) for name in SINKS]
        if all(lag == 0 for lag in lags) or time.monotonic() > deadline:
            found = await sink_counts(settings)
            if min(found[k] for k in EVERY_REPLY) >= replies or time.monotonic() > deadline:
                return found
        await asyncio.sleep(0.5)


def with_engines(settings: Settings, spec: str | None) -> Settings:
    """``gold=embedded,silver=openai,bronze=sagemaker`` → settings with those engines per tier."""
    if not spec:
        return settings
    per_tier = dict(settings.engines.per_tier)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        tier, sep, engine = part.partition("=")
        if not sep or tier.strip() not in TIERS or not engine.strip():
            raise ConfigError(f"--engines: bad entry {part!r}; write tier=engine pairs, e.g. silver=openai")
        per_tier[tier.strip()] = engine.strip()
    return settings.with_(engines=settings.engines.with_(**per_tier))


def run_demo(
    settings: Settings,
    duration: float,
    rate: float | None,
    npcs: int,
    as_json: bool,
    active: int = DEFAULT_ACTIVE,
) -> dict[str, Any]:
    """Run the demo on a stack of its own (services given in the environment are reused)."""
    engines = {t: settings.engines.spec_for(t.value) for t in Tier}
    if rate is None:  # every engine here but the scripted one runs the CPU model
        scripted = all(e.startswith("scripted") for e in engines.values())
        rate = DEFAULT_SCRIPTED_RATE if scripted else DEFAULT_EMBEDDED_RATE
    with tempfile.TemporaryDirectory(prefix="npcflow-demo-") as tmp:
        return _run_demo(settings, Path(tmp), duration, rate, npcs, as_json, engines, active)


def _run_demo(
    settings: Settings,
    work: Path,
    duration: float,
    rate: float,
    npcs: int,
    as_json: bool,
    engines: dict[Tier, str],
    active: int,
) -> dict[str, Any]:
    prefix = settings.topic_prefix
    # The stack starts the engine servers the engines need (llama.cpp's, the local SageMaker endpoint).
    stack_settings = Settings.from_env(stack_file=False).with_(engines=settings.engines)
    with EmbeddedStack(work / "stack", settings=stack_settings) as stack:
        endpoints = stack.endpoints
        assert endpoints is not None
        settings = endpoints.apply_to(settings)
        asyncio.run(create_embedded_topics(settings, prefix))
        env = endpoints.as_env() | stack.engine_env | {"NPCFLOW_EMBEDDED_THREADS": "1"}
        for proc in stack.processes:  # CPU model servers yield to the router, like the embedded workers
            if proc.name in ("llama", "sagemaker"):
                yield_cpu(proc.pid)
        if not as_json:
            print(
                f"stack up; starting router and workers (engines: {json.dumps(engines)})",
                flush=True,
            )
        with PipelineProcesses(env, work, engines=engines, sinks=tuple(SINKS)) as procs:
            background_yields(procs, engines)
            summary = asyncio.run(drive(settings, prefix, duration, rate, npcs, as_json, engines, active))
            summary["sinks"] = asyncio.run(settled_sink_counts(settings, sum(summary["replied"].values())))
    if not as_json:
        print("\nsummary: " + json.dumps(summary, indent=2))
    return summary
