"""Routing one intake event, with no faust in sight: validate → policy → forward or dead-letter.

:class:`Router` takes two producer-like callables, so the same object runs inside the faust
agent (:mod:`pipeline.router.app`), in unit tests with lists standing in for topics, and in a
replay over recorded traffic. It never raises on bad input: one poison event must not stop the
partition (docs/architecture.md, "Delivery guarantees").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pipeline.observability import families, metrics
from pipeline.router.gold import GoldPath
from topics.catalogue import DLQ, ROUTING, TIER_TOPICS, Tier
from topics.headers import Headers, Produce, Record, deadline_headers, now_ms
from topics.policy import Route, RoutingPolicy, Unroutable
from topics.rejections import DeadLetter, parse_request
from topics.schemas import InvalidEvent, Request, RoutingDecision

log = logging.getLogger("npcflow.router")


class Detour(Protocol):
    """Where a route goes instead while its tier's breaker is open: (route, headers), or None."""

    def detour(self, route: Route) -> tuple[Route, Headers] | None: ...


class Outcome(StrEnum):
    ROUTED = "routed"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class Source:
    """Where an intake event was read, so a dead letter can say where it came from."""

    topic: str
    partition: int
    offset: int


@dataclass
class RouterStats:
    routed: dict[str, int] = field(default_factory=lambda: {t.value: 0 for t in Tier})
    dead_letters: int = 0


class Router:
    """Route intake events under one topic prefix with one policy."""

    def __init__(
        self,
        policy: RoutingPolicy,
        produce: Produce,
        record_decision: Record,
        *,
        prefix: str = "",
        clock: Callable[[], int] = now_ms,
        gold: GoldPath | None = None,
        breakers: Detour | None = None,
    ) -> None:
        self.policy = policy
        #: Diverts a route whose tier's breaker is open (pipeline/router/breakers.RouterFallback).
        self.breakers = breakers
        #: Gold's fast path (answer from the intent cache, refresh on the side); None: forward as any tier.
        self.gold = gold
        self.prefix = prefix
        self.stats = RouterStats()
        self._produce = produce
        self._record = record_decision
        self._clock = clock
        self._tier_topics = {tier: spec.name(prefix) for tier, spec in TIER_TOPICS.items()}
        self._dlq = DLQ.name(prefix)
        self._routing = ROUTING.name(prefix)

    async def route(self, raw: bytes | None, source: Source) -> Outcome:
        """Forward one event to its tier topic (with the deadline header) or dead-letter it.

        A bug in routing is caught here too and dead-letters the event with the exception, so the
        agent's loop never sees an exception it would have to decide about.
        """
        try:
            return await self._route(raw, source)
        except Exception as exc:
            log.exception("router failed on %s[%d]@%d", source.topic, source.partition, source.offset)
            await self.reject(raw, source, f"router error: {type(exc).__name__}: {exc}")
            return Outcome.DEAD_LETTERED

    async def _route(self, raw: bytes | None, source: Source) -> Outcome:
        started = time.perf_counter()
        try:
            request = self.validate(raw)
            received_ms = self._clock()
            route = self.policy.route(request, received_ms=received_ms)
        except InvalidEvent as exc:
            await self.reject(raw, source, exc.reason, exc.errors)
            return Outcome.DEAD_LETTERED
        except Unroutable as exc:
            await self.reject(raw, source, f"unroutable: {exc}")
            return Outcome.DEAD_LETTERED
        assert raw is not None  # validate() rejects a missing value
        headers = deadline_headers(route.deadline_ms, route.tier.value)
        diverted_from = None
        if self.breakers is not None and (detour := self.breakers.detour(route)) is not None:
            diverted_from, (route, headers) = route.tier, detour
        if self.gold is None or not await self.gold.answer(request, route, raw):
            # The original bytes travel on: the worker validates the same event the game server sent.
            await self._produce(self._tier_topics[route.tier], request.npc_id.encode(), raw, headers)
        decision = self._decision(request, route, diverted_from)
        await self._record(self._routing, request.request_id.encode(), decision.to_bytes())
        self.stats.routed[route.tier.value] += 1
        families.observe_hop(route.tier.value, "intake", received_ms - request.created_at_ms)
        families.observe_hop(route.tier.value, "router", (time.perf_counter() - started) * 1000)
        metrics.ROUTED.labels(route.tier.value, route.sla.value, str(route.contradiction is not None)).inc()
        if route.contradiction:
            log.info("request %s: %s", request.request_id, route.reason)
        return Outcome.ROUTED

    def validate(self, raw: bytes | None) -> Request:
        """Parse and check the event; :class:`InvalidEvent` names every broken field and rule."""
        return parse_request(raw, self.prefix)

    def _decision(self, request: Request, route: Route, diverted_from: Tier | None = None) -> RoutingDecision:
        return RoutingDecision(
            request_id=request.request_id,
            npc_id=request.npc_id,
            tenant_id=request.tenant_id,
            tier=route.tier,
            sla=route.sla,
            reason=route.reason[:500],
            deadline_ms=route.deadline_ms,
            decided_at_ms=self._clock(),
            fallback_from=diverted_from,
        )

    async def reject(
        self, raw: bytes | None, source: Source, reason: str, errors: list | None = None
    ) -> None:
        """Dead-letter an event with its reason, its original bytes and where it was read."""
        letter = DeadLetter.of(raw, reason, source.topic, source.partition, source.offset, errors)
        await self._produce(self._dlq, source.topic.encode(), letter.to_bytes(), None)
        self.stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels("router").inc()
        log.warning("dead-lettered %s[%d]@%d: %s", source.topic, source.partition, source.offset, reason)
