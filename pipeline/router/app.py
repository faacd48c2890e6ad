"""The router process: a faust-streaming agent on ``npc.requests`` that hands each event to :class:`Router`.

This module wires: faust's consumer and producer, the decision log, readiness and the
crash-on-produce-failure rule. What happens to an event is :mod:`pipeline.router.logic`.
Offsets are committed by faust after the agent has handled the event and after faust flushed
its producer (at-least-once); a replayed request is served again and the client drops the
duplicate reply.

**The transport** (:class:`Transport`, at the end) is faust's stock aiokafka driver with three changes;
the first two are read from the app (set by :func:`create_app`):

- **No consumer thread.** faust's aiokafka driver runs its Kafka consumer in a second thread with
  its own event loop and hands every fetch, commit and seek across through a method queue. For a
  router whose agent only awaits (it never blocks its loop), that thread buys nothing and costs
  every record two loop handoffs and a GIL contest with the agent's thread: profiled at 500
  requests/s, a quarter of the agent thread's samples sat in socket writes (16 % without the
  thread), and the router does 8-16 % less work per request without it (docs/architecture.md §5).
  Here the "thread" is a service on the app's loop: ``call_thread`` awaits the call in place,
  and nothing else about the driver changes (aiokafka's heartbeats were always tasks on the
  consumer's loop; now that is the app's).
- **The configured fetch wait.** faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for its
  worker consumer, so the router would be the one consumer of ours that ``NPCFLOW_FETCH_MAX_WAIT_MS``
  does not reach (Kafka answers a waiting fetch as soon as a record arrives: this is about one
  setting meaning one thing, and an idle router's poll rate, not latency).
- **Durable writes.** The producer writes as every producer of ours does
  (:data:`pipeline.kafka.DURABLE_WRITES`: ``acks=all``, idempotent); faust only asks for that
  inside transactions, which the router does not use.

Faust loads transports from the ``faust.transports`` entry point by URL scheme, so the router
uses ``npcflow://host:port`` and gets this transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiokafka
import faust
import mode
from aiokafka import AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.futures import maybe_async

from pipeline import eventloop, kafka
from pipeline.config import KafkaOptions, Settings
from pipeline.intents import IntentCache
from pipeline.kafka import DURABLE_WRITES
from pipeline.lifecycle import Lifecycle
from pipeline.observability import families, metrics
from pipeline.observability.cost import Pricing
from pipeline.readiness import mark_ready
from pipeline.reply_topics import ReplyTopics
from pipeline.router.breakers import RouterFallback, breaker_detour
from pipeline.router.gold import GoldPath
from pipeline.router.logic import Router, RouterStats, Source
from pipeline.router.monitor import LeanMonitor
from topics.catalogue import ACTIVE, DLQ, OUTPUTS, REPLIES, REQUESTS, ROUTING, TIER_TOPICS
from topics.headers import Headers, Produce
from topics.policy import RoutingPolicy

log = logging.getLogger("npcflow.router")

#: Routing decisions are an audit trail, off the latency path: batch them instead of one request each.
DECISION_LINGER_MS = 50

#: The attribute of the faust app that carries the configured fetch wait to the transport.
FETCH_WAIT_ATTR = "npcflow_fetch_max_wait_ms"


class DecisionLog(Lifecycle):
    """A lingering producer for what is off the replies' path (decisions, Gold's outputs and leases)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        prefix = settings.topic_prefix
        #: What it carries: routing decisions, Gold's outputs and the leases of active NPCs.
        self.topics = [ROUTING.name(prefix), OUTPUTS.name(prefix), ACTIVE.name(prefix)]
        self._producer: AIOKafkaProducer | None = None
        self._ready = asyncio.Event()

    async def _start(self) -> None:
        self._producer = kafka.producer(
            self.settings, "npcflow-router-decisions", linger_ms=DECISION_LINGER_MS
        )
        await self._producer.start()
        await kafka.warm(self._producer, *self.topics)
        self._ready.set()

    async def _stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()  # flushes what is still lingering

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers | None = None) -> None:
        """Queue one record; waits only for the producer to exist, never for the broker."""
        await self._ready.wait()
        assert self._producer is not None
        ack = await self._producer.send(topic, value, key=key, headers=headers)
        ack.add_done_callback(_log_send_failure)

    def service(self) -> type[mode.Service]:
        """A faust service that starts and stops this log with the app."""
        decision_log = self

        class DecisionLogService(mode.Service):
            async def on_start(self) -> None:
                await decision_log.start()

            async def on_stop(self) -> None:
                await decision_log.stop()

        return DecisionLogService


