"""The one sink runner: ``npc.outputs`` → batches → ``sink.write`` → commit (docs/architecture.md, "Sinks").

Each sink runs in its own consumer group (``<prefix>npcflow-sink-<name>``), so a slow or dead
store holds up nobody but itself: the replies never wait for a sink, and the other sinks keep
their own offsets. The runner, written once for every sink:

- **batches** by size (``NPCFLOW_SINK_BATCH_SIZE``) and time (``NPCFLOW_SINK_BATCH_MS``), across
  partitions;
- **commits** a partition's offsets only after every record up to them was written (or
  dead-lettered): a crash at any point replays the uncommitted batch, and the sinks' writes are
  idempotent on the request id, so nothing is lost and nothing is written twice;
- **retries** with exponential backoff: forever while the store is unreachable (the sink's
  ``transient`` errors — the records are not at fault), ``NPCFLOW_SINK_ATTEMPTS`` times for any
  other error; then it splits the batch in halves until the records that fail alone are found,
  and sends each of those to ``npc.outputs.dlq`` with the reason (key = the sink's name);
- **hands back** on a rebalance: a batch still retrying is abandoned uncommitted, so the
  partition's next owner reads it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.config import Settings
from pipeline.lifecycle import Lifecycle
from pipeline.observability import metrics
from topics.catalogue import OUTPUTS, SINK_DLQ
from topics.rejections import DeadLetter
from workers.group_member import GroupMember, past
from workers.process import serve
from workers.sinks.base import Sink
from workers.sinks.exceptions import SinkUnavailable
from workers.sinks.parsing import ParsedRecord, parse_record

log = logging.getLogger("npcflow.sinks")

#: First backoff between two tries of a batch; it doubles up to ``NPCFLOW_SINK_RETRY_MAX_S``.
FIRST_BACKOFF_S = 0.1
#: Records parsed between two yields to the event loop (≈ 0.15 ms of work): the batch being
#: written waits for the loop at each of its steps (a PostgreSQL batch takes dozens: statements,
#: COPY data as the socket takes it, the commit). With 16 the write outlasted the next batch's
#: parse and the runner waited for it (10-20 µs per output); a yield costs ≈ 2 µs on uvloop.
PARSE_CHUNK = 4


class SinkFailed(RuntimeError):
    """The runner cannot go on (its consumer or the dead-letter producer failed); exit and restart."""


@dataclass
class SinkStats:
    #: Records fetched from ``npc.outputs`` (read again after a hand-back: counted again).
    consumed: int = 0
    written: int = 0
    batches: int = 0
    retries: int = 0
    dead_lettered: int = 0
    #: Batches abandoned uncommitted on a rebalance or stop (read again by the next owner).
    handed_back: int = 0


class SinkRunner(Lifecycle):
    """``start()``, ``run()`` until :meth:`request_stop`, ``stop()`` (which writes what is buffered).

    One batch is written while the next is fetched, parsed and encoded (at most one in flight, so
    batches commit in order), and its offsets are committed while the next one is written: the
    store's and the broker's time overlap the runner's own work.
    """

    def __init__(self, sink: Sink, settings: Settings, *, group_id: str | None = None) -> None:
        self.sink = sink
        self.settings = settings
        self.options = settings.sinks
        prefix = settings.topic_prefix
        self.topic = OUTPUTS.name(prefix)
        self.dlq_topic = SINK_DLQ.name(prefix)
        self.group = group_id or f"{prefix}npcflow-sink-{sink.name}"
        self.stats = SinkStats()
        #: ``npc.outputs`` in the sink's own group: rebalances, seek-back, commits (workers.group_member).
        self.member = GroupMember(
            settings,
            name=f"{sink.name} sink",
            client_id=f"npcflow-sink-{sink.name}",
            group_id=self.group,
            topic=self.topic,
            on_revoke=self._release,
        )
        self.assigned = self.member.assigned
        #: Why the runner stopped itself (its consumer or the dead-letter producer failed).
        self.failure: BaseException | None = None
        self._buffer: list[ParsedRecord] = []
        self._first_at: float | None = None
        #: The batch being written (at most one).
        self._flushing: asyncio.Task[None] | None = None
        #: The latest offset commit; each waits for the one before, so commits stay in order.
        self._committing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None

    async def _start(self) -> None:
        await self.sink.start()
        name = self.sink.name
        self._producer = kafka.producer(self.settings, f"npcflow-sink-{name}-dlq", linger_ms=5)
        await self._producer.start()
        await self.member.start()
        log.info("%s sink started on %s (group %s)", name, self.topic, self.group)

    async def _stop(self) -> None:
        """Finish the batch in flight, write what is buffered (one try), close."""
        self._stopping.set()
        if self.member.started:
            with contextlib.suppress(Exception):
                await self._settle()
                await self._flush(self._take())
            await self._commits()
        await self.member.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self.sink.stop()
        log.info("%s sink stopped: %s", self.sink.name, self.stats)

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish; safe from a signal handler."""
        self._stopping.set()
        self._wake.set()

    async def stopped(self) -> None:
        await self._stopping.wait()

    async def run(self) -> None:
        """Consume, batch and write until :meth:`request_stop`; raises :class:`SinkFailed`."""
        batch_s = self.options.batch_ms / 1000
        while not self._stopping.is_set():
            wait_s = 0.1 if self._first_at is None else max(0.0, self._first_at + batch_s - time.monotonic())
            room = max(1, self.options.batch_size - len(self._buffer))
            generation, fetched = await self.member.fetch(int(wait_s * 1000), room)
            if not self.member.current(generation):
                # A rebalance came while we fetched: whoever owns these partitions reads them again.
                self._seek_back([r for records in fetched.values() for r in records])
                continue
            for records in fetched.values():
                if records and self._first_at is None:
                    self._first_at = time.monotonic()
                self.stats.consumed += len(records)
                for i in range(0, len(records), PARSE_CHUNK):
                    self._buffer.extend(
                        parse_record(record, self.sink) for record in records[i : i + PARSE_CHUNK]
                    )
                    # Parsing is CPU: yield between chunks so the batch in flight hears its store.
                    await asyncio.sleep(0)
            due = self._first_at is not None and time.monotonic() - self._first_at >= batch_s
            if self._buffer and (len(self._buffer) >= self.options.batch_size or due):
                await self._settle()
                if not self.member.current(generation):
                    continue  # revoked while the last batch finished: _release dropped the buffer
                self._flushing = asyncio.create_task(self._flush(self._take()))
                # Let the write start now: getmany returns without yielding while records are
                # buffered, so without this the write would wait for the next batch to fill.
                await asyncio.sleep(0)

    # -- one batch ----------------------------------------------------------------------------
    def _take(self) -> list[ParsedRecord]:
        batch, self._buffer, self._first_at = self._buffer, [], None
        return batch

    async def _settle(self) -> None:
        """Wait for the batch in flight; its failure (:class:`SinkFailed`) is raised here."""
        task = self._flushing
        if task is None:
            return
        try:
            await task
        finally:
            if self._flushing is task:
                self._flushing = None

    async def _flush(self, batch: list[ParsedRecord]) -> None:
        """Dead-letter what is no output, write the rest, commit; or hand it all back."""
        if not batch:
            return
        generation = self.member.generation
        for item in batch:
            if item.value is None:
                await self._dead_letter(item.record, item.reason, list(item.errors))
        items = [item for item in batch if item.value is not None]
        if items and not await self._write(items, generation, self.options.attempts):
            self.stats.handed_back += 1
            # This batch and all fetched after it are read again from the batch's first offsets.
            self._seek_back([item.record for item in (*batch, *self._take())])
            return
        # The commit runs on while the next batch is written (a broker round trip less between
        # two writes); it waits for the commit before it, so offsets only move forward.
        records = [item.record for item in batch]
        self._committing = asyncio.create_task(self._commit(records, after=self._committing))

    async def _commits(self) -> None:
        """Wait for the commits under way (a stop, a revoke: offsets are committed before we let go)."""
        if self._committing is not None:
            await self._committing  # never raises: a failed commit is logged, the batch read again

    async def _write(self, items: list[ParsedRecord], generation: int, attempts: int) -> bool:
        """Write ``items`` (retrying, splitting, dead-lettering); False if abandoned by a revoke or stop."""
        delay, tries = FIRST_BACKOFF_S, 0
        failure: Exception | None = None
        while True:
            began = time.perf_counter()
            try:
                await self.sink.write([item.value for item in items])
            except Exception as exc:
                transient = isinstance(exc, (SinkUnavailable, *self.sink.transient))
                tries += 0 if transient else 1
                if not transient and tries >= attempts:
                    failure = exc
                    break
                reason = "unavailable" if transient else "error"
                log.warning(
                    "%s sink: write of %d failed (%s: %s); retrying in %.1f s",
                    self.sink.name,
                    len(items),
                    reason,
                    exc,
                    delay,
                )
                metrics.SINK_RETRIES.labels(self.sink.name, reason).inc()
                self.stats.retries += 1
                if not await self._backoff(delay, generation):
                    return False
                delay = min(delay * 2, self.options.retry_max_s)
                continue
            metrics.SINK_BATCH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - began)
            metrics.SINK_WRITTEN.labels(self.sink.name).inc(len(items))
            self.stats.written += len(items)
            self.stats.batches += 1
            return True
        if len(items) == 1:
            reason = f"{self.sink.name} sink: {type(failure).__name__}: {failure}"
            await self._dead_letter(items[0].record, reason)
            return True
        # The error is the records' (it survived retries): find the ones that fail alone.
        half = len(items) // 2
        return await self._write(items[:half], generation, 1) and await self._write(
            items[half:], generation, 1
        )

    async def _backoff(self, delay: float, generation: int) -> bool:
        """Sleep ``delay`` unless a revoke or stop comes first; True if the batch is still ours."""
        if self._stopping.is_set() or not self.member.current(generation):
            return False
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        return not self._stopping.is_set() and self.member.current(generation)

    async def _dead_letter(self, record: ConsumerRecord, reason: str, errors: list | None = None) -> None:
        """Send one record to ``npc.outputs.dlq``; waits for the broker, so it precedes the commit."""
        assert self._producer is not None
        letter = DeadLetter.of(
            record.value, reason, record.topic, record.partition, record.offset, errors, stage="sink"
        )
        try:
            await (await self._producer.send(self.dlq_topic, letter.to_bytes(), key=self.sink.name.encode()))
        except Exception as exc:
            raise SinkFailed(f"{self.sink.name} sink: dead-letter topic refused a record: {exc}") from exc
        log.warning(
            "%s sink: dead-lettered %s/%d@%d: %s",
            self.sink.name,
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        metrics.DEAD_LETTERS.labels("sink").inc()
        self.stats.dead_lettered += 1

    async def _commit(self, records: Sequence[ConsumerRecord], after: asyncio.Task | None = None) -> None:
        """Commit past ``records`` once the commit ``after`` (the batch before) is done.

        A failed commit (a rebalance in progress) is logged by the member: the partitions' next
        owner writes the batch again, idempotently.
        """
        if after is not None:
            await after
        await self.member.commit(past(records))

    def _seek_back(self, records: Sequence[ConsumerRecord]) -> None:
        if not self._stopping.is_set():
            self.member.seek_back(records)

    async def _release(self, revoked: set[TopicPartition] | None) -> None:
        """On a revoke: a retrying batch gives up, then what is buffered for ``revoked`` is dropped.

        The partitions' next owner (perhaps us again) starts from the committed offsets. On a
        stop (``revoked`` None) the buffer was written already.
        """
        self._wake.set()
        try:
            await self._settle()
        except Exception as exc:  # run() sees the same failure and stops the process
            log.warning("%s sink: the batch in flight failed during a rebalance: %s", self.sink.name, exc)
        await self._commits()
        kept = [
            i
            for i in self._buffer
            if revoked is not None and TopicPartition(i.record.topic, i.record.partition) not in revoked
        ]
        self._buffer = kept
        if not kept:
            self._first_at = None


async def run_sink(settings: Settings, name: str) -> None:
    """Run one sink process until SIGINT/SIGTERM; raises :class:`SinkFailed` if it had to stop."""
    from workers.sinks import build_sink

    failure = await serve(SinkRunner(build_sink(name, settings), settings), gc_gen0=settings.process.gc_gen0)
    if failure is not None:
        raise SinkFailed(f"{name} sink stopped: {failure}") from failure
