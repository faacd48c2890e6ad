"""Broker soak: does the product's Gold path stay flat for minutes on the embedded broker?

intake → router → Gold worker (``scripted:latency_ms=5`` engine) → reply, at a steady rate for a
long run, on fresh topics created with the benchmark retention. Latency is request sent → reply
read by the load process, grouped by the 10 s window the request was sent in. A broker whose cost
grows with what it holds (Tansu 0.6) shows it as a p95 that climbs window after window.

Prints one line per window on stderr while it runs, and one JSON line at the end:
{"first_p95_ms","last_p95_ms","drift": last/first,"broker","broker_version","broker_cpu_cores",
 "windows":[{"t_s","sent","received","p50_ms","p95_ms","broker_cpu_cores"}, ...],"lost",...}
Target (issue 15): drift ≤ 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from aiokafka import TopicPartition
from benchkit import (
    Broker,
    cpu_seconds,
    create_fresh_topics,
    fresh_prefix,
    realtime_request,
    records_per_partition,
    start_broker,
)

from devstack.processes import PipelineProcesses
from pipeline import eventloop, kafka
from pipeline.config import Settings
from pipeline.observability.metrics import percentiles
from topics.catalogue import REPLIES, REQUESTS, REQUESTS_GOLD, Tier
from topics.schemas import Reply

#: The first seconds of the first window are connection set-up and the consumers' first fetches.
WARMUP_S = 2.0
#: How long to keep reading replies once sending stopped.
DRAIN_S = 10.0


class Windows:
    """Latencies grouped by the window their request was sent in, with the broker's CPU per window."""

    def __init__(self, window_s: float, broker: Broker) -> None:
        self.window_s = window_s
        self.broker = broker
        self.latencies: dict[int, list[float]] = {}
        self.sent: Counter[int] = Counter()
        self.received: Counter[int] = Counter()
        self.cpu_marks: list[float] = [broker.cpu_s()]
        self.reported = 0

    def index(self, since_start_s: float) -> int:
        return int(since_start_s // self.window_s)

    def close_window(self) -> None:
        """Called as each window's sending ends: note the broker's CPU, print the window before."""
        self.cpu_marks.append(self.broker.cpu_s())

    def row(self, i: int) -> dict[str, object]:
        p = percentiles(self.latencies.get(i, []))
        cpu = None
        if i + 1 < len(self.cpu_marks):
            cpu = round((self.cpu_marks[i + 1] - self.cpu_marks[i]) / self.window_s, 2)
        return {
            "t_s": round((i + 1) * self.window_s),
            "sent": self.sent[i],
            "received": self.received[i],
            "p50_ms": p["p50"],
            "p95_ms": p["p95"],
            "p99_ms": p["p99"],
            "broker_cpu_cores": cpu,
        }

    def print_row(self, i: int) -> None:
        r = self.row(i)
        print(
            f"  {r['t_s']:>4} s  sent {r['sent']:>6}  received {r['received']:>6}  "
            f"p50 {r['p50_ms']} ms  p95 {r['p95_ms']} ms  broker {r['broker_cpu_cores']} cores",
            file=sys.stderr,
            flush=True,
        )


async def load(
    settings: Settings, prefix: str, rate: float, duration: float, windows: Windows
) -> tuple[int, int, Counter[str]]:
    """Send ``rate`` Gold requests per second for ``duration`` s; returns (sent, received, statuses)."""
    intake, replies = REQUESTS.name(prefix), REPLIES.name(prefix)
    producer = kafka.producer(settings, "soak-load")
    consumer = kafka.consumer(settings, "soak-load")
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(replies, p) for p in sorted(await kafka.partitions(consumer, replies))]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)  # fresh topics: every reply on them is ours
    sent_at: dict[str, float] = {}
    statuses: Counter[str] = Counter()
    received = 0
    start = time.perf_counter()
    done_sending = asyncio.Event()

    async def receive() -> None:
        nonlocal received
        drain_deadline: float | None = None
        while sent_at or not done_sending.is_set():
            if done_sending.is_set():
                drain_deadline = drain_deadline or time.perf_counter() + DRAIN_S
                if time.perf_counter() > drain_deadline:
                    return
            batches = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batches.values():
                for r in records:
                    rid = (r.key or b"").decode()
                    t0 = sent_at.pop(rid, None)
                    if t0 is None:
                        continue
                    received += 1
                    statuses[Reply.from_bytes(r.value).status.value] += 1
                    i = windows.index(t0 - start)
                    windows.received[i] += 1
                    if t0 - start >= WARMUP_S:
                        windows.latencies.setdefault(i, []).append((now - t0) * 1000)

    receiver = asyncio.create_task(receive())
    tick, owed, n, next_tick = 0.005, 0.0, 0, start
    current = 0
    while (elapsed := time.perf_counter() - start) < duration:
        if windows.index(elapsed) > current:
            windows.close_window()
            if current > 0:
                windows.print_row(current - 1)
            current = windows.index(elapsed)
        owed += rate * tick
        while owed >= 1:
            owed -= 1
            request = realtime_request(n, "soak", "s")
            rid = request.request_id
            sent_at[rid] = time.perf_counter()
            windows.sent[windows.index(sent_at[rid] - start)] += 1
            await producer.send(intake, request.to_bytes(), key=request.npc_id.encode())
            n += 1
        next_tick += tick
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    windows.close_window()
    await producer.flush()
    done_sending.set()
    await receiver
    for i in range(max(0, current - 1), windows.index(duration - 1e-9) + 1):
        windows.print_row(i)
    await consumer.stop()
    await producer.stop()
    return n, received, statuses


