"""Read a time window of several topics, roughly in time order, on any broker.

Where a partition's window starts comes from ``offsets_for_times`` (real Kafka, noida-db) and is
*checked* on the records themselves: the record at the answered offset must be at or after the
asked time and the one before it earlier. Tansu 0.6 answers wrongly (docs/architecture.md §5:
0 for a time inside the second batch), which fails that check; the partition is then scanned
from its first record, skipping what is older than the window. Each partition is checked on its
own, inside the read, so a right answer costs no extra round trip. Where a partition's window
ends comes from the records (the first one at or past ``until``) or the fetch high-water mark,
never from ListOffsets(latest), which Tansu also gets wrong.

Partitions far ahead in time of the slowest one are paused, so the three topics advance together
and the join downstream holds only what is in flight around the read position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.config import Settings
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
    #: Partitions positioned by a checked ``offsets_for_times`` answer, by a scan, by given offsets.
    by_time: int = 0
    scanned: int = 0
    by_offset: int = 0
    #: Partitions with no record at all (by the broker's word; reading them costs nothing if true).
    empty: int = 0
    #: Partitions whose ``offsets_for_times`` answer failed the check (the broker answered wrongly).
    wrong_answers: int = 0

    @property
    def method(self) -> str:
        """How the window was found: offsets_for_times, scan (broker answered wrongly), or both."""
        names = [n for n, c in (("offsets_for_times", self.by_time), ("scan", self.scanned)) if c]
        if self.by_offset:
            names.append("offsets")
        return "+".join(names) or "none"


@dataclass
class _Part:
    tp: TopicPartition
    bounds: Bounds
    begin: int
    next: int = 0
    end: int | None = None
    #: Answered first offset in the window, not yet checked against the records.
    expect: int | None = None
    #: offsets_for_times said "nothing at or after from_ms"; the broker's end offset to check.
    expect_none: int | None = None
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
        found = self._consumer.partitions_for_topic(topic)
        if not found:
            await self._consumer.topics()  # refreshes the metadata of every topic
            found = self._consumer.partitions_for_topic(topic)
        if not found:
            raise WindowError(f"topic {topic} does not exist on the broker (is the topic prefix right?)")
        return sorted(found)

    async def _position(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        for topic, bounds in self.bounds.items():
            for p in await self._partitions(topic):
                if bounds.offsets is None or p in bounds.offsets:
                    tp = TopicPartition(topic, p)
                    self._parts[tp] = _Part(tp, bounds, begin=0)
        if not self._parts:
            raise WindowError("no partition to read: the given offsets name none of the topic's partitions")
        consumer.assign(list(self._parts))
        begins = await consumer.beginning_offsets(list(self._parts))
        for tp, part in self._parts.items():
            part.begin = part.next = begins[tp]
        timed = {tp: p.bounds.from_ms for tp, p in self._parts.items() if p.bounds.offsets is None}
        answers = await self._offsets_for_times({tp: ms for tp, ms in timed.items() if ms is not None})
        ends = await self._end_offsets([tp for tp, a in answers.items() if a is None])
        for tp, part in self._parts.items():
            if part.bounds.offsets is not None:
                start, part.end = part.bounds.offsets[tp.partition]
                part.next = max(start, part.begin)
                self.stats.by_offset += 1
            elif tp not in answers:  # no start time, or the broker could not answer: scan
                self.stats.scanned += 1
            elif (answer := answers[tp]) is not None:
                part.expect = max(answer, part.begin)
                part.next = max(part.expect - 1, part.begin)
            elif (end := ends.get(tp)) is not None and end > part.begin:
                part.expect_none = end
                part.next = end - 1
            elif end is not None:  # empty by the broker's word: read from the start, costs nothing if true
                self.stats.empty += 1
            else:
                self.stats.scanned += 1
            consumer.seek(tp, part.next)

    async def _offsets_for_times(self, asked: dict[TopicPartition, int]) -> dict[TopicPartition, int | None]:
        """The broker's answers; a broker that cannot answer at all gets every partition scanned."""
        if not asked:
            return {}
        assert self._consumer is not None
        try:
            found = await self._consumer.offsets_for_times(asked)
        except (KafkaError, ValueError) as exc:
            log.warning("offsets_for_times failed (%s): scanning every partition from its start", exc)
            return {}
        return {tp: None if hit is None else hit.offset for tp, hit in found.items()}

    async def _end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        assert self._consumer is not None
        try:
            return dict(await self._consumer.end_offsets(tps))
        except KafkaError:
            return {}

    def _scan(self, part: _Part, why: str) -> None:
        """The broker's answer was wrong: read this partition from its first record instead."""
        assert self._consumer is not None
        self.stats.wrong_answers += 1
        self.stats.scanned += 1
        if self.stats.wrong_answers == 1:
            log.warning("broker answered offsets_for_times wrongly (%s): scanning", why)
        part.expect = part.expect_none = None
        part.next = part.begin
        part.last_ts = None
        self._consumer.seek(part.tp, part.begin)

    def _accept(self, part: _Part, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """The records of one fetch inside the window; checks a pending answer on the way."""
        assert self._consumer is not None
        bounds = part.bounds
        since = bounds.from_ms or 0
        if part.expect is None and part.expect_none is None and part.end is None:
            # The common case, per record only comparisons (this loop is a replay's read cost).
            until = bounds.until_ms
            stop = next((i for i, r in enumerate(records) if r.timestamp >= until), None)
            if stop is not None:
                part.done = True
                records = records[:stop]
            if records:
                part.next, part.last_ts = records[-1].offset + 1, records[-1].timestamp
            return [r for r in records if r.timestamp >= since] if since else records
        kept: list[ConsumerRecord] = []
        where = f"{part.tp.topic}[{part.tp.partition}]"
        for record in records:
            ts = record.timestamp
            if part.expect_none is not None:
                end = part.expect_none
                if record.offset != end - 1 or ts >= since or self._consumer.highwater(part.tp) != end:
                    self._scan(part, f"{where}: 'nothing at or after {since}', but @{record.offset} ts {ts}")
                    return kept
                part.expect_none = None
                self.stats.by_time += 1
            elif part.expect is not None:
                if record.offset < part.expect:
                    if ts >= since:
                        self._scan(part, f"{where}@{record.offset} before the answer is in the window")
                        return kept
                elif record.offset == part.expect and ts >= since:
                    part.expect = None
                    self.stats.by_time += 1
                else:
                    self._scan(part, f"{where}@{record.offset} (ts {ts}) is before {since}")
                    return kept
            part.next = record.offset + 1
            part.last_ts = ts
            if part.end is not None and record.offset >= part.end:
                part.done = True
                break
            if part.bounds.offsets is None and ts >= bounds.until_ms:
                part.done = True
                break
            if bounds.offsets is not None or bounds.from_ms is None or ts >= bounds.from_ms:
                kept.append(record)
        if part.end is not None and part.next >= part.end:
            part.done = True
        return kept

    def _finish_idle(self, fetched: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        """A partition that returned nothing and sits at its high-water mark is finished."""
        for tp, part in self._parts.items():
            if not (part.done or tp in fetched or part.paused):
                self._finish_at_end(part)

    def _finish_at_end(self, part: _Part) -> None:
        """A partition read up to the high-water mark of its last fetch is finished: waiting for an
        empty fetch to say so cost a ``getmany`` timeout per replay."""
        assert self._consumer is not None
        if part.done:
            return
        hw = self._consumer.highwater(part.tp)
        if hw is not None and part.next >= hw:
            if part.expect is not None or part.expect_none is not None:
                self.stats.by_time += 1  # nothing there to check the answer against: it was the end
                part.expect = part.expect_none = None
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
                self._finish_at_end(part)
            self._finish_idle(fetched)
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
    consumer.assign(list(offsets))
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)
    found: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + 10.0
    while len(found) < len(offsets) and time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(timeout_ms=200)).items():
            if tp not in found and records:
                found[tp] = records[0].timestamp
        exhausted = [
            tp
            for tp in offsets
            if tp not in found and (hw := consumer.highwater(tp)) is not None and hw <= offsets[tp]
        ]
        if len(found) + len(exhausted) == len(offsets):
            break
    return found
