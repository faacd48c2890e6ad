"""One tier worker class, configured per tier: the Kafka loop around :mod:`workers.serving`.

The loop consumes routed requests, bounds what it holds (records pending, engine slots),
hands serving one record at a time and produces the records serving returns: the reply (to
the request's reply topic, key = request_id) and the output (``npc.outputs``), or a dead
letter. A record's offset counts as done only once those are acknowledged; offsets are
committed from :class:`OffsetTracker` (below), so a crash replays unfinished work
instead of losing it (at-least-once; the client drops a duplicate). On a revoke the records
still waiting for an engine slot are handed back unserved. If the worker cannot write to Kafka
at all it stops with an error rather than skip a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.lifecycle import Lifecycle
from pipeline.observability import families, metrics
from pipeline.observability.cost import Pricing
from pipeline.reply_topics import ReplyTopics
from topics.catalogue import DLQ, OUTPUTS, REPLIES, TIER_TOPICS, Tier
from topics.policy import FORWARD, RoutingPolicy
from workers.engine_stack import tier_engine
from workers.engines.base import Engine, EngineResult
from workers.group_member import GroupMember
from workers.hooks import standard_hooks
from workers.intents.active_refresh import ActiveRefresher, serving_step
from workers.intents.refresh_step import RefreshServing
from workers.intents.writer import IntentRefresh
from workers.resilience import TierResilience
from workers.resilience.admission import FairShare, LoadShedder
from workers.resilience.fallback import FallbackStep, Forwarded, watch_late
from workers.serving import DeadLettered, Hooks, Outcome, Serving, ServingStats, ServingStep
from workers.worker_config import WorkerConfig

log = logging.getLogger("npcflow.worker")

#: What is on no one's latency path (intents, routing records, dead letters, late outputs) is
#: batched with this linger; a reply's output rides in the reply's own request instead.
BATCHED_LINGER_MS = 20


@dataclass
class WorkerStats:
    #: Records handed back unserved on a revoke or stop (the partition's next owner serves them).
    handed_back: int = 0
    #: What serving produced (replies by status, dead letters, engine calls).
    serving: ServingStats = field(default_factory=ServingStats)


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
        #: Refresh jobs (engine → intent, never a reply): the refresh header's and the refresher's.
        self.refreshing = RefreshServing(
            config.tier,
            self.engine,
            self.intents or IntentRefresh(None, prefix=config.prefix),
            self.serving.stats,
            self.serving.shedder,
        )
        self.stats = WorkerStats(serving=self.serving.stats)
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
                serving_step(self.refreshing, self._slots, lambda: self._batched_producer),
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
        self._producer: AIOKafkaProducer | None = None
        self._batched_producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._topic = TIER_TOPICS[self.tier].name(config.prefix)
        #: The tier topic in the tier's group: rebalances, seek-back and commits (workers.group_member).
        self.member = GroupMember(
            config.settings,
            name=f"{self.tier.value} worker",
            client_id=f"npcflow-{self.tier.value}",
            group_id=config.group,
            topic=self._topic,
            on_revoke=self._release,
            rebalance_timeout_ms=config.rebalance_timeout_ms,
            fetch_max_wait_ms=config.fetch_max_wait_ms or config.settings.kafka.fetch_max_wait_ms,
        )
        self.assigned = self.member.assigned
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
        self._batched_producer = kafka.producer(
            settings, f"npcflow-{tier}-batched", linger_ms=BATCHED_LINGER_MS
        )
        await self._batched_producer.start()
        # Before the first record: a cold topic costs a metadata round trip and a connection.
        prefix = self.config.prefix
        forward = [TIER_TOPICS[FORWARD[self.tier]].name(prefix)] if self.tier in FORWARD else []
        await kafka.warm(self._producer, REPLIES.name(prefix), OUTPUTS.name(prefix), *forward)
        await kafka.warm(self._batched_producer, OUTPUTS.name(prefix), DLQ.name(prefix))
        await self.member.start()
        if self.refresher is not None:
            await self.refresher.start()
        log.info("%s worker started on %s with engine %s", tier, self._topic, self.engine.name)

    async def _stop(self) -> None:
        """Abandon records still waiting for the engine, finish the rest, commit, close."""
        self._stopping.set()
        await self.member.stop()  # releases everything first: queued handed back, the rest finished
        if self.refresher is not None:
            await self.refresher.stop()
        for producer in (self._producer, self._batched_producer):
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
        return {tp.partition for tp in self.member.owned()}

    async def lag(self) -> int:
        """Records in owned partitions past the group's committed offsets: 0 when fully committed."""
        return await self.member.lag()

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish; safe from a signal handler."""
        self._stopping.set()

    async def stopped(self) -> None:
        await self._stopping.wait()

    async def run(self) -> None:
        """Consume until :meth:`request_stop`; commits every ``commit_interval_s``."""
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            generation, batches = await self.member.fetch(100, self.config.max_pending)
            for tp, records in batches.items():
                for i, record in enumerate(records):
                    await self._pending.acquire()
                    if self._stopping.is_set() or not self.member.current(generation):
                        # A rebalance (or stop) came while we fetched or waited: whoever owns the
                        # partition now reads these records again (if that is us, from here).
                        self._pending.release()
                        self.stats.handed_back += len(records) - i
                        if not self._stopping.is_set():
                            self.member.seek_back(records[i:])
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
        self._offsets.committed(await self.member.commit(self._offsets.to_commit()))

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
        # A refresh header's job renews an intent the router answered from; the rest get replies.
        step: ServingStep = self.refreshing if accepted.refresh else self.serving
        shed = step.shed(
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
                return await step.serve(accepted)

    async def _all_topics(self) -> set[str]:
        return set(await self.member.consumer.topics())

    async def _produce(self, outcome: Outcome) -> None:
        """Send the outcome's records (workers.replies says which producer), then wait for every ack."""
        assert self._producer is not None and self._batched_producer is not None
        acks = []
        for record in outcome.records():
            producer = self._producer if record.urgent else self._batched_producer
            ack = await producer.send(record.topic, record.value, key=record.key, headers=record.headers)
            acks.append(ack)
        for ack in acks:
            await ack
        if isinstance(outcome, Forwarded) and outcome.late is not None:
            self._watch_late(outcome)

    def _watch_late(self, outcome: Forwarded) -> None:
        """When an abandoned call finishes, record its result as an output only (never a reply)."""
        assert outcome.late is not None

        async def record(result: EngineResult) -> None:
            assert self._batched_producer is not None
            output = self.serving.late_output(outcome.job, result)
            metrics.LATE_RESULTS.labels(self.tier.value).inc()
            key = output.request.request_id.encode()
            await self._batched_producer.send(OUTPUTS.name(self.config.prefix), output.to_bytes(), key=key)

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


class OffsetTracker:
    """Which offsets are safe to commit while several records of a partition are in flight.

    The worker serves records concurrently, so they finish out of order; committing the offset of
    the last finished record could skip one still running and lose it on a crash. The safe commit
    point of a partition is its lowest in-flight offset (or one past the highest finished when
    nothing is in flight).
    """

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        self._in_flight.setdefault(tp, set()).add(offset)
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self._in_flight.get(tp, set()).discard(offset)

    def in_flight(self) -> int:
        return sum(len(s) for s in self._in_flight.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Offsets that moved since the last :meth:`committed` call (the next offset to read)."""
        out = {}
        for tp, nxt in self._next.items():
            pending = self._in_flight.get(tp)
            point = min(pending) if pending else nxt
            if point > self._committed.get(tp, -1):
                out[tp] = point
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop state of partitions this worker no longer owns (after a rebalance)."""
        for tp in partitions:
            self._in_flight.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
