"""The router: a faust-streaming agent on ``npc.requests``.

For each intake event: validate (invalid → ``npc.requests.dlq`` with the reason, the original
bytes and where they came from), classify the SLA and pick the tier (:mod:`pipeline.policy`),
stamp the absolute deadline in a header, forward the original bytes to the tier topic, and
publish a routing-decision record. The agent never raises on bad input, so one poison event
cannot stop the partition. Offsets are committed by faust after the agent has handled the
event (at-least-once); the tier worker recognises nothing special about a replayed request,
and the client drops the duplicate reply.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import faust
import mode
from aiokafka import AIOKafkaProducer

from pipeline import metrics
from pipeline.config import Settings
from pipeline.deadlines import deadline_headers, now_ms
from pipeline.policy import RoutingPolicy, Unroutable
from pipeline.readiness import mark_ready
from topics.catalogue import DLQ, REQUESTS, ROUTING, TIER_TOPICS, Tier
from topics.schemas import DeadLetter, InvalidEvent, Request, RoutingDecision, parse_request

log = logging.getLogger("npcflow.router")

ENV_SESSION_TIMEOUT = "NPCFLOW_SESSION_TIMEOUT_S"
ENV_GIL_SWITCH_S = "NPCFLOW_GIL_SWITCH_S"


@dataclass
class RouterStats:
    routed: dict[str, int] = field(default_factory=lambda: {t.value: 0 for t in Tier})
    dead_letters: int = 0


#: Dead letters keep at most this much of the original, so one stays under the broker's message limit.
MAX_DEAD_LETTER_ORIGINAL = 256 * 1024


def dead_letter(
    raw: bytes | None,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    errors: list | None = None,
    stage: str = "router",
) -> DeadLetter:
    """The dead-letter record for one rejected event, keeping its bytes (base64) and origin."""
    body = raw or b""
    kept = body[:MAX_DEAD_LETTER_ORIGINAL]
    return DeadLetter(
        reason=reason[:4000],
        errors=errors or [],
        original_b64=base64.b64encode(kept).decode(),
        original_size=len(body),
        original_truncated=len(kept) < len(body),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        stage=stage,  # type: ignore[arg-type]
        failed_at_ms=now_ms(),
    )


def create_app(
    bootstrap: str,
    policy: RoutingPolicy | None = None,
    *,
    prefix: str | None = None,
    app_id: str | None = None,
    datadir: Path | None = None,
) -> tuple[faust.App, RouterStats]:
    """Build the router app; several processes with the same ``app_id`` share the intake."""
    policy = policy or RoutingPolicy.load(os.environ.get("NPCFLOW_POLICY_FILE") or None)
    prefix_value = prefix if prefix is not None else os.environ.get("NPCFLOW_TOPIC_PREFIX", "")
    session_timeout = float(os.environ.get(ENV_SESSION_TIMEOUT, "6"))
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
    )
    stats = RouterStats()
    intake = app.topic(REQUESTS.name(prefix), key_type=bytes, value_type=bytes)
    tier_topics = {tier: spec.name(prefix) for tier, spec in TIER_TOPICS.items()}
    dlq_topic = DLQ.name(prefix)

    async def produce(topic: str, key: bytes, value: bytes, headers: list | None = None) -> None:
        # Straight to faust's producer: faust flushes it before every offset commit (at-least-once),
        # without the per-message bookkeeping of Topic.send that we do not use.
        await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=headers)

    routing_topic = ROUTING.name(prefix)
    decisions = DecisionLog(bootstrap)
    app.service(decisions.service())

    async def reject(message: faust.types.Message, reason: str, errors: list | None = None) -> None:
        record = dead_letter(message.value, reason, message.topic, message.partition, message.offset, errors)
        await produce(dlq_topic, message.topic.encode(), record.to_bytes())
        stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels("router").inc()
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)

    async def route_one(message: faust.types.Message) -> None:
        raw = message.value
        try:
            request: Request = parse_request(raw)
            route = policy.route(request)
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
    app, _ = create_app(settings.require_kafka(), prefix=settings.topic_prefix)
    metrics.serve_metrics_from_env()
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
