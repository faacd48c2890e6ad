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
- ``broker-kill``: on a cluster of three Kafka brokers (``stack up --brokers 3``), the broker that
  leads the most partitions is killed with SIGKILL, left down for a few seconds under load (long
  enough for the controller to fence it and move its leaderships), then restarted with the same
  command line on its own data directory (a crash recovery: it truncates, catches up and rejoins
  the ISRs). ``lost`` must be 0: every record is produced with ``acks=all`` to topics of
  replication factor 3 with ``min.insync.replicas=2``, so an acknowledged record (a request, a
  forwarded request, a reply, a commit) is on at least two brokers when the ack comes, and one
  broker's death cannot take it; the idempotent producers' retries never write one twice. Nothing
  is refused either: two replicas stay in sync, so a produce waits out the failover, it is not
  rejected. The report adds ``recovery_s``, the seconds from the kill until every tier answers
  within budget again, and when the broker was back (``broker_kill``). One broker can be killed
  too, but then nothing is accepted while it is down and only its page cache keeps the
  acknowledged records (a machine crash would lose them): the scenario is meant for three.

Each scenario here is a :class:`~devstack.chaos_load.Scenario` (its defaults below); the shared
machinery that runs it (pipeline processes, load, fault injection, measuring) is
:class:`~devstack.chaos_load.Run`.

Used by ``benchmarks/chaos.py`` and the fault tests (tests/integration/test_resilience.py).
What the numbers mean: docs/architecture.md, "Resilience".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from devstack.chaos_load import BrokerKill, BrokerRestart, Progress, Run, Scenario, stderr_progress
from devstack.endpoints import StackEndpoints
from devstack.probes import port_open
from devstack.stack import EmbeddedStack
from devstack.supervise import ManagedProcess
from pipeline import config, kafka
from pipeline.config import Settings
from topics.catalogue import Tier

log = logging.getLogger("npcflow.chaos")

SCENARIOS = ("worker-kill", "router-kill", "engine-outage", "tenant-flood", "broker-kill")

#: The broker-kill requests' budget: above a healthy cluster's latency on a busy 2-core machine
#: (measured: up to 1.5 s while the pipeline warms up beside three brokers), below a failover (the
#: controller fences a dead broker after 3 s, broker.session.timeout.ms), so ``recovery_s``
#: measures the failover, not the machine's noise. A request caught in the failover is still
#: answered (``expired``, or a fallback), which is what ``lost`` counts.
BROKER_KILL_BUDGET_MS = 2_000
#: How long the killed broker stays down: past the 3 s fencing, so the cluster runs without it.
BROKER_DOWN_S = 5.0


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
        s.duration_s = 30.0
        s.budget_ms = BROKER_KILL_BUDGET_MS
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
    broker_restart: BrokerRestart | None = None,
) -> dict[str, Any]:
    """Run one scenario on a running stack and return its report (see the module docstring)."""
    spec = scenario(name, duration_s, rate)
    return Run(spec, endpoints, work, progress=progress, broker_restart=broker_restart).run()


