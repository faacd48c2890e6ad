"""One tier worker class, configured per tier: consume routed requests, call the engine, reply.

Per record: parse (poison → dead letter), check the deadline from the header (already past →
an ``expired`` reply without an engine call), call the engine with bounded concurrency,
then produce the reply (to the request's reply topic, key = request_id) and the output record
(``npc.outputs``), and only after both are acknowledged mark the offset done. Offsets are
committed from :class:`~workers.offsets.OffsetTracker`, so a crash replays unfinished work
instead of losing it (at-least-once; the client drops a duplicate reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline import metrics
from pipeline.deadlines import read_deadline
from pipeline.policy import RoutingPolicy
from pipeline.readiness import mark_ready
from pipeline.router import dead_letter
from topics.catalogue import DLQ, OUTPUTS, REPLIES, TIER_TOPICS, Tier
from topics.schemas import InvalidEvent, Latency, Output, Reply, Request, TokenUsage, parse_request
from workers.engines.base import Engine, EngineError, EngineResult
from workers.offsets import OffsetTracker

log = logging.getLogger("npcflow.worker")

OUTPUTS_LINGER_MS = 20
DEFAULT_IN_FLIGHT = {Tier.GOLD: 16, Tier.SILVER: 8, Tier.BRONZE: 4}


@dataclass
class WorkerConfig:
    tier: Tier
    bootstrap: str
    prefix: str = ""
    #: Engine calls at once (the engine's own concurrency).
    max_in_flight: int = 8
    #: Records taken from Kafka but not finished (engine queue + replies awaiting acks): the memory bound.
    max_pending: int = 1024
    group_id: str | None = None
    fetch_max_wait_ms: int = 5
    session_timeout_ms: int = 6000
    #: Beyond the deadline, how long an engine call may run before it is abandoned as an error.
    engine_grace_s: float = 30.0
    commit_interval_s: float = 0.2

    @classmethod
    def from_env(cls, tier: Tier, bootstrap: str, prefix: str = "") -> WorkerConfig:
        return cls(
            tier=tier,
            bootstrap=bootstrap,
            prefix=prefix,
            max_in_flight=int(os.environ.get("NPCFLOW_MAX_IN_FLIGHT", DEFAULT_IN_FLIGHT[tier])),
            max_pending=int(os.environ.get("NPCFLOW_MAX_PENDING", "1024")),
            fetch_max_wait_ms=int(os.environ.get("NPCFLOW_FETCH_MAX_WAIT_MS", "5")),
            session_timeout_ms=int(float(os.environ.get("NPCFLOW_SESSION_TIMEOUT_S", "6")) * 1000),
            engine_grace_s=float(os.environ.get("NPCFLOW_ENGINE_GRACE_S", "30")),
        )


@dataclass
class WorkerStats:
    replies: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    engine_calls: int = 0

    def count(self, status: str) -> None:
        self.replies[status] = self.replies.get(status, 0) + 1


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: TierWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker._drain_and_commit()
        self.worker._offsets.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        log.info("%s worker assigned %s", self.worker.tier.value, partitions)
        if partitions:
            self.worker.assigned.set()
            mark_ready(f"{self.worker.tier.value} worker assigned {partitions}")


class TierWorker:
    def __init__(self, config: WorkerConfig, engine: Engine, policy: RoutingPolicy | None = None) -> None:
        self.config = config
        self.tier = config.tier
        self.engine = engine
        self.policy = policy or RoutingPolicy.load()
        self.stats = WorkerStats()
        self._offsets = OffsetTracker()
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._pending = asyncio.Semaphore(config.max_pending)
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        #: Outputs feed the sinks, off the reply's latency path: batched with a linger.
        self._outputs_producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._topic = TIER_TOPICS[self.tier].name(config.prefix)
        self._default_reply_topic = REPLIES.name(config.prefix)
        self._outputs_topic = OUTPUTS.name(config.prefix)
        self._dlq_topic = DLQ.name(config.prefix)
        self.assigned = asyncio.Event()

    async def start(self) -> None:
        await self.engine.start()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap, linger_ms=0, acks=1, client_id=f"npcflow-{self.tier}"
        )
        await self._producer.start()
        self._outputs_producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap,
            linger_ms=OUTPUTS_LINGER_MS,
            acks=1,
            client_id=f"npcflow-{self.tier}-outputs",
        )
        await self._outputs_producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap,
            group_id=self.config.group_id or f"{self.config.prefix}npcflow-worker-{self.tier.value}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=max(300, self.config.session_timeout_ms // 4),
            client_id=f"npcflow-{self.tier}",
        )
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("%s worker started on %s with engine %s", self.tier.value, self._topic, self.engine.name)

    def partitions(self) -> set[int]:
        """The tier-topic partitions this worker owns right now (empty before its group assigned it any)."""
        return {tp.partition for tp in self._consumer.assignment()} if self._consumer else set()

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish; safe from a signal handler."""
        self._stopping.set()

    async def stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self._drain_and_commit()
        if self._consumer is not None:
            await self._consumer.stop()
        for producer in (self._producer, self._outputs_producer):
            if producer is not None:
                await producer.stop()
        await self.engine.stop()
        log.info("%s worker stopped: %s", self.tier.value, self.stats)

    async def __aenter__(self) -> TierWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Consume until :meth:`stop` (or cancellation); commits every ``commit_interval_s``."""
        assert self._consumer is not None, "start() first"
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=100, max_records=self.config.max_pending)
            for tp, records in batches.items():
                for record in records:
                    await self._pending.acquire()
                    self._offsets.started(tp, record.offset)
                    task = asyncio.create_task(self._handle(tp, record))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            if time.monotonic() - last_commit >= self.config.commit_interval_s:
                await self._commit()
                last_commit = time.monotonic()

    async def _drain_and_commit(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._commit()

    async def _commit(self) -> None:
        offsets = self._offsets.to_commit()
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
            self._offsets.committed(offsets)
        except Exception as exc:  # a rebalance in progress: the next commit retries
            log.warning("%s worker commit failed (%s); will retry", self.tier.value, exc)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        """Serve one record; its offset counts as done once the reply and the output are acknowledged."""
        try:
            output_ack: asyncio.Future | None = None
            try:
                output_ack = await self._serve(record)
            except Exception:
                log.exception("%s worker failed on %s@%d; dead-lettering", self.tier.value, tp, record.offset)
                await self._dead_letter(record, "worker error while serving the request")
            finally:
                self._pending.release()
            if output_ack is not None:
                await output_ack
        except Exception:
            log.exception("%s worker could not record %s@%d", self.tier.value, tp, record.offset)
        finally:
            self._offsets.finished(tp, record.offset)

    async def _serve(self, record: ConsumerRecord) -> asyncio.Future | None:
        """Reply to one routed request; returns the output's ack, or None when it was dead-lettered."""
        try:
            request = parse_request(record.value or b"")
        except InvalidEvent as exc:
            await self._dead_letter(record, exc.reason, exc.errors)
            return None
        deadline_ms = read_deadline(record.headers)
        if deadline_ms is None:
            deadline_ms = request.created_at_ms + self.policy.tiers[self.tier].default_budget_ms
        async with self._slots:
            # Checked once an engine slot is ours: time spent queueing for it counts against the deadline.
            picked_ms = time.time() * 1000
            if picked_ms > deadline_ms:
                late_by = picked_ms - deadline_ms
                error = f"deadline passed {late_by:.0f} ms before a worker took it"
                return await self._reply(request, "expired", picked_ms, deadline_ms, error=error)
            timeout_s = max(0.0, (deadline_ms - picked_ms) / 1000.0) + self.config.engine_grace_s
            self.stats.engine_calls += 1
            try:
                result = await asyncio.wait_for(self.engine.generate(request, deadline_ms), timeout_s)
            except TimeoutError:
                error = f"engine {self.engine.name} gave no result within {timeout_s:.1f} s"
                return await self._reply(request, "error", picked_ms, deadline_ms, error=error)
            except EngineError as exc:
                return await self._reply(request, "error", picked_ms, deadline_ms, error=str(exc))
        return await self._reply(request, "ok", picked_ms, deadline_ms, result=result)

    async def _reply(
        self,
        request: Request,
        status: str,
        picked_ms: float,
        deadline_ms: int,
        *,
        result: EngineResult | None = None,
        error: str | None = None,
    ) -> asyncio.Future:
        """Produce the reply (awaiting its ack) and the output (returning its ack to await later)."""
        served_by = "engine" if result is not None else "none"
        assert self._producer is not None
        done_ms = time.time() * 1000
        tokens = TokenUsage(
            prompt=result.prompt_tokens if result else 0, completion=result.completion_tokens if result else 0
        )
        reply = Reply(
            request_id=request.request_id,
            npc_id=request.npc_id,
            tenant_id=request.tenant_id,
            tier=self.tier,
            served_by=served_by,  # type: ignore[arg-type]
            engine=self.engine.name if served_by == "engine" else "",
            status=status,  # type: ignore[arg-type]
            late=status == "ok" and done_ms > deadline_ms,
            text=result.text if result else "",
            tokens=tokens,
            latency=Latency(
                queue_ms=max(0.0, picked_ms - request.created_at_ms),
                engine_ms=(done_ms - picked_ms) if result else 0.0,
                total_ms=max(0.0, done_ms - request.created_at_ms),
            ),
            cost_usd=self.policy.cost_usd(self.tier, tokens.prompt + tokens.completion),
            error=error,
            replied_at_ms=int(done_ms),
        )
        reply_bytes = reply.to_bytes()
        output = Output(request=request, reply=reply)
        key = request.request_id.encode()
        reply_ack = await self._producer.send(
            request.reply_topic or self._default_reply_topic, reply_bytes, key=key
        )
        assert self._outputs_producer is not None
        output_ack = await self._outputs_producer.send(self._outputs_topic, output.to_bytes(), key=key)
        await reply_ack
        self.stats.count(status)
        metrics.REPLIES.labels(self.tier.value, status, served_by).inc()
        metrics.REPLY_LATENCY_MS.labels(self.tier.value).observe(reply.latency.total_ms)
        if result is not None:
            metrics.ENGINE_LATENCY_MS.labels(self.tier.value, self.engine.name).observe(
                reply.latency.engine_ms
            )
        metrics.COST_USD.labels(self.tier.value, request.tenant_id).inc(reply.cost_usd)
        return output_ack

    async def _dead_letter(self, record: ConsumerRecord, reason: str, errors: list | None = None) -> None:
        assert self._producer is not None
        letter = dead_letter(
            record.value, reason, record.topic, record.partition, record.offset, errors, stage="worker"
        )
        fut = await self._producer.send(self._dlq_topic, letter.to_bytes(), key=record.topic.encode())
        await fut
        self.stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels("worker").inc()
        log.warning("%s worker dead-lettered %s@%d: %s", self.tier.value, record.topic, record.offset, reason)


async def run_worker(config: WorkerConfig, engine: Engine) -> None:
    """Run one worker until SIGINT/SIGTERM, then finish in-flight work and commit."""
    import signal

    worker = TierWorker(config, engine)
    await worker.start()
    loop = asyncio.get_running_loop()
    run_task = asyncio.create_task(worker.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.stopped()
    finally:
        run_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run_task
        await worker.stop()
