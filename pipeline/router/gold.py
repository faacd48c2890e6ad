"""Gold's fast path in the router: answer a realtime request within its budget, refresh on the side.

Two hops (intake → router → reply) instead of four: the router answers a Gold request at once
from its near cache of intents (:class:`pipeline.intents.IntentCache`, no network on the path)
with the NPC's fresh intent (``served_by: cache``, with its age) or its archetype's default
(``served_by: default_intent``), and forwards the request to the Gold tier topic as a *refresh*
only when coalescing allows: at most one refresh in flight per NPC, none while its intent is
younger than the refresh interval. NPCs are partitioned by npc_id, so one router owns each NPC
and this state is local. A refresh is cleared when the new intent is seen, or after a timeout.
The Gold worker answers a refresh by writing the intent, never with a second reply
(docs/architecture.md, "Gold's two paths").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.config import IntentSettings
from pipeline.deadlines import now_ms
from pipeline.intents import DefaultIntents, Listener, SeenIntent, archetype_of, refresh_headers
from pipeline.observability import families, metrics
from pipeline.observability.cost import Pricing
from pipeline.router.policy import Route
from topics.catalogue import OUTPUTS, REPLIES, TIER_TOPICS, Tier
from topics.schemas import Intent, Latency, Output, Reply, ReplyStatus, Request, ServedBy, TierAttempt

log = logging.getLogger("npcflow.router")

Headers = list[tuple[str, bytes]]
Produce = Callable[[str, bytes, bytes, Headers | None], Awaitable[None]]
Record = Callable[[str, bytes, bytes], Awaitable[None]]
TopicExists = Callable[[str], Awaitable[bool]]

#: In-flight entries beyond this are pruned of timed-out ones (refreshes whose intent never came).
MAX_TRACKED_IN_FLIGHT = 10_000


class IntentReader(Protocol):
    """What the fast path needs of a near cache (:class:`pipeline.intents.IntentCache` is one)."""

    def get_intent(self, npc_id: str, archetype: str | None = None) -> SeenIntent: ...

    def add_listener(self, listener: Listener) -> None: ...

    async def wait_caught_up(self, timeout_s: float | None = None) -> bool: ...


@dataclass
class GoldStats:
    answered: dict[str, int] = field(default_factory=lambda: {"cache": 0, "default_intent": 0})
    #: Refreshes forwarded to the Gold tier.
    refreshes: int = 0
    #: Refreshes skipped: the intent was fresh, or a refresh for the NPC was in flight.
    coalesced: int = 0
    #: In-flight refreshes given up because no intent came within the timeout.
    timed_out: int = 0


class GoldPath:
    """The router's in-budget answers for Gold and per-NPC coalescing of model refreshes."""

    def __init__(
        self,
        intents: IntentReader,
        produce: Produce,
        record: Record,
        *,
        settings: IntentSettings | None = None,
        defaults: DefaultIntents | None = None,
        prefix: str = "",
        topic_exists: TopicExists | None = None,
        clock: Callable[[], int] = now_ms,
        pricing: Pricing | None = None,
        refresh: Produce | None = None,
    ) -> None:
        """``refresh`` sends refreshes (default ``produce``): the router gives its lingering producer."""
        settings = settings or IntentSettings()
        self.pricing = pricing or Pricing.load()
        self.intents = intents
        self.defaults = defaults or DefaultIntents.from_settings(settings)
        self.refresh_interval_ms = settings.refresh_interval_ms
        self.refresh_timeout_ms = settings.refresh_timeout_ms
        self.stats = GoldStats()
        self._produce = produce
        self._record = record
        self._refresh = refresh or produce
        self._topic_exists = topic_exists
        self._clock = clock
        self._gold_topic = TIER_TOPICS[Tier.GOLD].name(prefix)
        self._replies = REPLIES.name(prefix)
        self._outputs = OUTPUTS.name(prefix)
        #: npc_id → when its refresh was sent (ms); one entry per refresh in flight.
        self._in_flight: dict[str, int] = {}
        #: Until the near cache has read the intents topic, an answer would wrongly be the default.
        self._warm = False
        intents.add_listener(self._intent_seen)

    def in_flight(self, npc_id: str) -> bool:
        return npc_id in self._in_flight

    def _intent_seen(self, intent: Intent) -> None:
        self._in_flight.pop(intent.npc_id, None)

    async def answer(self, request: Request, route: Route, raw: bytes) -> bool:
        """Answer a Gold request from the intent cache; False leaves it to the tier worker.

        Declined: other tiers, and a custom reply topic that does not exist (the worker
        dead-letters that request with the reason).
        """
        if route.tier is not Tier.GOLD:
            return False
        reply_topic = request.reply_topic or self._replies
        if reply_topic != self._replies and (
            self._topic_exists is None or not await self._topic_exists(reply_topic)
        ):
            return False
        if not self._warm:
            # Once, at start: faust starts our services after the intake's partitions are assigned.
            await self.intents.wait_caught_up()
            self._warm = True
        now = self._clock()
        seen = self.intents.get_intent(request.npc_id, archetype_of(request))
        reply = self.reply(request, route, seen, now)
        key = request.request_id.encode()
        await self._produce(reply_topic, key, reply.to_bytes(), None)
        try:
            # The output feeds the sinks: batched with the decisions, off the reply's path.
            await self._record(self._outputs, key, Output(request=request, reply=reply).to_bytes())
            if self.should_refresh(request.npc_id, seen, now):
                headers = refresh_headers(now + self.refresh_timeout_ms)
                await self._refresh(self._gold_topic, request.npc_id.encode(), raw, headers)
        except Exception:
            # The reply is out: the request must not also be dead-lettered. A lost refresh is
            # retried after the timeout; a lost output is logged.
            log.exception("gold request %s answered; its output or refresh failed", request.request_id)
        self.stats.answered[reply.served_by.value] += 1
        metrics.REPLIES.labels(Tier.GOLD.value, reply.status.value, reply.served_by.value).inc()
        metrics.REPLY_LATENCY_MS.labels(Tier.GOLD.value).observe(reply.latency.total_ms)
        families.gold_answered(reply.tenant_id, reply.served_by.value, reply.late, self.pricing)
        return True

    def should_refresh(self, npc_id: str, seen: SeenIntent, now: int) -> bool:
        """Coalescing: one refresh in flight per NPC, none while its intent is younger than the interval."""
        sent = self._in_flight.get(npc_id)
        if sent is not None and now - sent < self.refresh_timeout_ms:
            return self._skip("in_flight")
        if sent is not None:
            self.stats.timed_out += 1
            metrics.INTENT_REFRESHES.labels("timed_out").inc()
        if not seen.is_default and seen.age_ms is not None and seen.age_ms < self.refresh_interval_ms:
            self._in_flight.pop(npc_id, None)
            return self._skip("fresh")
        self._in_flight[npc_id] = now
        if len(self._in_flight) > MAX_TRACKED_IN_FLIGHT:
            self._prune(now)
        self.stats.refreshes += 1
        metrics.INTENT_REFRESHES.labels("sent").inc()
        return True

    def _skip(self, why: str) -> bool:
        self.stats.coalesced += 1
        metrics.INTENT_REFRESHES.labels(f"coalesced_{why}").inc()
        return False

    def _prune(self, now: int) -> None:
        expired = [npc for npc, sent in self._in_flight.items() if now - sent >= self.refresh_timeout_ms]
        for npc in expired:
            del self._in_flight[npc]

    @staticmethod
    def reply(request: Request, route: Route, seen: SeenIntent, now: int) -> Reply:
        """The in-budget reply: the fresh intent with its age, or the archetype's default intent."""
        served_by = ServedBy.DEFAULT_INTENT if seen.is_default else ServedBy.CACHE
        waited = max(0.0, float(now - request.created_at_ms))
        return Reply(
            request_id=request.request_id,
            npc_id=request.npc_id,
            tenant_id=request.tenant_id,
            tier=Tier.GOLD,
            served_by=served_by,
            status=ReplyStatus.OK,
            late=now > route.deadline_ms,
            text=seen.intent,
            intent=seen.intent,
            intent_age_ms=None if seen.age_ms is None else round(seen.age_ms, 1),
            served_tier=Tier.GOLD,
            chain=[TierAttempt(tier=Tier.GOLD, outcome="served", reason=served_by.value)],
            latency=Latency(queue_ms=waited, engine_ms=0.0, total_ms=waited),
            replied_at_ms=now,
        )
