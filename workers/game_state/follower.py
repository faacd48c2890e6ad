"""Follow the compacted ``game.state`` topic into a :class:`~workers.game_state.state.GameState`.

No consumer group: every MCP server replica reads every partition from the beginning (the topic
is compacted, so that is one record per entity) and then keeps following. Nothing is committed:
the state lives in memory and is rebuilt from the topic at each start. ``caught_up`` is set
once the positions reached the end offsets asked for at start, so ``npcflow run mcp`` serves
only a state at least as new as the topic was when it started.

A record that is not a valid :class:`~topics.schemas.GameStateUpdate` is logged with its offset
and counted (``npcflow_game_state_records_total{result="invalid"}``), never applied and never
fatal: the game server's bad update stays in the topic for whoever fixes it. It is not
dead-lettered, because every replica (and every restart) would dead-letter it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.config import Settings
from pipeline.lifecycle import Lifecycle
from pipeline.observability import metrics
from topics.catalogue import GAME_STATE
from topics.schemas import GameStateUpdate, InvalidEvent
from workers.game_state.state import GameState

log = logging.getLogger("npcflow.game_state")


class GameStateFollower(Lifecycle):
    """``start()`` assigns every partition of ``game.state`` and reads it into :attr:`state`."""

    def __init__(self, settings: Settings, state: GameState | None = None) -> None:
        self.settings = settings
        self.state = state or GameState()
        self.topic = GAME_STATE.name(settings.topic_prefix)
        self.caught_up = asyncio.Event()
        self.records = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._targets: dict[TopicPartition, int] = {}

    async def _start(self) -> None:
        consumer = kafka.consumer(self.settings, "npcflow-game-state")
        self._consumer = consumer
        await consumer.start()
        partitions = await kafka.partitions(consumer, self.topic)
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        self._targets = {tp: end for tp, end in ends.items() if end > 0}
        await self._check_caught_up()
        self._task = asyncio.create_task(self._follow(), name="game-state-follower")

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_caught_up(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), timeout_s)
        return self.caught_up.is_set()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup: aiokafka reconnects; keep serving the state we hold
                log.exception("reading %s failed; retrying", self.topic)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    self.apply(record)
            await self._check_caught_up()

    def apply(self, record: ConsumerRecord) -> None:
        """Apply one record: an update, a tombstone (delete), or a bad record (counted, skipped)."""
        self.records += 1
        if record.value is None:
            key = (record.key or b"").decode("utf-8", "replace")
            result = self.state.delete(key) if key else "invalid"
        else:
            try:
                result = self.state.apply(GameStateUpdate.from_bytes(record.value))
            except (InvalidEvent, ValueError) as exc:
                log.warning(
                    "skipping invalid game state record %s[%d]@%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    str(exc)[:300],
                )
                result = "invalid"
        metrics.GAME_STATE_RECORDS.labels(result).inc()

    async def _check_caught_up(self) -> None:
        if self.caught_up.is_set() or self._consumer is None:
            return
        for tp, end in self._targets.items():
            if await self._consumer.position(tp) < end:
                return
        log.info("game state caught up: %d entities from %d records", len(self.state), self.records)
        self.caught_up.set()
