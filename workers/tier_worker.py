"""One tier worker class, configured per tier: consume routed requests, call the engine, reply.

Per record: parse (poison → dead letter), wait for an engine slot, check the deadline from the
header (already past → an ``expired`` reply without an engine call), call the engine, then
produce the reply (to the request's reply topic, key = request_id) and the output record
(``npc.outputs``). A record's offset counts as done only once its reply (or dead letter) and its
output are acknowledged; offsets are committed from :class:`~workers.offsets.OffsetTracker`, so a
crash replays unfinished work instead of losing it (at-least-once; the client drops a duplicate).
If the worker cannot write to Kafka at all it stops with an error rather than skip a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.observability import metrics
from pipeline.config import fetch_max_wait_ms, session_timeout_s
from pipeline.deadlines import read_deadline
from pipeline.lifecycle import Lifecycle
from pipeline.router.policy import RoutingPolicy
from pipeline.readiness import mark_ready
from topics.catalogue import DLQ, OUTPUTS, REPLIES, TIER_TOPICS, Tier, reply_topic_allowed
from topics.schemas import (
    DeadLetter,
    InvalidEvent,
    Latency,
    Output,
    Reply,
    Request,
    TokenUsage,
    parse_request,
)
from workers.engines.base import Engine, EngineError, EngineResult
from workers.offsets import OffsetTracker

log = logging.getLogger("npcflow.worker")

OUTPUTS_LINGER_MS = 20
DEFAULT_IN_FLIGHT = {Tier.GOLD: 16, Tier.SILVER: 8, Tier.BRONZE: 4}


class WorkerFailed(RuntimeError):
    """The worker could not record a result in Kafka and stopped, leaving the record to be replayed."""


@dataclass
class WorkerConfig:
    tier: Tier
    bootstrap: str
    prefix: str = ""
    #: Engine calls at once (the engine's own concurrency).
    max_in_flight: int = 8
    #: Records taken from Kafka and not yet replied to (engine queue included): the memory bound.
    max_pending: int = 1024
    group_id: str | None = None
    fetch_max_wait_ms: int = 5
    session_timeout_ms: int = 6000
    #: How long a rebalance may wait for this worker to finish the engine calls it has started.
    rebalance_timeout_ms: int = 60_000
    #: Beyond the deadline, how long an engine call may run before it is abandoned as an error.
    engine_grace_s: float = 30.0
    #: The longest any engine call may take, whatever deadline the request claims.
    engine_timeout_cap_s: float = 600.0
    commit_interval_s: float = 0.2

    @classmethod
    def from_env(cls, tier: Tier, bootstrap: str, prefix: str = "") -> WorkerConfig:
        return cls(
            tier=tier,
            bootstrap=bootstrap,
            prefix=prefix,
            max_in_flight=int(os.environ.get("NPCFLOW_MAX_IN_FLIGHT", DEFAULT_IN_FLIGHT[tier])),
            max_pending=int(os.environ.get("NPCFLOW_MAX_PENDING", "1024")),
            fetch_max_wait_ms=fetch_max_wait_ms(),
            session_timeout_ms=int(session_timeout_s() * 1000),
            engine_grace_s=float(os.environ.get("NPCFLOW_ENGINE_GRACE_S", "30")),
        )


@dataclass
class WorkerStats:
    replies: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    engine_calls: int = 0
    #: Records handed back unserved on a revoke or stop (the partition's next owner serves them).
    handed_back: int = 0

    def count(self, status: str) -> None:
        self.replies[status] = self.replies.get(status, 0) + 1


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: TierWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker._release(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        log.info("%s worker assigned %s", self.worker.tier.value, partitions)
        if partitions:
            self.worker.assigned.set()
            mark_ready(f"{self.worker.tier.value} worker assigned {partitions}")


class TierWorker(Lifecycle):
    def __init__(self, config: WorkerConfig, engine: Engine, policy: RoutingPolicy | None = None) -> None:
        self.config = config
        self.tier = config.tier
        self.engine = engine
        self.policy = policy or RoutingPolicy.load()
        self.stats = WorkerStats()
        self.assigned = asyncio.Event()
        self.failure: BaseException | None = None
        self._offsets = OffsetTracker()
        self._slots = asyncio.Semaphore(
            min(config.max_in_flight, engine.max_concurrency or config.max_in_flight)
        )
        self._pending = asyncio.Semaphore(config.max_pending)
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        #: Tasks still waiting for an engine slot: nothing sent yet, so they can be abandoned on a revoke.
        self._queued: set[asyncio.Task[None]] = set()
        #: Bumped on every revoke: records fetched before it are not started afterwards.
        self._generation = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        #: Outputs feed the sinks, off the reply's latency path: batched with a linger.
        self._outputs_producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._topic = TIER_TOPICS[self.tier].name(config.prefix)
        self._default_reply_topic = REPLIES.name(config.prefix)
        self._outputs_topic = OUTPUTS.name(config.prefix)
        self._dlq_topic = DLQ.name(config.prefix)

    async def start(self) -> None:
        """Start the engine, producers and consumer; on any failure stop what did start."""
        try:
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
                rebalance_timeout_ms=self.config.rebalance_timeout_ms,
                client_id=f"npcflow-{self.tier}",
            )
            self._consumer.subscribe([self._topic], listener=_Rebalance(self))
            await self._consumer.start()
        except BaseException:
            await self._close()
            raise
        log.info("%s worker started on %s with engine %s", self.tier.value, self._topic, self.engine.name)

    def partitions(self) -> set[int]:
        """The tier-topic partitions this worker owns right now (empty before its group assigned it any)."""
        return {tp.partition for tp in self._consumer.assignment()} if self._consumer else set()

    async def lag(self) -> int:
        """Records in owned partitions past the group's committed offsets: 0 when fully committed.

        Uses the high-water marks of fetch responses, not ListOffsets: the embedded Tansu broker
        answers ListOffsets(latest) wrongly (as it does ``offsets_for_times``, DESIGN §6).
        """
        if self._consumer is None:
            return 0
        total = 0
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp) or 0
            total += max(0, end - (await self._consumer.committed(tp) or 0))
        return total

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish; safe from a signal handler."""
        self._stopping.set()

    async def stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Abandon records still waiting for the engine, finish the rest, commit, close."""
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self._release(None)
        await self._close()
        log.info("%s worker stopped: %s", self.tier.value, self.stats)

    async def _close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        for producer in (self._producer, self._outputs_producer):
            if producer is not None:
                await producer.stop()
        await self.engine.stop()

    async def run(self) -> None:
        """Consume until :meth:`request_stop`; commits every ``commit_interval_s``."""
        assert self._consumer is not None, "start() first"
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            generation = self._generation
            batches = await self._consumer.getmany(timeout_ms=100, max_records=self.config.max_pending)
            for tp, records in batches.items():
                for record in records:
                    await self._pending.acquire()
                    if self._stopping.is_set() or generation != self._generation:
                        # A revoke (or stop) came while we waited: whoever owns the partition now
                        # reads this record again from the committed offset.
                        self._pending.release()
                        self.stats.handed_back += 1
                        continue
                    self._start(tp, record)
            if time.monotonic() - last_commit >= self.config.commit_interval_s:
                await self._commit()
                last_commit = time.monotonic()

    def _start(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        self._offsets.started(tp, record.offset)
        task = asyncio.create_task(self._handle(tp, record))
        tasks = self._tasks.setdefault(tp, set())
        tasks.add(task)
        self._queued.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._queued.discard)

    async def _release(self, partitions: set[TopicPartition] | None) -> None:
        """Before giving up partitions (None: all): drop queued records, finish started ones, commit."""
        self._generation += 1
        owned = [tp for tp in self._tasks if partitions is None or tp in partitions]
        tasks = [t for tp in owned for t in self._tasks[tp]]
        for task in tasks:
            if task in self._queued:
                task.cancel()
                self.stats.handed_back += 1
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._commit()
        self._offsets.forget(set(owned) if partitions is None else partitions)

    async def _commit(self) -> None:
        if self._consumer is None:
            return
        owned = self._consumer.assignment()
        offsets = {tp: o for tp, o in self._offsets.to_commit().items() if tp in owned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self._offsets.committed(offsets)
        except Exception as exc:  # a rebalance in progress: the next commit retries
            log.warning("%s worker commit failed (%s); will retry", self.tier.value, exc)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        """Serve one record; its offset is done only when its reply and output are acknowledged."""
        try:
            recorded = await self._process(record)
        except asyncio.CancelledError:
            return  # abandoned before it reached the engine; its offset stays uncommitted
        finally:
            self._pending.release()
        if recorded:
            self._offsets.finished(tp, record.offset)

    async def _process(self, record: ConsumerRecord) -> bool:
        try:
            output_ack = await self._serve(record)
        except (asyncio.CancelledError, WorkerFailed):
            raise
        except Exception as exc:  # a bug in serving must not lose the request: dead-letter it
            log.exception("%s worker failed on %s@%d", self.tier.value, record.topic, record.offset)
            try:
                await self._dead_letter(record, f"worker error: {type(exc).__name__}: {exc}")
            except Exception as dlq_exc:
                return self._fail(dlq_exc, record)
            return True
        if output_ack is not None:
            try:
                await output_ack
            except Exception as exc:
                return self._fail(exc, record)
        return True

    def _fail(self, exc: BaseException, record: ConsumerRecord) -> bool:
        """Kafka refused a result: stop, so the record is replayed instead of skipped."""
        log.error(
            "%s worker cannot record %s@%d in Kafka (%s); stopping so it is replayed",
            self.tier.value,
            record.topic,
            record.offset,
            exc,
        )
        self.failure = self.failure or exc
        self._stopping.set()
        return False

    async def _serve(self, record: ConsumerRecord) -> asyncio.Future | None:
        """Reply to one routed request; returns the output's ack, or None when it was dead-lettered."""
        try:
            request = parse_request(record.value or b"")
            if request.reply_topic and not reply_topic_allowed(request.reply_topic, self.config.prefix):
                raise InvalidEvent(f"reply_topic {request.reply_topic!r} is not a reply topic")
        except InvalidEvent as exc:
            await self._dead_letter(record, exc.reason, exc.errors)
            return None
        deadline_ms = read_deadline(record.headers)
        if deadline_ms is None:
            deadline_ms = request.created_at_ms + self.policy.tiers[self.tier].default_budget_ms
        async with self._slots:
            self._queued.discard(asyncio.current_task())  # type: ignore[arg-type]
            # Checked once an engine slot is ours: time spent queueing for it counts against the deadline.
            picked_ms = time.time() * 1000
            if picked_ms > deadline_ms:
                late_by = picked_ms - deadline_ms
                error = f"deadline passed {late_by:.0f} ms before a worker took it"
                return await self._reply(request, "expired", picked_ms, deadline_ms, error=error)
            remaining_s = min((deadline_ms - picked_ms) / 1000.0, self.config.engine_timeout_cap_s)
            timeout_s = remaining_s + self.config.engine_grace_s
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
        letter = DeadLetter.of(
            record.value, reason, record.topic, record.partition, record.offset, errors, stage="worker"
        )
        fut = await self._producer.send(self._dlq_topic, letter.to_bytes(), key=record.topic.encode())
        await fut
        self.stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels("worker").inc()
        log.warning("%s worker dead-lettered %s@%d: %s", self.tier.value, record.topic, record.offset, reason)


async def run_worker(config: WorkerConfig, engine: Engine) -> None:
    """Run one worker until SIGINT/SIGTERM, then finish started work and commit.

    Raises :class:`WorkerFailed` if the worker stopped because Kafka refused a result.
    """
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
    if worker.failure is not None:
        raise WorkerFailed(f"{config.tier.value} worker stopped: {worker.failure}") from worker.failure
