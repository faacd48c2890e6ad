"""Serving one request without Kafka: deadlines, engine outcomes, dead letters, pricing and hooks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from pipeline.config import Settings, WorkerSettings
from pipeline.observability.cost import Pricing
from tests.examples import VALID_REQUEST, encode
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.headers import deadline_headers, now_ms
from topics.policy import RoutingPolicy
from topics.schemas import Request
from workers.cache.result_step import ResultCacheStep
from workers.engines.base import EngineResult
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.hooks import standard_hooks
from workers.resilience import EngineTimeout, Timeout
from workers.resilience.breaker import BreakerGuard
from workers.resilience.fallback import CutAtDeadline
from workers.serving import DeadLettered, Hooks, Job, Replied, Serving
from workers.tier_worker import TierWorker, WorkerConfig

POLICY = RoutingPolicy.load()
PREFIX = "p."
SOURCE = f"{PREFIX}npc.requests.gold"


@dataclass
class Record:
    """What serving reads of a consumed record (aiokafka's ConsumerRecord has the same fields)."""

    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = SOURCE
    partition: int = 3
    offset: int = 41


def request(**changes: object) -> Request:
    fields = {
        "request_id": f"r-{time.time_ns()}",
        "npc_id": "npc-1",
        "tenant_id": "gs-unit",
        "prompt": "A wolf appears.",
        "max_tokens": 8,
        "created_at_ms": now_ms(),
    } | changes
    return Request(**fields)  # type: ignore[arg-type]


def routed(req: Request, deadline_in_ms: int | None = 5_000) -> Record:
    headers = [] if deadline_in_ms is None else deadline_headers(now_ms() + deadline_in_ms, "gold")
    return Record(req.to_bytes(), headers)


def serving(engine: object, hooks: Hooks | None = None, tier: Tier = Tier.GOLD) -> Serving:
    return Serving(tier, engine, POLICY, prefix=PREFIX, hooks=hooks)  # type: ignore[arg-type]


async def test_an_engine_result_becomes_an_ok_reply_and_its_output() -> None:
    engine = ScriptedEngine(ScriptedProfile(tokens_per_reply=6))
    req = request(prompt="one two three four")
    outcome = await serving(engine).handle(routed(req))
    assert isinstance(outcome, Replied)
    reply = outcome.reply
    assert reply.status is ReplyStatus.OK and reply.served_by is ServedBy.ENGINE
    assert reply.request_id == req.request_id and reply.tier is Tier.GOLD
    assert reply.engine == engine.name and reply.text.startswith("[npc-1] scripted reply")
    assert (reply.tokens.prompt, reply.tokens.completion) == (4, 6)
    # GPU-seconds the engine held, at Gold's rate (pipeline/observability/pricing.yaml).
    assert reply.cost_usd == Pricing.load().reply_cost("gold", "engine", reply.latency.engine_ms)
    assert not reply.late and reply.error is None
    assert outcome.reply_topic == f"{PREFIX}npc.replies"
    assert outcome.outputs_topic == f"{PREFIX}npc.outputs"
    assert outcome.key == req.request_id.encode()
    assert outcome.output.request == req and outcome.output.reply == reply
    assert engine.calls == 1


async def test_a_custom_reply_topic_is_the_destination() -> None:
    req = request(reply_topic=f"{PREFIX}npc.replies.gs-unit.quests")
    outcome = await serving(ScriptedEngine()).handle(routed(req))
    assert isinstance(outcome, Replied) and outcome.reply_topic == f"{PREFIX}npc.replies.gs-unit.quests"


async def test_an_expired_request_is_answered_expired_without_an_engine_call() -> None:
    engine = ScriptedEngine()
    outcome = await serving(engine).handle(routed(request(created_at_ms=now_ms() - 1000), -500))
    assert isinstance(outcome, Replied)
    reply = outcome.reply
    assert reply.status is ReplyStatus.EXPIRED and reply.served_by is ServedBy.NONE
    assert "deadline passed" in (reply.error or "") and reply.engine == "" and not reply.late
    assert reply.cost_usd == 0 and engine.calls == 0
    assert outcome.output.reply == reply


async def test_time_queued_for_a_slot_counts_against_the_deadline() -> None:
    engine = ScriptedEngine()
    s = serving(engine)
    job = s.accept(routed(request(), 30))
    assert isinstance(job, Job)
    await asyncio.sleep(0.05)  # waiting for an engine slot
    outcome = await s.serve(job)
    assert outcome.reply.status is ReplyStatus.EXPIRED and engine.calls == 0


async def test_without_a_deadline_header_the_tier_budget_applies() -> None:
    req = request()
    job = serving(ScriptedEngine()).accept(routed(req, None))
    assert isinstance(job, Job)
    assert job.deadline_ms == req.created_at_ms + POLICY.tiers[Tier.GOLD].default_budget_ms


async def test_an_engine_error_becomes_an_error_reply() -> None:
    outcome = await serving(ScriptedEngine(ScriptedProfile(fail_every=1))).handle(routed(request()))
    assert isinstance(outcome, Replied)
    reply = outcome.reply
    assert reply.status is ReplyStatus.ERROR and reply.served_by is ServedBy.NONE
    assert "scripted failure" in (reply.error or "") and reply.text == ""


async def test_a_result_after_the_deadline_is_replied_and_marked_late() -> None:
    engine = ScriptedEngine(ScriptedProfile(latency_ms=60))
    outcome = await serving(engine).handle(routed(request(), 10))
    assert isinstance(outcome, Replied)
    assert outcome.reply.status is ReplyStatus.OK and outcome.reply.late
    assert outcome.reply.latency.engine_ms >= 55


async def test_a_stalled_engine_times_out_into_an_error_reply_at_deadline_plus_grace() -> None:
    stalled = ScriptedEngine(ScriptedProfile(latency_ms=10_000))
    engine = Timeout(stalled, grace_s=0.1, cap_s=60)
    started = time.monotonic()
    outcome = await serving(engine).handle(routed(request(), 100))
    elapsed = time.monotonic() - started
    assert isinstance(outcome, Replied)
    reply = outcome.reply
    assert reply.status is ReplyStatus.ERROR and reply.served_by is ServedBy.NONE
    assert f"engine {stalled.name} gave no result within" in (reply.error or "")
    assert 0.15 <= elapsed < 1.0, elapsed


async def test_the_timeout_is_capped_and_names_the_engine() -> None:
    engine = Timeout(ScriptedEngine(ScriptedProfile(latency_ms=10_000)), grace_s=0.05, cap_s=0.05)
    assert engine.timeout_s(now_ms() + 3_600_000) == pytest.approx(0.1)
    assert engine.timeout_s(now_ms() - 5_000) == pytest.approx(0.05)
    with pytest.raises(EngineTimeout) as caught:
        await engine.generate(request(), now_ms() + 3_600_000)
    assert caught.value.engine == engine.name and caught.value.timeout_s == pytest.approx(0.1, abs=0.01)


async def test_a_wrapper_is_an_engine_that_starts_and_stops_the_one_inside() -> None:
    inner = ScriptedEngine(ScriptedProfile(latency_ms=1))
    engine = Timeout(inner, grace_s=1)
    assert engine.name == inner.name and engine.max_concurrency is None
    async with engine:
        assert inner.started
        assert isinstance(await engine.generate(request(), now_ms() + 1000), EngineResult)
    assert not inner.started
    await engine.stop()  # safe twice


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\xff\xfegarbage", "not valid UTF-8"),
        (b"\x00garbage", "Invalid JSON"),
        (b"", "empty body"),
        (encode({**VALID_REQUEST, "max_tokens": "8"}), "max_tokens"),
        (encode({**VALID_REQUEST, "reply_topic": f"{PREFIX}npc.outputs"}), "reply_topic"),
        (encode({**VALID_REQUEST, "reply_topic": "npc.replies"}), "reply_topic"),  # the prefix is missing
        (encode({**VALID_REQUEST, "reply_topic": f"{PREFIX}npc.replies.gs-other"}), "belongs to tenant"),
    ],
)
async def test_poison_is_dead_lettered_with_the_reason_and_origin(raw: bytes, words: str) -> None:
    engine = ScriptedEngine()
    outcome = await serving(engine).handle(Record(raw))
    assert isinstance(outcome, DeadLettered)
    letter = outcome.letter
    assert words in letter.reason
    assert letter.original() == raw and letter.stage == "worker"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (SOURCE, 3, 41)
    assert outcome.topic == f"{PREFIX}npc.requests.dlq" and outcome.key == SOURCE.encode()
    assert engine.calls == 0


