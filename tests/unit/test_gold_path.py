"""Gold without a broker: the router's fast path, active leases, default intents, reads, the refresh step."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from pipeline.config import IntentSettings
from pipeline.intents import BUILTIN_DEFAULT_INTENT, DefaultIntents, IntentCache
from pipeline.router.gold import GoldPath
from pipeline.router.logic import Outcome, Router, Source
from tests.examples import encode, with_
from tests.unit.fakes import Topics
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.headers import REFRESH_HEADER, deadline_headers, is_refresh, now_ms, refresh_headers
from topics.policy import RoutingPolicy
from topics.schemas import ActiveNpc, Intent, Output, Reply, Request
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.intents.refresh_step import RefreshServing
from workers.intents.writer import IntentRefresh, Refreshed, intent_text
from workers.resilience.admission import LoadShedder
from workers.serving import Job, Replied, Serving

NOW_MS = 1_790_000_000_100
SOURCE = Source("p.npc.requests", 3, 41)
POLICY = RoutingPolicy.load()
SETTINGS = IntentSettings(ttl_ms=1000, active_lease_ms=10_000, refresh_timeout_ms=2000)


class Clock:
    def __init__(self) -> None:
        self.ms = NOW_MS

    def __call__(self) -> int:
        return self.ms


class FakeCache:
    """A near cache whose clock the test moves (IntentCache reads the wall clock)."""

    def __init__(self, clock: Clock, ttl_ms: int = 1000) -> None:
        self.clock = clock
        self.ttl_ms = ttl_ms
        self.entries: dict[str, Intent] = {}
        self.listeners: list = []
        self.defaults = DefaultIntents.load()

    def add_listener(self, listener) -> None:  # type: ignore[no-untyped-def]
        self.listeners.append(listener)

    async def wait_caught_up(self, timeout_s: float | None = None) -> bool:
        return True

    def publish(self, npc_id: str, text: str, age_ms: int = 0) -> None:
        intent = Intent(npc_id=npc_id, intent=text, generated_at_ms=self.clock() - age_ms, engine="x")
        self.entries[npc_id] = intent
        for listener in self.listeners:
            listener(intent)

    def get_intent(self, npc_id: str, archetype: str | None = None):  # type: ignore[no-untyped-def]
        from pipeline.intents import SeenIntent

        entry = self.entries.get(npc_id)
        if entry is not None and self.clock() - entry.generated_at_ms < self.ttl_ms:
            return SeenIntent(npc_id, entry.intent, float(self.clock() - entry.generated_at_ms), False, entry)
        return SeenIntent(npc_id, self.defaults.for_archetype(archetype), None, True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def topics() -> Topics:
    return Topics()


@pytest.fixture
def cache(clock: Clock) -> FakeCache:
    return FakeCache(clock)


@pytest.fixture
def router(topics: Topics, cache: FakeCache, clock: Clock) -> Router:
    gold = GoldPath(cache, topics.produce, topics.record, settings=SETTINGS, prefix="p.", clock=clock)
    return Router(POLICY, topics.produce, topics.record, prefix="p.", clock=clock, gold=gold)


def gold_request(n: int = 1, npc: str = "npc-blacksmith-7", **changes: object) -> bytes:
    body = with_(
        request_id=f"req-{n:04d}",
        npc_id=npc,
        sla="realtime",
        max_tokens=8,
        tools=[],
        latency_budget_ms=16,
        reply_topic=None,
        created_at_ms=NOW_MS - 3,
        context={"archetype": "blacksmith"},
    )
    body.update(changes)
    return encode(body)


def replies(topics: Topics) -> list[Reply]:
    return [Reply.from_bytes(v) for _, v, _ in topics.get("p.npc.replies")]


def leases(topics: Topics) -> list[ActiveNpc]:
    return [ActiveNpc.from_bytes(v) for _, v, _ in topics.get("p.npc.active")]


async def test_a_miss_answers_the_archetype_default_at_once_and_leases_its_npc(
    router: Router, topics: Topics
) -> None:
    raw = gold_request()
    assert await router.route(raw, SOURCE) is Outcome.ROUTED
    [reply] = replies(topics)
    assert reply.served_by is ServedBy.DEFAULT_INTENT and reply.status is ReplyStatus.OK
    assert reply.intent == DefaultIntents.load().archetypes["blacksmith"] == reply.text
    assert reply.intent_age_ms is None and not reply.late and reply.latency.total_ms == 3
    assert reply.served_tier == "gold" and [(a.tier, a.outcome) for a in reply.chain] == [("gold", "served")]
    # No refresh goes to the Gold topic: the NPC is marked active, and the Gold workers refresh it.
    assert not topics.get("p.npc.requests.gold")
    [(key, _, headers)] = topics.get("p.npc.active")
    [lease] = leases(topics)
    assert key == b"npc-blacksmith-7" and headers is None
    assert lease.npc_id == "npc-blacksmith-7" and lease.lease_until_ms == NOW_MS + SETTINGS.active_lease_ms
    assert lease.archetype == "blacksmith" and lease.tenant_id == reply.tenant_id
    assert lease.prompt == Request.from_bytes(raw).prompt  # the situation the refreshes ask about
    [(_, output, _)] = topics.get("p.npc.outputs")
    assert Output.model_validate_json(output).reply == reply
    assert topics.get("p.npc.routing"), "the routing decision is still recorded"
    assert router.gold is not None and router.gold.stats.marked == 1


async def test_a_fresh_intent_answers_with_its_age(router: Router, topics: Topics, cache: FakeCache) -> None:
    cache.publish("npc-blacksmith-7", "hammer: finish the blade", age_ms=120)
    await router.route(gold_request(), SOURCE)
    [reply] = replies(topics)
    assert reply.served_by is ServedBy.CACHE and reply.intent == "hammer: finish the blade"
    assert reply.intent_age_ms == 120
    assert not topics.get("p.npc.requests.gold") and len(leases(topics)) == 1


async def test_an_intent_older_than_the_ttl_falls_back_to_the_default(
    router: Router, topics: Topics, cache: FakeCache
) -> None:
    cache.publish("npc-blacksmith-7", "hammer", age_ms=1000)
    await router.route(gold_request(), SOURCE)
    assert replies(topics)[0].served_by is ServedBy.DEFAULT_INTENT


async def test_a_burst_for_one_npc_announces_one_lease_until_half_of_it_is_gone(
    router: Router, topics: Topics, clock: Clock
) -> None:
    for n in range(50):
        await router.route(gold_request(n), SOURCE)
        clock.ms += 1
    assert len(replies(topics)) == 50 and len(leases(topics)) == 1
    gold = router.gold
    assert gold is not None and gold.stats.marked == 1 and gold.stats.deduped == 49
    clock.ms = NOW_MS + SETTINGS.active_lease_ms // 2 + 1  # under half left: the next request renews
    await router.route(gold_request(99), SOURCE)
    assert [lease.lease_until_ms for lease in leases(topics)] == [
        NOW_MS + SETTINGS.active_lease_ms,
        clock.ms + SETTINGS.active_lease_ms,
    ]


async def test_npcs_are_leased_separately(router: Router, topics: Topics) -> None:
    for n in range(10):
        await router.route(gold_request(n, npc=f"npc-{n % 5}"), SOURCE)
    assert sorted(k for k, _, _ in topics.get("p.npc.active")) == [f"npc-{i}".encode() for i in range(5)]


async def test_a_late_answer_is_marked_late(router: Router, topics: Topics) -> None:
    await router.route(gold_request(created_at_ms=NOW_MS - 40), SOURCE)
    [reply] = replies(topics)
    assert reply.late and reply.latency.total_ms == 40


async def test_non_gold_requests_are_forwarded_as_before(router: Router, topics: Topics) -> None:
    raw = encode(with_(reply_topic=None))  # interactive → silver
    await router.route(raw, SOURCE)
    [(_, value, headers)] = topics.get("p.npc.requests.silver")
    assert value == raw and not is_refresh(headers)
    assert not topics.get("p.npc.replies") and not topics.get("p.npc.requests.gold")


async def test_a_custom_reply_topic_that_does_not_exist_is_left_to_the_worker(
    topics: Topics, cache: FakeCache, clock: Clock
) -> None:
    async def exists(topic: str) -> bool:
        return topic == "p.npc.replies.gs-eu-1"

    gold = GoldPath(
        cache, topics.produce, topics.record, settings=SETTINGS, prefix="p.", clock=clock, topic_exists=exists
    )
    router = Router(POLICY, topics.produce, topics.record, prefix="p.", clock=clock, gold=gold)
    await router.route(gold_request(1, reply_topic="p.npc.replies.gs-eu-1.missing"), SOURCE)
    [(_, _, headers)] = topics.get("p.npc.requests.gold")
    assert not is_refresh(headers)  # an ordinary routed request: the worker dead-letters it
    await router.route(gold_request(2, reply_topic="p.npc.replies.gs-eu-1"), SOURCE)
    [(key, _, _)] = topics.get("p.npc.replies.gs-eu-1")
    assert key == b"req-0002"


def test_default_intents_by_archetype_with_a_builtin_fallback(tmp_path: Path) -> None:
    packaged = DefaultIntents.load()
    assert packaged.for_archetype("guard").startswith("patrol")
    assert packaged.for_archetype("dragon") == packaged.default == packaged.for_archetype(None)
    custom = tmp_path / "intents.yaml"
    custom.write_text("archetypes:\n  dragon: 'hoard: sleep on the gold'\n")
    loaded = DefaultIntents.from_settings(IntentSettings(defaults_file=str(custom)))
    assert loaded.for_archetype("dragon") == "hoard: sleep on the gold"
    assert loaded.for_archetype("guard") == BUILTIN_DEFAULT_INTENT


def test_refresh_headers_and_intent_text() -> None:
    headers = refresh_headers(123)
    assert is_refresh(headers) and (REFRESH_HEADER, b"1") in headers and not is_refresh(None)
    assert intent_text("\n  flee: run\nmore") == "flee: run" and intent_text("  \n") == ""
    assert len(intent_text("x" * 999)) == 256


def test_the_near_cache_reads_without_io_and_applies_only_newer_intents() -> None:
    from pipeline.config import Settings

    cache = IntentCache(Settings(kafka_bootstrap="127.0.0.1:1"), prefix="p.")
    seen = cache.get_intent("npc-1", "wolf")
    assert seen.is_default and seen.intent.startswith("prowl") and seen.age_ms is None
    now = int(time.time() * 1000)
    newer = Intent(npc_id="npc-1", intent="howl", generated_at_ms=now - 10)
    cache._apply_record(newer.to_bytes(), b"npc-1")
    cache._apply_record(Intent(npc_id="npc-1", intent="old", generated_at_ms=now - 500).to_bytes(), b"npc-1")
    seen = cache.get_intent("npc-1")
    assert not seen.is_default and seen.intent == "howl" and seen.age_ms is not None and seen.age_ms < 500
    cache._apply_record(b"{not json", b"npc-1")
    cache._apply_record(None, b"npc-1")  # a tombstone forgets the NPC
    assert cache.get_intent("npc-1").is_default
    assert cache.stats.undecodable == 1 and cache.stats.tombstones == 1
    expired = Intent(npc_id="npc-2", intent="stale", generated_at_ms=now - 5000)
    cache._apply_record(expired.to_bytes(), b"npc-2")
    assert cache.get_intent("npc-2").is_default


def test_reads_say_what_answered_and_how_old_it_was() -> None:
    from pipeline.config import Settings

    cache = IntentCache(Settings(kafka_bootstrap="127.0.0.1:1"), prefix="p.", client_id="test-reads")
    now = int(time.time() * 1000)
    cache._apply(Intent(npc_id="m", intent="howl", generated_at_ms=now - 100, engine="scripted"))
    cache._apply(Intent(npc_id="g", intent="flee", generated_at_ms=now - 10, engine="game"))
    model, game, default = cache.get_intent("m"), cache.get_intent("g"), cache.get_intent("x", "wolf")
    assert model.from_model and model.served_by is ServedBy.CACHE and model.age_ms is not None
    assert not game.from_model and game.served_by is ServedBy.CACHE
    assert not default.from_model and default.served_by is ServedBy.DEFAULT_INTENT
    reads = cache.reads
    assert (reads.model, reads.game, reads.default) == (1, 1, 1) and reads.model_share() == 1 / 3
    # On /metrics: reads by what answered, and the ages of the intents read.
    sample = REGISTRY.get_sample_value
    assert sample("npcflow_intent_reads_total", {"cache": "test-reads", "source": "model"}) == 1
    assert sample("npcflow_intent_reads_total", {"cache": "test-reads", "source": "default"}) == 1
    assert sample("npcflow_intent_read_age_seconds_count", {"cache": "test-reads"}) == 2
    assert sample("npcflow_intent_read_age_seconds_bucket", {"cache": "test-reads", "le": "0.05"}) == 1
    assert sample("npcflow_intent_read_age_seconds_bucket", {"cache": "test-reads", "le": "0.25"}) == 2


class Rec:
    def __init__(self, value: bytes, headers: list) -> None:
        self.value, self.headers = value, headers
        self.topic, self.partition, self.offset = "p.npc.requests.gold", 0, 7


def gold_serving(engine: object) -> Serving:
    return Serving(  # type: ignore[arg-type]
        Tier.GOLD,
        engine,
        POLICY,
        prefix="p.",
        intents=IntentRefresh(None, prefix="p."),
    )


async def served_as_refresh(engine: ScriptedEngine, record: Rec) -> Refreshed:
    """The Gold worker's path for a record with the refresh header: a refresh job, then the refresh step."""
    serving = gold_serving(engine)
    job = serving.accept(record)
    assert isinstance(job, Job) and job.refresh and serving.intents is not None
    return await RefreshServing(Tier.GOLD, engine, serving.intents, serving.stats, LoadShedder()).serve(job)


