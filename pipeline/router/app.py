"""The router: a faust-streaming agent on ``npc.requests``.

For each intake event: validate (invalid → ``npc.requests.dlq`` with the reason, the original
bytes and where they came from), classify the SLA and pick the tier (:mod:`pipeline.router.policy`),
stamp the absolute deadline in a header, forward the original bytes to the tier topic, and
publish a routing-decision record. The agent never raises on bad input, so one poison event
cannot stop the partition. Offsets are committed by faust after the agent has handled the
event (at-least-once); the tier worker recognises nothing special about a replayed request,
and the client drops the duplicate reply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import faust
import mode
from aiokafka import AIOKafkaProducer

from pipeline.observability import metrics
from pipeline.config import Settings, session_timeout_s
from pipeline.deadlines import deadline_headers, now_ms
from pipeline.router.monitor import LeanMonitor
from pipeline.router.policy import RoutingPolicy, Unroutable
from pipeline.readiness import mark_ready
from topics.catalogue import (
    DLQ,
    REPLIES,
    REQUESTS,
    ROUTING,
    TIER_TOPICS,
    Tier,
    reply_topic_allowed,
    topic_prefix,
)
from topics.schemas import DeadLetter, InvalidEvent, Request, RoutingDecision, parse_request

log = logging.getLogger("npcflow.router")

ENV_GIL_SWITCH_S = "NPCFLOW_GIL_SWITCH_S"


@dataclass
class RouterStats:
    routed: dict[str, int] = field(default_factory=lambda: {t.value: 0 for t in Tier})
    dead_letters: int = 0


def create_app(
    bootstrap: str,
    policy: RoutingPolicy | None = None,
    *,
    prefix: str | None = None,
    app_id: str | None = None,
    datadir: Path | None = None,
) -> tuple[faust.App, RouterStats]:
    """Build the router app; several processes with the same ``app_id`` share the intake."""
    policy = policy or RoutingPolicy.load()
    prefix_value = prefix if prefix is not None else topic_prefix()
    session_timeout = session_timeout_s()
    app = faust.App(
        app_id or f"{prefix_value}npcflow-router",
        broker=f"npcflow://{bootstrap}",
        store="memory://",
        datadir=str(datadir or Path(tempfile.mkdtemp(prefix="npcflow-router-"))),
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.0,
        producer_acks=1,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=min(1.0, session_timeout / 4),
        broker_commit_interval=0.5,
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
        Monitor=LeanMonitor,
    )
    stats = RouterStats()
    intake = app.topic(REQUESTS.name(prefix), key_type=bytes, value_type=bytes)
    tier_topics = {tier: spec.name(prefix) for tier, spec in TIER_TOPICS.items()}
    dlq_topic = DLQ.name(prefix)

    crashing: list[asyncio.Future] = []

    def on_delivery(ack: asyncio.Future) -> None:
        if ack.cancelled() or ack.exception() is None:
            return
        # aiokafka retried until its delivery timeout: the broker is gone. Stop rather than go on
        # committing offsets of requests that were never forwarded.
        log.critical("router cannot produce (%s); stopping", ack.exception())
        crashing.append(asyncio.ensure_future(app.crash(ack.exception())))

    async def produce(topic: str, key: bytes, value: bytes, headers: list | None = None) -> None:
        # Straight to faust's producer: faust flushes it before every offset commit (at-least-once),
        # without the per-message bookkeeping of Topic.send that we do not use.
        ack = await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=headers)
        ack.add_done_callback(on_delivery)

    routing_topic = ROUTING.name(prefix)
    decisions = DecisionLog(bootstrap)
    app.service(decisions.service())

    async def reject(message: faust.types.Message, reason: str, errors: list | None = None) -> None:
        record = DeadLetter.of(
            message.value, reason, message.topic, message.partition, message.offset, errors
        )
        await produce(dlq_topic, message.topic.encode(), record.to_bytes())
        stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels("router").inc()
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)

    async def route_one(message: faust.types.Message) -> None:
        raw = message.value
        try:
            request: Request = parse_request(raw)
            if request.reply_topic and not reply_topic_allowed(request.reply_topic, prefix):
                default = REPLIES.name(prefix)
                raise InvalidEvent(
                    f"invalid request: reply_topic {request.reply_topic!r}: use {default}[.<name>]"
                )
            route = policy.route(request, received_ms=now_ms())
        except InvalidEvent as exc:
            await reject(message, exc.reason, exc.errors)
            return
        except Unroutable as exc:
            await reject(message, f"unroutable: {exc}")
            return
        headers = deadline_headers(route.deadline_ms, route.tier.value)
        await produce(tier_topics[route.tier], request.npc_id.encode(), raw, headers)
        decision = RoutingDecision(
            request_id=request.request_id,
            npc_id=request.npc_id,
            tenant_id=request.tenant_id,
            tier=route.tier,
            sla=route.sla,
            reason=route.reason[:500],
            deadline_ms=route.deadline_ms,
            decided_at_ms=now_ms(),
        )
        await decisions.send(routing_topic, decision.to_bytes(), request.request_id.encode())
        stats.routed[route.tier.value] += 1
        metrics.ROUTED.labels(route.tier.value, route.sla.value, str(route.contradiction is not None)).inc()
        if route.contradiction:
            log.info("request %s: %s", request.request_id, route.reason)

    @app.on_partitions_assigned.connect
    async def _ready(app: faust.App, assigned: set, **_: object) -> None:
        if assigned:
            mark_ready(f"router assigned {len(assigned)} partitions")

    @app.agent(intake, name="route")
    async def route_requests(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                await route_one(event.message)
            except Exception as exc:  # a bug must not stop the partition: dead-letter and go on
                log.exception("router failed on %s@%d", event.message.topic, event.message.offset)
                await reject(event.message, f"router error: {type(exc).__name__}: {exc}")

    return app, stats


#: Routing decisions are an audit trail, off the latency path: batch them instead of one request each.
DECISION_LINGER_MS = 50


class DecisionLog:
    """A lingering producer for routing decisions; faust starts and stops it with the app."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=DECISION_LINGER_MS, acks=1, client_id="npcflow-router"
        )
        await self._producer.start()
        self._ready.set()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()  # flushes what is still lingering

    async def send(self, topic: str, value: bytes, key: bytes) -> None:
        """Queue one decision; waits only for the producer to exist, never for the broker."""
        await self._ready.wait()
        assert self._producer is not None
        ack = await self._producer.send(topic, value, key=key)
        ack.add_done_callback(_log_send_failure)

    def service(self) -> type[mode.Service]:
        log_ = self

        class DecisionLogService(mode.Service):
            async def on_start(self) -> None:
                await log_.start()

            async def on_stop(self) -> None:
                await log_.stop()

        return DecisionLogService


def _log_send_failure(ack: asyncio.Future) -> None:
    if not ack.cancelled() and ack.exception() is not None:
        log.error("routing decision not recorded: %s", ack.exception())


def run_router(settings: Settings, loglevel: str = "info") -> None:
    """Run one router process until SIGINT/SIGTERM (the faust worker owns the event loop)."""
    # faust runs its Kafka consumer in a second thread; with the default 5 ms GIL switch interval a
    # record fetched there can wait a whole interval for the agent's thread (and the reverse).
    sys.setswitchinterval(float(os.environ.get(ENV_GIL_SWITCH_S, "0.0005")))
    bootstrap = settings.require_kafka()
    metrics.serve_metrics_from_env()
    # faust wants a data directory even with in-memory tables; it holds nothing worth keeping.
    with tempfile.TemporaryDirectory(prefix="npcflow-router-") as datadir:
        app, _ = create_app(bootstrap, prefix=settings.topic_prefix, datadir=Path(datadir))
        worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            if exc.code:
                raise