def _gold_path(app: faust.App, settings: Settings, produce: Produce, decisions: DecisionLog) -> GoldPath:
    """Gold's fast path with its near cache of ``npc.intents``, started and stopped with the app."""
    # Intents are not on the reply's path: poll for them less often than the intake (router CPU).
    intents = IntentCache(settings, client_id="npcflow-router-intents")
    app.service(_lifecycle_service(intents))
    reply_topics = ReplyTopics(intents.topics)
    return GoldPath(
        intents,
        produce,
        decisions.send,
        settings=settings.intents,
        prefix=settings.topic_prefix,
        topic_exists=reply_topics.exists,
        pricing=Pricing.from_settings(settings.observability),
        # Active leases are not on the reply's path either: batched, they cost the broker less (§7).
        announce=decisions.send,
    )


def _breaker_detour(app: faust.App, settings: Settings, policy: RoutingPolicy) -> RouterFallback | None:
    """The tier breakers, read in the background while the app runs; None: fallback off."""
    detour = breaker_detour(settings, policy)
    if detour is None:
        return None
    fallback, reader = detour
    app.service(_lifecycle_service(reader))
    return fallback


def _lifecycle_service(thing: Lifecycle) -> type[mode.Service]:
    """A faust service that starts ``thing`` before the agents run and stops it with the app."""

    class LifecycleService(mode.Service):
        async def on_start(self) -> None:
            await thing.start()

        async def on_stop(self) -> None:
            await thing.stop()

    LifecycleService.__name__ = f"{type(thing).__name__}Service"
    return LifecycleService


def _log_send_failure(ack: asyncio.Future) -> None:
    if not ack.cancelled() and ack.exception() is not None:
        log.error("routing decision not recorded: %s", ack.exception())


