"""Observability on real processes: /metrics, /healthz, /readyz move with traffic; validate passes, then
fails once a tier's worker is gone. One pipeline (router + three workers, scripted engines) on the
session's embedded stack, started once for the module.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import PipelineProcesses
from devstack.supervise import stop_processes
from pipeline.config import Settings
from pipeline.observability.scrape import scrape
from pipeline.observability.validate import Validator, metrics_report
from topics.catalogue import Tier

ENGINES = {Tier.GOLD: "scripted:latency_ms=5", Tier.SILVER: "scripted:latency_ms=20", Tier.BRONZE: "scripted"}


@pytest.fixture(scope="module")
def pipeline(settings: Settings, prefix: str, work_dir: Path) -> Iterator[PipelineProcesses]:
    env = {**_endpoint_env(settings), "NPCFLOW_TOPIC_PREFIX": prefix, "NPCFLOW_METRICS_PORT": "0"}
    with PipelineProcesses(env, work_dir, engines=ENGINES) as procs:
        yield procs


def _endpoint_env(settings: Settings) -> dict[str, str]:
    values = {
        "NPCFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "NPCFLOW_REDIS_URL": settings.redis_url,
        "NPCFLOW_DATABASE_URL": settings.database_url,
        "NPCFLOW_S3_ENDPOINT": settings.s3_endpoint,
        "NPCFLOW_OPENSEARCH_URL": settings.opensearch_url,
    }
    return {k: v for k, v in values.items() if v}


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_validate_all_passes_and_metrics_move_with_traffic(
    pipeline: PipelineProcesses, settings: Settings, prefix: str
) -> None:
    targets = pipeline.metrics_targets()
    assert set(targets) == {"router-0", "worker-gold-0", "worker-silver-0", "worker-bronze-0"}
    for target in targets.values():
        assert _get(f"http://{target}/healthz")[0] == 200
        status, body = _get(f"http://{target}/readyz")
        assert status == 200 and body["status"] == "ready"
    before = scrape(targets.values())

    reports = asyncio.run(Validator(settings.with_(topic_prefix=prefix), burst=10).run(list(Tier)))

    for tier, report in reports.items():
        assert report.ok, (tier, report.problems)
        assert report.details["breaker"] == "closed" and report.details["lag"] is not None
    gold = reports["gold"]
    assert gold.details["freshness_ms"] is not None and gold.details["burst"] == 10
    assert reports["silver"].within_sla  # a 20 ms scripted engine is inside Silver's 250 ms
    after = scrape(targets.values())
    assert metrics_report(after)["ok"], metrics_report(after)

    # Traffic moved the processes' own counters: replies per tier, Gold's cache, cost, hops.
    def grew(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    for tier in ("gold", "silver", "bronze"):
        assert grew("npcflow_replies_total", tier=tier) >= 1
    assert grew("npcflow_intent_cache_total") >= 11  # the first Gold probe and the burst of 10
    assert grew("npcflow_cost_usd_total", tier="silver") > 0
    assert grew("npcflow_cost_saved_usd_total", tier="gold") > 0
    assert grew("npcflow_hop_latency_seconds_count", hop="engine") >= 2
    assert after.quantile("npcflow_reply_latency_seconds", 0.95, tier="gold") is not None


def test_validate_fails_when_a_tiers_worker_is_down(
    pipeline: PipelineProcesses, settings: Settings, prefix: str
) -> None:
    silver = [proc for proc, _ in pipeline.procs if proc.name == "worker-silver-0"]
    stop_processes(silver)
    validator = Validator(settings.with_(topic_prefix=prefix), burst=3, reply_timeout_s=5.0)
    reports = asyncio.run(validator.run([Tier.SILVER]))
    silver_report = reports["silver"]
    assert not silver_report.ok and not silver_report.within_sla
    assert any("no reply" in p for p in silver_report.problems), silver_report.problems
