"""Metric families beyond the first few in :mod:`pipeline.observability.metrics`: hops, SLA, load.

One registry (prometheus-client's default) holds them all, so every process that imports the
code serving a request exports the same names. :func:`exported_names` lists what they export,
so the Prometheus rules and the Grafana dashboard can be checked against it
(``tests/unit/test_observability_rules.py``). Why each exists: docs/architecture.md,
"Observability".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from pipeline.observability import metrics
from pipeline.observability.cost import Pricing

#: Where a request's time goes, in the order it goes there (docs/architecture.md, "One request").
HOPS = ("intake", "router", "tier_wait", "slot_wait", "engine", "reply")

HOP_LATENCY_SECONDS = Histogram(
    "npcflow_hop_latency_seconds",
    "Time spent in one hop of a request's path, seconds: intake (created → router read it), "
    "router, tier_wait (router → worker read it), slot_wait (engine slot), engine, reply (produce + ack)",
    ["tier", "hop"],
    buckets=metrics.LATENCY_BUCKETS_SECONDS,
)
SLA_MISSES = Counter(
    "npcflow_sla_misses_total",
    "Replies that reached Kafka after their deadline (late, expired or shed), by tier",
    ["tier", "why"],
)
INTENT_CACHE = Counter(
    "npcflow_intent_cache_total",
    "Gold answers from the router's near cache: hit (fresh intent) or miss (default intent)",
    ["result"],
)
IN_FLIGHT = Gauge("npcflow_in_flight", "Engine calls running now in this process", ["tier"])
PENDING = Gauge(
    "npcflow_pending", "Records taken from Kafka and not yet answered (engine queue included)", ["tier"]
)
CONSUMER_LAG = Gauge(
    "npcflow_consumer_lag",
    "Records in this process's partitions past its group's committed offsets",
    ["group", "topic"],
)
COST_SAVED_USD = Counter(
    "npcflow_cost_saved_usd_total",
    "What answers from a cache (intent or result) would have cost from the engine",
    ["tier", "tenant"],
)
PROCESS_INFO = Gauge("npcflow_process_info", "One per process: its role (router, worker-gold, …)", ["role"])


def observe_hop(tier: str, hop: str, ms: float) -> None:
    """One hop's duration, measured in milliseconds (as the events' timestamps are) and exported in
    seconds; negative values (clock skew between hosts) count as 0."""
    HOP_LATENCY_SECONDS.labels(tier, hop).observe(ms / 1000 if ms > 0 else 0.0)


def sla_miss(tier: str, why: str) -> None:
    SLA_MISSES.labels(tier, why).inc()


def gold_answered(tenant_id: str, served_by: str, late: bool, pricing: Pricing) -> None:
    """A Gold answer from the router's near cache: hit or miss, SLA, and the engine call it saved."""
    INTENT_CACHE.labels("hit" if served_by == "cache" else "miss").inc()
    if late:
        sla_miss("gold", "late")
    COST_SAVED_USD.labels("gold", tenant_id).inc(pricing.saved("gold", served_by))


def set_role(role: str) -> None:
    """Name this process on /metrics, so a dashboard can tell routers, workers and sinks apart."""
    PROCESS_INFO.labels(role).set(1)


def exported_names() -> set[str]:
    """Every npcflow family this code registers, as Prometheus exposes it (counters as ``*_total``).

    Read from the registry, so a family someone adds to :mod:`metrics` is included without a list
    to keep in step; rules and dashboards may only name these (plus ``_bucket``/``_sum``/``_count``).
    """
    from prometheus_client import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("npcflow_"):
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def export_offsets_lag(
    group: str, end_offsets: Mapping[Any, int], committed: Mapping[Any, int], assigned: Collection[Any]
) -> None:
    """Lag per topic from offsets a consumer already tracks (the router: faust's Monitor keeps the
    high-water mark of every fetch and each commit), so exporting it costs no broker request.

    ``end_offsets`` and ``committed`` map topic-partitions (anything with ``.topic``) to the next
    offset to be written and to be read. Only ``assigned`` partitions count: the Monitor keeps a
    revoked partition's last offsets, and another member now reports it (a topic this process lost
    entirely reads 0, so ``sum by (group, topic)`` stays right). Only fetched partitions have an
    end offset: a router that stopped fetching shows its last lag, not a growing one (its readiness
    and the workers' lag show that).
    """
    per_topic: dict[str, int] = {}
    for tp, end in list(end_offsets.items()):
        per_topic.setdefault(tp.topic, 0)
        done = committed.get(tp)
        if done is not None and tp in assigned:
            per_topic[tp.topic] += max(0, end - done)
    for topic, lag in per_topic.items():
        CONSUMER_LAG.labels(group, topic).set(lag)


class LoadExport:
    """A consumer's pending records and lag on /metrics, lag at most every ``every_s``.

    Lag asks the group coordinator for committed offsets, so it is not read on every loop turn.
    """

    def __init__(self, tier: str, group: str, topic: str, every_s: float = 2.0) -> None:
        self.pending = PENDING.labels(tier)
        self.lag = CONSUMER_LAG.labels(group, topic)
        self.every_s = every_s
        self._at = float("-inf")

    async def export(self, pending: int, lag: Callable[[], Awaitable[int]]) -> None:
        self.pending.set(pending)
        now = time.monotonic()
        if now - self._at < self.every_s:
            return
        self._at = now
        with contextlib.suppress(Exception):  # a rebalance in progress: the next export retries
            self.lag.set(await lag())
