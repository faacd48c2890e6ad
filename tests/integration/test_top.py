"""``npcflow top --once`` against real processes: a router and three tier workers (scripted engines)
on the session's embedded stack, their /metrics bound on 0.0.0.0 (``NPCFLOW_METRICS_HOST``), and a
game client sending traffic while ``top`` scrapes: the snapshot shows every process, replies and
p95 per tier, Gold's cache answers, and a stopped worker as down.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devstack.processes import PipelineProcesses
from devstack.supervise import stop_processes
from pipeline.client import NPCClient
from pipeline.config import Settings
from topics.catalogue import Tier
from topics.fields import Sla

ENGINES = {Tier.GOLD: "scripted:latency_ms=5", Tier.SILVER: "scripted:latency_ms=20", Tier.BRONZE: "scripted"}
SLAS = {Tier.GOLD: Sla.REALTIME, Tier.SILVER: Sla.INTERACTIVE, Tier.BRONZE: Sla.ASYNC}


@pytest.fixture(scope="module")
def pipeline(settings: Settings, prefix: str, work_dir: Path) -> Iterator[PipelineProcesses]:
    env = settings_env(settings) | {
        "NPCFLOW_TOPIC_PREFIX": prefix,
        "NPCFLOW_METRICS_PORT": "0",
        "NPCFLOW_METRICS_HOST": "0.0.0.0",
    }
    with PipelineProcesses(env, work_dir, engines=ENGINES) as procs:
        yield procs


def settings_env(settings: Settings) -> dict[str, str]:
    values = {
        "NPCFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "NPCFLOW_REDIS_URL": settings.redis_url,
        "NPCFLOW_S3_ENDPOINT": settings.s3_endpoint,
    }
    return {k: v for k, v in values.items() if v}


async def traffic(settings: Settings, seconds: float) -> int:
    """Requests to every tier, one round every 100 ms, each awaited: how many were answered."""
    answered = 0
    async with NPCClient(settings, "gs-top") as client:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            requests = [
                client.build_request(f"npc-{i % 3}", "Hello there.", sla=SLAS[t], max_tokens=8) for t in Tier
            ]
            replies = await asyncio.gather(*(client.request(r, timeout_s=20) for r in requests))
            answered += len(replies)
            await asyncio.sleep(0.1)
    return answered


async def top_during_traffic(settings: Settings, targets: list[str]) -> tuple[dict, int]:
    args = [arg for t in targets for arg in ("--metrics", t)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.cli", "top", "--once", "--json", "--interval", "3", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    answered, (out, err) = await asyncio.gather(traffic(settings, 6.0), proc.communicate())
    assert proc.returncode == 0, err.decode()
    return json.loads(out), answered


def test_top_once_shows_the_live_figures_of_every_process(
    pipeline: PipelineProcesses, settings: Settings, prefix: str
) -> None:
    targets = pipeline.metrics_targets()
    # Bound on every address (containers' Prometheus), not just loopback.
    for proc, _ in pipeline.procs:
        port = int(targets[proc.name].rsplit(":", 1)[1])
        listening = [
            c for c in psutil.Process(proc.pid).net_connections() if c.laddr and c.laddr.port == port
        ]
        assert listening and listening[0].laddr.ip == "0.0.0.0", (proc.name, listening)

    view, answered = asyncio.run(
        top_during_traffic(settings.with_(topic_prefix=prefix), list(targets.values()))
    )

    assert answered >= 30
    roles = sorted(view["targets"].values())
    assert roles == ["router", "worker-bronze", "worker-gold", "worker-silver"], roles
    assert view["window_s"] >= 2.9
    rows = {row["tier"]: row for row in view["tiers"]}
    for tier in ("gold", "silver", "bronze"):
        row = rows[tier]
        assert row["replies"] >= 5 and row["p95_all_ms"] is not None, row
        assert row["replies_per_s"] > 0 and row["p95_ms"] is not None, row  # traffic inside the window
        assert row["budget_ms"] > 0 and row["breaker"] in ("closed", "-"), row
    gold = rows["gold"]
    assert set(gold["served_by"]) <= {"cache", "default_intent"} and gold["cache_hit_rate"] is not None
    assert rows["silver"]["served_by"].get("engine", 0) >= 5 and rows["silver"]["cost_usd_per_min"] > 0
    assert all(state == "closed" for state in view["breakers"].values()), view["breakers"]
    # The router exports its intake lag too (faust's own offsets), caught up once traffic is answered.
    router_lag = {k: v for k, v in view["lag"].items() if k.endswith(f"{prefix}npc.requests")}
    assert (
        list(router_lag) == [f"{prefix}npcflow-router {prefix}npc.requests"] and max(router_lag.values()) < 50
    )


def test_top_names_a_process_that_stopped(pipeline: PipelineProcesses) -> None:
    targets = pipeline.metrics_targets()
    stop_processes([proc for proc, _ in pipeline.procs if proc.name == "worker-bronze-0"])
    args = [arg for t in targets.values() for arg in ("--metrics", t)]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "top", "--once", "--interval", "0.2", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "3/4 processes up" in done.stdout
    assert f"{targets['worker-bronze-0']:<24} DOWN" in done.stdout
    assert "gold" in done.stdout and "served_by" in done.stdout
