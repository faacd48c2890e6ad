"""Pipeline overhead: intake → router → gold worker (zero-latency engine) → reply, against a floor.

The floor is a bare aiokafka relay over the same three hops (intake → tier topic → reply
topic, two forwarding processes) on the same broker in the same run. The two take turns in short
alternating segments, so machine noise hits both alike, and every segment starts on fresh topics
(a new prefix, benchmark retention) with its own processes: both sides see the same broker state,
and no segment measures what earlier ones left in the broker. Prints one JSON line:
{"rate","sent","received","lost","pipeline_ms":{p50,p95,p99},"floor_ms":{…},"ratio_p50","ratio_p99",
 "broker","broker_version","records_per_partition":{"floor":[…],"pipeline":[…]},…}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import ConsumerRecord
from benchkit import (
    CpuMeter,
    PendingReplies,
    bench_settings,
    fresh_topics,
    load_clients,
    pace,
    realtime_request,
    records_per_partition,
    start_broker,
)

from devstack.processes import PipelineProcesses
from pipeline.config import Settings
from pipeline.observability.metrics import percentiles
from topics.catalogue import REPLIES, REQUESTS, REQUESTS_GOLD, Tier
from topics.schemas import Reply

#: Latencies from the first part of each segment are dropped (consumers' first fetches).
SEGMENT_WARMUP_S = 0.5
#: The topics a segment's load crosses, whose fill is reported at its end.
PATH_TOPICS = (REQUESTS, REQUESTS_GOLD, REPLIES)


@dataclass
class Side:
    """One contestant (floor or pipeline): its topics, its processes and what it measured."""

    name: str
    key_by_request: bool
    pids: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    #: Pipeline only: request created → picked up by the worker (the intake and router hops), from the reply.
    to_worker_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    #: Per segment: records held by the fullest partition of each path topic at its end.
    records: list[dict[str, int]] = field(default_factory=list)

    def cpu_cores(self) -> dict[str, float]:
        return {name: round(sec / self.wall_s, 2) for name, sec in self.cpu_s.items()} if self.wall_s else {}

    def cpu_ms_per_request(self) -> dict[str, float]:
        """CPU each process spent per answered request: what the worker's and router's code costs."""
        if not self.received:
            return {}
        return {name: round(1000 * sec / self.received, 3) for name, sec in self.cpu_s.items()}


async def segment(settings: Settings, side: Side, prefix: str, rate: float, duration: float) -> None:
    """Send ``rate`` req/s for ``duration`` s through one side and record its latencies."""
    intake = REQUESTS.name(prefix)
    producer, consumer = await load_clients(settings, "bench-load", REPLIES.name(prefix))
    cpu = CpuMeter(side.pids)
    received = 0

    def on_reply(record: ConsumerRecord, t0: float, now: float) -> None:
        nonlocal received
        received += 1
        if t0 - start >= SEGMENT_WARMUP_S:
            side.latencies.append((now - t0) * 1000)
            if not side.key_by_request:
                side.to_worker_ms.append(Reply.from_bytes(record.value).latency.queue_ms)

    pending: PendingReplies[float] = PendingReplies(on_reply)

    async def send(n: int) -> None:
        request = realtime_request(n, "bench", "b")
        rid = request.request_id.encode()
        key = rid if side.key_by_request else request.npc_id.encode()
        pending.sent[rid] = time.perf_counter()
        await producer.send(intake, request.to_bytes(), key=key)

    start = time.perf_counter()
    pending.start(consumer)
    sent = await pace(rate, duration, send)
    await pending.finish(producer)
    side.wall_s += time.perf_counter() - start
    for name, sec in cpu.spent().items():
        side.cpu_s[name] = side.cpu_s.get(name, 0.0) + sec
    side.sent += sent
    side.received += received
    await consumer.stop()
    await producer.stop()


def start_floor(bootstrap: str, prefix: str, work: Path, stack: ExitStack) -> dict[str, int]:
    """The two relay processes of the floor; returns their pids once both joined their groups."""
    relays = PipelineProcesses({}, work, routers=0, workers={})
    stack.callback(relays.stop)
    for i, (src, dst) in enumerate([(REQUESTS, REQUESTS_GOLD), (REQUESTS_GOLD, REPLIES)]):
        relay = Path(__file__).with_name("relay.py")
        args = [
            "--bootstrap",
            bootstrap,
            "--source",
            src.name(prefix),
            "--target",
            dst.name(prefix),
        ]
        relays.spawn(f"relay-{i}", [sys.executable, str(relay), *args, "--group", f"{prefix}floor-{i}"])
    relays.wait_ready()
    return {p.name: p.pid for p, _ in relays.procs}


def start_pipeline(bootstrap: str, prefix: str, work: Path, stack: ExitStack) -> dict[str, int]:
    # The same three hops as the floor (intake → router → gold worker → reply): Gold's fast path
    # (the router answering from intents, two hops) is measured by benchmarks/gold_path.py.
    env = {
        "NPCFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "NPCFLOW_TOPIC_PREFIX": prefix,
        "NPCFLOW_GOLD_FAST_PATH": "0",
    }
    procs = PipelineProcesses(env, work, workers={Tier.GOLD: 1}, engines={Tier.GOLD: "scripted:latency_ms=0"})
    stack.enter_context(procs)
    return {p.name: p.pid for p, _ in procs.procs}


def run(settings: Settings, rate: float, duration: float, segments: int) -> dict[str, object]:
    """``settings``: a broker given there (``NPCFLOW_KAFKA_BOOTSTRAP``) is used, else one is started."""
    work = Path(tempfile.mkdtemp(prefix="npcflow-bench-"))
    starters = {"floor": start_floor, "pipeline": start_pipeline}
    with ExitStack() as stack:
        broker = start_broker(settings, work, stack)
        settings = broker.settings
        bootstrap = settings.require_kafka()
        floor = Side("floor", key_by_request=True)
        pipe = Side("pipeline", key_by_request=False)
        for k in range(segments):
            for side in (floor, pipe):
                prefix = fresh_topics(settings, side.name)
                with ExitStack() as processes:
                    pids = starters[side.name](bootstrap, prefix, work / f"{side.name}-{k}", processes)
                    side.pids = ({"broker": broker.pid} if broker.pid else {}) | pids | {"load": os.getpid()}
                    asyncio.run(segment(settings, side, prefix, rate, duration / segments))
                side.records.append(asyncio.run(records_per_partition(settings, prefix, PATH_TOPICS)))
    f, p = percentiles(floor.latencies), percentiles(pipe.latencies)
    return {
        "rate": rate,
        "duration_s": duration,
        "segments": segments,
        "warmup_s_per_segment": SEGMENT_WARMUP_S,
        "sent": pipe.sent,
        "received": pipe.received,
        "lost": pipe.sent - pipe.received,
        "pipeline_ms": p,
        "floor_ms": f,
        "floor_sent": floor.sent,
        "floor_lost": floor.sent - floor.received,
        "ratio_p50": round(p["p50"] / f["p50"], 2) if p["p50"] and f["p50"] else None,
        "ratio_p99": round(p["p99"] / f["p99"], 2) if p["p99"] and f["p99"] else None,
        "pipeline_to_worker_ms": percentiles(pipe.to_worker_ms),
        "cpu_cores": {"floor": floor.cpu_cores(), "pipeline": pipe.cpu_cores()},
        "cpu_ms_per_request": {"floor": floor.cpu_ms_per_request(), "pipeline": pipe.cpu_ms_per_request()},
        **broker.identity,
        #: Records in the fullest partition of each path topic at the end of each segment.
        "records_per_partition": {"floor": floor.records, "pipeline": pipe.records},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load for each side")
    parser.add_argument("--segments", type=int, default=4, help="alternating segments per side")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    result = run(bench_settings(), args.rate, args.duration, args.segments)
    if not args.json:
        print(f"floor {result['floor_ms']}  pipeline {result['pipeline_ms']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
