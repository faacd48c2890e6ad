"""Which offsets are safe to commit while several records of a partition are in flight.

A worker handles records concurrently, so they finish out of order; committing the offset of
the last finished record could skip one still running and lose it on a crash. The safe commit
point of a partition is its lowest in-flight offset (or one past the highest finished when
nothing is in flight).
"""

from __future__ import annotations

from aiokafka import TopicPartition


class OffsetTracker:
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
