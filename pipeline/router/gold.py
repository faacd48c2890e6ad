"""Gold's fast path in the router: answer a realtime request within its budget, mark its NPC active.

Two hops (intake → router → reply) instead of four: the router answers a Gold request at once
from its near cache of intents (:class:`pipeline.intents.IntentCache`, no network on the path)
with the NPC's fresh intent (``served_by: cache``, with its age) or its archetype's default
(``served_by: default_intent``). The model keeps intents fresh on the side: the request *marks*
its NPC active (a lease on the compacted ``npc.active``, :mod:`pipeline.intents.active`), and the Gold
workers' scheduler refreshes every active NPC at ``NPCFLOW_GOLD_REFRESH_HZ`` whether or not a
request missed (:mod:`workers.intents.active_refresh`). A mark is announced only when the lease this
router announced has less than half left: one record per NPC per half lease, however many
requests (docs/architecture.md, "Gold's two paths", "Keeping the active set fresh").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.config import IntentSettings
from pipeline.intents import ActiveAnnouncer, DefaultIntents, SeenIntent, archetype_of
from pipeline.observability import families, metrics
from pipeline.observability.cost import Pricing
from topics.catalogue import OUTPUTS, REPLIES, Tier
from topics.fields import ReplyStatus
from topics.headers import Produce, Record, now_ms
from topics.policy import Route
from topics.schemas import Latency, Output, Reply, Request, TierAttempt

log = logging.getLogger("npcflow.router")

TopicExists = Callable[[str], Awaitable[bool]]


class IntentReader(Protocol):
    """What the fast path needs of a near cache (:class:`pipeline.intents.IntentCache` is one)."""

    def get_intent(self, npc_id: str, archetype: str | None = None) -> SeenIntent: ...

    async def wait_caught_up(self, timeout_s: float | None = None) -> bool: ...


@dataclass
class GoldStats:
    answered: dict[str, int] = field(default_factory=lambda: {"cache": 0, "default_intent": 0})
    #: Leases announced on ``npc.active`` for requests' NPCs.
    marked: int = 0
    #: Requests whose NPC's announced lease still had half or more left: nothing sent.
    deduped: int = 0


class GoldPath:
    """The router's in-budget answers for Gold, and the leases that keep requested NPCs fresh."""

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
        announce: Produce | None = None,
    ) -> None:
        """``announce`` sends leases (default ``produce``): the router gives its lingering producer."""
        settings = settings or IntentSettings()
        self.pricing = pricing or Pricing.load()
        self.intents = intents
        self.defaults = defaults or DefaultIntents.from_settings(settings)
        self.stats = GoldStats()
        #: This router's leases (NPCs are partitioned by npc_id, so one router marks each NPC).
        self.active = ActiveAnnouncer(
            prefix=prefix, lease_ms=settings.active_lease_ms, tenant_id="router", clock=clock
        )
        self._produce = produce
        self._record = record
        self._announce = announce or produce
        self._topic_exists = topic_exists
        self._clock = clock
        self._replies = REPLIES.name(prefix)
        self._outputs = OUTPUTS.name(prefix)
        #: Until the near cache has read the intents topic, an answer would wrongly be the default.
        self._warm = False

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
        key, value = request.request_id.encode(), reply.to_bytes()
        await self._produce(reply_topic, key, value, None)
        try:
            # The output feeds the sinks: batched with the decisions, off the reply's path; it
            # embeds the reply's bytes and the request as it came (validated already).
            await self._record(self._outputs, key, Output.wire(raw, value))
            await self.mark_active(request)
        except Exception:
            # The reply is out: the request must not also be dead-lettered. A lost lease is
            # announced again by the NPC's next request; a lost output is logged.
            log.exception("gold request %s answered; its output or active mark failed", request.request_id)
        self.stats.answered[reply.served_by.value] += 1
        metrics.REPLIES.labels(Tier.GOLD.value, reply.status.value, reply.served_by.value).inc()
        metrics.REPLY_LATENCY_SECONDS.labels(Tier.GOLD.value).observe(reply.latency.total_ms / 1000)
        families.gold_answered(reply.tenant_id, reply.served_by.value, reply.late, self.pricing)
        return True

    async def mark_active(self, request: Request) -> bool:
        """Lease the request's NPC on ``npc.active`` unless the lease announced has half or more left."""
        npc_id, tenant = request.npc_id, request.tenant_id
        announcement = self.active.mark(
            npc_id, archetype=archetype_of(request), prompt=request.prompt, tenant_id=tenant
        )
        if announcement is None:
            self.stats.deduped += 1
            metrics.GOLD_ACTIVE_MARKS.labels("deduped").inc()
            return False
        assert announcement.value is not None  # a mark is never a tombstone
        try:
            await self._announce(announcement.topic, announcement.key, announcement.value, None)
        except Exception:
            self.active.forget(npc_id)  # so the NPC's next request announces it again
            raise
        self.stats.marked += 1
        metrics.GOLD_ACTIVE_MARKS.labels("announced").inc()
        return True

    @staticmethod
    def reply(request: Request, route: Route, seen: SeenIntent, now: int) -> Reply:
        """The in-budget reply: the fresh intent with its age, or the archetype's default intent."""
        served_by = seen.served_by
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
