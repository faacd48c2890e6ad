"""Gold's intent cache on the embedded Kafka and a real Redis: router and workers as processes.

The router answers realtime Gold requests from its near cache (intent or default) and marks each
request's NPC active (a lease on ``npc.active``); game servers watch NPCs through ``IntentCache``.
The Gold worker refreshes every active NPC at ``NPCFLOW_GOLD_REFRESH_HZ`` and writes each intent to
Redis (with its TTL) and to ``npc.intents``, which the router's and the game server's near caches
follow. Counts are asserted with generous bounds: the machine may be loaded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from devstack.supervise import stop_processes
from pipeline.client import NPCClient
from pipeline.config import Settings
from pipeline.intents import DefaultIntents, IntentCache
from pipeline.intents.store import IntentStore
from pipeline.topic_admin import create_topics
from tests.integration.kafka_util import eventually, read_topic
from topics.catalogue import ACTIVE, Tier
from topics.fields import ServedBy, Sla
from topics.schemas import ActiveNpc, Intent, Reply

ENGINES = {Tier.GOLD: "scripted:latency_ms=5", Tier.SILVER: "scripted:latency_ms=2"}
TTL_MS = 1000
HZ = 2.0
#: Short, so a test can watch a lease end.
LEASE_MS = 3000
DEFAULTS = DefaultIntents.load()


def processes(stack: StackEndpoints, prefix: str, work: Path, ttl_ms: int) -> PipelineProcesses:
    env = stack.as_env() | {
        "NPCFLOW_TOPIC_PREFIX": prefix,
        "NPCFLOW_INTENT_TTL_MS": str(ttl_ms),
        "NPCFLOW_GOLD_REFRESH_HZ": str(HZ),
        "NPCFLOW_GOLD_ACTIVE_LEASE_MS": str(LEASE_MS),
    }
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


async def leases_of(kafka: str, prefix: str, npc_id: str) -> list[bytes | None]:
    """Every record ``npc.active`` holds for the NPC (values; None for a tombstone)."""
    records = await read_topic(kafka, ACTIVE.name(prefix), timeout_s=2)
    return [r.value for r in records if r.key == npc_id.encode()]


async def stops(followed: Followed, npc_id: str, settle_s: float = 1.5) -> bool:
    """True once no new intent for the NPC arrived for ``settle_s`` (within 10 s)."""
    for _ in range(int(10 / settle_s)):
        before = len(followed.for_npc(npc_id))
        await asyncio.sleep(settle_s)
        if len(followed.for_npc(npc_id)) == before:
            return True
    return False


async def test_a_miss_answers_the_default_and_makes_the_npc_active(
    followed: Followed, store: IntentStore, kafka: str, prefix: str
) -> None:
    npc_id = npc()
    async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
        reply = await gold(client, npc_id, "guard")
        assert reply.served_by is ServedBy.DEFAULT_INTENT and reply.tier is Tier.GOLD
        assert reply.intent == DEFAULTS.for_archetype("guard") and reply.status == "ok"
        assert reply.intent_age_ms is None
        assert await eventually(lambda: followed.for_npc(npc_id), timeout_s=10)
        intent = followed.for_npc(npc_id)[0]
        # The Gold worker's scheduler refreshed it: its own request id, not the answered request's.
        assert (
            intent.request_id and intent.request_id.startswith("rf-") and intent.engine.startswith("scripted")
        )
        stored = await store.get(npc_id)
        assert stored is not None and stored.npc_id == npc_id
        again = await from_cache(client, npc_id)
        assert again.served_by is ServedBy.CACHE and again.intent_age_ms is not None
        assert again.intent_age_ms < TTL_MS
    # One lease for both requests (the second came well within half of it).
    [lease] = await leases_of(kafka, prefix, npc_id)
    assert lease is not None and ActiveNpc.from_bytes(lease).tenant_id == "gs-gold"


async def test_an_active_npc_is_refreshed_until_its_lease_ends_then_falls_back_to_the_default(
    followed: Followed, store: IntentStore, kafka: str, prefix: str
) -> None:
    npc_id = npc()
    async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
        await gold(client, npc_id, "merchant")
        assert await eventually(lambda: followed.for_npc(npc_id), timeout_s=10)
        assert (await from_cache(client, npc_id, "merchant")).served_by is ServedBy.CACHE
        # Nobody asks again: the lease (3 s) ends, the refreshes stop, the intent ages out.
        assert await stops(followed, npc_id), "refreshes went on after the lease ended"
        during = len(followed.for_npc(npc_id))
        assert 2 <= during <= LEASE_MS / 1000 * HZ + 4, during  # kept fresh while active, at ≤ 2 Hz
        await asyncio.sleep(TTL_MS / 1000 + 0.2)
        assert await store.get(npc_id) is None, "Redis expired the intent"
        expired = await gold(client, npc_id, "merchant")
        assert expired.served_by is ServedBy.DEFAULT_INTENT
        assert expired.intent == DEFAULTS.for_archetype("merchant")
        # ... and that request made the NPC active again.
        assert await eventually(lambda: len(followed.for_npc(npc_id)) > during, timeout_s=10)


async def test_a_burst_for_one_npc_makes_one_lease_and_no_extra_refreshes(
    followed: Followed, kafka: str, prefix: str
) -> None:
    npc_id = npc()
    async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
        replies = await asyncio.gather(*(gold(client, npc_id) for _ in range(40)))
    assert len({r.request_id for r in replies}) == 40
    assert all(
        r.tier is Tier.GOLD and r.served_by in (ServedBy.DEFAULT_INTENT, ServedBy.CACHE) for r in replies
    )
    assert await eventually(lambda: followed.for_npc(npc_id), timeout_s=10)
    first = min(i.generated_at_ms for i in followed.for_npc(npc_id))
    await asyncio.sleep(2.0)
    assert len(await leases_of(kafka, prefix, npc_id)) == 1  # 40 requests, one announcement
    # The refresh rate, not the requests, sets the model calls: at most 2 Hz (plus the first).
    recent = [i for i in followed.for_npc(npc_id) if i.generated_at_ms - first <= 2000]
    assert len(recent) <= 1 + 2 * HZ + 1, recent


async def test_watched_npcs_get_model_intents_at_the_configured_rate(
    followed: Followed, settings: Settings, prefix: str
) -> None:
    watched = [npc() for _ in range(5)]
    async with IntentCache(settings, prefix=prefix, client_id="test-watcher", tenant_id="gs-watch") as game:
        game.watch(watched, archetype="guard", prompt="Players gather at the gate.")
        assert game.watched == set(watched)
        assert await eventually(lambda: all(followed.for_npc(n) for n in watched), timeout_s=15)
        window_s = 4.0
        counts = {n: len(followed.for_npc(n)) for n in watched}
        model_reads = reads = 0
        for _ in range(int(window_s / 0.05)):  # a game loop's reads, every 50 ms
            for n in watched:
                reads += 1
                model_reads += game.get_intent(n, "guard").from_model
            await asyncio.sleep(0.05)
        arrived = {n: len(followed.for_npc(n)) - counts[n] for n in watched}
        # 2 Hz for 4 s is 8 each; bounds wide enough for a loaded machine, tight enough to see a rate.
        assert all(4 <= a <= 12 for a in arrived.values()), arrived
        assert model_reads / reads >= 0.5, (model_reads, reads)
        assert game.reads.model >= model_reads
        game.unwatch(watched[:2])
        for n in watched[:2]:
            assert await stops(followed, n), f"{n} still refreshed after unwatch"
        assert await eventually(lambda: len(followed.for_npc(watched[4])) > counts[watched[4]] + 12, 10)
    for n in watched[:2]:
        assert (await leases_of(settings.require_kafka(), prefix, n))[-1] is None  # the tombstone


async def test_two_gold_workers_split_the_active_set_without_doubles(
    stack: StackEndpoints, settings: Settings, work_dir: Path
) -> None:
    """Two workers share ``npc.active`` by partition (no NPC refreshed twice as often); when one leaves,
    the other takes its NPCs over (rebuilt from the compacted topic) and keeps them fresh."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(settings, prefix)
    env = stack.as_env() | {"NPCFLOW_TOPIC_PREFIX": prefix, "NPCFLOW_GOLD_REFRESH_HZ": str(HZ)}
    procs = PipelineProcesses(
        env,
        work_dir / "two-workers",
        routers=0,
        workers={Tier.GOLD: 2},
        engines={Tier.GOLD: ENGINES[Tier.GOLD]},
    )
    await asyncio.to_thread(procs.start)
    follower = Followed(settings, prefix)
    watched = [npc() for _ in range(12)]
    window_s = 4.0

    async def refreshes_in_window() -> dict[str, int]:
        before = {n: len(follower.for_npc(n)) for n in watched}
        await asyncio.sleep(window_s)
        return {n: len(follower.for_npc(n)) - before[n] for n in watched}

    try:
        async with follower.cache, IntentCache(settings, prefix=prefix, client_id="test-two") as game:
            game.watch(watched)
            assert await eventually(lambda: all(follower.for_npc(n) for n in watched), timeout_s=30)
            await asyncio.sleep(2.0)  # the second worker's join has moved its partitions
            shared = await refreshes_in_window()
            # 2 Hz for 4 s is 8: one worker per NPC; two would make it about 16.
            assert all(3 <= c <= HZ * window_s + 2 for c in shared.values()), shared
            leaving = [proc for proc, _ in procs.procs if proc.name == "worker-gold-1"]
            await asyncio.to_thread(stop_processes, leaving)  # a clean stop leaves the group at once
            await asyncio.sleep(3.0)
            alone = await refreshes_in_window()
            assert all(3 <= c <= HZ * window_s + 2 for c in alone.values()), alone
    finally:
        await asyncio.to_thread(procs.stop)


