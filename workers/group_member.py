"""One consumer-group member's Kafka side, written once for the tier worker and the sink runner.

Both consume a topic in a group, hold records they have not finished (a worker's requests in
flight, a sink's batch), and commit only what is done. What a rebalance asks of them is the same,
and it lives here:

- **generations**: every revoke bumps :attr:`GroupMember.generation`; records fetched under an
  older one are not started, because whoever owns their partition now reads them again;
- **seek back**: if that owner is still us, our position is already past those records, so we
  seek back to the first of them per partition, or they would never be read again;
- **release before giving up**: the revoke waits for the owner's ``on_revoke`` (finish or drop
  what it holds for those partitions, commit), so the next owner starts from committed offsets;
- **commit what we own**: offsets of partitions no longer ours are dropped, and a commit that
  fails in a rebalance is logged and retried by the next one (or read again, idempotently).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.config import Settings
from pipeline.lifecycle import Lifecycle
from pipeline.readiness import mark_ready

log = logging.getLogger("npcflow.consumer")

Batches = dict[TopicPartition, list[ConsumerRecord]]
OnRevoke = Callable[[set[TopicPartition] | None], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, member: GroupMember) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        gone = set(revoked)
        await self.member.release(gone)
        self.member._owned -= gone  # released: its offsets are committed, the next owner may start

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        member = self.member
        member._owned |= set(assigned)
        partitions = sorted(tp.partition for tp in assigned)
        log.info("%s assigned %s", member.name, partitions)
        if partitions:
            member.assigned.set()
            mark_ready(member.settings.process.ready_file, f"{member.name} assigned {partitions}")


class GroupMember(Lifecycle):
    """A consumer of ``topic`` in ``group_id``; ``on_revoke(partitions)`` (None: all) releases them."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        client_id: str,
        group_id: str,
        topic: str,
        on_revoke: OnRevoke,
        **overrides: Any,
    ) -> None:
        self.settings = settings
        #: Who this member is in logs and readiness ("gold worker", "postgres sink").
        self.name = name
        self.group_id = group_id
        self.topic = topic
        self.generation = 0
        self.assigned = asyncio.Event()
        self._client_id = client_id
        self._on_revoke = on_revoke
        self._overrides = overrides
        self._consumer: AIOKafkaConsumer | None = None
        #: What this member owns, as the rebalance listener says: a revoked partition leaves once it
        #: is released (aiokafka's ``assignment()`` keeps listing it until the next assignment).
        self._owned: set[TopicPartition] = set()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    async def _start(self) -> None:
        self._consumer = kafka.consumer(
            self.settings, self._client_id, group_id=self.group_id, **self._overrides
        )
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        await self._consumer.start()

    async def _stop(self) -> None:
        """Release every partition (the owner finishes and commits), then leave the group."""
        try:
            await self.release(None)
        finally:
            self._owned.clear()
            if self._consumer is not None:
                await self._consumer.stop()

    def owned(self) -> set[TopicPartition]:
        """The partitions assigned to this member and not released since (empty mid-rebalance)."""
        return set(self._owned)

    async def release(self, partitions: set[TopicPartition] | None) -> None:
        """Records fetched before this are stale; the owner lets ``partitions`` (None: all) go."""
        self.generation += 1
        await self._on_revoke(partitions)

    async def fetch(self, timeout_ms: int, max_records: int) -> tuple[int, Batches]:
        """Records fetched, with the generation they were fetched under (see :meth:`current`)."""
        generation = self.generation
        return generation, await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)

    def current(self, generation: int) -> bool:
        """Whether records fetched under ``generation`` may still be started (no revoke since)."""
        return generation == self.generation

    def seek_back(self, records: Sequence[ConsumerRecord]) -> None:
        """Read abandoned records again from the first of them per partition we still own.

        Not when stopping: the partitions' next owner reads them from the committed offsets.
        """
        if self._consumer is None:
            return
        owned = self.owned()
        first: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        for tp, offset in first.items():
            if tp in owned:
                self._consumer.seek(tp, offset)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Commit the offsets of partitions still ours; returns what was committed (empty on failure)."""
        if self._consumer is None:
            return {}
        owned = self.owned()
        mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not mine:
            return {}
        try:
            await self._consumer.commit(mine)
        except Exception as exc:  # a rebalance in progress: the next commit (or the next owner) redoes it
            log.warning("%s commit failed (%s); will be retried", self.name, exc)
            return {}
        return mine

    async def lag(self) -> int:
        """Records in owned partitions past the group's committed offsets: 0 when fully committed."""
        owned = list(self.owned())
        if not owned:
            return 0
        ends = await self.consumer.end_offsets(owned)
        total = 0
        for tp in owned:
            total += max(0, ends[tp] - (await self.consumer.committed(tp) or 0))
        return total


def past(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offsets to commit once ``records`` are all done: one past the highest per partition."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets
