"""Gold's intent cache on the embedded broker and a real Redis: router and workers as processes.

The router answers realtime Gold requests from its near cache (intent or default) and sends the
Gold worker at most one refresh per NPC; the worker writes the intent to Redis (with its TTL) and
to ``npc.intents``, which the router's and the game server's near caches follow.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from pipeline.client import NPCClient
from pipeline.config import ENV_INTENT_TTL_MS, ENV_TOPIC_PREFIX, Settings
from pipeline.intents import DefaultIntents, IntentCache
from tests.integration.kafka_util import eventually
from topics.admin import create_topics
from topics.catalogue import Tier
from topics.schemas import Intent, Reply, ServedBy, Sla
from workers.cache.intents import IntentStore

ENGINES = {Tier.GOLD: "scripted:latency_ms=5", Tier.SILVER: "scripted:latency_ms=2"}
TTL_MS = 1000
REFRESH_INTERVAL_MS = 500
DEFAULTS = DefaultIntents.load()


def processes(stack: StackEndpoints, prefix: str, work: Path, ttl_ms: int) -> PipelineProcesses:
    env = stack.as_env() | {ENV_TOPIC_PREFIX: prefix, ENV_INTENT_TTL_MS: str(ttl_ms)}
    return PipelineProcesses(env, work, workers={Tier.GOLD: 1, Tier.SILVER: 1}, engines=ENGINES)


@pytest.fixture(scope="module")
def pipeline(stack: StackEndpoints, prefix: str, work_dir: Path) -> Iterator[PipelineProcesses]:
    with processes(stack, prefix, work_dir, TTL_MS) as procs:
        yield procs


def npc() -> str:
    return f"npc-{uuid.uuid4().hex[:8]}"


async def gold(client: NPCClient, npc_id: str, archetype: str = "guard") -> Reply:
    request = client.build_request(
        npc_id,
        "A wolf appears.",
        max_tokens=8,
        sla=Sla.REALTIME,
        latency_budget_ms=16,
        context={"archetype": archetype},
    )
    return await client.request(request, timeout_s=30)


class Followed:
    """A near cache of the test's own, recording every intent it applies."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.cache = IntentCache(settings, prefix=prefix, client_id=f"test-{uuid.uuid4().hex[:6]}")
        self.seen: list[Intent] = []
        self.cache.add_listener(self.seen.append)

    def for_npc(self, npc_id: str) -> list[Intent]:
        return [i for i in self.seen if i.npc_id == npc_id]


@pytest.fixture
async def followed(settings: Settings, prefix: str, pipeline: PipelineProcesses):  # type: ignore[no-untyped-def]
    f = Followed(settings, prefix)
    async with f.cache:
        yield f


@pytest.fixture
async def store(settings: Settings, prefix: str):  # type: ignore[no-untyped-def]
    assert settings.redis_url, "the stack starts Redis"
    async with IntentStore(settings.redis_url, prefix=prefix, ttl_ms=TTL_MS) as s:
        yield s


async def from_cache(client: NPCClient, npc_id: str, archetype: str = "guard") -> Reply:
    """The first Gold answer from the router's near cache, asked for every 20 ms for a second.

    The router's near cache follows ``npc.intents`` on its own, so it may see an intent a little
    after this test's follower did; asks before that find the refresh in flight (no new one).
    """
    reply = await gold(client, npc_id, archetype)
    for _ in range(50):
        if reply.served_by is ServedBy.CACHE:
            break
        await asyncio.sleep(0.02)
        reply = await gold(client, npc_id, archetype)
    return reply


async def test_a_miss_answers_the_default_and_triggers_one_refresh(
    followed: Followed, store: IntentStore, kafka: str, prefix: str
) -> None:
    npc_id = npc()
    async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
        reply = await gold(client, npc_id, "guard")
        assert reply.served_by is ServedBy.DEFAULT_INTENT and reply.tier is Tier.GOLD
        assert reply.intent == DEFAULTS.for_archetype("guard") and reply.status == "ok"
        assert await eventually(lambda: followed.for_npc(npc_id), timeout_s=10)
        [intent] = followed.for_npc(npc_id)
        assert intent.request_id == reply.request_id and intent.engine.startswith("scripted")
        stored = await store.get(npc_id)
        assert stored is not None and stored.intent == intent.intent
        # Within the refresh interval the next request is answered from the intent, with no refresh.
        again = await from_cache(client, npc_id)
        assert again.served_by is ServedBy.CACHE and again.intent == intent.intent
        assert again.intent_age_ms is not None and again.intent_age_ms < TTL_MS
    await asyncio.sleep(1.0)
    assert len(followed.for_npc(npc_id)) == 1


