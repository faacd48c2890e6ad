"""Fault tests with real processes: kill -9 a worker, a router, a broker; an engine outage; a flood.

Each runs a scenario of :mod:`devstack.chaos` (the same code as ``benchmarks/chaos.py``) with a
shorter load. The worker and router kills run on the session stack: Kafka reassigns a SIGKILLed
member's partitions once its session times out (6 s). The broker kill needs brokers to spare, so
it starts a cluster of three of its own (replication factor 3, ``min.insync.replicas=2``) beside
the session stack, whose other services it shares (docs/architecture.md, "Resilience").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from devstack.broker_kill import broker_restarter
from devstack.chaos_load import run_scenario
from devstack.endpoints import StackEndpoints
from devstack.stack import EmbeddedStack
from pipeline.config import Settings
from tests.integration.kafka_util import read_topic
from tests.integration.test_worker import make_request, producer, running_worker, serve_one
from topics.catalogue import OUTPUTS, REPLIES, Tier
from topics.fields import ReplyStatus, Sla
from topics.schemas import Output, Reply
from workers.engines.scripted import ScriptedEngine, ScriptedProfile

__all__ = ["producer"]  # the fixture, shared with test_worker

#: A scenario bounds every step of its end (process start 90 s, drain 45 s, each shutdown step 20 s,
#: tracing lost requests 60 s): on a bad run those add up past the suite's 300 s, and the timeout
#: would then hide the report (``lost_trace``, ``stalls``) that says what went wrong.
pytestmark = pytest.mark.timeout(600)


def assert_every_request_answered_once(result: dict) -> None:
    # The whole report as the message: pytest shortens a dict to its first keys, and a CI failure
    # (one broker-kill request lost) once came without ``lost_trace``, the field that says where.
    report = json.dumps(result, default=str, sort_keys=True)
    assert result["sent"] > 100, report
    # A request is accepted once the brokers acknowledged it. None is refused, not even while a
    # broker is down: two of three replicas stay in sync (min.insync.replicas=2), so an acks=all
    # produce waits out the failover (seconds, well inside the producer's timeout) and succeeds.
    assert result["refused"] == 0, report
    assert result["lost"] == 0 and result["replied_once"] == result["sent"], report
    assert result["duplicates_delivered"] == 0 and result["dead_letters"] == 0, report


def test_kill_9_a_silver_worker_mid_load_loses_nothing(stack: StackEndpoints, work_dir: Path) -> None:
    result = run_scenario("worker-kill", stack, work_dir, duration_s=12, rate=30, progress=None)
    assert_every_request_answered_once(result)
    assert result["recovered"] and result["fault"].startswith("SIGKILL worker-silver-0")


def test_kill_9_a_router_mid_load_loses_nothing(stack: StackEndpoints, work_dir: Path) -> None:
    result = run_scenario("router-kill", stack, work_dir, duration_s=12, rate=30, progress=None)
    assert_every_request_answered_once(result)
    assert result["recovered"] and result["fault"].startswith("SIGKILL router-0")


def test_engine_outage_opens_the_breaker_falls_back_and_recovers(
    stack: StackEndpoints, work_dir: Path
) -> None:
    result = run_scenario("engine-outage", stack, work_dir, progress=None)
    assert_every_request_answered_once(result)
    assert result["breaker_opened"] and result["fallbacks"] > 0, result
    states = result["breaker_states"]
    assert "half_open" in states and states[-1] == "closed", states
    assert result["recovered"], result


def test_a_flooding_tenant_does_not_make_a_quiet_one_wait(stack: StackEndpoints, work_dir: Path) -> None:
    result = run_scenario("tenant-flood", stack, work_dir, duration_s=24, progress=None)
    assert_every_request_answered_once(result)
    # The flood is degraded, not the victim. Whether one victim request misses its 250 ms on a loaded
    # 2-core machine is timing (CI runs once saw 2 of 177 fall back, once one expire: the shedder
    # predicted it in time, then the machine stalled while it waited for the slot); a victim queued
    # behind the flood would be degraded like the flood is, so the shares are compared.
    victim, flood = result["victim_statuses"], result["flood_statuses"]
    degraded = ("fallback", "expired")
    assert set(victim) <= {"ok", *degraded}, result
    victim_degraded = sum(victim.get(s, 0) for s in degraded) / max(1, sum(victim.values()))
    flood_degraded = sum(flood.get(s, 0) for s in degraded) / max(1, sum(flood.values()))
    assert flood_degraded > 0 and victim_degraded <= min(0.05, flood_degraded / 5), result
    # The claim itself: under the flood the quiet tenant's p95 stays inside its budget and near its
    # p95 alone. Behind a first-come slot it would queue with the flood up to the shedder's limit
    # (its 250 ms budget, about 4 times its p95 alone). The benchmark's target is a ratio ≤ 2 (measured
    # 1.41 to 1.61, docs/architecture.md, "Resilience"); 3 leaves room for a loaded machine.
    p95, alone = result["victim_p95_ms"], result["victim_baseline_p95_ms"]
    assert p95 is not None and alone is not None, result
    assert p95 <= result["budget_ms"] and result["victim_ratio"] <= 3, result


def test_kill_9_one_of_three_brokers_mid_load_loses_no_request(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, work_dir: Path
) -> None:
    # Only the broker is this stack's own: every other service is given, so it is the session's.
    cluster = EmbeddedStack(
        tmp_path_factory.mktemp("kafka3"),
        settings=settings.with_(kafka_bootstrap=None, embedded_kafka_nodes=3),
    )
    endpoints = cluster.start()
    try:
        assert cluster.started == ["kafka"] and len(endpoints.kafka_bootstrap.split(",")) == 3
        result = run_scenario(
            "broker-kill",
            endpoints,
            work_dir,
            duration_s=20,
            rate=30,
            progress=None,
            broker_restart=broker_restarter(cluster),
        )
    finally:
        cluster.stop()
    # acks=all to 3 replicas with min.insync.replicas=2: every acknowledged record survives.
    assert_every_request_answered_once(result)
    assert result["fault"].startswith("SIGKILL kafka-"), result
    assert result["recovered"] and result["broker_kill"]["in_sync_s"] is not None, result
    # How fast (recovery_s) is a timing, measured by `benchmarks/chaos.py --scenario broker-kill`;
    # here: the tiers did answer within budget again, within the run.
    assert result["recovery_s"] is not None and result["recovery_s"] < 20, result
    assert list(result["recovery_s_by_tier"]) == ["silver"], result  # the tier the load asks for


async def test_a_stalled_silver_engine_falls_back_to_bronze_at_the_deadline(
    settings: Settings, kafka: str, prefix: str, producer: AIOKafkaProducer
) -> None:
    stalled = ScriptedEngine(ScriptedProfile(latency_ms=1500))
    async with (
        running_worker(settings, prefix, Tier.SILVER, stalled, engine_grace_s=10),
        running_worker(settings, prefix, Tier.BRONZE, ScriptedEngine()),
    ):
        request = make_request(41, sla=Sla.INTERACTIVE)
        started = time.monotonic()
        reply = await serve_one(kafka, prefix, producer, Tier.SILVER, request, 300)
        assert time.monotonic() - started < 1.5 + 0.2  # at the deadline, long before the stall ends
        assert reply.status is ReplyStatus.FALLBACK and reply.served_tier is Tier.BRONZE
        assert [(a.tier, a.outcome) for a in reply.chain] == [
            (Tier.SILVER, "failed"),
            (Tier.BRONZE, "served"),
        ]
        assert "deadline" in reply.chain[0].reason

        # The late Silver result updates the outputs (for the caches and stores), never a second reply.
        def outputs_for_request(records: list) -> list[Output]:
            found = (Output.from_bytes(r.value) for r in records)
            return [o for o in found if o.request.request_id == request.request_id]

        records = await read_topic(
            kafka, OUTPUTS.name(prefix), until=lambda rs: len(outputs_for_request(rs)) >= 2, timeout_s=10
        )
        outputs = outputs_for_request(records)
        assert len(outputs) == 2, outputs
        late = [o for o in outputs if o.reply.tier is Tier.SILVER]
        assert len(late) == 1 and "late" in late[0].reply.chain[-1].reason
        replies = await read_topic(kafka, REPLIES.name(prefix), expect=1)
        assert sum(Reply.from_bytes(r.value).request_id == request.request_id for r in replies) == 1