def create_app(
    settings: Settings,
    policy: RoutingPolicy | None = None,
    *,
    app_id: str | None = None,
    datadir: Path | None = None,
) -> tuple[faust.App, RouterStats]:
    """Build the router app; several processes with the same ``app_id`` share the intake."""
    policy = policy or RoutingPolicy.load(settings.policy_file)
    prefix = settings.topic_prefix
    session_timeout = settings.kafka.session_timeout_s
    app = faust.App(
        app_id or f"{prefix}npcflow-router",
        broker=f"npcflow://{settings.require_kafka()}",
        # TLS/SASL as every other client of ours (pipeline.config.kafka): faust's aiokafka driver
        # hands these to its consumer, producer and admin client.
        broker_credentials=settings.kafka.security.faust_credentials(),
        store="memory://",
        datadir=str(datadir or Path(tempfile.mkdtemp(prefix="npcflow-router-"))),
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.0,  # acks=all with idempotence: the transport's producer (DURABLE_WRITES)
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=min(1.0, session_timeout / 4),
        broker_commit_interval=0.5,
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
        Monitor=LeanMonitor,
    )
    # Read by our faust transport when it builds the worker consumer (faust hard-codes 1500 ms).
    setattr(app, FETCH_WAIT_ATTR, settings.kafka.fetch_max_wait_ms)
    crashing: set[asyncio.Future] = set()  # held so the crash task is not garbage-collected

    def on_delivery(ack: asyncio.Future) -> None:
        if ack.cancelled() or ack.exception() is None:
            return
        # aiokafka retried until its delivery timeout: the broker is gone. Stop rather than go on
        # committing offsets of requests that were never forwarded.
        log.critical("router cannot produce (%s); stopping", ack.exception())
        crashing.add(asyncio.ensure_future(app.crash(ack.exception())))

    async def produce(topic: str, key: bytes, value: bytes, headers: Headers | None) -> None:
        # Straight to faust's producer: faust flushes it before every offset commit (at-least-once),
        # without the per-message bookkeeping of Topic.send that we do not use.
        ack = await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=headers)
        ack.add_done_callback(on_delivery)

    decisions = DecisionLog(settings)
    app.service(decisions.service())
    gold = _gold_path(app, settings, produce, decisions) if settings.intents.fast_path else None
    breakers = _breaker_detour(app, settings, policy)
    router = Router(policy, produce, decisions.send, prefix=prefix, gold=gold, breakers=breakers)
    intake = app.topic(REQUESTS.name(prefix), key_type=bytes, value_type=bytes)

    # What the router produces itself (the decision log warms its own): Gold's replies, the tier
    # topics, dead letters. The agent awaits each send, so a cold one holds up the next request too.
    produced_topics = [REPLIES.name(prefix), DLQ.name(prefix)]
    produced_topics += [spec.name(prefix) for spec in TIER_TOPICS.values()]
    warmed: list[bool] = []
    background: set[asyncio.Future] = set()

    @app.on_partitions_assigned.connect
    async def _assigned(app: faust.App, assigned: set, **_: object) -> None:
        if assigned:  # faust finishes the rebalance after this returns: wait beside it
            task = asyncio.ensure_future(_mark_ready_when_serving(len(assigned)))
            background.add(task)
            task.add_done_callback(background.discard)

    async def _mark_ready_when_serving(partitions: int) -> None:
        """Ready once a request would be answered at once (measured: ≈ 450 ms sooner it was not).

        faust pauses the intake through a rebalance and resumes it when its recovery completes;
        the consumer's fetch already parked at the broker went without the intake, so a request
        then waits for that fetch to return: at most one fetch wait.
        """
        if not warmed:  # once: the first request should not pay for metadata and connections
            warmed.append(True)
            await kafka.warm(app.producer._producer, *produced_topics)
        await app.tables.recovery.completed.wait()
        await asyncio.sleep(settings.kafka.fetch_max_wait_ms / 1000)
        mark_ready(settings.process.ready_file, f"router assigned {partitions} partitions")

    @app.timer(2.0)
    async def _export_lag() -> None:
        # The intake's lag from offsets faust's Monitor already tracks (no broker request).
        monitor = app.monitor
        assigned = app.consumer.assignment()
        families.export_offsets_lag(
            app.conf.id, monitor.tp_end_offsets, monitor.tp_committed_offsets, assigned
        )

    @app.agent(intake, name="route")
    async def route_requests(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            await router.route(message.value, Source(message.topic, message.partition, message.offset))

    return app, router.stats


def run_router(settings: Settings, loglevel: str = "info") -> None:
    """Run one router process until SIGINT/SIGTERM (the faust worker owns the event loop)."""
    # faust runs its Kafka consumer in a second thread; with the default 5 ms GIL switch interval a
    # record fetched there can wait a whole interval for the agent's thread (and the reverse).
    sys.setswitchinterval(settings.process.gil_switch_s)
    settings.require_kafka()
    metrics.serve_metrics(settings.process.metrics_port, settings.observability.metrics_host)
    families.set_role("router")
    # faust wants a data directory even with in-memory tables; it holds nothing worth keeping.
    with tempfile.TemporaryDirectory(prefix="npcflow-router-") as datadir:
        app, _ = create_app(settings, datadir=Path(datadir))
        worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        eventloop.settle_heap(settings.process.gc_gen0)  # faust, the app and the policy are built
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            if exc.code:
                raise


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer "thread", run as a service on the app's loop (see the module docstring)."""

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._serving: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """What the thread would run, as a task here: start, then serve until stopped."""
        assert not self._thread_started.is_set()
        self._thread_started.set()
        self._thread_running = running = self.parent_loop.create_future()
        self._serving = asyncio.ensure_future(self._serve())
        try:
            await asyncio.wait({running, self._serving}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():  # _serve ended before it was up: raise what it raised
                await self._serving
        finally:
            self._thread_running = None

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.add_future(maybe_async(fun(*args, **kwargs)))

    async def stop(self) -> None:
        await super().stop()
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await self._serving

    async def _gather_remaining_tasks(self) -> None:
        """A real thread's loop ends with its thread, so mode cancels every task still on it.
        This loop is the app's: its tasks are not ours to cancel."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher; the consumer is not started yet.
        consumer._fetch_max_wait_ms = getattr(
            transport.app, FETCH_WAIT_ATTR, KafkaOptions().fetch_max_wait_ms
        )
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Producer(faust_aiokafka.Producer):
    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), **DURABLE_WRITES}


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport, consumer on the app's loop, durable producer; ``npcflow://`` URLs."""

    Consumer = Consumer
    Producer = Producer
