"""``npcflow validate``: is a deployment serving each tier, and within its SLA? Probes through the real path.

For each tier asked for, a probe sent as a game server would send it (``NPCClient``) must come
back answered **by that tier**, the tier's breaker must be closed (as the processes share it in
Redis) and its workers' consumer group must not lag by more than ``NPCFLOW_VALIDATE_MAX_LAG``.
That is ``ok``. Apart from it, ``within_sla`` judges the latency against the deployment's own
configured budgets (the routing policy's ``default_budget_ms``, Gold's intent TTL), never a
looser one: on a CPU-only embedded deployment Silver and Bronze are ``ok`` but not within SLA.

- **Gold** is judged on its two paths (docs/architecture.md, "Gold's two paths"): the reply's
  p95 over a burst of realtime requests against Gold's budget (16 ms), and the freshness of the
  intent path — request sent → the model's new intent for the probe NPC seen in a near cache —
  against the intent TTL (1 s). A Gold worker that is down leaves the NPC without an intent:
  not ``ok``.
- **Silver** and **Bronze** probes carry a long deadline (``probe_deadline_ms``) so the tier
  itself answers even when it is slower than its budget (a short one would fall back to the next
  tier and say nothing about this one); the latency is then judged against the tier's budget.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import TopicPartition

from pipeline import kafka
from pipeline.client import NPCClient, ReplyTimeout
from pipeline.config import Settings
from pipeline.intents import IntentCache
from pipeline.observability.metrics import percentiles
from pipeline.observability.scrape import Scrape
from topics.catalogue import TIER_TOPICS, Tier
from topics.fields import ServedBy, Sla
from topics.policy import RoutingPolicy
from topics.schemas import Intent, Reply

TENANT = "npcflow-validate"
#: Silver's and Bronze's probes may take this long: the tier must answer, however slowly.
PROBE_DEADLINE_MS = 120_000
#: Workers commit every 0.2 s: how long the lag check waits for a probe's offset to be committed.
LAG_SETTLE_S = 3.0
#: What a probe of each tier asks for (Gold's shape is the demo's realtime request).
SHAPES: dict[Tier, dict[str, Any]] = {
    Tier.GOLD: {"sla": Sla.REALTIME, "max_tokens": 8, "prompt": "A traveller walks up to the gate."},
    Tier.SILVER: {"sla": Sla.INTERACTIVE, "max_tokens": 16, "prompt": "The player asks the way to the mill."},
    Tier.BRONZE: {"sla": Sla.ASYNC, "max_tokens": 32, "prompt": "Tell the legend of the northern tower."},
}
INTENT_ANSWERS = frozenset({ServedBy.CACHE, ServedBy.DEFAULT_INTENT})
#: Families ``--json`` must find on the processes' /metrics for the metrics check to pass.
REQUIRED_FAMILIES = (
    "npcflow_reply_latency_seconds",
    "npcflow_fallbacks_total",
    "npcflow_breaker_state",
    "npcflow_cost_usd_total",
)


@dataclass
class TierReport:
    ok: bool = False
    latency_ms: float | None = None
    within_sla: bool = False
    budget_ms: int = 0
    #: What failed (empty when ok), one line each.
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        self.problems.append(problem)
        self.ok = False


class Validator:
    """Probes one deployment (the settings' Kafka, Redis and topic prefix)."""

    def __init__(self, settings: Settings, *, burst: int = 20, reply_timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.policy = RoutingPolicy.load(settings.policy_file)
        self.burst = burst
        self.reply_timeout_s = reply_timeout_s

    async def run(self, tiers: list[Tier]) -> dict[str, TierReport]:
        reports: dict[str, TierReport] = {}
        async with NPCClient(self.settings, TENANT) as client:
            for tier in tiers:
                report = TierReport(budget_ms=self.policy.tiers[tier].default_budget_ms)
                report.ok = True
                try:
                    if tier is Tier.GOLD:
                        await self._gold(client, report)
                    else:
                        await self._tier(client, tier, report)
                except ReplyTimeout as exc:
                    report.fail(f"no reply: {exc}")
                await self._breaker(tier, report)
                await self._lag(tier, report)
                report.ok = report.ok and not report.problems
                reports[tier.value] = report
        return reports

    def _request(self, client: NPCClient, tier: Tier, npc_id: str, **extra: Any) -> Any:
        shape = dict(SHAPES[tier])
        prompt = shape.pop("prompt")
        return client.build_request(npc_id, prompt, **shape, **extra)

    async def _ask(self, client: NPCClient, request: Any) -> tuple[Reply, float]:
        reply = await client.request(request, timeout_s=self.reply_timeout_s)
        return reply, time.time() * 1000 - request.created_at_ms

    async def _gold(self, client: NPCClient, report: TierReport) -> None:
        """Both paths: the in-budget answer (burst p95) and the intent refresh (freshness)."""
        ttl_ms = self.settings.intents.ttl_ms
        npc = f"validate-{uuid.uuid4().hex[:8]}"
        arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def seen(intent: Intent) -> None:
            if intent.npc_id == npc and not arrived.done():
                arrived.set_result(time.time() * 1000)

        async with IntentCache(self.settings, client_id="npcflow-validate-intents") as intents:
            intents.add_listener(seen)
            first = self._request(client, Tier.GOLD, npc, context={"archetype": "guard"})
            reply, _ = await self._ask(client, first)
            self._check_tier(reply, Tier.GOLD, report, INTENT_ANSWERS | {ServedBy.ENGINE})
            try:
                at = await asyncio.wait_for(arrived, timeout=max(10.0, 10 * ttl_ms / 1000))
                freshness = round(at - first.created_at_ms, 1)
            except TimeoutError:
                freshness = None
                report.fail("no intent for the probe NPC within 10 s: is a Gold worker running?")
            latencies: list[float] = []
            served: dict[str, int] = {}
            for _ in range(self.burst):
                request = self._request(client, Tier.GOLD, npc, context={"archetype": "guard"})
                reply, ms = await self._ask(client, request)
                self._check_tier(reply, Tier.GOLD, report, INTENT_ANSWERS)
                latencies.append(ms)
                served[reply.served_by.value] = served.get(reply.served_by.value, 0) + 1
                await asyncio.sleep(0.02)  # a burst as a game's frames send it, not a flood
        p95 = percentiles(latencies, (50, 95))["p95"] if latencies else None
        report.latency_ms = p95
        fresh_ok = freshness is not None and freshness <= ttl_ms
        report.within_sla = p95 is not None and p95 <= report.budget_ms and fresh_ok
        report.details.update(
            {
                "burst": len(latencies),
                "latency_p50_ms": percentiles(latencies, (50,))["p50"],
                "served_by": served,
                "freshness_ms": freshness,
                "freshness_budget_ms": ttl_ms,
            }
        )

    async def _tier(self, client: NPCClient, tier: Tier, report: TierReport) -> None:
        """A probe with a long deadline: this tier answers; its latency is judged against its budget."""
        request = self._request(
            client, tier, f"validate-{uuid.uuid4().hex[:8]}", latency_budget_ms=PROBE_DEADLINE_MS
        )
        reply, ms = await self._ask(client, request)
        self._check_tier(reply, tier, report, {ServedBy.ENGINE})
        report.latency_ms = round(ms, 1)
        report.within_sla = report.ok and ms <= report.budget_ms
        report.details.update(
            {"probe_deadline_ms": PROBE_DEADLINE_MS, "engine": reply.engine, "cost_usd": reply.cost_usd}
        )

    @staticmethod
    def _check_tier(reply: Reply, tier: Tier, report: TierReport, served_by: set[ServedBy]) -> None:
        served_tier = reply.served_tier or reply.tier
        if reply.status.value not in ("ok",) or served_tier is not tier or reply.served_by not in served_by:
            report.fail(
                f"probe {reply.request_id} answered status={reply.status.value} "
                f"tier={served_tier and served_tier.value} served_by={reply.served_by.value}"
                + (f" error={reply.error}" if reply.error else "")
            )

    async def _breaker(self, tier: Tier, report: TierReport) -> None:
        """The tier's breaker as every process sees it (Redis); without Redis each process has its own."""
        if not self.settings.redis_url:
            report.details["breaker"] = "unknown (no NPCFLOW_REDIS_URL: breakers are per process)"
            return
        from pipeline.breakers.board import BreakerBoard

        board = BreakerBoard.from_settings(
            self.settings.redis_url, self.settings.topic_prefix, self.settings.resilience
        )
        try:
            state = (await board.tier(tier.value).refresh()).state.value
        finally:
            await board.stop()
        report.details["breaker"] = state
        if state != "closed":
            report.fail(f"breaker tier:{tier.value} is {state}")

    async def _lag(self, tier: Tier, report: TierReport) -> None:
        """Records on the tier topic past the workers' group's committed offsets."""
        group = f"{self.settings.topic_prefix}npcflow-worker-{tier.value}"
        topic = TIER_TOPICS[tier].name(self.settings.topic_prefix)
        limit = self.settings.observability.max_lag
        give_up = time.monotonic() + LAG_SETTLE_S
        while True:  # the probe's own offset is committed a moment after its reply
            lag = await group_lag(self.settings, group, topic)
            if (lag is not None and lag <= limit) or time.monotonic() > give_up:
                break
            await asyncio.sleep(0.25)
        report.details["lag"] = lag
        if lag is None:
            report.fail(f"consumer group {group} has committed nothing on {topic}: no worker has served it")
        elif lag > limit:
            report.fail(f"group {group} lags {lag} records (limit {limit}: NPCFLOW_VALIDATE_MAX_LAG)")


async def group_lag(settings: Settings, group: str, topic: str) -> int | None:
    """Sum over the topic's partitions of end offset - committed offset (the first offset where
    nothing is committed); None if the topic holds records and nothing is committed (0 when it
    holds none: there was nothing to serve, as on the Gold topic while the router answers Gold and
    the workers refresh the active set).

    Committed offsets are read as the group's own members read them (OffsetFetch through a consumer
    that never joins the group); end offsets come from ListOffsets(latest).
    """
    consumer = kafka.consumer(settings, "npcflow-validate-lag", group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await kafka.partitions(consumer, topic))]
        committed = {tp: offset for tp in tps if (offset := await consumer.committed(tp)) is not None}
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    if not committed:
        return 0 if all(ends[tp] == starts[tp] for tp in tps) else None
    # A partition the group has not committed on yet lags by all it holds: counting only the
    # committed ones read 0 while a member that had just been assigned one had read none of it.
    return sum(max(0, ends[tp] - committed.get(tp, starts[tp])) for tp in tps)


def metrics_report(scrape: Scrape) -> dict[str, Any]:
    """The families the processes export, and whether the ones ops dashboards need are there."""
    missing = [name for name in REQUIRED_FAMILIES if name not in scrape.families]
    return {
        "families": sorted(scrape.families),
        "missing": missing,
        "unreachable": scrape.failed,
        "ok": not missing and not scrape.failed,
    }


def as_json(reports: dict[str, TierReport], metrics: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {tier: asdict(r) for tier, r in reports.items()}
    if metrics is not None:
        out["metrics"] = metrics
    out["ok"] = all(r.ok for r in reports.values()) and (metrics is None or metrics["ok"])
    return out
