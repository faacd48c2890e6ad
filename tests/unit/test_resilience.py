"""Resilience pieces alone: breakers, fair share, shedding, fallback wrappers and steps (no servers)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from pipeline.breakers.board import BreakerBoard
from pipeline.breakers.state import BreakerPolicy, MemoryStore, Op, State, transition
from pipeline.config import ConfigError, ResilienceSettings, Settings
from pipeline.router.breakers import RouterFallback
from pipeline.router.logic import Router, Source
from tests.examples import VALID_REQUEST, encode
from topics.catalogue import Tier
from topics.fields import ReplyStatus, Sla
from topics.headers import (
    ATTEMPT_HEADER,
    FROM_HEADER,
    FallbackContext,
    attempt,
    deadline_headers,
    now_ms,
    read_deadline,
    refresh_headers,
)
from topics.policy import RoutingPolicy
from topics.schemas import Request, RoutingDecision
from workers.engines.base import EngineError, EngineResult, EngineUnavailable
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.resilience import BreakerOpen, DeadlineReached, TierResilience, wrap_engine
from workers.resilience.admission import FairShare, LoadShedder
from workers.resilience.breaker import BreakerGuard
from workers.resilience.fallback import CutAtDeadline, FallbackStep, Forwarded, Substitute
from workers.serving import Replied, Serving

POLICY = RoutingPolicy.load()
PREFIX = "p."


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def request(**changes: object) -> Request:
    fields = {
        "request_id": f"r-{time.time_ns()}",
        "npc_id": "npc-1",
        "tenant_id": "gs-unit",
        "prompt": "Where is the mill?",
        "max_tokens": 8,
        "created_at_ms": now_ms(),
    } | changes
    return Request(**fields)  # type: ignore[arg-type]


@dataclass
class Record:
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = f"{PREFIX}npc.requests.silver"
    partition: int = 0
    offset: int = 7


# --- breakers -------------------------------------------------------------------------------


def test_transition_opens_after_n_failures_half_opens_after_cooldown_and_a_probe_closes() -> None:
    policy = BreakerPolicy(failures=3, cooldown_ms=1000, probes=1)
    f: dict[str, str] = {}
    for _ in range(2):
        f, _ = transition(f, Op.FAILURE, 0, policy, "boom")
        assert f.get("state", "closed") == State.CLOSED
    f, _ = transition(f, Op.FAILURE, 0, policy, "boom")
    assert f["state"] == State.OPEN and "3 consecutive failures" in f["reason"]
    assert transition(f, Op.ACQUIRE, 999, policy)[1] is False
    f, allowed = transition(f, Op.ACQUIRE, 1000, policy)
    assert allowed and f["state"] == State.HALF_OPEN
    assert transition(f, Op.ACQUIRE, 1001, policy)[1] is False  # one probe at a time
    f, _ = transition(f, Op.SUCCESS, 1002, policy)
    assert f["state"] == State.CLOSED and f["failures"] == "0"


def test_a_failed_probe_reopens_and_a_lost_probe_is_forgotten_after_a_cooldown() -> None:
    policy = BreakerPolicy(failures=1, cooldown_ms=1000, probes=1)
    f, _ = transition({}, Op.FAILURE, 0, policy, "x")
    f, _ = transition(f, Op.ACQUIRE, 1000, policy)
    f, _ = transition(f, Op.FAILURE, 1001, policy, "still down")
    assert f["state"] == State.OPEN and int(f["until_ms"]) == 2001
    f, allowed = transition(f, Op.ACQUIRE, 2001, policy)
    assert allowed  # probe admitted; its process dies and never reports
    assert transition(f, Op.ACQUIRE, 2500, policy)[1] is False
    assert transition(f, Op.ACQUIRE, 3001, policy)[1] is True


def test_a_success_resets_the_consecutive_count() -> None:
    policy = BreakerPolicy(failures=2, cooldown_ms=1000)
    f, _ = transition({}, Op.FAILURE, 0, policy)
    f, _ = transition(f, Op.SUCCESS, 0, policy)
    f, _ = transition(f, Op.FAILURE, 0, policy)
    assert f.get("state", "closed") == State.CLOSED


async def test_breaker_guard_opens_refuses_then_recovers_through_a_probe() -> None:
    clock = Clock()
    settings = ResilienceSettings(breaker_failures=2, breaker_cooldown_s=5, breaker_cache_s=0)
    board = BreakerBoard(MemoryStore(), settings, clock=clock)
    engine = ScriptedEngine(ScriptedProfile(fail_every=1))
    guard = BreakerGuard(engine, [board.tier("silver"), board.engine(engine.name)], tier="silver")
    for _ in range(2):
        with pytest.raises(EngineError):
            await guard.generate(request(), now_ms() + 1000)
    with pytest.raises(BreakerOpen) as refused:
        await guard.generate(request(), now_ms() + 1000)
    assert engine.calls == 2 and "consecutive failures" in str(refused.value)
    assert board.tier("silver").is_open()
    clock.t += 5
    engine.profile = ScriptedProfile()
    assert (await guard.generate(request(), now_ms() + 1000)).text
    assert board.tier("silver").snapshot.state is State.CLOSED
    assert board.tier("silver").history == [State.CLOSED, State.OPEN, State.HALF_OPEN, State.CLOSED]


async def test_latency_trigger_opens_a_tier_whose_p95_exceeds_budget_times_factor() -> None:
    settings = ResilienceSettings(
        breaker_latency_factor=2.0, breaker_latency_min_samples=5, breaker_cache_s=0
    )
    board = BreakerBoard(MemoryStore(), settings)
    breaker = board.tier("silver", budget_ms=10)
    for _ in range(4):
        await breaker.success(50)
    assert breaker.snapshot.state is State.CLOSED  # not enough samples yet
    await breaker.success(50)
    assert breaker.snapshot.state is State.OPEN and "p95 latency" in breaker.snapshot.reason


def test_the_latency_window_is_judged_at_most_once_per_interval() -> None:
    from pipeline.breakers.board import LatencyWindow

    window = LatencyWindow(min_samples=3, check_every_s=0.25)
    judged = []
    for i in range(100):
        at = i * 0.01  # 100 calls over one second
        window.add(10.0, at)
        judged.append(window.due(at))
    assert sum(judged) == 4 and judged.index(True) == 2  # first at the 3rd sample, then every 0.25 s


# --- fair share and shedding ----------------------------------------------------------------


async def test_fair_share_serves_a_quiet_tenant_before_a_flooders_backlog() -> None:
    share = FairShare(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def job(tenant: str) -> None:
        async with share.slot(tenant):
            order.append(tenant)
            await gate.wait()

    tasks = [asyncio.create_task(job("flood")) for _ in range(10)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(job("quiet")))
    await asyncio.sleep(0)
    assert share.waiting() == 10 and share.expected_wait_ms("quiet") >= 0
    gate.set()
    await asyncio.gather(*tasks)
    assert order.index("quiet") <= 2, order  # not behind the other nine


async def test_fair_share_by_weight_and_cancelled_waiters_leave() -> None:
    share = FairShare(1, {"big": 3.0})
    order: list[str] = []
    gate = asyncio.Event()

    async def job(tenant: str) -> None:
        async with share.slot(tenant):
            order.append(tenant)
            await gate.wait()

    first = asyncio.create_task(job("big"))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(job(t)) for t in ["small"] * 4 + ["big"] * 8]
    await asyncio.sleep(0)
    tasks[0].cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *tasks, return_exceptions=True)
    served = order[1:9]
    assert served.count("big") >= 5, order
    assert share.in_use == 0 and share.waiting() == 0


def test_shedder_degrades_only_when_the_queue_predicts_a_miss() -> None:
    shed = LoadShedder()
    assert shed.verdict(1000, 0, expected_wait_ms=0, service_ms=5000) is None  # a free slot: try
    assert shed.verdict(1000, 0, expected_wait_ms=500, service_ms=400) is None
    why = shed.verdict(1000, 0, expected_wait_ms=800, service_ms=400)
    assert why and why.startswith("shed: queue predicts 1200 ms")
    assert LoadShedder(enabled=False).verdict(1000, 0, 800, 400) is None


# --- fallback -------------------------------------------------------------------------------


def test_fallback_headers_round_trip() -> None:
    step = FallbackStep(Tier.SILVER, POLICY, PREFIX)
    req = request(sla=Sla.INTERACTIVE)

    @dataclass
    class J:
        request: Request
        raw: bytes
        deadline_ms: int
        chain: tuple = ()
        attempt: int = 0

    forwarded = step.forward(J(req, req.to_bytes(), now_ms() + 250), "engine refused", "unavailable")
    assert isinstance(forwarded, Forwarded)
    assert forwarded.topic == f"{PREFIX}npc.requests.bronze" and forwarded.value == req.to_bytes()
    headers = dict(forwarded.headers)
    assert headers[ATTEMPT_HEADER] == b"1" and headers[FROM_HEADER] == b"silver"
    assert read_deadline(forwarded.headers) >= now_ms() + 59_000  # Bronze's budget from now
    came = FallbackContext.read(forwarded.headers)
    assert came.attempt == 1 and came.chain[0].tier is Tier.SILVER and "refused" in came.chain[0].reason
    assert forwarded.decision.fallback_from is Tier.SILVER and forwarded.decision.stage == "worker"
    assert FallbackStep(Tier.BRONZE, POLICY).forward(J(req, b"", 0), "x", "error") is None
    assert FallbackContext.read([(ATTEMPT_HEADER, b"nope")]) == FallbackContext()


async def test_cut_at_deadline_raises_at_the_deadline_and_the_call_goes_on() -> None:
    engine = ScriptedEngine(ScriptedProfile(latency_ms=150))
    cut = CutAtDeadline(engine)
    started = time.monotonic()
    with pytest.raises(DeadlineReached) as reached:
        await cut.generate(request(), now_ms() + 50)
    assert time.monotonic() - started < 0.12
    late = reached.value.late
    assert late is not None and (await late).text


async def test_substitute_serves_with_the_next_tiers_engine_and_says_so() -> None:
    down = ScriptedEngine(ScriptedProfile(fail_every=1))
    silver = ScriptedEngine(ScriptedProfile(latency_ms=1))
    engine = Substitute(down, silver, from_tier=Tier.GOLD, to_tier=Tier.SILVER)
    result = await engine.generate(request(), now_ms() + 100)
    assert result.substituted and result.substituted.tier == "silver"
    assert result.substituted.engine == silver.name and "error" in result.substituted.reason
    both = Substitute(
        down, ScriptedEngine(ScriptedProfile(fail_every=1)), from_tier=Tier.GOLD, to_tier=Tier.SILVER
    )
    with pytest.raises(EngineError, match=r"gold: .*silver"):
        await both.generate(request(), now_ms() + 100)


def silver_serving(engine: object, fallback: bool = True, tier: Tier = Tier.SILVER) -> Serving:
    step = FallbackStep(tier, POLICY, PREFIX, enabled=fallback)
    return Serving(tier, engine, POLICY, prefix=PREFIX, fallback=step)  # type: ignore[arg-type]


async def test_silver_stalled_engine_falls_back_at_the_deadline_with_headers() -> None:
    resilience = TierResilience(Tier.SILVER, BreakerBoard(MemoryStore()), POLICY)
    engine = wrap_engine(ScriptedEngine(ScriptedProfile(latency_ms=5000)), grace_s=30, resilience=resilience)
    serving = silver_serving(engine)
    req = request()
    job = serving.accept(Record(req.to_bytes(), deadline_headers(now_ms() + 80, "silver")))
    started = time.monotonic()
    outcome = await serving.serve(job)  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.5  # at the deadline, not the 30 s grace
    assert isinstance(outcome, Forwarded) and outcome.late is not None
    assert "deadline" in dict(outcome.headers)["npcflow-fallback-reason"].decode()
    outcome.late.cancel()


async def test_bronze_serves_a_fallback_and_its_reply_names_the_chain() -> None:
    req = request()
    step = FallbackStep(Tier.SILVER, POLICY, PREFIX)
    silver = silver_serving(ScriptedEngine())
    job = silver.accept(Record(req.to_bytes(), deadline_headers(now_ms() + 250, "silver")))
    forwarded = step.forward(job, "breaker tier:silver is open", "breaker_open")  # type: ignore[arg-type]
    assert forwarded is not None
    bronze = Serving(Tier.BRONZE, ScriptedEngine(), POLICY, prefix=PREFIX)
    record = Record(forwarded.value, forwarded.headers, topic=forwarded.topic)
    reply = (await bronze.handle(record)).reply  # type: ignore[union-attr]
    assert reply.status is ReplyStatus.FALLBACK and reply.tier is Tier.BRONZE
    assert reply.served_tier is Tier.BRONZE
    assert [(a.tier, a.outcome) for a in reply.chain] == [(Tier.SILVER, "failed"), (Tier.BRONZE, "served")]

    failing = Serving(Tier.BRONZE, ScriptedEngine(ScriptedProfile(fail_every=1)), POLICY, prefix=PREFIX)
    error = (await failing.handle(record)).reply  # type: ignore[union-attr]
    assert error.status is ReplyStatus.ERROR and error.served_tier is None
    assert error.error and "silver: " in error.error and "bronze: " in error.error


async def test_plain_reply_has_a_one_step_chain_and_a_gold_substitute_reply_is_a_fallback() -> None:
    req = request()
    ok = await Serving(Tier.SILVER, ScriptedEngine(), POLICY, prefix=PREFIX).handle(
        Record(req.to_bytes(), deadline_headers(now_ms() + 250, "silver"))
    )
    assert isinstance(ok, Replied) and ok.reply.status is ReplyStatus.OK
    assert ok.reply.served_tier is Tier.SILVER and [a.outcome for a in ok.reply.chain] == ["served"]

    gold_engine = Substitute(
        ScriptedEngine(ScriptedProfile(fail_every=1)),
        ScriptedEngine(),
        from_tier=Tier.GOLD,
        to_tier=Tier.SILVER,
    )
    gold = Serving(Tier.GOLD, gold_engine, POLICY, prefix=PREFIX)
    out = await gold.handle(Record(req.to_bytes(), deadline_headers(now_ms() + 5000, "gold")))
    assert isinstance(out, Replied) and out.reply.status is ReplyStatus.FALLBACK
    assert out.reply.served_tier is Tier.SILVER and out.reply.tier is Tier.GOLD


async def test_shedding_forwards_silver_and_never_sheds_bronze() -> None:
    serving = Serving(
        Tier.SILVER,
        ScriptedEngine(),
        POLICY,
        prefix=PREFIX,
        fallback=FallbackStep(Tier.SILVER, POLICY, PREFIX),
        shedder=LoadShedder(),
    )
    job = serving.accept(Record(request().to_bytes(), deadline_headers(now_ms() + 250, "silver")))
    assert serving.shed(job, expected_wait_ms=10, service_ms=5) is None  # type: ignore[arg-type]
    shed = serving.shed(job, expected_wait_ms=400, service_ms=50)  # type: ignore[arg-type]
    assert isinstance(shed, Forwarded) and shed.decision.reason.startswith("silver → bronze (shed)")
    bronze = Serving(Tier.BRONZE, ScriptedEngine(), POLICY, prefix=PREFIX, shedder=LoadShedder())
    assert bronze.shed(job, 10_000, 10_000) is None  # type: ignore[arg-type]


async def test_shedding_skips_a_gold_refresh_and_expires_a_gold_request() -> None:
    """Gold forwards nowhere: a shed request is answered ``expired``; a shed refresh writes nothing."""
    from workers.intents.refresh_step import RefreshServing
    from workers.intents.writer import IntentRefresh, Refreshed

    gold = Serving(Tier.GOLD, ScriptedEngine(), POLICY, prefix=PREFIX, shedder=LoadShedder())
    refreshing = RefreshServing(Tier.GOLD, ScriptedEngine(), IntentRefresh(None), gold.stats, gold.shedder)
    plain = gold.accept(Record(request().to_bytes(), deadline_headers(now_ms() + 50, "gold")))
    refresh = gold.accept(Record(request().to_bytes(), refresh_headers(now_ms() + 50)))
    assert not plain.refresh and refresh.refresh  # type: ignore[union-attr]
    assert refreshing.shed(refresh, expected_wait_ms=1, service_ms=1) is None  # type: ignore[arg-type]
    skipped = refreshing.shed(refresh, expected_wait_ms=400, service_ms=50)  # type: ignore[arg-type]
    assert isinstance(skipped, Refreshed) and skipped.update is None and skipped.reason == "shed"
    assert skipped.records() == []
    expired = gold.shed(plain, expected_wait_ms=400, service_ms=50)  # type: ignore[arg-type]
    assert isinstance(expired, Replied) and expired.reply.status is ReplyStatus.EXPIRED


async def test_late_result_becomes_an_output_not_a_reply() -> None:
    serving = silver_serving(ScriptedEngine())
    job = serving.accept(Record(request().to_bytes(), deadline_headers(now_ms() + 250, "silver")))
    output = serving.late_output(job, EngineResult("late words", 3, 2))  # type: ignore[arg-type]
    assert output.reply.text == "late words" and "late" in output.reply.chain[-1].reason


# --- router ---------------------------------------------------------------------------------


class Health:
    def __init__(self, open_tiers: set[str]) -> None:
        self.open_tiers = open_tiers

    def is_open(self, tier: str) -> bool:
        return tier in self.open_tiers


async def test_router_diverts_an_open_silver_tier_to_bronze_with_fallback_headers() -> None:
    produced: list[tuple[str, bytes, bytes, list | None]] = []
    decisions: list[bytes] = []

    async def produce(topic: str, key: bytes, value: bytes, headers: list | None) -> None:
        produced.append((topic, key, value, headers))

    async def record(topic: str, key: bytes, value: bytes) -> None:
        decisions.append(value)

    health = Health({"silver"})
    router = Router(POLICY, produce, record, breakers=RouterFallback(health, POLICY))
    raw = encode({**VALID_REQUEST, "sla": "interactive", "max_tokens": 32, "created_at_ms": now_ms()})
    await router.route(raw, Source("intake", 0, 1))
    topic, _, value, headers = produced[-1]
    assert topic == "npc.requests.bronze" and value == raw
    assert FallbackContext.read(headers).chain[0] == attempt(Tier.SILVER, "skipped", "breaker open on silver")
    decision = RoutingDecision.from_bytes(decisions[-1])
    assert decision.tier is Tier.BRONZE and decision.fallback_from is Tier.SILVER
    assert "breaker open on silver" in decision.reason

    health.open_tiers = {"silver", "bronze"}  # nowhere better to go: route as the policy says
    await router.route(raw, Source("intake", 0, 2))
    assert produced[-1][0] == "npc.requests.silver"


def test_resilience_settings_from_the_environment() -> None:
    env = {
        "NPCFLOW_BREAKER_FAILURES": "3",
        "NPCFLOW_BREAKER_COOLDOWN_S": "2.5",
        "NPCFLOW_TENANT_WEIGHTS": "gs-a=2, gs-b=0.5",
        "NPCFLOW_SHEDDING": "0",
    }
    r = Settings.from_env(env, stack_file=False).resilience
    assert (r.breaker_failures, r.breaker_cooldown_s, r.shedding, r.fallback) == (3, 2.5, False, True)
    assert r.tenant_weights == {"gs-a": 2.0, "gs-b": 0.5}
    with pytest.raises(ConfigError, match="tenant=weight"):
        Settings.from_env({"NPCFLOW_TENANT_WEIGHTS": "gs-a=0"}, stack_file=False)


async def test_scripted_outage_refuses_then_hangs_then_recovers() -> None:
    start = time.time() * 1000
    profile = ScriptedProfile(outage_at_ms=start, refuse_ms=60, hang_ms=60)
    assert profile.phase(start + 10) == "refusing" and profile.phase(start + 90) == "hanging"
    assert profile.phase(start + 130) == "ok" and profile.phase(start - 1) == "ok"
    engine = ScriptedEngine(profile)
    with pytest.raises(EngineUnavailable):
        await engine.generate(request(), now_ms() + 100)
    parsed = ScriptedProfile.parse(f"outage_at_ms={start:.0f},refuse_ms=60,hang_ms=60")
    assert parsed.refuse_ms == 60


async def test_a_deadline_cut_after_queueing_is_not_held_against_the_engine() -> None:
    settings = ResilienceSettings(breaker_failures=1, breaker_cache_s=0)
    board = BreakerBoard(MemoryStore(), settings)
    slow = CutAtDeadline(ScriptedEngine(ScriptedProfile(latency_ms=200)))
    guard = BreakerGuard(slow, [board.tier("silver")], tier="silver", stall_evidence_ms=100)
    with pytest.raises(DeadlineReached):
        await guard.generate(request(), now_ms() + 20)  # 20 ms left after queueing: no evidence
    assert board.tier("silver").snapshot.state is State.CLOSED
    with pytest.raises(DeadlineReached):
        await guard.generate(request(), now_ms() + 120)  # a real stall
    assert board.tier("silver").snapshot.state is State.OPEN
