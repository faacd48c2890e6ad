"""One tier worker class, configured per tier: the Kafka loop around :mod:`workers.serving`.

The loop consumes routed requests, bounds what it holds (records pending, engine slots),
hands serving one record at a time and produces the records serving returns: the reply (to
the request's reply topic, key = request_id) and the output (``npc.outputs``), or a dead
letter. A record's offset counts as done only once those are acknowledged; offsets are
committed from :class:`~workers.offsets.OffsetTracker`, so a crash replays unfinished work
instead of losing it (at-least-once; the client drops a duplicate). On a revoke the records
still waiting for an engine slot are handed back unserved. If the worker cannot write to Kafka
at all it stops with an error rather than skip a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.lifecycle import Lifecycle
from pipeline.observability import families, metrics
from pipeline.observability.cost import Pricing
from pipeline.readiness import mark_ready
from pipeline.reply_topics import ReplyTopics
from topics.catalogue import OUTPUTS, REPLIES, TIER_TOPICS, Tier
from topics.policy import RoutingPolicy
from workers.cache.active_refresh import ActiveRefresher, serving_step
from workers.cache.intents import IntentRefresh, Refreshed
from workers.engine_stack import tier_engine
from workers.engines.base import Engine, EngineResult
from workers.hooks import standard_hooks
from workers.offsets import OffsetTracker
from workers.resilience import TierResilience
from workers.resilience.fair_share import FairShare
from workers.resilience.fallback import FallbackStep, Forwarded, watch_late
from workers.resilience.shedding import LoadShedder
from workers.serving import DeadLettered, Hooks, Outcome, Serving, ServingStats
from workers.worker_config import WorkerConfig

log = logging.getLogger("npcflow.worker")

#: Outputs feed the sinks, off the reply's latency path: batched with a linger.
OUTPUTS_LINGER_MS = 20


@dataclass
class WorkerStats:
    #: Records handed back unserved on a revoke or stop (the partition's next owner serves them).
    handed_back: int = 0
    #: What serving produced (replies by status, dead letters, engine calls).
    serving: ServingStats = field(default_factory=ServingStats)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: TierWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker._release(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        worker = self.worker
        partitions = sorted(tp.partition for tp in assigned)
        log.info("%s worker assigned %s", worker.tier.value, partitions)
        if partitions:
            worker.assigned.set()
            mark_ready(
                worker.config.settings.process.ready_file, f"{worker.tier.value} worker assigned {partitions}"
            )


class TierWorker(Lifecycle):
    """``start()`` the engine and clients, ``run()`` until :meth:`request_stop`, then ``stop()``."""

    def __init__(
        self,
        config: WorkerConfig,
        engine: Engine,
        policy: RoutingPolicy | None = None,
        hooks: Hooks | None = None,
        substitute: Engine | None = None,
    ) -> None:
        self.config = config
        self.tier = config.tier
        policy = policy or RoutingPolicy.load(config.settings.policy_file)
        #: Breakers, fallback and shedding (docs/architecture.md, "Resilience"); ``substitute``: the
        #: next tier's engine, which serves Gold's refreshes while Gold's own engine is down.
        self.resilience = TierResilience.from_settings(config.settings, config.tier, policy, substitute)
        self.engine = tier_engine(engine, config, policy, self.resilience)
        #: Gold keeps each NPC's intent (Redis + npc.intents) from its model results and refreshes.
        self.intents = IntentRefresh.from_settings(config.settings) if self.tier is Tier.GOLD else None
        #: Replies' cost and the caches' savings, both at NPCFLOW_PRICING_FILE's prices.
        pricing = Pricing.from_settings(config.settings.observability)
        self.serving = Serving(
            config.tier,
            self.engine,
            policy,
            prefix=config.prefix,
            hooks=standard_hooks(pricing) if hooks is None else hooks,
            intents=self.intents,
            fallback=FallbackStep(config.tier, policy, config.prefix, config.settings.resilience.fallback),
            shedder=LoadShedder(enabled=config.settings.resilience.shedding),
            pricing=pricing,
        )
        self.stats = WorkerStats(serving=self.serving.stats)
        self.assigned = asyncio.Event()
        self.failure: BaseException | None = None
        self._offsets = OffsetTracker()
        #: Engine slots, shared per tenant by weight: a flooding tenant never queues a quiet one.
        self._slots = FairShare(
            min(config.max_in_flight, self.engine.max_concurrency or config.max_in_flight),
            config.settings.resilience.tenant_weights,
        )
        #: Gold: every active NPC's intent re-thought at NPCFLOW_GOLD_REFRESH_HZ within these slots
        #: (docs/architecture.md, "Keeping the active set fresh").
        self.refresher = (
            ActiveRefresher(
                config.settings,
                serving_step(self.serving, self._slots, lambda: self._outputs_producer),
                capacity=self._slots.slots,
            )
            if self.tier is Tier.GOLD
            else None
        )
        #: Abandoned engine calls of deadline cuts, still running (their results become outputs).
        self._late: set[asyncio.Task[None]] = set()
        self._pending = asyncio.Semaphore(config.max_pending)
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        #: Tasks still waiting for an engine slot: nothing sent yet, so they can be abandoned on a revoke.
        self._queued: set[asyncio.Task[None]] = set()
        #: Bumped on every revoke: records fetched before it are not started afterwards.
        self._generation = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._outputs_producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._topic = TIER_TOPICS[self.tier].name(config.prefix)
        self._load = families.LoadExport(self.tier.value, config.group, self._topic)
        self._default_reply_topic = REPLIES.name(config.prefix)
        self.reply_topics = ReplyTopics(self._all_topics)

    async def _start(self) -> None:
        """Start the engine, producers and consumer (on failure ``stop`` closes what did start)."""
        settings, tier = self.config.settings, self.tier.value
        await self.engine.start()
        if self.intents is not None:
            await self.intents.start()
        self._producer = kafka.producer(settings, f"npcflow-{tier}", linger_ms=0)
        await self._producer.start()
        self._outputs_producer = kafka.producer(
            settings, f"npcflow-{tier}-outputs", linger_ms=OUTPUTS_LINGER_MS
        )
        await self._outputs_producer.start()
        self._consumer = kafka.consumer(
            settings,
            f"npcflow-{tier}",
            group_id=self.config.group,
            rebalance_timeout_ms=self.config.rebalance_timeout_ms,
            fetch_max_wait_ms=self.config.fetch_max_wait_ms or settings.kafka.fetch_max_wait_ms,
        )
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self._consumer.start()
        if self.refresher is not None:
            await self.refresher.start()
        log.info("%s worker started on %s with engine %s", tier, self._topic, self.engine.name)

    async def _stop(self) -> None:
        """Abandon records still waiting for the engine, finish the rest, commit, close."""
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self._release(None)
        if self._consumer is not None:
            await self._consumer.stop()
        if self.refresher is not None:
            await self.refresher.stop()
        for producer in (self._producer, self._outputs_producer):
            if producer is not None:
                await producer.stop()
        for task in list(self._late):
            task.cancel()
        await self.engine.stop()
        await self.resilience.board.stop()
        if self.intents is not None:
            await self.intents.stop()
        log.info("%s worker stopped: %s", self.tier.value, self.stats)

    def partitions(self) -> set[int]:
        """The tier-topic partitions this worker owns right now (empty before its group assigned it any)."""
        return {tp.partition for tp in self._consumer.assignment()} if self._consumer else set()

    async def lag(self) -> int:
        """Records in owned partitions past the group's committed offsets: 0 when fully committed."""
        if self._consumer is None:
            return 0
        owned = list(self._consumer.assignment())
        if not owned:
            return 0
        ends = await self._consumer.end_offsets(owned)
        total = 0
        for tp in owned:
            total += max(0, ends[tp] - (await self._consumer.committed(tp) or 0))
        return total

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish; safe from a signal handler."""
        self._stopping.set()

    async def stopped(self) -> None:
        await self._stopping.wait()

    async def run(self) -> None:
        """Consume until :meth:`request_stop`; commits every ``commit_interval_s``."""
        assert self._consumer is not None, "start() first"
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            generation = self._generation
            batches = await self._consumer.getmany(timeout_ms=100, max_records=self.config.max_pending)
            for tp, records in batches.items():
                for i, record in enumerate(records):
                    await self._pending.acquire()
                    if self._stopping.is_set() or generation != self._generation:
                        # A rebalance (or stop) came while we fetched or waited: whoever owns the
                        # partition now reads these records again. If that is still us, our
                        # position is already past them: seek back, or they would never be served.
                        self._pending.release()
                        self.stats.handed_back += len(records) - i
                        if not self._stopping.is_set() and tp in self._consumer.assignment():
                            self._consumer.seek(tp, record.offset)
                        break
                    self._spawn(tp, record)
            if time.monotonic() - last_commit >= self.config.commit_interval_s:
                await self._commit()
                last_commit = time.monotonic()
                await self._load.export(self._offsets.in_flight(), self.lag)

    def _spawn(self, tp: TopicPartition, record: ConsumerRecord) -> None:
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
        """Serve one record; its offset is done only when what serving returned is acknowledged."""
        try:
            done = await self._process(record)
        except asyncio.CancelledError:
            return  # abandoned before it reached the engine; its offset stays uncommitted
        finally:
            self._pending.release()
        if done:
            self._offsets.finished(tp, record.offset)

    async def _process(self, record: ConsumerRecord) -> bool:
        try:
            outcome = await self._serve(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in serving must not lose the request: dead-letter it
            log.exception("%s worker failed on %s@%d", self.tier.value, record.topic, record.offset)
            outcome = self.serving.dead_letter(record, f"worker error: {type(exc).__name__}: {exc}")
        started = time.perf_counter()
        try:
            await self._produce(outcome)
        except Exception as exc:
            return self._fail(exc, record)
        families.observe_hop(self.tier.value, "reply", (time.perf_counter() - started) * 1000)
        return True

    async def _serve(self, record: ConsumerRecord) -> Outcome:
        """Accept, wait for an engine slot (the only point a revoke may abandon it), serve."""
        task = asyncio.current_task()
        assert task is not None
        accepted = self.serving.accept(record)
        if isinstance(accepted, DeadLettered):
            self._queued.discard(task)
            return accepted
        topic = accepted.reply_topic
        if topic != self._default_reply_topic and not await self.reply_topics.exists(topic):
            self._queued.discard(task)
            metrics.REPLY_TOPIC_MISSING.labels(self.tier.value).inc()
            reason = (
                f"reply topic {topic!r} does not exist; workers never create one: "
                f"register it with `npcflow topics create --reply-topic {topic}`"
            )
            return self.serving.dead_letter(record, reason)
        shed = self.serving.shed(
            accepted, self._slots.expected_wait_ms(accepted.request.tenant_id), self._slots.service_ms
        )
        if shed is not None:
            self._queued.discard(task)
            return shed
        tier = self.tier.value
        queued_ms = time.time() * 1000
        families.observe_hop(tier, "tier_wait", queued_ms - record.timestamp)  # router produced it then
        async with self._slots.slot(accepted.request.tenant_id):
            self._queued.discard(task)
            families.observe_hop(tier, "slot_wait", time.time() * 1000 - queued_ms)
            with families.IN_FLIGHT.labels(tier).track_inprogress():
                return await self.serving.serve(accepted)

    async def _all_topics(self) -> set[str]:
        assert self._consumer is not None
        return set(await self._consumer.topics())

    async def _produce(self, outcome: Outcome) -> None:
        """Produce the outcome's records and wait for their acks (replies linger 0, outputs batch)."""
        assert self._producer is not None and self._outputs_producer is not None
        if isinstance(outcome, Refreshed):  # the router answered already: only the intent goes out
            if outcome.update is not None:  # off every reply's path: batched with the outputs
                update = outcome.update
                await (await self._outputs_producer.send(update.topic, update.value, key=update.key))
            return
        if isinstance(outcome, Forwarded):  # the next tier answers: the request and its routing record
            sent = await self._producer.send(
                outcome.topic, outcome.value, key=outcome.key, headers=outcome.headers
            )
            decision = await self._outputs_producer.send(
                outcome.routing_topic, outcome.decision.to_bytes(), key=outcome.decision.request_id.encode()
            )
            await sent
            await decision
            if outcome.late is not None:
                self._watch_late(outcome)
            return
        if isinstance(outcome, DeadLettered):
            await (await self._producer.send(outcome.topic, outcome.letter.to_bytes(), key=outcome.key))
            letter = outcome.letter
            log.warning(
                "%s worker dead-lettered %s@%d: %s",
                self.tier.value,
                letter.source_topic,
                letter.source_offset,
                letter.reason,
            )
            return
        reply_ack = await self._producer.send(outcome.reply_topic, outcome.reply.to_bytes(), key=outcome.key)
        output = outcome.output  # None: an async job's notice (the job's final reply is its output)
        output_ack = (
            await self._outputs_producer.send(outcome.outputs_topic, output.to_bytes(), key=outcome.key)
            if output is not None
            else None
        )
        await reply_ack
        if output_ack is not None:
            await output_ack
        if outcome.intent_update is not None:
            update = outcome.intent_update
            await (await self._producer.send(update.topic, update.value, key=update.key))

    def _watch_late(self, outcome: Forwarded) -> None:
        """When an abandoned call finishes, record its result as an output only (never a reply)."""
        assert outcome.late is not None

        async def record(result: EngineResult) -> None:
            assert self._outputs_producer is not None
            output = self.serving.late_output(outcome.job, result)
            metrics.LATE_RESULTS.labels(self.tier.value).inc()
            key = output.request.request_id.encode()
            await self._outputs_producer.send(OUTPUTS.name(self.config.prefix), output.to_bytes(), key=key)

        task = asyncio.create_task(watch_late(outcome.late, record))
        self._late.add(task)
        task.add_done_callback(self._late.discard)

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
