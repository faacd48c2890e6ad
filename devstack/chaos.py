"""Fault scenarios against a real pipeline: router and workers as OS processes on the embedded stack.

Each scenario starts its own pipeline under a fresh topic prefix, drives load through
:class:`~pipeline.client.NPCClient` (one per tenant) and injects one fault:

- ``worker-kill``: two Silver workers; one is killed with SIGKILL a third of the way in.
- ``router-kill``: two routers; one is killed with SIGKILL a third of the way in.
- ``engine-outage``: Silver's scripted engine refuses every call, then hangs every call, then
  recovers (by the wall clock, the same in every worker): its breaker must open, traffic fall
  back to Bronze, the breaker half-open and close after recovery.
- ``tenant-flood``: a quiet tenant alone (baseline), then the same tenant while another floods
  at 10x its rate; the quiet tenant's p95 is compared across the two phases.
- ``broker-kill``: the embedded broker is killed with SIGKILL and restarted on the same data
  directory (noida-db keeps its state on disk); every accepted request must still be answered.
  noida-db acknowledges records before it writes them, so a SIGKILL forgets the last ≈ 0.2-0.8 s
  of acknowledged records (a forwarded request, a reply); the SDK's resend of overdue requests
  is what answers those, and the report counts them (``resent``, ``lost_trace``).

Each scenario here is a :class:`~devstack.chaos_load.Scenario` (its defaults below); the shared
machinery that runs it (pipeline processes, load, fault injection, measuring) is
:class:`~devstack.chaos_load.Run`.

Used by ``benchmarks/chaos.py`` and the fault tests (tests/integration/test_resilience.py).
What the numbers mean: docs/architecture.md, "Resilience".
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.chaos_load import Progress, Run, Scenario, stderr_progress
from devstack.endpoints import StackEndpoints
from pipeline import config
from topics.catalogue import Tier

SCENARIOS = ("worker-kill", "router-kill", "engine-outage", "tenant-flood", "broker-kill")


def scenario(name: str, duration_s: float | None = None, rate: float | None = None) -> Scenario:
    """The named scenario with its defaults (``duration_s`` / ``rate`` override them)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}")
    s = Scenario(name)
    if name == "worker-kill":
        s.workers = {Tier.SILVER: 2, Tier.BRONZE: 1}
        s.budget_ms = 60_000
    elif name == "router-kill":
        s.routers = 2
        s.budget_ms = 60_000
    elif name == "broker-kill":
        # Long enough for the restart and the groups' rejoin; short enough that the SDK's resend of
        # a request the broker forgot (deadline + NPCFLOW_CLIENT_RESEND_AFTER_S) falls in the drain.
        s.budget_ms = 20_000
        s.drain_s = 60.0
    elif name == "engine-outage":
        s.duration_s = 30.0
        s.env = {
            config.ENV_BREAKER_COOLDOWN_S: "2",
            config.ENV_BREAKER_FAILURES: "5",
        }
    elif name == "tenant-flood":
        s.duration_s = 30.0
        s.rate = 8.0
        s.workers = {Tier.SILVER: 1, Tier.BRONZE: 1}
        s.engines = {Tier.SILVER: "scripted:latency_ms=30", Tier.BRONZE: "scripted:latency_ms=2"}
        s.env = {config.ENV_MAX_IN_FLIGHT: "1"}
        s.fault_at = 0.5
    if duration_s:
        s.duration_s = duration_s
    if rate:
        s.rate = rate
    return s


def run_scenario(
    name: str,
    endpoints: StackEndpoints,
    work: Path,
    *,
    duration_s: float | None = None,
    rate: float | None = None,
    progress: Progress | None = stderr_progress,
    broker_restart: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one scenario on a running stack and return its report (see the module docstring)."""
    spec = scenario(name, duration_s, rate)
    return Run(spec, endpoints, work, progress=progress, broker_restart=broker_restart).run()


def broker_restarter(stack: Any, timeout_s: float = 30.0) -> Callable[[], None]:
    """Kill -9 the stack's broker and start it again on the same port and data directory.

    Only meaningful with a broker whose storage survives (noida-db keeps its state on disk;
    Tansu's memory storage loses everything): see docs/architecture.md, "Resilience".
    """
    from devstack.probes import port_open
    from devstack.supervise import ManagedProcess

    def restart() -> None:
        old = next(p for p in stack.processes if p.name == "kafka")
        os.kill(old.pid, signal.SIGKILL)
        old.popen.wait(timeout=10)
        new = ManagedProcess(name="kafka", argv=old.argv, log_path=old.log_path, user=old.user, env=old.env)
        new.start(die_with_parent=True)
        stack.processes[stack.processes.index(old)] = new
        port = int(stack.endpoints.kafka_bootstrap.rpartition(":")[2])
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                port_open(port)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"broker did not come back within {timeout_s:.0f} s") from None
                time.sleep(0.1)

    return restart
