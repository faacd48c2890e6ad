"""``npcflow demo``: the whole pipeline on the embedded stack, driven by a simulated game server.

It starts (or reuses, when configured) the stack, creates the topics, runs the router, the
three tier workers and the sinks as separate processes, and drives the simulated game server
(:mod:`devstack.game_server`) at a rate the embedded engine can serve on a laptop, beside a buggy
one whose malformed events must end on the dead-letter topic. Like a game, it keeps a handful of
NPCs *active* (``IntentCache.watch``): the Gold worker re-thinks their intents at 1-2 Hz, Gold
requests go to them, and the live table (:mod:`devstack.demo_view`) shows each one's current
intent, its age and whether the model produced it. It ends with a summary, counted here;
``--json`` prints one summary line instead.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.demo_view import show_frame, show_starting, show_summary
from devstack.game_server import DEFAULT_ACTIVE, GameServer
from devstack.processes import PipelineProcesses, background_yields, yield_cpu
from devstack.stack import EmbeddedStack
from pipeline import kafka
from pipeline.client import NPCClient
from pipeline.config import TIERS, ConfigError, Settings
from pipeline.intents import IntentCache
from pipeline.observability.metrics import percentiles
from pipeline.observability.validate import group_lag
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import DLQ, OUTPUTS, REQUESTS, Tier
from workers.sinks import SINKS
from workers.sinks import counts as sink_counts

log = logging.getLogger("npcflow.demo")

#: Requests per second the embedded engines keep up with at this mix on 2 cores: three one-thread
#: SmolLM2 workers measured ≈ 1.4 req/s (`npcflow demo` prints the figure it sees), so 1.0 leaves headroom.
DEFAULT_EMBEDDED_RATE = 1.0
DEFAULT_SCRIPTED_RATE = 50.0
#: One malformed event every this many seconds, to show dead-lettering while traffic flows.
INVALID_EVERY_S = 10.0


async def send_invalid_events(settings: Settings, prefix: str, duration: float) -> int:
    """A game-server bug, simulated: malformed events that must land in the DLQ, not stop anything."""
    bad = [b"{not json", b'{"request_id": "x"}', b'{"max_tokens": -1}', b"\xff\xfe\xfd"]
    producer = kafka.producer(settings, "npcflow-demo-buggy-server")
    await producer.start()
    sent = 0
    try:
        start = time.monotonic()
        while time.monotonic() - start < duration:
            await producer.send_and_wait(REQUESTS.name(prefix), bad[sent % len(bad)], key=b"buggy-server")
            sent += 1
            await asyncio.sleep(INVALID_EVERY_S)
    finally:
        await producer.stop()
    return sent


async def count_dead_letters(settings: Settings, prefix: str, expected: int, timeout_s: float = 10.0) -> int:
    consumer = kafka.consumer(settings, "npcflow-demo-dlq", DLQ.name(prefix))
    await consumer.start()
    seen = 0
    try:
        deadline = time.monotonic() + timeout_s
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            seen += sum(len(v) for v in batches.values())
    finally:
        await consumer.stop()
    return seen


async def drive(
    settings: Settings,
    prefix: str,
    duration: float,
    rate: float,
    npcs: int,
    as_json: bool,
    engines: dict[Tier, str],
    active: int = DEFAULT_ACTIVE,
) -> dict[str, Any]:
    game = IntentCache(settings, prefix=prefix, client_id="npcflow-demo-game", tenant_id="demo-game-server")
    async with NPCClient(settings, tenant_id="demo-game-server", prefix=prefix) as client, game as intents:
        server = GameServer(client, rate, npcs, active)
        server.watch(intents)
        invalid_task = asyncio.create_task(send_invalid_events(settings, prefix, duration))
        run_task = asyncio.create_task(server.run(duration))
        start = time.perf_counter()
        while not run_task.done() or server.in_flight:
            await asyncio.sleep(1.0)
            if not as_json:
                show_frame(server, intents, time.perf_counter() - start, duration, engines)
            if run_task.done() and time.perf_counter() - start > duration + 200:
                break
        await run_task
        await server.drain()
        elapsed = time.perf_counter() - start
        intents.unwatch([npc for npc, _ in server.active])
        invalid_sent = await invalid_task
        dead = await count_dead_letters(settings, prefix, invalid_sent)
    gold = server.tally[Tier.GOLD].gold_summary()
    gold["active"] = {npc: round(server.refreshes[npc] / elapsed, 2) for npc, _ in server.active}
    return {
        "sent": {t.value: server.tally[t].sent for t in Tier},
        "replied": {t.value: server.tally[t].replied for t in Tier},
        "statuses": {t.value: dict(server.tally[t].statuses) for t in Tier},
        "dead_letters": dead,
        "invalid_sent": invalid_sent,
        "lost": server.lost,
        "stores_expected": dict(server.stored),
        "latency_ms": {t.value: percentiles(server.tally[t].latencies) for t in Tier},
        "engine": {t.value: engines[t] for t in Tier},
        "sustainable_rate": server.sustainable_rate(),
        "duplicates_dropped": client.stats.duplicates,
        # Requests the SDK sent again when no reply came by the deadline (NPCClient.request).
        "resent": client.stats.resent,
        "rate": rate,
        "duration_s": duration,
        "gold": gold,
        "bronze": {
            "requests": server.tally[Tier.BRONZE].sent,
            **{k: server.jobs[Tier.BRONZE][k] for k in ("submitted", "completed", "failed")},
            # Silver requests that fell back to Bronze and ran as jobs too.
            "fallback_jobs": dict(server.jobs[Tier.SILVER]),
        },
    }


async def settled_sink_counts(
    settings: Settings, expected: dict[str, int], timeout_s: float = 30.0
) -> dict[str, int]:
    """What the sinks wrote, once every sink's group has committed all of ``npc.outputs`` and
    every store holds what the game server's replies say it should (``expected``).

    A sink commits a batch only after writing it, so lag 0 means every output on the topic is in
    its store; but a reply reaches the game before its output (the output goes out on the batching
    producer), so lag 0 alone once counted a store short by the last batch. Past ``timeout_s`` the
    counts are what they are, and the summary shows the shortfall.
    """
    prefix = settings.topic_prefix
    outputs = OUTPUTS.name(prefix)
    deadline = time.monotonic() + timeout_s
    while True:
        lags = [await group_lag(settings, f"{prefix}npcflow-sink-{name}", outputs) for name in SINKS]
        if all(lag == 0 for lag in lags) or time.monotonic() > deadline:
            found = await sink_counts(settings)
            if all(found.get(k, 0) >= n for k, n in expected.items()) or time.monotonic() > deadline:
                return found
        await asyncio.sleep(0.5)


def with_engines(settings: Settings, spec: str | None) -> Settings:
    """``gold=embedded,silver=openai,bronze=sagemaker`` → settings with those engines per tier."""
    if not spec:
        return settings
    per_tier = dict(settings.engines.per_tier)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        tier, sep, engine = part.partition("=")
        if not sep or tier.strip() not in TIERS or not engine.strip():
            raise ConfigError(f"--engines: bad entry {part!r}; write tier=engine pairs, e.g. silver=openai")
        per_tier[tier.strip()] = engine.strip()
    return settings.with_(engines=settings.engines.with_(**per_tier))


def run_demo(
    settings: Settings,
    duration: float,
    rate: float | None,
    npcs: int,
    as_json: bool,
    active: int = DEFAULT_ACTIVE,
) -> dict[str, Any]:
    """Run the demo on a stack of its own (services given in the environment are reused)."""
    engines = {t: settings.engines.spec_for(t.value) for t in Tier}
    if rate is None:  # every engine here but the scripted one runs the CPU model
        scripted = all(e.startswith("scripted") for e in engines.values())
        rate = DEFAULT_SCRIPTED_RATE if scripted else DEFAULT_EMBEDDED_RATE
    with tempfile.TemporaryDirectory(prefix="npcflow-demo-") as tmp:
        return _run_demo(settings, Path(tmp), duration, rate, npcs, as_json, engines, active)


def _run_demo(
    settings: Settings,
    work: Path,
    duration: float,
    rate: float,
    npcs: int,
    as_json: bool,
    engines: dict[Tier, str],
    active: int,
) -> dict[str, Any]:
    prefix = settings.topic_prefix
    # The stack starts the engine servers the engines need (llama.cpp's, the local SageMaker endpoint).
    stack_settings = Settings.from_env(stack_file=False).with_(engines=settings.engines)
    with EmbeddedStack(work / "stack", settings=stack_settings) as stack:
        endpoints = stack.endpoints
        assert endpoints is not None
        settings = endpoints.apply_to(settings)
        asyncio.run(create_embedded_topics(settings, prefix))
        env = endpoints.as_env() | stack.engine_env | {"NPCFLOW_EMBEDDED_THREADS": "1"}
        for proc in stack.processes:  # CPU model servers yield to the router, like the embedded workers
            if proc.name in ("llama", "sagemaker"):
                yield_cpu(proc.pid)
        if not as_json:
            show_starting(engines)
        with PipelineProcesses(env, work, engines=engines, sinks=tuple(SINKS)) as procs:
            background_yields(procs, engines)
            summary = asyncio.run(drive(settings, prefix, duration, rate, npcs, as_json, engines, active))
            summary["sinks"] = asyncio.run(settled_sink_counts(settings, summary["stores_expected"]))
    if not as_json:
        show_summary(summary)
    return summary