async def test_a_refresh_writes_the_intent_and_never_replies() -> None:
    engine = ScriptedEngine(ScriptedProfile())
    raw = gold_request(created_at_ms=now_ms())
    outcome = await served_as_refresh(engine, Rec(raw, refresh_headers(now_ms() + 2000)))
    assert isinstance(outcome, Refreshed) and outcome.update is not None
    assert outcome.update.topic == "p.npc.intents" and outcome.update.key == b"npc-blacksmith-7"
    intent = outcome.update.intent
    assert intent.request_id == "req-0001" and intent.intent.startswith("[npc-blacksmith-7] scripted")
    assert intent.engine == engine.name and engine.calls == 1


async def test_a_refresh_whose_engine_fails_leaves_the_last_intent() -> None:
    engine = ScriptedEngine(ScriptedProfile(fail_every=1))
    outcome = await served_as_refresh(engine, Rec(gold_request(), refresh_headers(now_ms() + 2000)))
    assert isinstance(outcome, Refreshed) and outcome.update is None and outcome.reason == "engine_error"


async def test_an_expired_refresh_calls_no_engine() -> None:
    engine = ScriptedEngine(ScriptedProfile())
    outcome = await served_as_refresh(engine, Rec(gold_request(), refresh_headers(now_ms() - 1)))
    assert isinstance(outcome, Refreshed) and outcome.reason == "expired" and engine.calls == 0