def run(settings: Settings, rate: float, duration: float, window_s: float) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="npcflow-soak-"))
    with ExitStack() as stack:
        broker = start_broker(settings, work, stack)
        settings = broker.settings
        prefix = fresh_prefix("soak")
        create_fresh_topics(settings, prefix)
        env = {"NPCFLOW_KAFKA_BOOTSTRAP": settings.require_kafka(), "NPCFLOW_TOPIC_PREFIX": prefix}
        procs = PipelineProcesses(
            env, work / "pipeline", workers={Tier.GOLD: 1}, engines={Tier.GOLD: "scripted:latency_ms=5"}
        )
        stack.enter_context(procs)
        pids = {p.name: p.pid for p, _ in procs.procs} | {"load": os.getpid()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        print(
            f"soak: {rate:.0f} req/s for {duration:.0f} s on {broker.identity['broker']} "
            f"({broker.identity['broker']}), windows of {window_s:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        windows = Windows(window_s, broker)
        cpu0, t0 = broker.cpu_s(), time.perf_counter()
        sent, received, statuses = asyncio.run(load(settings, prefix, rate, duration, windows))
        wall = time.perf_counter() - t0
        broker_cores = round((broker.cpu_s() - cpu0) / wall, 2) if broker.pid else None
        cores = {name: round((cpu_seconds(pid) - cpu_before[name]) / wall, 2) for name, pid in pids.items()}
        held = asyncio.run(records_per_partition(settings, prefix, (REQUESTS, REQUESTS_GOLD, REPLIES)))
        rss = broker.rss_mib()
    rows = [windows.row(i) for i in range(windows.index(duration - 1e-9) + 1)]
    first, last = rows[0]["p95_ms"], rows[-1]["p95_ms"]
    return {
        "rate": rate,
        "duration_s": duration,
        "window_s": window_s,
        "warmup_s": WARMUP_S,
        "engine": "scripted:latency_ms=5",
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "statuses": dict(statuses),
        "first_p95_ms": first,
        "last_p95_ms": last,
        "drift": round(last / first, 2) if first and last else None,
        **broker.identity,
        "broker_cpu_cores": broker_cores,
        "broker_rss_mib_end": rss,
        "cpu_cores": cores,
        "records_per_partition_end": held,
        "windows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="The broker: NPCFLOW_KAFKA_BOOTSTRAP if set, else the embedded stack's Apache Kafka.",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per reported window (default 10)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = parser.parse_args()
    # The environment only: a stack.env left in .npcflow must not pick the broker by accident.
    settings = Settings.from_env(stack_file=False)
    eventloop.install(settings.process.event_loop)
    result = run(settings, args.rate, args.duration, args.window)
    if not args.json:
        print(
            f"first p95 {result['first_p95_ms']} ms, last p95 {result['last_p95_ms']} ms, "
            f"drift {result['drift']}, broker {result['broker']} at {result['broker_cpu_cores']} cores",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
