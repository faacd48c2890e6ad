"""Gold's path end to end: the real router and Gold worker as processes, per-frame reads, a two-hop floor.

Two modes; one JSON line on stdout, progress on stderr.

``--mode game`` (default; :mod:`gold_game`): 1,000 NPCs, 200 of them active (watched through
``IntentCache.watch``, 10 % replaced every 10 s), frame reads at 60 Hz per active NPC from the
SDK's near cache, Gold requests at 200 req/s over the active NPCs, a scripted 5 ms engine. After a
5 s warm-up it reports what a game loop sees, then a capacity segment (a 50 ms engine with 4
slots for 400 asked refreshes a second):

{"mode":"game","model_intent_share","freshness_ms":{p50,p95},"refresh_hz":{asked,achieved,per_npc},
 "reply_ms":{p50,p95,p99},"within_budget","lost","read_us":{p50,p99},"floor_2hop_ms":{p50,p95,p99},
 "floor_within_budget",
 "capacity":{asked_per_s,capacity_per_s,achieved_per_s,per_npc_hz:{min,median,max},age_bound_ms,
 age_ms:{p50,p95,p99,max}}, "targets_met":{…}, …}

``--mode requests`` (the earlier benchmark): requests for all 1,000 NPCs at 200 req/s, a reader of
every NPC at 60 Hz; no NPC is watched, so only requests make NPCs active.

reply_ms is judged where the game server sees it: from the request's ``created_at_ms`` to the
reply's arrival here. The floor is a bare aiokafka produce → relay → consume over two hops on the
same broker in the same run (before and after the load; with ``--concurrent-floor`` also beside
it, from this process, so both share the machine's load and this process's frame reads).
Targets (game mode): model_intent_share ≥ 0.95, freshness p95 ≤ 1,000 ms, reply p95 ≤ 16 ms,
within_budget ≥ 0.99, lost 0, read p99 ≤ 50 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import cpu_seconds, create_fresh_topics, load_clients, pace
from gold_common import (
    FrameReader,
    GoldReplies,
    ReplyMatcher,
    archetype,
    floor_relay,
    floor_run,
    floor_segment,
    gold_processes,
    gold_request,
    log,
    scrape_procs,
    share_within,
)
from gold_game import game_segment, run_capacity

from devstack.kafka_dist import broker_identity
from devstack.stack import EmbeddedStack
from pipeline import eventloop
from pipeline.config import Settings
from pipeline.intents import IntentCache
from pipeline.observability.metrics import percentiles
from topics.catalogue import REPLIES, REQUESTS
from topics.schemas import Intent, Reply

TARGETS = {
    "model_intent_share": 0.95,
    "freshness_p95_ms": 1000.0,
    "reply_p95_ms": 16.0,
    "within_budget": 0.99,
    "read_p99_us": 50.0,
}


@dataclass
class Load(GoldReplies):
    """What the requests mode measured."""

    freshness_ms: list[float] = field(default_factory=list)
    #: An NPC's first measured request → its first model intent after it.
    first_intent_ms: list[float] = field(default_factory=list)
    first_asked: dict[str, float] = field(default_factory=dict)
    #: created → the router answered (intake hop + router), from the reply's own latency.
    router_ms: list[float] = field(default_factory=list)
    late_flagged: int = 0


async def gold_load(
    settings: Settings, prefix: str, args: argparse.Namespace, cache: IntentCache, load: Load
) -> None:
    """``--mode requests``: Gold requests for every NPC in turn (the only thing that makes NPCs active)."""
    intake, replies = REQUESTS.name(prefix), REPLIES.name(prefix)
    producer, consumer = await load_clients(settings, "bench-gold", replies)
    measuring = {"on": False}

    def on_reply(reply: Reply, created: float, arrived_ms: float) -> None:
        if not load.count(reply, created, arrived_ms):
            return  # warm-up
        load.router_ms.append(reply.latency.total_ms)
        load.late_flagged += reply.late
        if reply.intent_age_ms is not None:
            load.freshness_ms.append(reply.intent_age_ms)

    matcher = ReplyMatcher(on_reply)

    def refreshed(intent: Intent) -> None:
        asked = load.first_asked.pop(intent.npc_id, None)
        if asked is not None:
            load.first_intent_ms.append(time.time() * 1000 - asked)

    cache.add_listener(refreshed)

    async def send(n: int) -> None:
        npc = n * 7919 % args.npcs  # every NPC, spread over the run
        request = gold_request(n, f"npc-{npc:04d}", archetype(npc), args.budget_ms)
        matcher.sent[request.request_id.encode()] = request.created_at_ms
        if measuring["on"]:
            load.measured(request)
            if cache.get_intent(request.npc_id).is_default:
                load.first_asked.setdefault(request.npc_id, request.created_at_ms)
        await producer.send(intake, request.to_bytes(), key=request.npc_id.encode())

    last = {"s": -1}

    def progress(elapsed: float) -> None:
        second = int(elapsed)
        if second != last["s"]:
            last["s"] = second
            p = percentiles(load.reply_ms[-2000:])
            log(
                f"  gold {second:3d}/{args.duration:.0f} s  sent {load.sent}  replied {load.replied}  "
                f"recent p50/p95 {p['p50']}/{p['p95']} ms  served_by {dict(load.served_by)}  "
                f"intents {len(cache)}"
            )

    matcher.start(consumer)
    log(f"warm-up {args.warmup:.0f} s at {args.rate:g} req/s")
    await pace(args.rate, args.warmup, send)
    measuring["on"] = True
    await pace(args.rate, args.duration, send, progress)
    await matcher.finish(producer)
    load.duplicates = matcher.duplicates
    await asyncio.sleep(0.5)  # refreshes of the last requests
    await consumer.stop()
    await producer.stop()


async def requests_segment(settings: Settings, pipe: str, args: argparse.Namespace) -> dict[str, object]:
    load = Load()
    npcs = [(f"npc-{i:04d}", archetype(i)) for i in range(args.npcs)]
    async with IntentCache(settings, prefix=pipe, client_id="bench-game-server") as cache:
        reader = FrameReader(cache, lambda: npcs, args.frame_hz)
        reader.measuring.set()
        reader.start()
        try:
            await gold_load(settings, pipe, args, cache, load)
        finally:
            reader.stop_event.set()
            reader.join()
    reads = reader.reads.summary()
    return {
        "sent": load.sent,
        "replied": load.replied,
        "lost": load.sent - load.replied,
        "duplicates": load.duplicates,
        "reply_ms": percentiles(load.reply_ms),
        "within_budget": share_within(load.reply_ms, args.budget_ms, load.sent),
        "served_by": dict(load.served_by),
        # Ages of the intents the replies carried; the frame reads' are in ``reads``.
        "freshness_ms": percentiles(load.freshness_ms, (50, 95)),
        "to_router_ms": percentiles(load.router_ms, (50, 95)),
        "first_intent_ms": percentiles(load.first_intent_ms, (50, 95)),
        "read_us": reads["read_us"],
        "reads": reads,
        "model_intent_share": reads["model_intent_share"],
    }


def run(settings: Settings, args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="npcflow-gold-bench-"))
    load_before = os.getloadavg()
    given_broker = bool(settings.kafka_bootstrap)
    result: dict[str, object] = {"mode": args.mode}
    with ExitStack() as stack:
        if not (settings.kafka_bootstrap and settings.redis_url):
            log("starting the embedded stack …")
            embedded = EmbeddedStack(work / "stack", settings=settings)
            settings = embedded.start().apply_to(settings)
            stack.callback(embedded.stop)
        tag = uuid.uuid4().hex[:6]
        pipe, floor, capacity = f"bench.gold.{tag}.", f"bench.floor2.{tag}.", f"bench.cap.{tag}."
        log("starting the Gold worker and the router …")
        procs = gold_processes(
            settings,
            pipe,
            work / "pipeline",
            engine=f"scripted:latency_ms={args.engine_ms:g}",
            extra_env={"NPCFLOW_GOLD_FAST_PATH": "0" if args.no_fast_path else "1"},
        )
        stack.callback(procs.stop)
        create_fresh_topics(settings, floor)
        floor_ms = floor_run(settings, floor, work, args.rate, args.floor_duration, "before")
        pids = {p.name: p.pid for p, _ in procs.procs} | {"bench": os.getpid()}
        cpu_before, wall_before = {n: cpu_seconds(pid) for n, pid in pids.items()}, time.monotonic()
        segment = game_segment if args.mode == "game" else requests_segment
        if args.concurrent_floor:
            # The floor at the same time as the pipeline, from this process: both then share the
            # machine's load and this process's GIL (the frame reads), which the floor before and
            # after does not. It adds its own load, so it is a separate run, never the default.
            beside = f"bench.floorc.{tag}."
            create_fresh_topics(settings, beside)
            with floor_relay(settings, beside, work, "beside"):
                measured, during = asyncio.run(
                    beside_floor(segment(settings, pipe, args), settings, beside, args)
                )
            log(f"floor (2 hops) beside the pipeline: {percentiles(during)}")
            result |= measured
            result["floor_concurrent_2hop_ms"] = percentiles(during, (50, 95, 99))
            result["floor_concurrent_within_budget"] = share_within(during, args.budget_ms)
        else:
            result |= asyncio.run(segment(settings, pipe, args))
        wall = time.monotonic() - wall_before
        result["cpu_cores"] = {
            n: round((cpu_seconds(pid) - cpu_before[n]) / wall, 2) for n, pid in pids.items()
        }
        metrics = scrape_procs(procs)
        result["active_marks"] = metrics.values("npcflow_gold_active_marks_total", "decision")
        result["worker_refresh_hz"] = metrics.values("npcflow_gold_refresh_hz", "kind")
        procs.stop()
        floor_ms += floor_run(settings, floor, work, args.rate, args.floor_duration, "after")
        if args.mode == "game" and args.capacity_duration > 0:
            result["capacity"] = run_capacity(settings, capacity, work, args)
    result["floor_2hop_ms"] = percentiles(floor_ms, (50, 95, 99))
    result["floor_samples"] = len(floor_ms)
    # The same budget on the bare two hops: what this machine allows any Gold path at all.
    result["floor_within_budget"] = share_within(floor_ms, args.budget_ms)
    result["fast_path"] = not args.no_fast_path
    result["broker"] = broker_identity(started=not given_broker)["broker"]
    result["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["targets_met"] = targets_met(result)
    return result


async def beside_floor(
    measured: Coroutine[Any, Any, dict[str, object]],
    settings: Settings,
    prefix: str,
    args: argparse.Namespace,
) -> tuple[dict[str, object], list[float]]:
    """``measured`` with the two-hop floor sending at the same rate beside it, for as long."""
    floor = asyncio.create_task(floor_segment(settings, prefix, args.rate, args.warmup + args.duration))
    result = await measured
    return result, await floor


def targets_met(r: dict[str, object]) -> dict[str, bool]:
    reply, fresh, read = r["reply_ms"], r["freshness_ms"], r["read_us"]
    assert isinstance(reply, dict) and isinstance(fresh, dict) and isinstance(read, dict)
    share = r.get("model_intent_share")
    return {
        "model_intent_share_ge_0.95": isinstance(share, float) and share >= TARGETS["model_intent_share"],
        # No model intent read means freshness was not measured: not a met target.
        "freshness_p95_le_1000ms": fresh["p95"] is not None and fresh["p95"] <= TARGETS["freshness_p95_ms"],
        "reply_p95_le_16ms": reply["p95"] is not None and reply["p95"] <= TARGETS["reply_p95_ms"],
        "within_budget_ge_0.99": (r["within_budget"] or 0) >= TARGETS["within_budget"],  # type: ignore[operator]
        "lost_0": r["lost"] == 0,
        "read_p99_le_50us": read["p99"] is not None and read["p99"] <= TARGETS["read_p99_us"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    add = parser.add_argument
    add("--mode", choices=("game", "requests"), default="game", help="workload (default game)")
    add("--rate", type=float, default=200.0, help="Gold requests per second (default 200)")
    add("--duration", type=float, default=30.0, help="seconds measured after the warm-up (default 30)")
    add("--warmup", type=float, default=5.0, help="unmeasured seconds first (default 5)")
    add("--npcs", type=int, default=1000, help="NPCs in the game (default 1000)")
    add("--active", type=int, default=200, help="game mode: NPCs watched at once (default 200)")
    add("--budget-ms", type=int, default=16, help="each request's latency budget (default 16)")
    add("--engine-ms", type=float, default=5.0, help="the scripted engine's latency (default 5)")
    add("--frame-hz", type=float, default=60.0, help="reads per second per NPC read (default 60)")
    add("--floor-duration", type=float, default=5.0, help="floor seconds before and after (5)")
    add(
        "--concurrent-floor",
        action="store_true",
        help="also run the floor beside the pipeline, from this process (floor_concurrent_2hop_ms)",
    )
    add("--seed", type=int, default=7, help="game mode: which NPCs are active and churn (default 7)")
    add("--capacity-duration", type=float, default=10.0, help="capacity segment seconds; 0: skip (10)")
    add("--capacity-engine-ms", type=float, default=50.0, help="capacity segment engine latency (50)")
    add("--capacity-slots", type=int, default=4, help="capacity segment engine slots (4)")
    add("--capacity-read-hz", type=float, default=10.0, help="capacity segment reads per NPC (10)")
    add(
        "--no-fast-path",
        action="store_true",
        help="router forwards Gold to the worker (4 hops, the engine answers): the comparison",
    )
    add("--json", action="store_true", help="print only the JSON line on stdout")
    args = parser.parse_args()
    # The environment only: a stack.env left in .npcflow must not pick the broker by accident.
    settings = Settings.from_env(stack_file=False)
    eventloop.install(settings.process.event_loop)
    sys.setswitchinterval(settings.process.gil_switch_s)  # the reader thread and the Kafka loop share the GIL
    result = run(settings, args)
    if not args.json:
        log(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