async def test_the_near_cache_follows_updates_from_a_synchronous_game_loop(
    pipeline: PipelineProcesses, settings: Settings, kafka: str, prefix: str
) -> None:
    npc_id, other, watched = npc(), npc(), npc()
    game = IntentCache(settings, prefix=prefix, client_id="test-game-loop")
    peer = IntentCache(settings, prefix=prefix, client_id="test-peer", ttl_ms=60_000)
    await asyncio.to_thread(game.start_background)
    await asyncio.to_thread(peer.start_background)
    try:
        assert game.get_intent(npc_id, "wolf").is_default
        # Watching from the game loop's own thread: the model's intents arrive in its cache.
        await asyncio.to_thread(game.watch, [watched], archetype="wolf")
        assert await eventually(lambda: game.get_intent(watched).from_model, timeout_s=10)
        async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
            await gold(client, npc_id)
            assert await eventually(lambda: not game.get_intent(npc_id).is_default, timeout_s=10)
            seen = game.get_intent(npc_id)
            assert seen.event is not None and seen.age_ms is not None and seen.age_ms < TTL_MS
            # A game server's own update: visible at once here, published for every other follower ...
            game.update_intent(other, "flee: run to the village gate")
            assert game.get_intent(other).intent == "flee: run to the village gate"
            assert not game.get_intent(other).from_model
            assert await eventually(lambda: not peer.get_intent(other).is_default, timeout_s=10)
            # ... the router's included, which answers from it (once its near cache has it, a few ms
            # after the peer's).
            await asyncio.sleep(0.3)
            reply = await gold(client, other)
            assert reply.served_by is ServedBy.CACHE and reply.intent == "flee: run to the village gate"
        await asyncio.to_thread(game.unwatch, [watched])
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
    follower = Followed(settings, prefix)
    first = processes(stack, prefix, work_dir / "first", ttl_ms)
    await asyncio.to_thread(first.start)
    try:
        async with follower.cache, NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
            assert (await gold(client, npc_id)).served_by is ServedBy.DEFAULT_INTENT
            reply = await from_cache(client, npc_id)
            for _ in range(100):
                if reply.served_by is ServedBy.CACHE:
                    break
                await asyncio.sleep(0.1)
                reply = await gold(client, npc_id)
            assert reply.served_by is ServedBy.CACHE
            asked_at = time.time()
            await asyncio.to_thread(first.stop)
            # Let the lease end, so the restarted worker does not refresh the NPC again.
            await asyncio.sleep(max(0.0, asked_at + LEASE_MS / 1000 + 0.5 - time.time()))
            assert await stops(follower, npc_id)
            last = max(follower.for_npc(npc_id), key=lambda i: i.generated_at_ms)
    finally:
        await asyncio.to_thread(first.stop)
    second = processes(stack, prefix, work_dir / "second", ttl_ms)
    await asyncio.to_thread(second.start)
    try:
        async with NPCClient(kafka, tenant_id="gs-gold", prefix=prefix) as client:
            after = await gold(client, npc_id)
        assert after.served_by is ServedBy.CACHE and after.intent == last.intent
        assert settings.redis_url
        async with IntentStore(settings.redis_url, prefix=prefix, ttl_ms=ttl_ms) as store:
            stored = await store.get(npc_id)
        assert stored is not None and stored.intent == last.intent
    finally:
        await asyncio.to_thread(second.stop)


