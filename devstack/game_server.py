"""The simulated game server of ``npcflow demo``: a gold/silver/bronze mix from a few hundred NPCs.

:class:`GameServer` sends the mix through :class:`~pipeline.client.NPCClient` at a steady rate and
tallies the replies per tier (:class:`TierTally`). Like a game, it keeps a handful of NPCs
*active* (``IntentCache.watch``): the Gold worker re-thinks their intents at 1-2 Hz and Gold
requests go to them. Running it on a stack is :mod:`devstack.demo`; showing it,
:mod:`devstack.demo_view`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.client import NPCClient, ReplyTimeout
from pipeline.intents import GAME_ENGINE, IntentCache
from pipeline.observability.metrics import percentiles
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.schemas import Intent, Output, Reply, Request
from workers.sinks import held_for

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
        #: What each store should hold once the sinks have caught up, by the sinks' own rules.
        self.stored: Counter[str] = Counter()
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
        self.stored.update(held_for(Output(request=request, reply=reply)))
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

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered or given up on."""
        return len(self._tasks)

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
