"""Fault tests with real processes: kill -9 a worker, a router, the broker; an engine outage; a flood.

Each runs a scenario of :mod:`devstack.chaos` (the same code as ``benchmarks/chaos.py``) with a
shorter load. Killing a group member needs a broker that notices: noida-db 0.2.3 never reassigns
a SIGKILLed member's partitions (measured: not within 75 s, whatever the session or rebalance
timeout), so the worker and router kills run on a Tansu broker started beside the session stack,
which reassigns them after the 6 s session timeout (docs/architecture.md, "Resilience").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.chaos import broker_restarter, run_scenario
from devstack.endpoints import StackEndpoints
from devstack.stack import EmbeddedStack
from pipeline.config import Settings


def broker_only(settings: Settings, broker: str, path: Path) -> EmbeddedStack:
    """A stack that starts only a broker of its own; every other service is the session stack's."""
    return EmbeddedStack(path, settings=settings.with_(kafka_bootstrap=None, embedded_broker=broker))


@pytest.fixture(scope="module")
def tansu(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEndpoints]:
    stack = broker_only(settings, "tansu", tmp_path_factory.mktemp("tansu"))
    endpoints = stack.start()
    try:
        yield endpoints
    finally:
        stack.stop()


def assert_every_request_answered_once(result: dict) -> None:
    assert result["sent"] > 100, result
    assert result["lost"] == 0 and result["replied_once"] == result["sent"], result
    assert result["duplicates_delivered"] == 0 and result["dead_letters"] == 0, result


def test_kill_9_a_silver_worker_mid_load_loses_nothing(tansu: StackEndpoints, work_dir: Path) -> None:
    result = run_scenario("worker-kill", tansu, work_dir, duration_s=12, rate=30, progress=None)
    assert_every_request_answered_once(result)
    assert result["recovered"] and result["fault"].startswith("SIGKILL worker-silver-0")


def test_kill_9_a_router_mid_load_loses_nothing(tansu: StackEndpoints, work_dir: Path) -> None:
    result = run_scenario("router-kill", tansu, work_dir, duration_s=12, rate=30, progress=None)
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
    assert result["victim_statuses"] == {"ok": result["victim_statuses"].get("ok", 0)}, result
    assert result["victim_ratio"] is not None and result["victim_ratio"] <= 2.0, result
    assert result["flood_statuses"].get("fallback", 0) > 0, result  # the flood is degraded, not the victim


def test_broker_kill_9_and_restart_on_durable_storage_loses_no_request(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, work_dir: Path
) -> None:
    stack = broker_only(settings, "noida", tmp_path_factory.mktemp("noida"))
    endpoints = stack.start()
    try:
        result = run_scenario(
            "broker-kill",
            endpoints,
            work_dir,
            duration_s=12,
            rate=30,
            progress=None,
            broker_restart=broker_restarter(stack),
        )
    finally:
        stack.stop()
    assert_every_request_answered_once(result)
    assert result["fault"].startswith("SIGKILL broker")
