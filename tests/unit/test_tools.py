"""Silver's tool step and the result-cache step, without Kafka: the MCP server runs in process.

The real-process transports (stdio, streamable HTTP) are in tests/integration/test_tools.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer

from pipeline.config import ConfigError, Settings
from pipeline.config.tools import ToolSettings, parse_allowlist
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.policy import RoutingPolicy
from topics.schemas import Latency, Reply, Request, ToolCall
from workers.cache.result_step import ResultCacheStep
from workers.engines.base import CallContext
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.replies import build_reply
from workers.serving import Job
from workers.tools import wrap_answer_steps
from workers.tools.client import McpToolClient
from workers.tools.context import CONTEXT_HEADER, ToolContext, plan_calls


def request(
    tools: list[str], tenant: str = "gs-1", prompt: str = "Where is the smith?", **context: Any
) -> Request:
    return Request(
        request_id=f"r-{time.time_ns()}",
        npc_id="npc-1",
        tenant_id=tenant,
        prompt=prompt,
        max_tokens=16,
        tools=tools,
        context=context,
        created_at_ms=int(time.time() * 1000),
    )


def game_server(delay_s: float = 0.0) -> MCPServer:
    server = MCPServer("test-game-state")

    @server.tool()
    async def query_npc_state(npc_id: str) -> dict[str, Any]:
        await asyncio.sleep(delay_s)
        return {"entity_id": npc_id, "state": {"mood": "wary"}}

    @server.tool()
    def get_world_snapshot(world_id: str | None = None) -> dict[str, Any]:
        return {"world_id": world_id or "w1", "entities": {"npc": 1}}

    @server.tool()
    def get_player_state(player_id: str) -> dict[str, Any]:
        raise ValueError(f"no player {player_id}")

    @server.tool()
    def rag_search(query: str, k: int = 3) -> dict[str, Any]:
        return {"query": query, "hits": [{"text": "The smith fled north."}]}

    return server


def echo_engine() -> ScriptedEngine:
    return ScriptedEngine(ScriptedProfile(echo=1))


def test_allowlist_parsing_and_lookup() -> None:
    allow = parse_allowlist("gs-a=game_state_query|rag_search, *=rag_search, gs-b=")
    tools = ToolSettings(allowlist=allow)
    assert tools.allowed("gs-a", ["rag_search", "game_state_query"]) == ("rag_search", "game_state_query")
    assert tools.allowed("gs-x", ["rag_search", "game_state_query"]) == ("rag_search",)
    assert tools.allowed("gs-b", ["rag_search"]) == ()
    assert ToolSettings().allowed("anyone", ["rag_search"]) == ("rag_search",)
    with pytest.raises(ConfigError, match="NPCFLOW_TOOL_ALLOWLIST='gs-a=nope': unknown tool 'nope'"):
        Settings.from_env({"NPCFLOW_TOOL_ALLOWLIST": "gs-a=nope"}, stack_file=False)
    with pytest.raises(ConfigError, match="NPCFLOW_RESULT_CACHE"):
        Settings.from_env({"NPCFLOW_RESULT_CACHE": "platinum"}, stack_file=False)
    assert Settings.from_env({"NPCFLOW_RESULT_CACHE": "off"}, stack_file=False).result_cache.tiers == ()


def test_game_state_query_plans_npc_world_and_player_calls() -> None:
    both = ("game_state_query", "rag_search")
    calls = plan_calls(request(list(both), player_id="p-1", world_id="w9"), both)
    assert [(c.tool, c.call) for c in calls] == [
        ("game_state_query", "query_npc_state"),
        ("game_state_query", "get_world_snapshot"),
        ("game_state_query", "get_player_state"),
        ("rag_search", "rag_search"),
    ]
    assert calls[1].arguments == {"world_id": "w9"} and calls[3].arguments["query"] == "Where is the smith?"


async def test_tools_answer_in_parallel_and_their_results_reach_the_engine() -> None:
    step = ToolContext(echo_engine(), McpToolClient(game_server()), ToolSettings(timeout_ms=2000))
    async with step:
        result = await step.generate(request(["game_state_query", "rag_search"], player_id="p-1"), _in(2000))
    assert CONTEXT_HEADER in result.text
    assert 'query_npc_state: {"entity_id":"npc-1","state":{"mood":"wary"}}' in result.text
    assert "The smith fled north." in result.text
    outcomes = {c.call: c.outcome for c in result.tool_calls}
    assert outcomes == {
        "query_npc_state": "ok",
        "get_world_snapshot": "ok",
        "get_player_state": "error",  # the tool raised: no context from it, the request goes on
        "rag_search": "ok",
    }
    assert "get_player_state" in next(c.error for c in result.tool_calls if c.outcome == "error")


async def test_a_slow_tool_times_out_within_its_share_of_the_deadline() -> None:
    engine = echo_engine()
    step = ToolContext(engine, McpToolClient(game_server(delay_s=1.0)), ToolSettings(timeout_ms=1000))
    async with step:
        began = time.perf_counter()
        result = await step.generate(request(["game_state_query"]), _in(200))
        took_ms = (time.perf_counter() - began) * 1000
    slow = next(c for c in result.tool_calls if c.call == "query_npc_state")
    assert slow.outcome == "timeout" and slow.ms < 120, slow  # 0.3 x 200 ms, not the tool's 1 s
    assert took_ms < 200 and engine.calls == 1
    assert "get_world_snapshot" in result.text and "query_npc_state" not in result.text


async def test_refused_and_unreachable_tools_degrade_to_no_context() -> None:
    settings = ToolSettings(allowlist=parse_allowlist("*=rag_search"), timeout_ms=500)
    client = McpToolClient("http://127.0.0.1:9/mcp", connect_wait_s=0.2)  # nobody listens there
    step = ToolContext(echo_engine(), client, settings)
    async with step:
        result = await step.generate(request(["game_state_query", "rag_search"]), _in(1000))
    assert CONTEXT_HEADER not in result.text
    by_tool = {c.tool: c for c in result.tool_calls}
    assert by_tool["game_state_query"].outcome == "refused"
    assert by_tool["rag_search"].outcome == "unavailable" and by_tool["rag_search"].ms < 5


async def test_a_request_without_tools_calls_nothing() -> None:
    client = McpToolClient("http://127.0.0.1:9/mcp", connect_wait_s=0.0)
    step = ToolContext(echo_engine(), client, ToolSettings())
    async with step:
        result = await step.generate(request([]), _in(1000))
    assert result.tool_calls == () and CONTEXT_HEADER not in result.text


class _Cache:
    """What the step reads of ResultCache (the real one, on Redis, is in the integration tests)."""

    def __init__(self, reply: Reply | None) -> None:
        self.reply = reply
        self.asked: list[tuple[str | None, str]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def get_by_prompt(self, tier: str | None, prompt: str) -> Reply | None:
        self.asked.append((tier, prompt))
        return self.reply


LIVE_CALL = ToolCall(tool="game_state_query", call="query_npc_state", outcome="ok")


def cached_reply(tenant: str = "gs-1", tools: list[ToolCall] | None = None) -> Reply:
    return Reply(
        request_id="earlier",
        npc_id="npc-1",
        tenant_id=tenant,
        tier=Tier.BRONZE,
        served_by=ServedBy.ENGINE,
        engine="embedded",
        status=ReplyStatus.OK,
        text="Once, the smith forged a crown.",
        latency=Latency(engine_ms=900.0),
        served_tier=Tier.BRONZE,
        replied_at_ms=1,
        tools=tools,
    )


async def test_result_cache_hit_answers_without_the_engine_and_the_reply_says_so() -> None:
    engine = echo_engine()
    step = ResultCacheStep(engine, _Cache(cached_reply()), "silver")  # type: ignore[arg-type]
    req = request([])
    result = await step.generate(req, _in(250))
    assert engine.calls == 0 and result.text == "Once, the smith forged a crown."
    assert result.cached is not None and result.cached.engine_ms == 900.0 and result.cached.tier == "bronze"
    job = Job(req, _in(250), "npc.replies")
    now = time.time() * 1000
    policy = RoutingPolicy.load()
    reply = build_reply(job, Tier.SILVER, ReplyStatus.OK, now, engine="x", policy=policy, result=result)
    assert reply.served_by is ServedBy.RESULT_CACHE and reply.engine == "" and reply.cost_usd == 0.0


@pytest.mark.parametrize(
    ("hit", "tools", "refresh"),
    [
        (cached_reply(tenant="gs-other"), [], False),  # another tenant's answer
        (cached_reply(tools=[LIVE_CALL]), [], False),  # made with live state
        (cached_reply(), ["game_state_query"], False),  # the request needs live state
        (cached_reply(), [], True),  # a Gold refresh wants a new intent
        (None, [], False),
    ],
)
async def test_result_cache_is_not_used_when_the_answer_may_not_be_reused(
    hit: Reply | None, tools: list[str], refresh: bool
) -> None:
    engine = echo_engine()
    step = ResultCacheStep(engine, _Cache(hit), "gold", any_tier=False)  # type: ignore[arg-type]
    result = await step.generate(request(tools), _in(250), CallContext(refresh=refresh))
    assert engine.calls == 1 and result.cached is None


def test_steps_are_composed_only_where_configured() -> None:
    policy = RoutingPolicy.load()
    bare = Settings()
    engine = echo_engine()
    assert wrap_answer_steps(engine, bare, Tier.SILVER, policy) is engine
    full = Settings(
        redis_url="redis://127.0.0.1:6379/0", tools=ToolSettings(mcp_url="http://127.0.0.1:1/mcp")
    )
    silver = wrap_answer_steps(engine, full, Tier.SILVER, policy)
    assert isinstance(silver, ResultCacheStep) and isinstance(silver.inner, ToolContext)
    assert silver.lookup_tier is None
    gold = wrap_answer_steps(engine, full, Tier.GOLD, policy)  # Gold offers no tools
    assert isinstance(gold, ResultCacheStep) and gold.inner is engine and gold.lookup_tier == "gold"
    assert wrap_answer_steps(engine, full, Tier.BRONZE, policy).inner is engine  # type: ignore[attr-defined]


def _in(ms: int) -> int:
    return int(time.time() * 1000) + ms
