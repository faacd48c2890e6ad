"""The call context: serving's two steps say what a call is for, and every wrapper passes it on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.breakers.board import BreakerBoard
from pipeline.breakers.state import MemoryStore
from pipeline.config import ResilienceSettings
from pipeline.config.tools import ToolSettings
from tests.unit.test_serving import Record, request
from tests.unit.test_tools import _Cache, cached_reply, game_server
from topics.catalogue import Tier
from topics.headers import deadline_headers, now_ms
from topics.policy import RoutingPolicy
from topics.schemas import Reply, Request, TierAttempt
from workers.cache.result_step import ResultCacheStep
from workers.engines.base import PLAIN_CALL, CallContext, Engine, EngineError, EngineResult
from workers.engines.batching import MicroBatcher
from workers.intents.refresh_step import RefreshServing
from workers.intents.writer import IntentRefresh
from workers.resilience.admission import LoadShedder
from workers.resilience.breaker import BreakerGuard
from workers.resilience.fallback import CutAtDeadline, FallbackStep, Substitute, Timeout
from workers.serving import Job, Replied, Serving, ServingStats
from workers.tools.client import McpToolClient
from workers.tools.context import ToolContext

POLICY = RoutingPolicy.load()
SILVER_FAILED = (TierAttempt(tier=Tier.SILVER, outcome="failed", reason="stalled"),)
#: A prior chain set, so a wrapper that dropped the context (back to PLAIN_CALL) shows; a refresh
#: and an ordinary call, so the result cache's both ways are taken.
CALL = CallContext(refresh=True, prior_chain=SILVER_FAILED)
CALLS = {"refresh": CALL, "reply": CallContext(prior_chain=SILVER_FAILED)}


class Recorder:
    """A leaf engine that keeps the context of every call it gets."""

    name = "recorder"
    max_concurrency = None

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[CallContext] = []
        self.fail = fail

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        self.calls.append(call)
        if self.fail:
            raise EngineError("recorder: down")
        return EngineResult("patrol: walk the wall", 3, 4)


def _guard(inner: Engine) -> Engine:
    board = BreakerBoard(MemoryStore(), ResilienceSettings(breaker_cache_s=0))
    return BreakerGuard(inner, [board.tier("gold")], tier="gold")


def _results(inner: Engine, hit: Reply | None) -> Engine:
    """The cached reply is another tenant's (``gs-1``): looked up, never reused."""
    return ResultCacheStep(inner, _Cache(hit), "gold")  # type: ignore[arg-type]


WRAPPERS: dict[str, Callable[[Engine], Engine]] = {
    "timeout": lambda inner: Timeout(inner),
    "deadline cut": lambda inner: CutAtDeadline(inner),
    "breaker guard": _guard,
    "substitute": lambda inner: Substitute(inner, Recorder(), from_tier=Tier.GOLD, to_tier=Tier.SILVER),
    "micro-batcher": lambda inner: MicroBatcher(inner, window_ms=5),
    "result cache (a hit it may not use)": lambda inner: _results(inner, cached_reply()),
    "result cache (a miss)": lambda inner: _results(inner, None),
    "tool context": lambda inner: ToolContext(
        inner, McpToolClient(game_server()), ToolSettings(timeout_ms=2000)
    ),
}


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS.keys())
@pytest.mark.parametrize("tools", [[], ["game_state_query", "rag_search"]], ids=["no tools", "live tools"])
@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_every_wrapper_passes_the_call_context_on_unchanged(
    wrap: Callable[[Engine], Engine], tools: list[str], call: CallContext
) -> None:
    engine = Recorder()
    wrapped = wrap(engine)
    async with wrapped:  # type: ignore[attr-defined]
        await wrapped.generate(request(tools=tools), now_ms() + 2000, call)
    assert engine.calls == [call] and engine.calls[0] is call


async def test_a_substitute_engine_gets_the_call_context_too() -> None:
    other = Recorder()
    substitute = Substitute(Recorder(fail=True), other, from_tier=Tier.GOLD, to_tier=Tier.SILVER)
    result = await substitute.generate(request(), now_ms() + 2000, CALL)
    assert result.substituted is not None and other.calls == [CALL]


async def test_a_reply_call_carries_the_tiers_tried_before_and_is_no_refresh() -> None:
    silver = Serving(Tier.SILVER, Recorder(fail=True), POLICY, prefix="p.")  # type: ignore[arg-type]
    job = silver.accept(Record(request().to_bytes(), deadline_headers(now_ms() + 250, "silver")))
    assert isinstance(job, Job)
    forwarded = FallbackStep(Tier.SILVER, POLICY, "p.").forward(job, "stalled", "deadline")
    assert forwarded is not None
    engine = Recorder()
    bronze = Serving(Tier.BRONZE, engine, POLICY, prefix="p.")  # type: ignore[arg-type]
    outcome = await bronze.handle(Record(forwarded.value, forwarded.headers, topic=forwarded.topic))
    assert isinstance(outcome, Replied)
    [call] = engine.calls
    assert not call.refresh
    assert [(a.tier, a.outcome, a.reason) for a in call.prior_chain] == [(Tier.SILVER, "failed", "stalled")]


async def test_a_refresh_call_says_refresh_and_a_first_reply_call_says_nothing() -> None:
    engine = Recorder()
    req = request()
    refreshing = RefreshServing(
        Tier.GOLD, engine, IntentRefresh(None, prefix="p."), ServingStats(), LoadShedder()
    )
    await refreshing.serve(Job(req, now_ms() + 2000, "", refresh=True))
    gold = Serving(Tier.GOLD, engine, POLICY, prefix="p.")  # type: ignore[arg-type]
    await gold.handle(Record(req.to_bytes(), deadline_headers(now_ms() + 2000, "gold")))
    assert engine.calls == [CallContext(refresh=True), PLAIN_CALL]