async def test_a_router_is_ready_only_once_it_answers_at_once(
    stack: StackEndpoints, settings: Settings, kafka: str, work_dir: Path
) -> None:
    """Readiness means serving: the first Gold request after ``/readyz`` turns 200 is not held back.

    faust resumes the intake after a rebalance while the consumer's fetch is parked at the broker
    without it; a router that declared itself ready at the assignment left its first request
    waiting for that fetch, one whole fetch wait (measured 444-479 ms at 500 ms). A long fetch wait
    makes that unmistakable, whatever the machine's load.
    """
    fetch_wait_ms = 3000
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(settings, prefix)
    env = stack.as_env() | {"NPCFLOW_TOPIC_PREFIX": prefix, "NPCFLOW_FETCH_MAX_WAIT_MS": str(fetch_wait_ms)}
    procs = PipelineProcesses(env, work_dir / "ready-router", workers={})
    await asyncio.to_thread(procs.start)
    try:
        async with NPCClient(kafka, tenant_id="gs-ready", prefix=prefix) as client:
            reply = await gold(client, npc())
        # From the request's creation to the router's answer: never a fetch wait.
        assert reply.latency.total_ms < fetch_wait_ms / 3, reply.latency
        assert reply.served_by is ServedBy.DEFAULT_INTENT
    finally:
        await asyncio.to_thread(procs.stop)
