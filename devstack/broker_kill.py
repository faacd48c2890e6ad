"""Killing one Kafka broker under load and bringing it back: the ``broker-kill`` chaos scenario's fault.

:func:`broker_restarter` picks the broker, kills it with SIGKILL, restarts it on its own data
directory and waits until it is back in sync; :class:`BrokerKill` is what it measured, which the
chaos report (:mod:`devstack.chaos_report`) turns into the fault line and the recovery figures.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from devstack.probes import port_open
from devstack.stack import EmbeddedStack
from devstack.supervise import ManagedProcess
from pipeline import kafka
from pipeline.config import Settings

log = logging.getLogger("npcflow.chaos")

#: How long the killed broker stays down: past the 3 s fencing, so the cluster runs without it.
BROKER_DOWN_S = 5.0


@dataclass(frozen=True)
class BrokerKill:
    """What one broker kill did, as :func:`broker_restarter` measured it.

    Times are ``time.monotonic()`` readings, the clock :class:`~devstack.chaos_load.Run` measures
    its load with, so the report can say how long after the kill the pipeline answered within
    budget again.
    """

    #: The broker's process name (``kafka-2``; ``kafka`` for a one-node stack) and its node id.
    node: str
    node_id: int
    pid: int
    #: Partition leaderships it held when it was killed (what had to move to the other brokers).
    leader_of: int
    killed_at: float
    restarted_at: float
    #: When its port answered again; when it was back in the ISR of every partition it replicates
    #: (None: not within the restarter's timeout; the broker still runs, it only lags).
    port_open_at: float
    in_sync_at: float | None

    def describe(self) -> str:
        """The report's ``fault`` line."""
        down = self.restarted_at - self.killed_at
        return (
            f"SIGKILL {self.node} (node {self.node_id}, pid {self.pid}, leader of {self.leader_of} "
            f"partitions), restarted after {down:.1f} s on its data directory"
        )

    def timings(self) -> dict[str, float | None]:
        """Seconds from the kill: restarted, its port open again, back in every ISR."""
        return {
            "restarted_s": round(self.restarted_at - self.killed_at, 2),
            "port_open_s": round(self.port_open_at - self.killed_at, 2),
            "in_sync_s": None if self.in_sync_at is None else round(self.in_sync_at - self.killed_at, 2),
        }


#: Kills one broker and brings it back; runs on the load's event loop (so the load goes on, and the
#: restarted broker is spawned from the thread that lives as long as the run: PR_SET_PDEATHSIG).
BrokerRestart = Callable[[], Awaitable[BrokerKill]]


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
