"""Redis sink: the result cache (TTL 1 h), through :class:`workers.cache.results.ResultCache`.

The key scheme and the lookups live in :mod:`workers.cache.results` (the workers read there);
this sink is the only writer of results. Each output's keys and value are made in ``encode``,
as the runner parses its record, and a batch is one ``EVALSHA`` (standalone Redis only, see
:mod:`workers.cache.results`). Intents are not written here: the Gold path writes
them (:mod:`workers.intents.writer`).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.config import Settings
from topics.schemas import Output
from workers.cache.results import Entry, ResultCache
from workers.sinks.base import Sink
from workers.sinks.exceptions import SinkSetupError


class RedisSink(Sink[Entry]):
    name = "redis"
    transient = (RedisConnectionError, RedisTimeoutError)

    def __init__(self, cache: ResultCache) -> None:
        self.cache = cache

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSink:
        if not settings.redis_url:
            raise SinkSetupError("the redis sink needs NPCFLOW_REDIS_URL (redis://…)")
        return cls(ResultCache(settings.redis_url, prefix=settings.topic_prefix))

    async def _start(self) -> None:
        await self.cache.start()

    async def _stop(self) -> None:
        await self.cache.stop()

    def encode(self, output: Output) -> Entry:
        """Keys and value (the reply's JSON, the prompt's hash) made while the runner parses."""
        return self.cache.entry(output)

    async def write(self, batch: Sequence[Entry | Output]) -> None:
        # Outputs of one request arrive in order (same partition), so the later reply is SET last.
        await self.cache.put_entries(self.encoded(batch))

    async def count(self) -> int:
        return await self.cache.count()