def broker_restarter(
    stack: EmbeddedStack,
    *,
    node: str | None = None,
    down_s: float = BROKER_DOWN_S,
    timeout_s: float = 60.0,
) -> BrokerRestart:
    """Kill -9 one broker of ``stack``, leave it down ``down_s``, restart it; for ``broker-kill``.

    The victim is ``node`` (``kafka-2``), else the broker leading the most partitions (the kill
    that moves the most leaderships) other than the active controller. The restart runs the same
    command line with the same log, so the node comes back on its own data directory
    (KafkaLauncher.prepare(), which wipes it, runs only when a stack starts). Returned: a coroutine
    function for the load's event loop, so the load goes on meanwhile and the new broker is spawned
    from the thread that runs the load, the one its PR_SET_PDEATHSIG is tied to; it returns once
    the broker's port answers and it is back in the ISR of every partition it replicates
    (``in_sync_at`` None if not within ``timeout_s``).
    """

    async def restart() -> BrokerKill:
        if stack.endpoints is None:
            raise RuntimeError("the stack is not started")
        bootstrap = stack.endpoints.kafka_bootstrap
        brokers = [p for p in stack.processes if p.name == "kafka" or p.name.startswith("kafka-")]
        if not brokers:
            raise RuntimeError("this stack started no broker to restart (NPCFLOW_KAFKA_BOOTSTRAP given)")
        leaders = await _leaderships(bootstrap)
        if node is not None:
            old = next((p for p in brokers if p.name == node), None)
            if old is None:
                raise RuntimeError(f"no broker {node!r} in this stack: {', '.join(p.name for p in brokers)}")
        else:
            # Not the active controller, when there is another: its death adds a Raft election
            # before the dead broker is fenced (measured on a busy 2-core machine: recovery_s 6.4 s
            # against 4.2-4.5 s), a different fault than a broker's; ``node`` names it all the same.
            controller = _active_controller(brokers)
            candidates = [p for p in brokers if _node_id(p.name) != controller] or brokers
            old = max(candidates, key=lambda p: (leaders.get(_node_id(p.name), 0), -_node_id(p.name)))
        node_id = _node_id(old.name)
        port = int(bootstrap.split(",")[node_id - 1].rpartition(":")[2])

        os.kill(old.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert old.popen is not None
        await asyncio.to_thread(old.popen.wait, 10)
        log.info("killed %s (pid %d, leader of %d partitions)", old.name, old.pid, leaders.get(node_id, 0))
        await asyncio.sleep(max(0.0, killed_at + down_s - time.monotonic()))

        new = dataclasses.replace(old, popen=None)
        new.start(die_with_parent=not stack.detach)
        restarted_at = time.monotonic()
        stack.processes[stack.processes.index(old)] = new
        deadline = restarted_at + timeout_s
        while True:
            problem = new.exit_problem()
            if problem:
                raise RuntimeError(f"{new.name} did not come back: {problem}")
            try:
                await asyncio.to_thread(port_open, port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{new.name}: port {port} closed after {timeout_s:.0f} s") from None
                await asyncio.sleep(0.1)
        port_open_at = time.monotonic()
        in_sync_at = await _back_in_sync(bootstrap, node_id, deadline)
        if in_sync_at is None:
            log.warning("%s is running but not back in every ISR within %.0f s", new.name, timeout_s)
        return BrokerKill(
            node=old.name,
            node_id=node_id,
            pid=old.pid,
            leader_of=leaders.get(node_id, 0),
            killed_at=killed_at,
            restarted_at=restarted_at,
            port_open_at=port_open_at,
            in_sync_at=in_sync_at,
        )

    return restart


def _node_id(process_name: str) -> int:
    """KafkaLauncher's naming: ``kafka`` is node 1 of a one-node stack, ``kafka-N`` node N of a cluster."""
    return int(process_name.rpartition("-")[2]) if "-" in process_name else 1


def _active_controller(brokers: list[ManagedProcess]) -> int | None:
    """The KRaft quorum's leader, from the ``quorum-state`` file each node keeps; None if unknown.

    Kafka's clients are not told (a KRaft broker names a random broker as the "controller" in
    Metadata, KIP-590) and aiokafka has no DescribeQuorum; the stack's nodes are local, so their
    state is read where they write it: ``<log.dirs>/__cluster_metadata-0/quorum-state``.
    """
    votes: Counter[int] = Counter()
    for proc in brokers:
        try:
            lines = Path(proc.argv[-1]).read_text().splitlines()
            log_dirs = next(line.partition("=")[2] for line in lines if line.startswith("log.dirs="))
            state = json.loads((Path(log_dirs) / "__cluster_metadata-0" / "quorum-state").read_text())
        except (OSError, StopIteration, ValueError) as exc:
            log.info("no quorum state for %s: %s", proc.name, exc)
            continue
        if int(state.get("leaderId", -1)) >= 0:
            votes[int(state["leaderId"])] += 1
    return votes.most_common(1)[0][0] if votes else None


async def _partitions(bootstrap: str) -> list[dict[str, Any]]:
    """Every partition of every topic (internal ones too: the group coordinators' offsets topic)."""
    admin = kafka.admin(Settings(kafka_bootstrap=bootstrap), client_id="npcflow-chaos")
    await admin.start()
    try:
        topics = await admin.describe_topics()
    finally:
        await admin.close()
    return [p for t in topics for p in t["partitions"]]


async def _leaderships(bootstrap: str) -> Counter[int]:
    """Node id → how many partitions it leads."""
    return Counter(p["leader"] for p in await _partitions(bootstrap))


async def _back_in_sync(bootstrap: str, node_id: int, deadline: float) -> float | None:
    """When ``node_id`` is in the ISR of every partition it replicates; None if not by ``deadline``."""
    while time.monotonic() < deadline:
        try:
            parts = await _partitions(bootstrap)
        except KafkaError as exc:
            log.info("metadata not available yet: %s", exc)
        else:
            lagging = [p for p in parts if node_id in p["replicas"] and node_id not in p["isr"]]
            if parts and not lagging:
                return time.monotonic()
        await asyncio.sleep(0.25)
    return None