async def test_a_gold_reply_from_the_engine_also_refreshes_the_intent() -> None:
    engine = ScriptedEngine(ScriptedProfile())
    raw = gold_request(created_at_ms=now_ms(), latency_budget_ms=5000)
    outcome = await gold_serving(engine).handle(Rec(raw, deadline_headers(now_ms() + 5000, "gold")))
    assert isinstance(outcome, Replied) and outcome.reply.served_by is ServedBy.ENGINE
    assert outcome.intent_update is not None and outcome.intent_update.intent.npc_id == "npc-blacksmith-7"


async def test_a_failed_lease_after_the_reply_never_dead_letters_the_answered_request(
    cache: FakeCache, clock: Clock
) -> None:
    topics = Topics()
    broker_down = [True]

    async def produce(topic: str, key: bytes, value: bytes, headers: list | None) -> None:
        if topic == "p.npc.active" and broker_down[0]:
            raise RuntimeError("broker gone")
        await topics.produce(topic, key, value, headers)

    gold = GoldPath(cache, produce, topics.record, settings=SETTINGS, prefix="p.", clock=clock)
    router = Router(POLICY, produce, topics.record, prefix="p.", clock=clock, gold=gold)
    assert await router.route(gold_request(), SOURCE) is Outcome.ROUTED
    assert len(replies(topics)) == 1 and not topics.get("p.npc.requests.dlq")
    broker_down[0] = False  # the lease was not sent: the NPC's next request announces it
    await router.route(gold_request(2), SOURCE)
    assert len(leases(topics)) == 1
