"""How fast `npcflow replay --report` reads recorded traffic, against a bare aiokafka read of it.

Writes a recorded run straight to fresh topics (``--requests`` requests, each with its routing
decision and its reply's output event, mixed over the three tiers, some contradictory and a few
invalid), then in the same run, alternating: a bare aiokafka consumer reading the three topics to
their end offsets (no parsing), and the replay's what-if report over the same window with a
candidate policy that moves Gold to Silver. Rates are events per second, best of ``--rounds``;
the target is ratio >= 0.5.
"""

# ruff: noqa: E402  (sys.path is set before the imports: see below)
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

# This file's name is the `replay` package's: import the package first with this folder off the
# path, then put the folder back for benchkit.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)]
from replay.run import ReplayOptions, run_replay

sys.path.append(_HERE)

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from benchkit import fresh_prefix, start_broker

from pipeline import eventloop, kafka
from pipeline.config import Settings
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import OUTPUTS, REQUESTS, ROUTING, Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.policy import RoutingPolicy
from topics.schemas import Latency, Output, Reply, Request, RoutingDecision, TokenUsage

TARGET = 0.5
_MIX = (
    (Sla.REALTIME, 8, Tier.GOLD),
    (Sla.INTERACTIVE, 64, Tier.SILVER),
    (Sla.ASYNC, 400, Tier.BRONZE),
    (Sla.REALTIME, 64, Tier.SILVER),
)


def recorded(n: int, now_ms: int) -> tuple[bytes, bytes | None, bytes | None]:
    """The ``n``-th request of the recording with its decision and output (None for an invalid one)."""
    if n % 100 == 99:
        return b'{"request_id": "broken", "max_tokens": "eight"}', None, None
    sla, tokens, tier = _MIX[n % len(_MIX)]
    rid = f"b{n:08d}-{uuid.uuid4().hex[:6]}"
    ids = {"request_id": rid, "npc_id": f"npc-{n % 500}", "tenant_id": "gs-bench"}
    request = Request(
        **ids,
        prompt="The player asks about the old mill by the river.",
        max_tokens=tokens,
        sla=sla,
        latency_budget_ms=600_000,
        created_at_ms=now_ms,
    )
    decision = RoutingDecision(
        **ids,
        tier=tier,
        sla=sla,
        reason=f"sla={sla.value} → {tier.value}",
        deadline_ms=now_ms + 600_000,
        decided_at_ms=now_ms,
    )
    reply = Reply(
        **ids,
        tier=tier,
        served_by=ServedBy.ENGINE,
        engine="scripted",
        status=ReplyStatus.OK,
        text="The mill lies north, past the bridge.",
        tokens=TokenUsage(prompt=12, completion=9),
        latency=Latency(queue_ms=1.0, engine_ms=5.0 + n % 40, total_ms=8.0 + n % 40),
        cost_usd=0.00001,
        replied_at_ms=now_ms + 8,
    )
    return request.to_bytes(), decision.to_bytes(), Output(request=request, reply=reply).to_bytes()


async def write_recording(settings: Settings, prefix: str, requests: int) -> tuple[int, int, int]:
    """Produce the recording; returns (events, first timestamp, last timestamp)."""
    producer = kafka.producer(settings, "bench-replay-writer", linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    events, first = 0, int(time.time() * 1000)
    try:
        sends = []
        for n in range(requests):
            now = int(time.time() * 1000)
            raw, decision, output = recorded(n, now)
            key = f"npc-{n % 500}".encode()
            sends.append(await producer.send(REQUESTS.name(prefix), raw, key=key, timestamp_ms=now))
            events += 1
            if decision is not None and output is not None:
                rid = Request.from_bytes(raw).request_id.encode()
                sends.append(await producer.send(ROUTING.name(prefix), decision, key=rid, timestamp_ms=now))
                sends.append(await producer.send(OUTPUTS.name(prefix), output, key=rid, timestamp_ms=now + 8))
                events += 2
            if len(sends) >= 5000:
                await asyncio.gather(*sends)
                sends = []
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return events, first, int(time.time() * 1000) + 10


async def bare_read(settings: Settings, prefix: str) -> tuple[int, float]:
    """Read the three topics to their end offsets (ListOffsets latest) with a plain aiokafka consumer."""
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.require_kafka(),
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        max_partition_fetch_bytes=4 << 20,
        **settings.kafka.security.aiokafka_options(),
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(spec.name(prefix), p)
            for spec in (REQUESTS, ROUTING, OUTPUTS)
            for p in sorted(await kafka.partitions(consumer, spec.name(prefix)))
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        count = 0
        left = {tp for tp in tps if begins[tp] < ends[tp]}
        while left:
            for tp, records in (await consumer.getmany(timeout_ms=200, max_records=20_000)).items():
                count += len(records)
                if records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return count, time.perf_counter() - started


async def replay_report(
    settings: Settings, prefix: str, since: int, until: int, policy: RoutingPolicy
) -> tuple[dict, float]:
    started = time.perf_counter()
    options = ReplayOptions(
        source_prefix=prefix, since_ms=since, until_ms=until, grace_ms=1000, policy=policy
    )
    summary = await run_replay(settings, options)
    return summary, time.perf_counter() - started


def candidate() -> RoutingPolicy:
    """The packaged policy with realtime sent to Silver: every Gold request moves."""
    data = yaml.safe_load(resources.files("topics").joinpath("policy.yaml").read_text())
    data["slas"]["realtime"]["tier"] = "silver"
    return RoutingPolicy.from_dict(data, "candidate")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="recorded requests (x3 events)")
    parser.add_argument("--rounds", type=int, default=2, help="bare read and replay, alternating, best of")
    parser.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("npcflow.router").setLevel(logging.ERROR)
    settings = Settings.from_env()
    eventloop.install(settings.process.event_loop)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-replay-") as work:
        broker = start_broker(settings, Path(work), stack)
        settings = broker.settings
        prefix = fresh_prefix("replay")
        asyncio.run(create_embedded_topics(settings, prefix))
        events, since, until = asyncio.run(write_recording(settings, prefix, args.requests))
        if not args.json:
            print(f"wrote {events} events to {prefix}*", file=sys.stderr)
        policy = candidate()
        bare_rates, replay_rates, summary = [], [], {}
        for _ in range(args.rounds):
            count, seconds = asyncio.run(bare_read(settings, prefix))
            bare_rates.append(count / seconds)
            summary, seconds = asyncio.run(replay_report(settings, prefix, since - 1, until, policy))
            replay_rates.append(summary["read"]["events"] / seconds)
            if not args.json:
                line = (
                    f"bare {bare_rates[-1]:,.0f}/s ({count} events), replay {replay_rates[-1]:,.0f}/s "
                    f"({summary['read']['events']} events, moved {summary['report']['moved']})"
                )
                print(line, file=sys.stderr)
    rate, baseline = max(replay_rates), max(bare_rates)
    report = summary["report"]
    result = {
        "benchmark": "replay",
        "events": summary["read"]["events"],
        "written": events,
        "rate": round(rate, 1),
        "baseline_rate": round(baseline, 1),
        "ratio": round(rate / baseline, 3),
        "target": TARGET,
        "met": rate / baseline >= TARGET,
        "requests": report["requests"],
        "moved": report["moved"],
        "method": summary["read"]["method"],
        "rounds": {"replay": [round(r) for r in replay_rates], "bare": [round(r) for r in bare_rates]},
        "broker": broker.identity.get("broker"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
