"""Re-publish recorded requests into a sandbox pipeline under another topic prefix.

A candidate deployment (router + workers started with ``NPCFLOW_TOPIC_PREFIX=<sandbox>``) then
serves real traffic without touching production topics. Each request gets a new id (the sandbox
may run the same window twice; the original id stays findable) linked to the original twice:
in its ``context`` (``replay_of``; it travels with the request to the reply's output event and
the sinks) and in the record header ``npcflow-replay-of``. Its ``created_at_ms`` becomes the
time it is re-sent, so budgets and deadlines mean what they meant; a reply topic of the recorded
prefix is renamed into the sandbox's. Invalid records are re-sent byte for byte: the sandbox's
router dead-letters them as production's did.

Pace: the recorded gaps between request records divided by ``speed`` (0: as fast as possible).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from pipeline import kafka
from pipeline.config import Settings
from pipeline.lifecycle import Lifecycle
from pipeline.topic_admin import create_topics
from topics.catalogue import REQUESTS
from topics.errors import UserFacingError
from topics.headers import replay_headers
from topics.rejections import parse_request
from topics.schemas import InvalidEvent

REPLAY_OF_CONTEXT = "replay_of"
_MAX_CONTEXT = 32
#: Sends awaited together: a refused record fails the replay within this many.
_IN_FLIGHT = 1000


class SandboxError(UserFacingError, ValueError):
    """The sandbox prefix cannot be used (it is the recorded one)."""


def sandbox_id(run: str, seq: int) -> str:
    """A new request id: the run's tag and a sequence number (ids are at most 64 characters)."""
    return f"replay-{run}-{seq}"


@dataclass
class Sandbox(Lifecycle):
    """``await sandbox.send(record)`` for each recorded request record, in read order."""

    settings: Settings
    prefix: str
    source_prefix: str
    speed: float = 1.0
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    sent: int = 0
    invalid: int = 0
    #: New request id → original, for what the caller wants to check (bounded by nothing: tests only
    #: read it, the CLI turns it off).
    keep_links: bool = False
    links: dict[str, str] = field(default_factory=dict)
    _producer: AIOKafkaProducer | None = None
    _pending: list[asyncio.Future[object]] = field(default_factory=list)
    _first_ts: int | None = None
    _started: float = 0.0

    def __post_init__(self) -> None:
        if self.prefix == self.source_prefix:
            raise SandboxError(f"--into {self.prefix!r} is the recorded prefix: name another one")
        self.topic = REQUESTS.name(self.prefix)

    async def _start(self) -> None:
        await create_topics(self.settings, self.prefix)
        self._producer = kafka.producer(self.settings, "npcflow-replay-sandbox", linger_ms=5)
        await self._producer.start()

    async def _stop(self) -> None:
        if self._producer is not None:
            try:
                await self.drain()
            finally:
                await self._producer.stop()

    async def drain(self) -> None:
        """Wait until every record sent so far is acknowledged (raises if the broker refused one)."""
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)

    async def _pace(self, ts: int) -> None:
        if self.speed <= 0:
            return
        if self._first_ts is None:
            self._first_ts, self._started = ts, time.monotonic()
            return
        due = self._started + (ts - self._first_ts) / 1000.0 / self.speed
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def rewrite(self, raw: bytes | None) -> tuple[bytes | None, bytes | None, str | None]:
        """(value, key, original id) for the sandbox; an invalid request travels unchanged."""
        try:
            request = parse_request(raw)
        except InvalidEvent:
            return raw, None, None
        new_id = sandbox_id(self.run, self.sent)
        context = dict(request.context)
        if len(context) < _MAX_CONTEXT or REPLAY_OF_CONTEXT in context:
            context[REPLAY_OF_CONTEXT] = request.request_id
        reply_topic = request.reply_topic
        if reply_topic and reply_topic.startswith(self.source_prefix):
            reply_topic = self.prefix + reply_topic[len(self.source_prefix) :]
        copy = request.model_copy(
            update={
                "request_id": new_id,
                "context": context,
                "created_at_ms": int(time.time() * 1000),
                "reply_topic": reply_topic,
            }
        )
        return copy.to_bytes(), request.npc_id.encode(), request.request_id

    async def send(self, record: ConsumerRecord) -> None:
        assert self._producer is not None
        await self._pace(record.timestamp)
        value, key, original = self.rewrite(record.value)
        headers = replay_headers(original)
        key = key if key is not None else record.key
        self._pending.append(await self._producer.send(self.topic, value, key=key, headers=headers))
        if len(self._pending) >= _IN_FLIGHT:
            await self.drain()
        if original is None:
            self.invalid += 1
        elif self.keep_links:
            self.links[sandbox_id(self.run, self.sent)] = original
        self.sent += 1