async def test_hooks_see_every_outcome_once_and_a_failing_hook_costs_nothing() -> None:
    replies: list[Replied] = []
    letters: list[DeadLettered] = []

    def broken(_: Replied) -> None:
        raise RuntimeError("hook bug")

    hooks = Hooks(on_reply=[broken, replies.append], on_dead_letter=[letters.append])
    s = serving(ScriptedEngine(), hooks)
    ok = await s.handle(routed(request()))
    expired = await s.handle(routed(request(), -1))
    poison = await s.handle(Record(b"{}"))
    assert replies == [ok, expired] and letters == [poison]
    assert s.stats.replies == {"ok": 1, "expired": 1} and s.stats.dead_letters == 1
    assert s.stats.engine_calls == 1


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_standard_hooks_count_replies_cost_and_dead_letters() -> None:
    tenant = f"gs-{time.time_ns()}"
    s = serving(ScriptedEngine(ScriptedProfile(tokens_per_reply=8)), standard_hooks(), Tier.SILVER)
    before = sample("npcflow_replies_total", tier="silver", status="ok", served_by="engine")
    dead_before = sample("npcflow_dead_letters_total", stage="worker")
    outcome = await s.handle(routed(request(tenant_id=tenant)))
    await s.handle(Record(b"nope"))
    assert isinstance(outcome, Replied)
    assert sample("npcflow_replies_total", tier="silver", status="ok", served_by="engine") == before + 1
    assert sample("npcflow_cost_usd_total", tier="silver", tenant=tenant) == pytest.approx(
        outcome.reply.cost_usd
    )
    assert sample("npcflow_dead_letters_total", stage="worker") == dead_before + 1


