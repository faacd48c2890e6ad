"""The near cache of NPC intents: the game server's per-frame reads and the router's in-budget answers.

An intent is an NPC's current short action (:class:`topics.schemas.Intent`). The Gold model
refreshes intents asynchronously; everybody who needs one *now* reads it from a near cache that
follows the compacted ``npc.intents`` topic: the game server's per-frame reads and the router's
in-budget answers (docs/architecture.md, "Gold's two paths"). A read is a dictionary lookup: no
network, no lock, no await. The same cache tells Gold which NPCs to keep fresh: ``watch`` and
``unwatch`` (:mod:`pipeline.intents.active`; docs/architecture.md, "Keeping the active set fresh").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline import kafka
from pipeline.config import Settings
from pipeline.intents.active import ActiveAnnouncer, Announcement
from pipeline.intents.defaults import DefaultIntents
from pipeline.lifecycle import Lifecycle
from pipeline.observability.intent_reads import ReadStats
from topics.catalogue import INTENTS
from topics.fields import MAX_INTENT_CHARS, ServedBy
from topics.schemas import Intent

log = logging.getLogger("npcflow.intents")

#: ``Intent.engine`` of an intent a game server set itself (``update_intent``).
GAME_ENGINE = "game"


@dataclass(frozen=True)
class SeenIntent:
    """What :meth:`IntentCache.get_intent` returns: the intent, its age, and whether it is the default."""

    npc_id: str
    intent: str
    #: Milliseconds since the model (or the game) produced it; None for a default intent.
    age_ms: float | None
    is_default: bool
    #: The event behind it (request id, engine); None for a default intent.
    event: Intent | None = None

    @property
    def served_by(self) -> ServedBy:
        """How a Gold reply built from this read says it was served: ``cache`` or ``default_intent``."""
        return ServedBy.DEFAULT_INTENT if self.is_default else ServedBy.CACHE

    @property
    def from_model(self) -> bool:
        """A model's intent (not the default, not one a game set with ``update_intent``)."""
        return self.event is not None and self.event.engine != GAME_ENGINE


@dataclass
class IntentCacheStats:
    updates: int = 0
    tombstones: int = 0
    undecodable: int = 0
    published: int = 0
    publish_failures: int = 0


Listener = Callable[[Intent], None]


