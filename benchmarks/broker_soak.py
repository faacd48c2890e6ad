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

from aiokafka import ConsumerRecord
from benchkit import (
    Broker,
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
    intake = REQUESTS.name(prefix)
    producer, consumer = await load_clients(settings, "soak-load", REPLIES.name(prefix))
    statuses: Counter[str] = Counter()
    received = 0

    def on_reply(record: ConsumerRecord, t0: float, now: float) -> None:
        nonlocal received
        received += 1
        statuses[Reply.from_bytes(record.value).status.value] += 1
        i = windows.index(t0 - start)
        windows.received[i] += 1
        if t0 - start >= WARMUP_S:
            windows.latencies.setdefault(i, []).append((now - t0) * 1000)

    pending: PendingReplies[float] = PendingReplies(on_reply, drain_s=DRAIN_S)
    current = 0

    def on_tick(elapsed: float) -> None:
        nonlocal current
        if windows.index(elapsed) > current:
            windows.close_window()
            if current > 0:
                windows.print_row(current - 1)
            current = windows.index(elapsed)

    async def send(n: int) -> None:
        request = realtime_request(n, "soak", "s")
        sent_at = pending.sent[request.request_id.encode()] = time.perf_counter()
        windows.sent[windows.index(sent_at - start)] += 1
        await producer.send(intake, request.to_bytes(), key=request.npc_id.encode())

    start = time.perf_counter()
    pending.start(consumer)
    sent = await pace(rate, duration, send, on_tick)
    windows.close_window()
    await pending.finish(producer)
    for i in range(max(0, current - 1), windows.index(duration - 1e-9) + 1):
        windows.print_row(i)
    await consumer.stop()
    await producer.stop()
    return sent, received, statuses


def run(settings: Settings, rate: float, duration: float, window_s: float) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="npcflow-soak-"))
    with ExitStack() as stack:
        broker = start_broker(settings, work, stack)
        settings = broker.settings
        prefix = fresh_topics(settings, "soak")
        env = {"NPCFLOW_KAFKA_BOOTSTRAP": settings.require_kafka(), "NPCFLOW_TOPIC_PREFIX": prefix}
        procs = PipelineProcesses(
            env, work / "pipeline", workers={Tier.GOLD: 1}, engines={Tier.GOLD: "scripted:latency_ms=5"}
        )
        stack.enter_context(procs)
        cpu = CpuMeter({p.name: p.pid for p, _ in procs.procs} | {"load": os.getpid()})
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
        cores = cpu.cores(wall)
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
    result = run(bench_settings(), args.rate, args.duration, args.window)
    if not args.json:
        print(
            f"first p95 {result['first_p95_ms']} ms, last p95 {result['last_p95_ms']} ms, "
            f"drift {result['drift']}, broker {result['broker']} at {result['broker_cpu_cores']} cores",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
