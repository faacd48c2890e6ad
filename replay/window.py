"""Read a time window of several topics, roughly in time order.

A replay reads a bounded slice of a recording, so each partition gets its offsets before the first
fetch. The start comes from ``offsets_for_times``: the broker's time index finds it without reading
what lies before the window, which on a topic kept for days is most of the log; "no such offset"
means the partition has nothing at or after the window's start and is not read at all. The end
comes from ListOffsets(latest), asked once: the replay reads a fixed snapshot and finishes even
while the pipeline keeps writing, without waiting on an empty fetch to learn it is at the end.
Record timestamps are set by producers and need not grow with the offset, so the records still
have the last word inside those offsets: the first one at or past ``until`` ends the partition's
window, and those older than ``since`` after the start are skipped. (An earlier version checked
every ``offsets_for_times`` answer against the records and scanned from the first record when it
was wrong, because a toy broker it ran on answered wrongly; Kafka answers right.)

Partitions far ahead in time of the slowest one are paused, so the three topics advance together
and the join downstream holds only what is in flight around the read position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.config import ConfigError, Settings
from pipeline.lifecycle import Lifecycle
from replay.bounds import Bounds, WindowError

log = logging.getLogger("npcflow.replay")
#: Loop turns that get the next fetch onto the wire (the fetcher's task wakes, then its request's)
#: before a batch is processed, so the broker prepares it meanwhile.
_FETCH_TURNS = 3


@dataclass
class ReadStats:
    #: Records fetched, and those inside the window (what the caller got).
    fetched: int = 0
    kept: int = 0
    #: Partitions positioned by ``offsets_for_times``, by given offsets, at their first record.
    by_time: int = 0
    by_offset: int = 0
    from_start: int = 0
    #: Partitions with no record at all when the read began.
    empty: int = 0

    @property
    def method(self) -> str:
        """How the window was found: offsets_for_times, offsets, start (from the first record), or a mix."""
        counts = (
            ("offsets_for_times", self.by_time),
            ("offsets", self.by_offset),
            ("start", self.from_start),
        )
        return "+".join(name for name, count in counts if count) or "none"


@dataclass
class _Part:
    tp: TopicPartition
    bounds: Bounds
    #: The next offset to read, and the end offset of the read (exclusive).
    next: int = 0
    end: int = 0
    last_ts: int | None = None
    done: bool = False
    paused: bool = False


@dataclass
class WindowReader(Lifecycle):
    """``async with WindowReader(settings, {topic: Bounds}) as r: async for batch in r.batches()``."""

    settings: Settings
    bounds: Mapping[str, Bounds]
    #: A partition more than this ahead (in record time) of the slowest one waits.
    align_ms: int = 2000
    client_id: str = "npcflow-replay"
    stats: ReadStats = field(default_factory=ReadStats)
    _consumer: AIOKafkaConsumer | None = None
    _parts: dict[TopicPartition, _Part] = field(default_factory=dict)

    async def _start(self) -> None:
        self._consumer = kafka.consumer(self.settings, self.client_id, max_partition_fetch_bytes=4 << 20)
        await self._consumer.start()
        await self._position()

    async def _stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _partitions(self, topic: str) -> list[int]:
        assert self._consumer is not None
        try:
            return sorted(await kafka.partitions(self._consumer, topic, timeout_s=5.0))
        except ConfigError:
            raise WindowError(
                f"topic {topic} does not exist on the broker (is the topic prefix right?)"
            ) from None

    async def _position(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        for topic, bounds in self.bounds.items():
            for p in await self._partitions(topic):
                if bounds.offsets is None or p in bounds.offsets:
                    tp = TopicPartition(topic, p)
                    self._parts[tp] = _Part(tp, bounds)
        if not self._parts:
            raise WindowError("no partition to read: the given offsets name none of the topic's partitions")
        tps = list(self._parts)
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        timed = {  # a start before 1970 (``since`` minus the clock skew allowance) is the log's start
            tp: max(p.bounds.from_ms, 0)
            for tp, p in self._parts.items()
            if p.bounds.offsets is None and p.bounds.from_ms is not None
        }
        answers = await consumer.offsets_for_times(timed) if timed else {}
        finished: list[TopicPartition] = []
        for tp, part in self._parts.items():
            begin, part.end = begins[tp], ends[tp]
            if part.bounds.offsets is not None:
                start, stop = part.bounds.offsets[tp.partition]
                part.next = max(start, begin)
                part.end = part.end if stop is None else min(stop, part.end)
                self.stats.by_offset += 1
            elif tp in timed:
                hit = answers.get(tp)
                part.next = part.end if hit is None else max(hit.offset, begin)  # None: nothing that late
                self.stats.by_time += 1
            else:
                part.next = begin
                self.stats.from_start += 1
            if begin >= ends[tp]:
                self.stats.empty += 1
            if part.next >= part.end:
                part.done = part.paused = True
                finished.append(tp)
            else:
                consumer.seek(tp, part.next)
        if finished:
            consumer.pause(*finished)

    def _accept(self, part: _Part, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """The records of one fetch inside the window (per record only comparisons: this is a
        replay's read cost)."""
        if not records:
            return records
        if records[-1].offset >= part.end:
            part.done = True
            records = records[: bisect_left(records, part.end, key=lambda r: r.offset)]
        bounds = part.bounds
        if bounds.offsets is None:
            until = bounds.until_ms
            stop = next((i for i, r in enumerate(records) if r.timestamp >= until), None)
            if stop is not None:
                part.done = True
                records = records[:stop]
        if records:
            part.next, part.last_ts = records[-1].offset + 1, records[-1].timestamp
        since = bounds.from_ms if bounds.offsets is None else None
        return [r for r in records if r.timestamp >= since] if since else records

    async def _finish_at_end(self) -> None:
        """Partitions read up to their end offset are finished. Asked of the consumer's position,
        which also steps over offsets that hold no record (transaction markers)."""
        assert self._consumer is not None
        for tp, part in self._parts.items():
            if part.done or part.paused:
                continue
            if part.next >= part.end or await self._consumer.position(tp) >= part.end:
                part.done = True

    def _align(self) -> None:
        """Pause partitions far ahead in time of the slowest one, resume the others."""
        assert self._consumer is not None
        active = [p for p in self._parts.values() if not p.done]
        if any(p.last_ts is None for p in active):
            frontier = None
        else:
            frontier = min((p.last_ts for p in active if p.last_ts is not None), default=None)
        pause, resume = [], []
        for part in self._parts.values():
            ahead = (
                not part.done
                and frontier is not None
                and part.last_ts is not None
                and part.last_ts > frontier + self.align_ms
            )
            if part.done and not part.paused:
                pause.append(part.tp)
                part.paused = True
            elif ahead and not part.paused:
                pause.append(part.tp)
                part.paused = True
            elif not ahead and not part.done and part.paused:
                resume.append(part.tp)
                part.paused = False
        if pause:
            self._consumer.pause(*pause)
        if resume:
            self._consumer.resume(*resume)

    @property
    def position_ms(self) -> int | None:
        """The record time every unfinished partition has reached (the read's frontier)."""
        times = [p.last_ts for p in self._parts.values() if not p.done]
        if any(t is None for t in times):
            return None
        return min((t for t in times if t is not None), default=None)

    @property
    def finished(self) -> bool:
        return all(p.done for p in self._parts.values())

    async def batches(self) -> AsyncIterator[list[tuple[str, list[ConsumerRecord]]]]:
        """Each fetch's records inside the window, as ``(topic, records)`` per partition, in offset
        order; ends when every partition is finished."""
        consumer = self._consumer
        assert consumer is not None
        while not self.finished:
            # Returns as soon as records are there; the timeout only bounds an idle wait. Whole
            # fetch responses are taken at once: aiokafka fetches again only a drained partition.
            fetched = await consumer.getmany(timeout_ms=50, max_records=20_000)
            # Let the fetcher send the next fetch of the partitions just drained before this batch
            # is processed: the broker prepares it meanwhile instead of after.
            for _ in range(_FETCH_TURNS):
                await asyncio.sleep(0)
            batch: list[tuple[str, list[ConsumerRecord]]] = []
            for tp, records in fetched.items():
                part = self._parts[tp]
                self.stats.fetched += len(records)
                if part.done:
                    continue
                kept = self._accept(part, records)
                if kept:
                    batch.append((tp.topic, kept))
                    self.stats.kept += len(kept)
            await self._finish_at_end()
            self._align()
            if batch:
                yield batch


async def offsets_window(
    settings: Settings, topic: str, offsets: Mapping[int, tuple[int, int | None]]
) -> tuple[int, int]:
    """The record-time span ``[first, last + 1)`` of the given offsets of ``topic``.

    The decisions and replies of those requests are then read by time over the same span (plus
    grace); an open end (None) spans to now.
    """
    consumer = kafka.consumer(settings, "npcflow-replay-probe")
    await consumer.start()
    try:
        first = await _times_at(consumer, {TopicPartition(topic, p): s for p, (s, _) in offsets.items()})
        ends = {TopicPartition(topic, p): e - 1 for p, (s, e) in offsets.items() if e is not None and e > s}
        last = await _times_at(consumer, ends) if len(ends) == len(offsets) else {}
    finally:
        await consumer.stop()
    if not first:
        raise WindowError(f"no record at the given offsets of {topic}")
    until = max(last.values()) + 1 if last else int(time.time() * 1000)
    return min(first.values()), until


async def _times_at(
    consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """The timestamp of the first record at or after each offset (none there: left out)."""
    ends = await consumer.end_offsets(list(offsets))
    wanted = {tp: offset for tp, offset in offsets.items() if offset < ends[tp]}
    if not wanted:
        return {}
    consumer.assign(list(wanted))
    for tp, offset in wanted.items():
        consumer.seek(tp, offset)
    found: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + 10.0
    while len(found) < len(wanted) and time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(timeout_ms=200)).items():
            if tp not in found and records:
                found[tp] = records[0].timestamp
    return found