class IntentCache(Lifecycle):
    """A near cache of every NPC's intent, kept current by following ``npc.intents``.

    ``get_intent`` never blocks: it reads a dictionary that the follower replaces entries of.
    Two ways to run it:

    - in an asyncio program: ``async with IntentCache(settings) as intents:``;
    - in a synchronous game loop: ``with IntentCache(settings) as intents:`` runs the follower on
      a daemon thread with its own event loop; reads from the game thread stay dictionary reads.

    ``start`` returns once the cache has read the topic up to where it ended when it started
    (or after ``catch_up_timeout_s``), so a restarted router or game server serves the intents
    it had. Memory: one entry per NPC that has an intent.

    ``watch(npc_ids)`` keeps those NPCs in Gold's active set (refreshed at
    ``NPCFLOW_GOLD_REFRESH_HZ``) until ``unwatch``: the cache renews their leases on ``npc.active``
    while it runs, so a game server that dies stops costing model time within one lease.
    ``reads`` counts what reads returned (model, game or default intent, and ages) for /metrics.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        prefix: str | None = None,
        defaults: DefaultIntents | None = None,
        ttl_ms: int | None = None,
        client_id: str = "npcflow-intents",
        catch_up_timeout_s: float = 10.0,
        tenant_id: str = "game-server",
    ) -> None:
        self.settings = settings
        prefix = settings.topic_prefix if prefix is None else prefix
        self.topic = INTENTS.name(prefix)
        self.defaults = defaults or DefaultIntents.from_settings(settings.intents)
        self.ttl_ms = settings.intents.ttl_ms if ttl_ms is None else ttl_ms
        self.client_id = client_id
        self.catch_up_timeout_s = catch_up_timeout_s
        self.stats = IntentCacheStats()
        self.reads = ReadStats(client_id)
        #: The NPCs this cache keeps active; touched on the follower's loop only.
        self.active = ActiveAnnouncer(
            prefix=prefix, lease_ms=settings.intents.active_lease_ms, tenant_id=tenant_id
        )
        self._renewer: asyncio.Task[None] | None = None
        self.caught_up = threading.Event()
        #: Why the follower stopped, if it did (reads go on serving what it had).
        self.follower_error: Exception | None = None
        self._entries: dict[str, Intent] = {}
        self._listeners: list[Listener] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._thread: threading.Thread | None = None
        #: Set once caught up or once the follower failed: ``start`` stops waiting.
        self._settled = asyncio.Event()

    # -- reads: any thread, never blocking ---------------------------------------------------

    def get_intent(self, npc_id: str, archetype: str | None = None) -> SeenIntent:
        """The NPC's intent if younger than the TTL, else its archetype's default; no I/O.

        ``age_ms`` says how old the intent is (None for the default); ``from_model`` whether a
        model produced it.
        """
        entry = self._entries.get(npc_id)
        if entry is not None:
            age = time.time() * 1000 - entry.generated_at_ms
            if age < self.ttl_ms:
                age = age if age > 0 else 0.0
                self.reads.intent(age, entry.engine == GAME_ENGINE)
                return SeenIntent(npc_id, entry.intent, age, False, entry)
        self.reads.fell_back()
        return SeenIntent(npc_id, self.defaults.for_archetype(archetype), None, True)

    def __len__(self) -> int:
        return len(self._entries)

    async def topics(self) -> set[str]:
        """Every topic on the cluster (a metadata request; creates nothing)."""
        assert self._consumer is not None, "start() first"
        return set(await self._consumer.topics())

    async def wait_caught_up(self, timeout_s: float | None = None) -> bool:
        """Wait until the cache has read what the topic held when it started (or gave up); True if so."""
        if not self.caught_up.is_set():
            limit = self.catch_up_timeout_s + 5.0 if timeout_s is None else timeout_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), limit)
        return self.caught_up.is_set()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(intent)`` for every intent applied (on the follower's loop; keep it quick)."""
        self._listeners.append(listener)

    # -- the active set ----------------------------------------------------------------------

    def watch(
        self, npc_ids: Iterable[str], *, archetype: str | None = None, prompt: str | None = None
    ) -> None:
        """Keep these NPCs' intents fresh (Gold refreshes them at 1-2 Hz) until :meth:`unwatch`.

        Safe from any thread; returns at once (published asynchronously, like ``update_intent``).
        ``archetype`` and ``prompt`` (the situation the model is asked about) go with each refresh.
        Watching a watched NPC again replaces its archetype and prompt.
        """
        ids = list(npc_ids)
        watch = self.active.watch
        self._on_loop(lambda: [self._send(watch(n, archetype=archetype, prompt=prompt)) for n in ids])

    def unwatch(self, npc_ids: Iterable[str]) -> None:
        """Stop keeping these NPCs fresh (a tombstone each on ``npc.active``); safe from any thread."""
        ids = list(npc_ids)
        self._on_loop(lambda: [self._send(a) for n in ids if (a := self.active.unwatch(n)) is not None])

    @property
    def watched(self) -> frozenset[str]:
        return self.active.watched

    def _on_loop(self, action: Callable[[], object]) -> None:
        """Run ``action`` on the follower's loop: now when called there, else as soon as it can."""
        if self._loop is None:
            raise RuntimeError("start the IntentCache before watch or unwatch")
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            action()
        else:
            self._loop.call_soon_threadsafe(action)

    def _send(self, announcement: Announcement) -> None:
        self._spawn(self._publish_record(announcement.topic, announcement.key, announcement.value))

    async def _renew(self) -> None:
        """Announce watched NPCs again before their leases end, for as long as the cache runs."""
        while True:
            await asyncio.sleep(self.active.lease_ms / 4000)
            for announcement in self.active.renewals():
                self._send(announcement)

    # -- writes ------------------------------------------------------------------------------

    def update_intent(self, npc_id: str, intent: str) -> Intent:
        """Set an NPC's intent from the game: visible here at once, published asynchronously.

        Safe from any thread; never waits for the broker (a failed publish is logged and counted).
        """
        event = Intent(
            npc_id=npc_id,
            intent=intent[:MAX_INTENT_CHARS],
            generated_at_ms=int(time.time() * 1000),
            engine=GAME_ENGINE,
        )
        self._apply(event)
        if self._loop is None:
            raise RuntimeError("start the IntentCache before update_intent")
        record = self._publish_record(self.topic, event.npc_id.encode(), event.to_bytes())
        self._loop.call_soon_threadsafe(self._spawn, record)
        return event

    def _spawn(self, publish: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(publish)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish_record(self, topic: str, key: bytes, value: bytes | None) -> None:
        assert self._producer is not None
        try:
            await (await self._producer.send(topic, value, key=key))
            self.stats.published += 1
        except Exception as exc:
            self.stats.publish_failures += 1
            log.error("%s for %s not published: %s", topic, key.decode(errors="replace"), exc)

    # -- lifecycle (asyncio) -----------------------------------------------------------------

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = kafka.producer(self.settings, f"{self.client_id}-updates")
        await self._producer.start()
        self._consumer = kafka.consumer(self.settings, self.client_id)
        await self._consumer.start()
        partitions = await kafka.partitions(self._consumer, self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        self._follower = asyncio.create_task(self._follow(ends), name="npcflow-intents")
        self._renewer = asyncio.create_task(self._renew(), name="npcflow-active-renewals")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), self.catch_up_timeout_s)
        if not self.caught_up.is_set():
            timeout = self.catch_up_timeout_s
            log.warning("intent cache not caught up with %s after %.0f s", self.topic, timeout)

    async def _stop(self) -> None:
        # Watched NPCs are not unwatched here: a restarted game server watches them again, and a
        # stopped one's leases run out by themselves.
        for task in (self._follower, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _follow(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        behind = {tp for tp, end in ends.items() if end > 0}
        if not behind:
            self._caught_up()
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self._apply_record(record.value, record.key)
                if behind:
                    for tp in list(behind):
                        if await self._consumer.position(tp) >= ends[tp]:
                            behind.discard(tp)
                    if not behind:
                        self._caught_up()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("intent follower on %s stopped: %s", self.topic, exc)
            self.follower_error = exc
            self._settled.set()

    def _caught_up(self) -> None:
        self.caught_up.set()
        self._settled.set()

    def _apply_record(self, value: bytes | None, key: bytes | None = None) -> None:
        if value is None:
            if key is not None:
                self._entries.pop(key.decode(errors="replace"), None)
            self.stats.tombstones += 1
            return
        try:
            event = Intent.from_bytes(value)
        except ValueError:
            self.stats.undecodable += 1
            return
        self._apply(event)

    def _apply(self, event: Intent) -> None:
        current = self._entries.get(event.npc_id)
        if current is not None and current.generated_at_ms > event.generated_at_ms:
            return  # an older intent arriving late never replaces a newer one
        self._entries[event.npc_id] = event
        self.stats.updates += 1
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("intent listener failed")

    # -- lifecycle (synchronous game loops) --------------------------------------------------

    def start_background(self, timeout_s: float = 30.0) -> None:
        """Run the follower on a daemon thread; returns once it has caught up (or failed)."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.close()

        self._thread = threading.Thread(target=main, name="npcflow-intent-cache", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise TimeoutError(f"intent cache did not start within {timeout_s} s")
        if failure:
            raise failure[0]

    def stop_background(self) -> None:
        """Stop the follower thread (safe to call twice)."""
        thread, self._thread = self._thread, None
        if thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        thread.join(timeout=30)

    def __enter__(self) -> Self:
        self.start_background()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_background()