async def test_ttl_expiry_falls_back_to_the_default(
    followed: Followed, store: IntentStore, kafka: str, prefix: str
) -> None:
    npc_id = npc()
    async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
        await gold(client, npc_id, "merchant")
        assert await eventually(lambda: followed.for_npc(npc_id), timeout_s=10)
        assert (await from_cache(client, npc_id, "merchant")).served_by is ServedBy.CACHE
        await asyncio.sleep(TTL_MS / 1000 + 0.2)
        assert await store.get(npc_id) is None, "Redis expired the intent"
        expired = await gold(client, npc_id, "merchant")
        assert expired.served_by is ServedBy.DEFAULT_INTENT
        assert expired.intent == DEFAULTS.for_archetype("merchant")
        # ... and that miss asked for a new intent.
        assert await eventually(lambda: len(followed.for_npc(npc_id)) == 2, timeout_s=10)


async def test_a_burst_for_one_npc_makes_one_refresh(followed: Followed, kafka: str, prefix: str) -> None:
    npc_id = npc()
    async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
        replies = await asyncio.gather(*(gold(client, npc_id) for _ in range(40)))
    assert len({r.request_id for r in replies}) == 40
    assert all(
        r.tier is Tier.GOLD and r.served_by in (ServedBy.DEFAULT_INTENT, ServedBy.CACHE) for r in replies
    )
    assert await eventually(lambda: followed.for_npc(npc_id), timeout_s=10)
    await asyncio.sleep(1.5)
    # One model call, unless the burst outlasted the refresh interval on a loaded machine: then
    # each further call came only once the previous intent was older than the interval.
    answered_at = {r.request_id: r.replied_at_ms for r in replies}
    intents = sorted(followed.for_npc(npc_id), key=lambda i: i.generated_at_ms)
    span_ms = max(answered_at.values()) - min(answered_at.values())
    assert len(intents) <= 1 + span_ms // REFRESH_INTERVAL_MS, (intents, span_ms)
    for before, after in itertools.pairwise(intents):
        assert answered_at[after.request_id or ""] - before.generated_at_ms >= REFRESH_INTERVAL_MS - 5


async def test_the_near_cache_follows_updates_from_a_synchronous_game_loop(
    pipeline: PipelineProcesses, settings: Settings, kafka: str, prefix: str
) -> None:
    npc_id, other = npc(), npc()
    game = IntentCache(settings, prefix=prefix, client_id="test-game-loop")
    peer = IntentCache(settings, prefix=prefix, client_id="test-peer", ttl_ms=60_000)
    await asyncio.to_thread(game.start_background)
    await asyncio.to_thread(peer.start_background)
    try:
        assert game.get_intent(npc_id, "wolf").is_default
        async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
            await gold(client, npc_id)
            assert await eventually(lambda: not game.get_intent(npc_id).is_default, timeout_s=10)
            seen = game.get_intent(npc_id)
            assert seen.event is not None and seen.age_ms is not None and seen.age_ms < TTL_MS
            # A game server's own update: visible at once here, published for every other follower ...
            game.update_intent(other, "flee: run to the village gate")
            assert game.get_intent(other).intent == "flee: run to the village gate"
            assert await eventually(lambda: not peer.get_intent(other).is_default, timeout_s=10)
            # ... the router's included, which answers from it (once its near cache has it, a few ms
            # after the peer's: a miss now would ask the model for a new intent, replacing this one).
            await asyncio.sleep(0.3)
            reply = await gold(client, other)
            assert reply.served_by is ServedBy.CACHE and reply.intent == "flee: run to the village gate"
    finally:
        await asyncio.to_thread(game.stop_background)
        await asyncio.to_thread(peer.stop_background)


async def test_a_non_gold_request_is_unaffected(followed: Followed, kafka: str, prefix: str) -> None:
    npc_id = npc()
    async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
        request = client.build_request(
            npc_id, "Where is the mill?", max_tokens=32, sla=Sla.INTERACTIVE, latency_budget_ms=10_000
        )
        reply = await client.request(request, timeout_s=10)
    assert reply.tier is Tier.SILVER and reply.served_by is ServedBy.ENGINE and reply.intent is None
    await asyncio.sleep(0.5)
    assert followed.for_npc(npc_id) == []


async def test_intents_survive_a_router_and_worker_restart(
    stack: StackEndpoints, settings: Settings, kafka: str, work_dir: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(settings, prefix)
    npc_id = npc()
    ttl_ms = 120_000  # outlives two process start-ups
    first = processes(stack, prefix, work_dir / "first", ttl_ms)
    await asyncio.to_thread(first.start)
    try:
        async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
            assert (await gold(client, npc_id)).served_by is ServedBy.DEFAULT_INTENT
            for _ in range(100):
                reply = await gold(client, npc_id)
                if reply.served_by is ServedBy.CACHE:
                    break
                await asyncio.sleep(0.1)
            assert reply.served_by is ServedBy.CACHE
            before = reply.intent
    finally:
        await asyncio.to_thread(first.stop)
    second = processes(stack, prefix, work_dir / "second", ttl_ms)
    await asyncio.to_thread(second.start)
    try:
        async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
            after = await gold(client, npc_id)
        assert after.served_by is ServedBy.CACHE and after.intent == before
        assert settings.redis_url
        async with IntentStore(settings.redis_url, prefix=prefix, ttl_ms=ttl_ms) as store:
            stored = await store.get(npc_id)
        assert stored is not None and stored.intent == before
    finally:
        await asyncio.to_thread(second.stop)
