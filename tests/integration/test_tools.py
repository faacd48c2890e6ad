"""Silver's tools against a real game-state MCP server process, on both transports.

The MCP server (``npcflow run mcp``) follows ``game.state`` on the stack's broker and searches the
stack's OpenSearch API server; the Silver worker runs in process with a scripted engine that echoes
the prompt it got, so the reply shows the context the tools gave it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from pipeline.config import Settings, ToolSettings
from tests.integration.test_worker import make_request, producer, running_worker, serve_one
from topics.catalogue import GAME_STATE, Tier
from topics.fields import ReplyStatus, Sla
from topics.schemas import GameStateUpdate, Reply, Request
from workers.engines.scripted import ScriptedEngine, ScriptedProfile

__all__ = ["producer"]  # the fixture, shared with test_worker


@contextlib.contextmanager
def mcp_server(stack: StackEndpoints, prefix: str, work_dir: Path, name: str) -> Iterator[tuple[str, int]]:
    """``npcflow run mcp`` over streamable HTTP on a free port: yields (its URL, its pid)."""
    env = {**stack.as_env(), "NPCFLOW_TOPIC_PREFIX": prefix}
    procs = PipelineProcesses(env, work_dir / name, routers=0, workers={})
    argv = [sys.executable, "-m", "pipeline.cli", "run", "mcp", "--transport", "http", "--port", "0"]
    procs.spawn(name, argv)
    try:
        procs.wait_ready()
        detail = json.loads((work_dir / name / "ready" / f"{name}.json").read_text())["detail"]
        yield detail.removeprefix("mcp "), procs.procs[0][0].pid
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def mcp_url(stack: StackEndpoints, prefix: str, work_dir: Path) -> Iterator[str]:
    with mcp_server(stack, prefix, work_dir, "mcp-http") as (url, _):
        yield url


async def publish_state(
    producer: AIOKafkaProducer, prefix: str, npc_id: str, version: int, **state: object
) -> None:
    update = GameStateUpdate(
        entity_id=npc_id,
        world_id="w1",
        kind="npc",
        state=state,
        version=version,
        updated_at_ms=int(time.time() * 1000),
    )
    await producer.send_and_wait(GAME_STATE.name(prefix), update.to_bytes(), key=npc_id.encode())


@contextlib.asynccontextmanager
async def silver(settings: Settings, prefix: str, tools: ToolSettings) -> AsyncIterator[ScriptedEngine]:
    engine = ScriptedEngine(ScriptedProfile(echo=1))
    worker_settings = settings.with_(tools=tools, redis_url=None)  # no result cache here: tools only
    async with running_worker(worker_settings, prefix, Tier.SILVER, engine):
        yield engine


async def ask(
    kafka: str, prefix: str, producer: AIOKafkaProducer, i: int, npc_id: str, budget_ms: int
) -> Reply:
    request = make_request(
        i, npc_id=npc_id, sla=Sla.INTERACTIVE, prompt="What do you think of me?", tools=["game_state_query"]
    )
    return await serve_one(kafka, prefix, producer, Tier.SILVER, request, budget_ms)


def tool_outcomes(reply: Reply) -> dict[str, str]:
    return {call.call: call.outcome for call in reply.tools or []}


async def test_silver_gets_the_mcp_servers_state_as_context_and_sees_the_next_update_http(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer, mcp_url: str
) -> None:
    await publish_state(producer, prefix, "npc-smith", 1, mood="calm", hp=10)
    tools = ToolSettings(mcp_url=mcp_url, timeout_ms=500)
    async with silver(settings, prefix, tools) as engine:
        first = await ask(kafka, prefix, producer, 1, "npc-smith", 2000)
        assert first.status is ReplyStatus.OK and engine.calls == 1, first
        assert '"mood":"calm"' in first.text and "[game context]" in first.text, first.text
        assert tool_outcomes(first) == {"query_npc_state": "ok", "get_world_snapshot": "ok"}, first.tools
        await publish_state(producer, prefix, "npc-smith", 2, mood="furious", hp=3)
        second = await ask(kafka, prefix, producer, 2, "npc-smith", 2000)
        assert '"mood":"furious"' in second.text and '"hp":3' in second.text, second.text


async def test_silver_over_stdio_starts_its_own_mcp_server_child(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer, stack: StackEndpoints
) -> None:
    await publish_state(producer, prefix, "npc-guard", 4, post="north gate")
    env = " ".join(f"{k}={v}" for k, v in {**stack.as_env(), "NPCFLOW_TOPIC_PREFIX": prefix}.items())
    command = f"env {env} {sys.executable} -m pipeline.cli run mcp --transport stdio"
    async with silver(settings, prefix, ToolSettings(mcp_command=command, timeout_ms=500)):
        reply = await ask(kafka, prefix, producer, 3, "npc-guard", 2000)
    assert '"post":"north gate"' in reply.text, reply.text
    assert tool_outcomes(reply)["query_npc_state"] == "ok"


async def test_a_dead_mcp_server_degrades_to_no_context_within_the_deadline(
    settings: Settings,
    kafka: str,
    prefix: str,
    producer: AIOKafkaProducer,
    stack: StackEndpoints,
    work_dir: Path,
) -> None:
    await publish_state(producer, prefix, "npc-bard", 1, song="ballad")
    with mcp_server(stack, prefix, work_dir, "mcp-doomed") as (url, pid):
        async with silver(settings, prefix, ToolSettings(mcp_url=url, timeout_ms=500)):
            alive = await ask(kafka, prefix, producer, 4, "npc-bard", 2000)
            assert '"song":"ballad"' in alive.text
            os.kill(pid, signal.SIGKILL)
            began = time.monotonic()
            dead = await ask(kafka, prefix, producer, 5, "npc-bard", 1000)
    assert dead.status is ReplyStatus.OK and not dead.late, dead
    assert "[game context]" not in dead.text
    assert set(tool_outcomes(dead).values()) <= {"unavailable", "error", "timeout"}, dead.tools
    assert all(call.ms <= 0.3 * 1000 for call in dead.tools or []), dead.tools
    assert time.monotonic() - began < 5


async def test_rag_search_finds_lore_in_opensearch_and_a_missing_index_is_no_hits(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer, mcp_url: str
) -> None:
    from opensearchpy import OpenSearch

    def lore_request(i: int) -> Request:
        prompt = "Who sealed the ember gate?"
        return make_request(i, npc_id="npc-sage", sla=Sla.INTERACTIVE, prompt=prompt, tools=["rag_search"])

    async with silver(settings, prefix, ToolSettings(mcp_url=mcp_url, timeout_ms=500)):
        before = await serve_one(kafka, prefix, producer, Tier.SILVER, lore_request(6), 2000)
        assert tool_outcomes(before) == {"rag_search": "ok"} and '"hits":[]' in before.text, before.text
        client = OpenSearch(settings.opensearch_url)
        lore = "The ember gate was sealed by the dragon queen Ysra."
        client.index(index=f"{prefix}npcflow-lore", id="ember", body={"title": "Ember Gate", "text": lore})
        client.close()
        after = await serve_one(kafka, prefix, producer, Tier.SILVER, lore_request(7), 2000)
    assert "dragon queen Ysra" in after.text, after.text
