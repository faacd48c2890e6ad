"""The result cache: finished replies in Redis for an hour, found by request id or by prompt.

Who writes what (docs/architecture.md, "Sinks"):

- **results** (this module, TTL 1 h) are written only by the Redis sink
  (:mod:`workers.sinks.redis`), which calls :meth:`ResultCache.put_many` with batches of
  ``npc.outputs``; Silver and Gold workers only read them (:meth:`ResultCache.get_by_id`,
  :meth:`ResultCache.get_by_prompt`).
- **intents** (:mod:`pipeline.intents.store`, TTL 1 s) are written only by the Gold path
  (:mod:`workers.intents.writer`); no sink writes them.

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

A batch is stored by one ``EVALSHA`` of :data:`PUT_SCRIPT` (a Lua loop of those SET commands),
not a pipeline of ``SET`` commands: redis-py packs each command and parses each reply in Python,
which made the pipeline the sink's largest cost; one script call packs its keys and values once
and gets one reply. A script that touches many keys must run where all of them
live: this needs a **standalone Redis** (what ``redis.asyncio.from_url`` connects to), not
Redis Cluster, whose slots would refuse the keys of one batch (CROSSSLOT).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from pipeline.lifecycle import Lifecycle
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import InvalidEvent, Output, Reply

log = logging.getLogger("npcflow.results")

#: How long a result stays findable (the issue's "results TTL 1 h").
RESULT_TTL_S = 3600
#: The tier segment of the prompt key that any tier's answer is also written under.
ANY_TIER = "any"

_SPACE = re.compile(r"\s+")

#: ``KEYS``: every output's keys in order; ``ARGV[1]``: the TTL in seconds; ``ARGV[2]``: one byte
#: per output, its number of keys ("1" or "3"); ``ARGV[3…]``: each output's value. The SETs run in
#: the batch's order, so a request's later reply is still written last.
PUT_SCRIPT = """
local ttl = ARGV[1]
local layout = ARGV[2]
local k = 1
for i = 1, #layout do
  local value = ARGV[i + 2]
  for _ = 1, string.byte(layout, i) - 48 do
    redis.call('SET', KEYS[k], value, 'EX', ttl)
    k = k + 1
  end
end
return k - 1
"""

#: One output as the Redis sink stores it: the keys it goes under and the reply's JSON.
Entry = tuple[tuple[str, ...], bytes]


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
        self._put: AsyncScript | None = None

    # -- keys ---------------------------------------------------------------------------------
    def id_key(self, request_id: str) -> str:
        return f"{self.prefix}npcflow:result:id:{request_id}"

    def prompt_key(self, tier: str | None, prompt: str, *, hashed: str | None = None) -> str:
        """The key for ``prompt`` answered by ``tier`` (None: by any tier); ``hashed``: its hash, known."""
        return f"{self.prefix}npcflow:result:prompt:{tier or ANY_TIER}:{hashed or prompt_hash(prompt)}"

    # -- lifecycle ----------------------------------------------------------------------------
    async def _start(self) -> None:
        self._redis = aioredis.from_url(self.url)
        # EVALSHA, loading the script on NOSCRIPT (first use, a restarted or flushed Redis).
        self._put = self._redis.register_script(PUT_SCRIPT)

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
    def entry(self, output: Output) -> Entry:
        """The keys one output is stored under (by id, then by prompt if cacheable) and its value."""
        reply = output.reply
        id_key = self.id_key(reply.request_id)
        if not cacheable_by_prompt(reply):
            return (id_key,), reply.to_bytes()
        hashed = prompt_hash(output.request.prompt)
        tier = str(reply.served_tier or reply.tier)
        by_tier = self.prompt_key(tier, output.request.prompt, hashed=hashed)
        by_any = self.prompt_key(None, output.request.prompt, hashed=hashed)
        return (id_key, by_tier, by_any), reply.to_bytes()

    def entries(self, output: Output) -> list[tuple[str, bytes]]:
        """The (key, value) pairs one output is stored under."""
        keys, value = self.entry(output)
        return [(key, value) for key in keys]

    async def put_many(self, outputs: Iterable[Output]) -> int:
        """Store a batch of outputs; returns how many were stored (see :meth:`put_entries`)."""
        return await self.put_entries([self.entry(output) for output in outputs])

    async def put_entries(self, entries: Sequence[Entry]) -> int:
        """Store a batch of :meth:`entry` results in one round trip (one ``EVALSHA``), in order.

        Raises :class:`redis.exceptions.RedisError` when Redis refuses, so the caller retries.
        """
        if not entries:
            return 0
        assert self._put is not None, "start() first"
        keys = [key for output_keys, _ in entries for key in output_keys]
        layout = "".join([str(len(output_keys)) for output_keys, _ in entries])
        await self._put(keys=keys, args=[self.ttl_s, layout, *[value for _, value in entries]])
        return len(entries)

    async def count(self) -> int:
        """How many results are stored by id under this prefix (the demo's summary, tests)."""
        total = 0
        async for _ in self.redis.scan_iter(match=self.id_key("*"), count=1000):
            total += 1
        return total
