"""Pipeline overhead: intake → router → gold worker (zero-latency engine) → reply, against a floor.

The floor is a bare aiokafka relay over the same three hops (intake → tier topic → reply
topic, two forwarding processes) on the same broker in the same run, so machine noise hits
both alike. Prints one JSON line:
{"rate","sent","received","lost","pipeline_ms":{p50,p95,p99},"floor_ms":{…},"ratio_p50","ratio_p99"}
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
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline import eventloop
from pipeline.processes import PipelineProcesses
from pipeline.readiness import ENV_READY_FILE
from pipeline.stack import EmbeddedStack, ManagedProcess, stop_processes
from topics.admin import create_topics
from topics.catalogue import REPLIES, REQUESTS, REQUESTS_GOLD, Tier
from topics.schemas import Request, Sla

WARMUP_S = 2.0


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    s = sorted(values)
    return {f"p{q}": round(s[min(len(s) - 1, int(q / 100 * len(s)))], 2) for q in (50, 95, 99)}


async def load(
    bootstrap: str, intake: str, replies: str, rate: float, duration: float, key_by_request: bool
) -> tuple[int, int, list[float]]:
    """Send ``rate`` req/s for ``duration`` s; returns (sent, received, latencies after warm-up)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=5)
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(replies, p) for p in sorted(consumer.partitions_for_topic(replies) or [])]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    received = 0
    start = time.perf_counter()
    done_sending = asyncio.Event()

    async def receive() -> None:
        nonlocal received
        while not (done_sending.is_set() and received >= len(sent_at)):
            batches = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batches.values():
                for r in records:
                    t0 = sent_at.get(r.key or b"")
                    if t0 is None:
                        continue
                    received += 1
                    if t0 - start >= WARMUP_S:
                        latencies.append((now - t0) * 1000)

    receiver = asyncio.create_task(receive())
    tick = 0.005
    per_tick = rate * tick
    owed = 0.0
    n = 0
    next_tick = start
    while time.perf_counter() - start < duration:
        owed += per_tick
        while owed >= 1:
            owed -= 1
            rid = f"b{n:08d}-{uuid.uuid4().hex[:8]}"
            request = Request(
                request_id=rid,
                npc_id=f"npc-{n % 300}",
                tenant_id="bench",
                prompt="Wave at the player.",
                max_tokens=8,
                sla=Sla.REALTIME,
                latency_budget_ms=600_000,
                created_at_ms=int(time.time() * 1000),
            )
            key = rid.encode() if key_by_request else request.npc_id.encode()
            sent_at[rid.encode()] = time.perf_counter()
            await producer.send(intake, request.to_bytes(), key=key)
            n += 1
        next_tick += tick
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    await producer.flush()
    done_sending.set()
    try:
        await asyncio.wait_for(receiver, timeout=10.0)
    except TimeoutError:
        pass
    await consumer.stop()
    await producer.stop()
    return n, received, latencies


