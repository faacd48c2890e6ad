"""The result cache: finished replies in Redis for an hour, found by request id or by prompt.

Who writes what (docs/architecture.md, "Sinks"):

- **results** (this module, TTL 1 h) are written only by the Redis sink
  (:mod:`workers.sinks.redis`), which calls :meth:`ResultCache.put_many` with batches of
  ``npc.outputs``; Silver and Gold workers only read them (:meth:`ResultCache.get_by_id`,
  :meth:`ResultCache.get_by_prompt`).
- **intents** (:mod:`workers.cache.intents`, TTL 1 s) are written only by the Gold path; no sink
  writes them.

Key scheme (``prefix`` is ``NPCFLOW_TOPIC_PREFIX``, so a sandbox never reads production's cache):

- ``<prefix>npcflow:result:id:<request_id>`` → the :class:`~topics.schemas.Reply` JSON;
- ``<prefix>npcflow:result:prompt:<tier>:<hash>`` → the same JSON, where ``tier`` is the tier
  whose engine produced the answer (``served_tier``, else ``tier``) and ``hash`` is
  :func:`prompt_hash` of the request's prompt;
- ``<prefix>npcflow:result:prompt:any:<hash>`` → the latest answer to that prompt from any tier.

Only answers a model produced (status ``ok`` or ``fallback``, ``served_by`` ``engine``, not late
is fine) are stored by prompt: an error, an expiry or a default intent is no answer to reuse.
Every reply is stored by id, so a client that lost a reply can still find it for an hour.
Writes are ``SET ... EX``: writing the same output twice (a replay, a retried batch) leaves the
same value, so the sink is idempotent.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.lifecycle import Lifecycle
from topics.schemas import InvalidEvent, Output, Reply, ReplyStatus, ServedBy

log = logging.getLogger("npcflow.results")

#: How long a result stays findable (the issue's "results TTL 1 h").
RESULT_TTL_S = 3600
#: The tier segment of the prompt key that any tier's answer is also written under.
ANY_TIER = "any"

_SPACE = re.compile(r"\s+")


def normalise_prompt(prompt: str) -> str:
    """The prompt as the cache compares it: NFKC, case-folded, whitespace runs as one space, trimmed.

    So "Hello,  Guard!" and "hello, guard!" find the same answer; punctuation is kept because it
    changes meaning ("Attack." vs "Attack?").
    """
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", prompt).casefold()).strip()


def prompt_hash(prompt: str) -> str:
    """SHA-256 (hex) of :func:`normalise_prompt`: a fixed-size key segment for any prompt length."""
    return hashlib.sha256(normalise_prompt(prompt).encode()).hexdigest()


def cacheable_by_prompt(reply: Reply) -> bool:
    """A model's answer worth reusing for the same prompt (not an error, expiry or default)."""
    return reply.served_by == ServedBy.ENGINE and reply.status in (ReplyStatus.OK, ReplyStatus.FALLBACK)


class ResultCache(Lifecycle):
    """Reads and writes the result cache; one per process (a redis-py pool inside).

    Lookups never raise for Redis trouble: a cache that is down is a miss (logged), so a worker
    falls through to its engine. :meth:`put_many` does raise, so the sink runner retries the batch.
    """

    def __init__(self, url: str, *, prefix: str = "", ttl_s: int = RESULT_TTL_S) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._redis: aioredis.Redis | None = None

    # -- keys ---------------------------------------------------------------------------------
    def id_key(self, request_id: str) -> str:
        return f"{self.prefix}npcflow:result:id:{request_id}"

    def prompt_key(self, tier: str | None, prompt: str, *, hashed: str | None = None) -> str:
        """The key for ``prompt`` answered by ``tier`` (None: by any tier); ``hashed``: its hash, known."""
        return f"{self.prefix}npcflow:result:prompt:{tier or ANY_TIER}:{hashed or prompt_hash(prompt)}"

    # -- lifecycle ----------------------------------------------------------------------------
    async def _start(self) -> None:
        self._redis = aioredis.from_url(self.url)

    async def _stop(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "start() first"
        return self._redis

    # -- lookups (Silver/Gold workers) -----------------------------------------------------------
    async def get_by_id(self, request_id: str) -> Reply | None:
        """The reply to ``request_id`` if it was written in the last hour; None on a miss or error."""
        return await self._get(self.id_key(request_id))

    async def get_by_prompt(self, tier: str | None, prompt: str) -> Reply | None:
        """The latest model answer to this (normalised) prompt from ``tier`` (None: any tier)."""
        return await self._get(self.prompt_key(tier, prompt))

    async def _get(self, key: str) -> Reply | None:
        try:
            raw = await self.redis.get(key)
        except RedisError as exc:
            log.warning("result cache lookup failed (treated as a miss): %s", exc)
            return None
        if not raw:
            return None
        try:
            return Reply.from_bytes(raw)
        except (InvalidEvent, ValueError) as exc:
            log.warning("result cache entry %s is not a reply (ignored): %s", key, exc)
            return None

    # -- store (the Redis sink) -----------------------------------------------------------------
    def entries(self, output: Output) -> list[tuple[str, bytes]]:
        """The (key, value) pairs one output is stored under."""
        value = output.reply.to_bytes()
        pairs = [(self.id_key(output.reply.request_id), value)]
        if cacheable_by_prompt(output.reply):
            tier = str(output.reply.served_tier or output.reply.tier)
            hashed = prompt_hash(output.request.prompt)
            pairs.append((self.prompt_key(tier, output.request.prompt, hashed=hashed), value))
            pairs.append((self.prompt_key(None, output.request.prompt, hashed=hashed), value))
        return pairs

    async def put_many(self, outputs: Iterable[Output]) -> int:
        """Store a batch in one pipelined round trip; returns how many outputs were stored.

        Raises :class:`redis.exceptions.RedisError` when Redis refuses, so the caller retries.
        """
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for output in outputs:
            for key, value in self.entries(output):
                pipe.set(key, value, ex=self.ttl_s)
            count += 1
        if count:
            await pipe.execute()
        return count

    async def count(self) -> int:
        """How many results are stored by id under this prefix (the demo's summary, tests)."""
        total = 0
        async for _ in self.redis.scan_iter(match=self.id_key("*"), count=1000):
            total += 1
        return total
