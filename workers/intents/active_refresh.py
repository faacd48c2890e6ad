"""Gold's refresh scheduler: every active NPC re-thought at ``NPCFLOW_GOLD_REFRESH_HZ``, in the Gold worker.

Gold answers from intents (docs/architecture.md, "Gold's two paths"); they are worth serving only
if the model renews them. :class:`ActiveRefresher` follows the compacted ``npc.active``
(:mod:`pipeline.intents.active`: game servers' watches, routers' per-request leases) as the consumer group
``<prefix>npcflow-gold-active``, so the Gold workers split the active set by partition and a
rebalance moves NPCs without doubles: a revoked partition's NPCs are dropped at once, an assigned
one is rebuilt by reading it from its start (the topic is compacted: one record per NPC). When
each NPC is refreshed is :class:`~workers.intents.schedule.RefreshSchedule`'s decision; a
refresh is the worker's own refresh serving step, called directly (engine → intent → Redis and
``npc.intents``), with no Kafka hop in between. At most ``capacity`` refreshes run at once (the
worker's Gold engine slots): when the engine cannot keep up, every NPC's rate drops evenly,
oldest intent first, and nothing queues (docs/architecture.md, "Keeping the active set fresh").

Offsets are never committed: the state is rebuilt from the compacted topic on every assignment,
and a lease already over when read back is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from pipeline import kafka
from pipeline.config import Settings
from pipeline.intents import ARCHETYPE_KEY, GENERIC_PROMPT
from pipeline.lifecycle import Lifecycle
from pipeline.observability import families, metrics
from topics.catalogue import ACTIVE
from topics.fields import Sla
from topics.schemas import ActiveNpc, InvalidEvent, Request
from workers.intents.refresh_step import RefreshServing
from workers.intents.schedule import ActiveEntry, RefreshSchedule
from workers.resilience.admission import FairShare
from workers.serving import Job

log = logging.getLogger("npcflow.refresh")

#: ``(request, deadline_ms) -> result``: one refresh through the worker's serving step; the result
#: is :class:`~workers.intents.writer.Refreshed`'s reason (``written`` when an intent went out).
RefreshStep = Callable[[Request, int], Awaitable[str]]

#: An intent is a short action: the Gold shape's 8 tokens.
REFRESH_MAX_TOKENS = 8
#: The loop wakes at least this often (new records, lease checks) and at most this precisely.
MAX_WAIT_S = 1.0
TICK_S = 0.005
#: Metrics are exported this often, rates over this window.
EXPORT_EVERY_S = 1.0
RATE_WINDOW_S = 10.0


def wall_ms() -> float:
    return time.time() * 1000


def serving_step(
    serving: RefreshServing, slots: FairShare, producer: Callable[[], AIOKafkaProducer | None]
) -> RefreshStep:
    """A Gold worker's refresh step: the refresh serving step in one of its engine slots, then the
    intent record, batched with the outputs (``producer``: the worker's, once started).

    Unlike a refresh read from the tier topic, no offset waits for the record's acknowledgement, so
    the step ends once the record is queued: waiting for the ack (the outputs' linger) would hold a
    scheduler slot longer than a fast engine call. A lost record is logged; the NPC's next refresh
    replaces it.
    """
    tier = serving.tier.value

    async def step(request: Request, deadline_ms: int) -> str:
        job = Job(request, deadline_ms, "", refresh=True)
        async with slots.slot(request.tenant_id):
            with families.IN_FLIGHT.labels(tier).track_inprogress():
                outcome = await serving.serve(job)
        sender = producer()
        if outcome.update is not None and sender is not None:
            record = outcome.update.outbound()
            ack = await sender.send(record.topic, record.value, key=record.key)
            ack.add_done_callback(_log_lost_intent)
        return outcome.reason

    return step


def _log_lost_intent(ack: asyncio.Future[object]) -> None:
    if not ack.cancelled() and ack.exception() is not None:
        log.warning("a scheduled refresh's intent was not recorded: %s", ack.exception())


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, refresher: ActiveRefresher) -> None:
        self.refresher = refresher

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.refresher.revoke({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.refresher._rebuild(list(assigned))


class ActiveRefresher(Lifecycle):
    """Keeps one Gold worker's share of the active set fresh; ``start``/``stop`` with the worker.

    Without Kafka (unit tests) drive it with :meth:`apply`, :meth:`revoke` and :meth:`pump`.
    """

    def __init__(
        self,
        settings: Settings,
        step: RefreshStep,
        *,
        capacity: int,
        group_id: str | None = None,
        clock: Callable[[], float] = wall_ms,
    ) -> None:
        if capacity < 1:
            raise ValueError("a refresher needs at least one engine slot")
        self.settings = settings
        self.schedule = RefreshSchedule(settings.intents.refresh_hz)
        self.capacity = capacity
        self.timeout_ms = settings.intents.refresh_timeout_ms
        self.topic = ACTIVE.name(settings.topic_prefix)
        self.group = group_id or f"{settings.topic_prefix}npcflow-gold-active"
        self.undecodable = 0
        self._step = step
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        #: When the loop wakes by itself (its sleep's end; -inf while awake): an NPC planned before
        #: that must wake it.
        self._sleep_until = -math.inf
        #: Partition → its end offset when assigned: records before it are a rebuild, not news.
        self._rebuilding: dict[int, int] = {}
        self._run_id = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self._consumer: AIOKafkaConsumer | None = None
        self._loops: list[asyncio.Task[None]] = []
        #: (wall s, asked, done) samples for the rate gauges.
        self._samples: deque[tuple[float, float, int]] = deque()
        self._exported_asked = 0.0

    # -- the active set (no Kafka) -----------------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None, partition: int, *, live: bool = True) -> None:
        """One ``npc.active`` record: a lease (join or renew) or a tombstone (leave)."""
        if value is None:
            if key is not None:
                self.schedule.remove(key.decode(errors="replace"))
            return
        try:
            active = ActiveNpc.from_bytes(value)
        except (InvalidEvent, ValueError):
            self.undecodable += 1
            return
        known = active.npc_id in self.schedule
        self.schedule.upsert(active, partition, self._clock(), live=live)
        if live and not known:
            self._wake.set()  # a new NPC is refreshed at once

    def revoke(self, partitions: set[int]) -> None:
        """Partitions taken away: their NPCs leave now (refreshes in flight finish, unplanned)."""
        gone = self.schedule.remove_partitions(partitions)
        for partition in partitions:
            self._rebuilding.pop(partition, None)
        log.info("gold refresher: revoked %s (%d NPCs)", sorted(partitions), len(gone))

    def pump(self) -> list[asyncio.Task[None]]:
        """Launch the refreshes due now, within the free capacity; returns their tasks."""
        free = self.capacity - len(self._tasks)
        launched = []
        for entry in self.schedule.take(self._clock(), max(0, free)):
            task = asyncio.create_task(self._refresh(entry), name=f"refresh-{entry.npc_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            launched.append(task)
        return launched

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def request(self, entry: ActiveEntry, now: float) -> Request:
        """What the model is asked for an active NPC: its last known situation, Gold's shape."""
        context = {ARCHETYPE_KEY: entry.archetype} if entry.archetype else {}
        return Request(
            request_id=f"rf-{self._run_id}-{next(self._ids)}",
            npc_id=entry.npc_id,
            tenant_id=entry.tenant_id,
            prompt=entry.prompt or GENERIC_PROMPT,
            max_tokens=REFRESH_MAX_TOKENS,
            sla=Sla.REALTIME,
            context=context,
            created_at_ms=int(now),
        )

    async def _refresh(self, entry: ActiveEntry) -> None:
        started = self._clock()
        previous = entry.last_done_ms
        try:
            result = await self._step(self.request(entry, started), int(started + self.timeout_ms))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the intent stays as it was; the NPC is planned again all the same
            log.warning("refresh of %s failed: %s: %s", entry.npc_id, type(exc).__name__, exc)
            result = "error"
        ended = self._clock()
        wrote = result == "written"
        planned = self.schedule.finished(entry.npc_id, ended, wrote)
        metrics.GOLD_REFRESH_DONE.labels(result).inc()
        if wrote and previous is not None:
            metrics.GOLD_REFRESH_INTERVAL_SECONDS.observe((ended - previous) / 1000)
        if self.schedule.waiting or (planned is not None and planned.due_ms < self._sleep_until):
            # A slot is free and NPCs wait for one, or this NPC is due before the loop would wake
            # (it slept while the NPC was in flight and nothing else was planned).
            self._wake.set()

    # -- metrics -----------------------------------------------------------------------------

    def rates(self) -> dict[str, float]:
        """Per-NPC refresh rates over the last window: ``asked_hz`` (the setting), ``achieved_hz``."""
        stats = self.schedule.stats
        if not self._samples:
            return {"asked_hz": self.schedule.hz, "achieved_hz": 0.0, "shortfall": 0.0}
        _, asked0, done0 = self._samples[0]
        asked, done = stats.asked - asked0, stats.done - done0
        share = min(1.0, done / asked) if asked > 0 else 1.0
        return {"asked_hz": self.schedule.hz, "achieved_hz": self.schedule.hz * share, "shortfall": 1 - share}

    def export(self) -> None:
        stats = self.schedule.stats
        now_s = time.monotonic()
        self._samples.append((now_s, stats.asked, stats.done))
        while self._samples and now_s - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        metrics.GOLD_ACTIVE_NPCS.set(len(self.schedule))
        metrics.GOLD_REFRESH_ASKED.inc(max(0.0, stats.asked - self._exported_asked))
        self._exported_asked = stats.asked
        rates = self.rates()
        metrics.GOLD_REFRESH_HZ.labels("asked").set(rates["asked_hz"])
        metrics.GOLD_REFRESH_HZ.labels("achieved").set(rates["achieved_hz"])
        metrics.GOLD_REFRESH_SHORTFALL.set(rates["shortfall"])

    # -- Kafka -------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._consumer = kafka.consumer(self.settings, "npcflow-gold-active", group_id=self.group)
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()
        self._loops = [
            asyncio.create_task(self._follow(), name="npcflow-active-follow"),
            asyncio.create_task(self._drive(), name="npcflow-active-drive"),
        ]
        log.info("gold refresher on %s at %g Hz, %d at once", self.topic, self.schedule.hz, self.capacity)

    async def _stop(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _rebuild(self, assigned: list[TopicPartition]) -> None:
        """An assignment: read each partition from its start; what it held then is not news."""
        assert self._consumer is not None
        if not assigned:
            return
        ends = await self._consumer.end_offsets(assigned)
        for tp in assigned:
            self._rebuilding[tp.partition] = ends[tp]
            # From the start (offset 0 compacted away resets to the earliest kept); ``seek`` only sets
            # the position, which is what may be done inside a rebalance callback.
            self._consumer.seek(tp, 0)
        log.info("gold refresher: assigned %s", sorted(tp.partition for tp in assigned))

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=int(MAX_WAIT_S * 1000))
            for tp, records in batches.items():
                for record in records:
                    end = self._rebuilding.get(tp.partition)
                    live = end is None or record.offset >= end
                    if end is not None and record.offset + 1 >= end:
                        del self._rebuilding[tp.partition]
                    self.apply(record.key, record.value, tp.partition, live=live)

    async def _drive(self) -> None:
        last_export = 0.0
        while True:
            self._wake.clear()
            self.pump()
            if time.monotonic() - last_export >= EXPORT_EVERY_S:
                self.export()
                last_export = time.monotonic()
            due = self.schedule.next_due_ms()
            now = self._clock()
            wait_s = min(MAX_WAIT_S, max(TICK_S, MAX_WAIT_S if due is None else (due - now) / 1000))
            self._sleep_until = now + wait_s * 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._sleep_until = -math.inf  # awake: nothing needs to wake it