def test_worker_config_comes_from_settings() -> None:
    settings = Settings(
        kafka_bootstrap="127.0.0.1:1",
        topic_prefix=PREFIX,
        worker=WorkerSettings(max_pending=64, engine_grace_s=2.5),
    )
    config = WorkerConfig.from_settings(settings, Tier.GOLD)
    assert config.group == f"{PREFIX}npcflow-worker-gold" and config.prefix == PREFIX
    assert (config.max_in_flight, config.max_pending, config.engine_grace_s) == (16, 64, 2.5)
    assert WorkerConfig.from_settings(settings, Tier.BRONZE).max_in_flight == 4
    assert WorkerConfig.from_settings(settings, Tier.GOLD, group_id="g").group == "g"


async def test_a_worker_wraps_its_engine_and_connects_nothing_before_start() -> None:
    connections: list[int] = []

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    # One listener stands in for the broker and Redis: a client that connects shows up here.
    listener = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{port}", redis_url=f"redis://127.0.0.1:{port}", topic_prefix=PREFIX
    )
    engine = ScriptedEngine()
    try:
        worker = TierWorker(WorkerConfig.from_settings(settings, Tier.SILVER, engine_grace_s=0.5), engine)
        await asyncio.sleep(0.3)  # what the constructor scheduled on the loop would have connected by now
        assert connections == []
        assert not worker.started and not engine.started
    finally:
        listener.close()
        await listener.wait_closed()
    # Silver with Redis: ResultCacheStep(BreakerGuard(CutAtDeadline(Timeout(engine)))), the answer
    # step outermost (workers/engine_stack.py; docs/architecture.md, "Resilience").
    cached = worker.engine
    assert isinstance(cached, ResultCacheStep)
    guard = cached.inner
    assert isinstance(guard, BreakerGuard) and [b.name for b in guard.breakers] == [
        "tier:silver",
        f"engine:{engine.name}",
    ]
    assert isinstance(guard.inner, CutAtDeadline)
    timeout = guard.inner.inner
    assert isinstance(timeout, Timeout) and timeout.inner is engine
    assert timeout.grace_s == 0.5 and worker.serving.engine is worker.engine
