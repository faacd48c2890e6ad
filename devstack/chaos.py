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

This module says what each scenario is: a :class:`Scenario` and the named ones' defaults.
Running one (pipeline processes, load, fault injection) is :mod:`devstack.chaos_load`
(``run_scenario``); judging what the run saw (lost, recovered, ``recovery_s``) is
:mod:`devstack.chaos_report`.

Used by ``benchmarks/chaos.py`` and the fault tests (tests/integration/test_resilience.py).
What the numbers mean: docs/architecture.md, "Resilience".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from topics.catalogue import Tier

SCENARIOS = ("worker-kill", "router-kill", "engine-outage", "tenant-flood", "broker-kill")

#: The broker-kill requests' budget: above a healthy cluster's latency on a busy 2-core machine
#: (measured: up to 1.5 s while the pipeline warms up beside three brokers), below a failover (the
#: controller fences a dead broker after 3 s, broker.session.timeout.ms), so ``recovery_s``
#: measures the failover, not the machine's noise. A request caught in the failover is still
#: answered (``expired``, or a fallback), which is what ``lost`` counts.
BROKER_KILL_BUDGET_MS = 2_000


@dataclass
class Scenario:
    """What to run: the pipeline's shape, the load, and the fault at ``fault_at`` (fraction of the run)."""

    name: str
    duration_s: float = 20.0
    #: Requests per second of the main (or quiet) tenant.
    rate: float = 40.0
    fault_at: float = 1 / 3
    routers: int = 1
    workers: dict[Tier, int] = field(default_factory=lambda: {Tier.SILVER: 1, Tier.BRONZE: 1})
    engines: dict[Tier, str] = field(
        default_factory=lambda: {Tier.SILVER: "scripted:latency_ms=5", Tier.BRONZE: "scripted:latency_ms=5"}
    )
    env: dict[str, str] = field(default_factory=dict)
    #: The budget requests ask for: kill scenarios are about delivery, so they allow a rebalance.
    budget_ms: int = 250
    #: How long to wait after the last request for every reply.
    drain_s: float = 45.0


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
            "NPCFLOW_BREAKER_COOLDOWN_S": "2",
            "NPCFLOW_BREAKER_FAILURES": "5",
        }
    elif name == "tenant-flood":
        s.duration_s = 30.0
        s.rate = 8.0
        s.workers = {Tier.SILVER: 1, Tier.BRONZE: 1}
        s.engines = {Tier.SILVER: "scripted:latency_ms=30", Tier.BRONZE: "scripted:latency_ms=2"}
        s.env = {"NPCFLOW_MAX_IN_FLIGHT": "1"}
        s.fault_at = 0.5
    if duration_s:
        s.duration_s = duration_s
    if rate:
        s.rate = rate
    return s
