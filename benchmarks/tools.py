"""Silver with MCP tools through the real pipeline, against the same requests without tools.

Each segment starts fresh topics (benchkit) and its own processes: a router, one Silver worker
(scripted engine, ``--engine-ms``) and the game-state MCP server over streamable HTTP; the Redis
sink runs in this process so repeated story prompts reach the result cache. Game state for 50
NPCs is published to ``game.state`` before the load. The two sides take turns:

- **tools**: 4 of 5 requests are dialogue listing ``game_state_query`` (three MCP calls: the NPC,
  the world; no player), 1 of 5 a story prompt (one of four) listing ``rag_search``;
- **baseline**: the same requests without tools.

A reply is *within budget* when it arrived (client clock) within the request's 250 ms budget with
status ``ok``; requests of the first second of each segment are not judged (connections warming).
Prints one JSON line with --json:
{"requests","tool_calls","tool_ms":{"p50","p95"},"within_budget","baseline_within_budget",
 "degraded","cache_hits", …}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import ConsumerRecord
from benchkit import (
    PendingReplies,
    bench_settings,
    fresh_topics,
    load_clients,
    pace,
    start_broker,
)

from devstack.processes import PipelineProcesses
from pipeline import kafka
from pipeline.config import Settings
from pipeline.observability.metrics import percentiles
from topics.catalogue import GAME_STATE, REPLIES, REQUESTS, Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.schemas import GameStateUpdate, Reply, Request
from workers.sinks.redis import RedisSink
from workers.sinks.runner import SinkRunner

BUDGET_MS = 250
WARMUP_S = 1.0
NPCS = 50
STORIES = (
    "Tell me the story of the ember gate.",
    "How did the river towns fall?",
    "Sing the ballad of the lost smith.",
    "Why do the crows follow the queen?",
)


@dataclass
class Side:
    name: str
    with_tools: bool
    sent: int = 0
    judged: int = 0
    within: int = 0
    received: int = 0
    tool_calls: int = 0
    tool_ms: list[float] = field(default_factory=list)
    degraded: int = 0
    cache_hits: int = 0
    e2e_ms: list[float] = field(default_factory=list)


def build_request(n: int, side: Side) -> Request:
    story = n % 5 == 4
    tools = (["rag_search"] if story else ["game_state_query"]) if side.with_tools else []
    return Request(
        request_id=f"t{n:07d}-{uuid.uuid4().hex[:8]}",
        npc_id=f"npc-{n % NPCS}",
        tenant_id="bench",
        prompt=STORIES[(n // 5) % len(STORIES)] if story else f"What do you think of me? ({n})",
        max_tokens=32,
        sla=Sla.INTERACTIVE,
        latency_budget_ms=BUDGET_MS,
        tools=tools,
        created_at_ms=int(time.time() * 1000),
    )


async def seed_state(settings: Settings, prefix: str) -> None:
    """Every NPC's state and its region's weather, as the game server publishes them."""
    producer = kafka.producer(settings, "bench-state", linger_ms=5)
    await producer.start()
    now = int(time.time() * 1000)

    async def publish(entity_id: str, kind: str, state: dict[str, object]) -> None:
        update = GameStateUpdate(
            entity_id=entity_id, world_id="w1", kind=kind, version=1, updated_at_ms=now, state=state
        )
        await producer.send(GAME_STATE.name(prefix), update.to_bytes(), key=entity_id.encode())

    try:
        for i in range(NPCS):
            await publish(
                f"npc-{i}",
                "npc",
                {"mood": ["calm", "wary", "angry"][i % 3], "hp": 10 + i, "zone": f"z{i % 5}"},
            )
        for r in range(5):
            await publish(f"z{r}", "region", {"weather": "rain" if r % 2 else "clear"})
        await producer.flush()
    finally:
        await producer.stop()


def judge(side: Side, reply: Reply, latency_ms: float, judged: bool) -> None:
    side.received += 1
    calls = reply.tools or []
    side.tool_calls += len(calls)
    side.degraded += any(c.outcome != "ok" for c in calls)
    side.cache_hits += reply.served_by is ServedBy.RESULT_CACHE
    if judged:
        side.tool_ms.extend(c.ms for c in calls)
        side.e2e_ms.append(latency_ms)
        side.within += reply.status is ReplyStatus.OK and latency_ms <= BUDGET_MS


async def segment(settings: Settings, prefix: str, side: Side, rate: float, duration: float) -> None:
    await seed_state(settings, prefix)
    scoped = settings.with_(topic_prefix=prefix)
    sink = SinkRunner(RedisSink.from_settings(scoped), scoped)
    await sink.start()
    sink_task = asyncio.create_task(sink.run())
    producer, consumer = await load_clients(settings, "bench-tools", REPLIES.name(prefix))

    def on_reply(record: ConsumerRecord, noted: tuple[float, bool], now: float) -> None:
        sent_at, judged = noted
        judge(side, Reply.from_bytes(record.value), (now - sent_at) * 1000, judged)

    pending: PendingReplies[tuple[float, bool]] = PendingReplies(on_reply)
    first = side.sent  # request numbers go on across segments

    async def send(n: int) -> None:
        request = build_request(first + n, side)
        judged = time.perf_counter() - start >= WARMUP_S
        pending.sent[request.request_id.encode()] = (time.perf_counter(), judged)
        side.judged += judged
        await producer.send(REQUESTS.name(prefix), request.to_bytes(), key=request.npc_id.encode())

    start = time.perf_counter()
    pending.start(consumer)
    side.sent = first + await pace(rate, duration, send, tick=0.01)
    await pending.finish(producer)
    sink.request_stop()
    await sink_task
    await sink.stop()
    await consumer.stop()
    await producer.stop()


def start_processes(settings: Settings, prefix: str, work: Path, stack: ExitStack, engine_ms: float) -> None:
    env = {**{k: v for k, v in _endpoints(settings).items() if v}, "NPCFLOW_TOPIC_PREFIX": prefix}
    mcp = PipelineProcesses(env, work / "mcp", routers=0, workers={})
    stack.callback(mcp.stop)
    mcp.spawn("mcp", [sys.executable, "-m", "pipeline.cli", "run", "mcp", "--transport", "http", "--port=0"])
    mcp.wait_ready()
    url = json.loads((work / "mcp" / "ready" / "mcp.json").read_text())["detail"].removeprefix("mcp ")
    env |= {"NPCFLOW_MCP_URL": url, "NPCFLOW_ENGINE_SILVER": f"scripted:latency_ms={engine_ms:g}"}
    stack.enter_context(PipelineProcesses(env, work / "pipeline", workers={Tier.SILVER: 1}))


def _endpoints(settings: Settings) -> dict[str, str | None]:
    return {
        "NPCFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "NPCFLOW_REDIS_URL": settings.redis_url,
        "NPCFLOW_OPENSEARCH_URL": settings.opensearch_url,
        "NPCFLOW_DATABASE_URL": settings.database_url,
        "NPCFLOW_S3_ENDPOINT": settings.s3_endpoint,
    }


def run(
    settings: Settings, rate: float, duration: float, segments: int, engine_ms: float
) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="npcflow-bench-tools-"))
    tools, base = Side("tools", with_tools=True), Side("baseline", with_tools=False)
    with ExitStack() as stack:
        broker = start_broker(settings, work, stack)
        settings = broker.settings
        if not settings.redis_url:
            raise SystemExit("benchmarks/tools.py needs Redis: set NPCFLOW_REDIS_URL (or no endpoint at all)")
        for k in range(segments):
            for side in (base, tools):
                print(f"segment {k + 1}/{segments}: {side.name}", file=sys.stderr, flush=True)
                prefix = fresh_topics(settings, f"tools-{side.name}")
                with ExitStack() as processes:
                    start_processes(settings, prefix, work / f"{side.name}-{k}", processes, engine_ms)
                    asyncio.run(segment(settings, prefix, side, rate, duration / segments))
    tool_p = percentiles(tools.tool_ms, (50, 95))
    return {
        "requests": tools.sent,
        "tool_calls": tools.tool_calls,
        "tool_ms": tool_p,
        "within_budget": _share(tools.within, tools.judged),
        "baseline_within_budget": _share(base.within, base.judged),
        "degraded": tools.degraded,
        "cache_hits": tools.cache_hits,
        "baseline_cache_hits": base.cache_hits,
        "lost": tools.sent - tools.received,
        "baseline_lost": base.sent - base.received,
        "e2e_ms": percentiles(tools.e2e_ms, (50, 95)),
        "baseline_e2e_ms": percentiles(base.e2e_ms, (50, 95)),
        "rate": rate,
        "duration_s": duration,
        "segments": segments,
        "engine_ms": engine_ms,
        "budget_ms": BUDGET_MS,
        **broker.identity,
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="Silver requests per second (default 20).")
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds of load per side (default 20).")
    parser.add_argument("--segments", type=int, default=2, help="Alternating segments per side (default 2).")
    parser.add_argument("--engine-ms", type=float, default=20.0, help="Scripted engine latency (default 20).")
    parser.add_argument("--json", action="store_true", help="Print one JSON line.")
    args = parser.parse_args()
    result = run(bench_settings(), args.rate, args.duration, args.segments, args.engine_ms)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