class CpuMeter:
    """CPU seconds each process spent during one phase: shows what saturates the 2 cores."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start = {name: self._cpu(p) for name, p in self.procs.items()}
        self.t0 = time.perf_counter()

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        return {name: round((self._cpu(p) - self.start[name]) / wall, 2) for name, p in self.procs.items()}


Phase = tuple[int, int, list[float], dict[str, float]]


def measured_load(
    bootstrap: str,
    topics: tuple[str, str],
    rate: float,
    duration: float,
    key_by_request: bool,
    pids: dict[str, int],
) -> Phase:
    meter = CpuMeter(pids | {"load": os.getpid()})
    sent, received, latencies = asyncio.run(load(bootstrap, *topics, rate, duration, key_by_request))
    return sent, received, latencies, meter.read()


def run_floor(bootstrap: str, work: Path, rate: float, duration: float, broker: dict[str, int]) -> Phase:
    prefix = "bench.floor."
    asyncio.run(create_topics(bootstrap, prefix))
    hops = [(REQUESTS, REQUESTS_GOLD), (REQUESTS_GOLD, REPLIES)]
    procs: list[ManagedProcess] = []
    readies: list[Path] = []
    try:
        for i, (src, dst) in enumerate(hops):
            ready = work / f"relay-{i}.ready"
            procs.append(
                ManagedProcess(
                    name=f"relay-{i}",
                    argv=[
                        sys.executable,
                        str(Path(__file__).with_name("relay.py")),
                        "--bootstrap",
                        bootstrap,
                        "--source",
                        src.name(prefix),
                        "--target",
                        dst.name(prefix),
                        "--group",
                        f"floor-{i}",
                    ],
                    log_path=work / f"relay-{i}.log",
                    env={**_base_env(), ENV_READY_FILE: str(ready)},
                )
            )
            procs[-1].start(die_with_parent=True)
            readies.append(ready)
        _wait_files(readies, procs)
        pids = broker | {p.name: p.pid for p in procs}
        return measured_load(
            bootstrap, (REQUESTS.name(prefix), REPLIES.name(prefix)), rate, duration, True, pids
        )
    finally:
        stop_processes(procs)


def run_pipeline(bootstrap: str, work: Path, rate: float, duration: float, broker: dict[str, int]) -> Phase:
    prefix = "bench.pipe."
    asyncio.run(create_topics(bootstrap, prefix))
    env = {"NPCFLOW_KAFKA_BOOTSTRAP": bootstrap, "NPCFLOW_TOPIC_PREFIX": prefix}
    with PipelineProcesses(
        env, work / "pipeline", workers={Tier.GOLD: 1}, engines={Tier.GOLD: "scripted:latency_ms=0"}
    ) as procs:
        pids = broker | {p.name: p.pid for p, _ in procs.procs}
        topics = (REQUESTS.name(prefix), REPLIES.name(prefix))
        return measured_load(bootstrap, topics, rate, duration, False, pids)


def _base_env() -> dict[str, str]:
    return dict(os.environ)


def _wait_files(paths: list[Path], procs: list[ManagedProcess], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.exit_problem():
                raise RuntimeError(f"{proc.name} {proc.exit_problem()}")
        if time.monotonic() > deadline:
            raise RuntimeError("relays did not join their groups in time")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    eventloop.install()

    work = Path(tempfile.mkdtemp(prefix="npcflow-bench-"))
    configured = os.environ.get("NPCFLOW_KAFKA_BOOTSTRAP")
    stack = None if configured else EmbeddedStack(work / "stack")
    bootstrap = configured or stack.start().kafka_bootstrap  # type: ignore[union-attr]
    try:
        broker = {"broker": p.pid for p in (stack.processes if stack else []) if p.name == "kafka"}  # noqa: B035
        f_sent, f_recv, f_lat, f_cpu = run_floor(bootstrap, work, args.rate, args.duration, broker)
        p_sent, p_recv, p_lat, p_cpu = run_pipeline(bootstrap, work, args.rate, args.duration, broker)
    finally:
        if stack is not None:
            stack.stop()
    floor, pipe = percentiles(f_lat), percentiles(p_lat)
    result = {
        "rate": args.rate,
        "duration_s": args.duration,
        "sent": p_sent,
        "received": p_recv,
        "lost": p_sent - p_recv,
        "pipeline_ms": pipe,
        "floor_ms": floor,
        "floor_sent": f_sent,
        "floor_lost": f_sent - f_recv,
        "ratio_p50": round(pipe["p50"] / floor["p50"], 2) if pipe["p50"] and floor["p50"] else None,
        "ratio_p99": round(pipe["p99"] / floor["p99"], 2) if pipe["p99"] and floor["p99"] else None,
        "cpu_cores": {"floor": f_cpu, "pipeline": p_cpu},
    }
    if not args.json:
        print(f"floor {floor}  pipeline {pipe}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
