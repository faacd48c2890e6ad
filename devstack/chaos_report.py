"""Judging a chaos run: what the load saw (a :class:`Tally`) and the report drawn from it.

The load (:mod:`devstack.chaos_load`) fills a :class:`Tally` as requests go out, replies come
back, Silver's breaker changes and the fault strikes; :func:`report` reads only that and the
:class:`~devstack.chaos.Scenario`, so what ``lost``, ``recovered``, ``recovery_s`` and the
tenant-flood victim ratio mean is decided here, in one place, without a pipeline running.
What the numbers mean for the product: docs/architecture.md, "Resilience".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devstack.broker_kill import BrokerKill
from devstack.chaos import Scenario
from pipeline.observability.metrics import percentiles
from topics.catalogue import Tier
from topics.fields import ReplyStatus
from topics.schemas import Reply


@dataclass
class Tally:
    """What one run saw: its requests and replies, the breaker's states and the fault."""

    sent: int = 0
    replies: dict[str, Reply] = field(default_factory=dict)
    timeouts: int = 0
    #: Requests the broker never acknowledged (the produce failed while it was down): the game
    #: server got an error at once, so they were never accepted and cannot be lost.
    refused: int = 0
    refused_ids: set[str] = field(default_factory=set)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    #: Request id → seconds from the start of the load until it was sent / until its reply came (ms).
    sent_at: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: Silver's breaker states as they changed, from ``closed``.
    breaker_states: list[str] = field(default_factory=list)
    #: The report's fault line.
    fault: str = ""
    #: Seconds from the start of the load until the fault struck (None: not yet, or no one instant).
    fault_t: float | None = None
    broker_kill: BrokerKill | None = None


def routed_tier(reply: Reply) -> Tier:
    """The tier the router sent the request to: the chain's first (``tier`` is the one that replied)."""
    return reply.chain[0].tier if reply.chain else reply.tier


def within_budget(spec: Scenario, tally: Tally, rid: str, reply: Reply) -> bool:
    """Answered as the game asked: by the tier it was routed to, ``ok``, within the request's budget.

    The latency is the caller's (sent → reply in hand), the one a player waits; a fallback or
    an ``expired`` reply is an answer, but not the tier answering within budget.
    """
    return (
        reply.status is ReplyStatus.OK
        and not reply.late
        and reply.served_tier is routed_tier(reply)
        and tally.latency_ms[rid] <= spec.budget_ms
    )


def recovery(spec: Scenario, tally: Tally) -> tuple[float | None, dict[str, float]] | None:
    """Seconds from the fault until every loaded tier answers within budget again, and per tier.

    Measured from the replies: a tier has recovered once the last reply it gave outside its
    budget (or not ``ok``) has arrived; every later one was within. A tier that never answered
    badly after the fault recovered at once (0). Tiers are those the requests were routed to
    (the reply's chain), so this covers whichever of gold, silver and bronze the scenario loads.
    An accepted request with no reply at all is an outage without end: the first figure is then None.
    None (no figure) where the fault has no one instant (``tenant-flood``: it lasts to the end).
    """
    if tally.fault_t is None or spec.name == "tenant-flood":
        return None
    t = tally
    fault_t = tally.fault_t
    last_bad: dict[str, float] = {}
    for rid, sent in t.sent_at.items():
        reply = t.replies.get(rid)
        if reply is None:
            continue  # refused (never accepted) or unanswered (counted below)
        tier = routed_tier(reply).value
        last_bad.setdefault(tier, fault_t)
        arrived = sent + t.latency_ms[rid] / 1000
        if arrived > fault_t and not within_budget(spec, t, rid, reply):
            last_bad[tier] = max(last_bad[tier], arrived)
    by_tier = {tier: round(at - fault_t, 2) for tier, at in sorted(last_bad.items())}
    unanswered = t.sent - t.refused - len(t.replies)
    return (None if unanswered or not by_tier else max(by_tier.values())), by_tier


def report(spec: Scenario, tally: Tally, *, duplicates: int, dead_letters: int | None) -> dict[str, Any]:
    """The run's report: counts, whether it recovered and how fast, and each scenario's own figures.

    ``duplicates`` are the replies the clients dropped as already delivered; ``dead_letters`` the
    records on the run's dead-letter topic (None: it could not be read).
    """
    t = tally
    replies = list(t.replies.values())
    statuses = Counter(r.status.value for r in replies)
    fallbacks = statuses.get(ReplyStatus.FALLBACK.value, 0)
    opened = "open" in t.breaker_states
    tail_from = spec.duration_s * 0.8
    tail = [rid for rid, at in t.sent_at.items() if at >= tail_from]
    if spec.name == "tenant-flood":  # the flood itself is meant to be degraded
        tail = [rid for rid in tail if rid.startswith("q")]
    tail_ok = [
        rid
        for rid in tail
        if rid in t.replies and t.replies[rid].status is ReplyStatus.OK and t.replies[rid].served_tier
    ]
    if spec.name == "engine-outage":
        # Recovered: the breaker closed again and Silver itself answers the last fifth of the run.
        recovered = (
            opened
            and t.breaker_states[-1] == "closed"
            and bool(tail)
            and all(t.replies[r].served_tier is Tier.SILVER for r in tail_ok)
            and len(tail_ok) >= 0.9 * len(tail)
        )
    else:
        recovered = t.timeouts == 0 and bool(tail) and len(tail_ok) == len(tail)
    took = recovery(spec, t)
    if spec.name == "broker-kill":
        # The cluster healed too: the restarted broker is back in every ISR, so the next kill
        # would again find two replicas of each record.
        recovered = recovered and t.broker_kill is not None and t.broker_kill.in_sync_at is not None
        recovered = recovered and took is not None and took[0] is not None
    result: dict[str, Any] = {
        "scenario": spec.name,
        "sent": t.sent,
        "replied_once": len(replies),
        "duplicates_delivered": 0,  # NPCClient hands each request id to the caller once
        "lost": t.sent - t.refused - len(replies),
        "refused": t.refused,
        "dead_letters": dead_letters,
        "fallbacks": fallbacks,
        "breaker_opened": opened,
        "recovered": recovered,
        "duplicate_replies_dropped": duplicates,
        "statuses": dict(statuses),
        "breaker_states": t.breaker_states,
        "fault": t.fault,
        "budget_ms": spec.budget_ms,
        "p95_ms": percentiles([x for v in t.latencies.values() for x in v])["p95"],
    }
    if took is not None:
        result["recovery_s"], result["recovery_s_by_tier"] = took
    if t.broker_kill is not None:
        result["broker_kill"] = {
            "node": t.broker_kill.node,
            "leader_of": t.broker_kill.leader_of,
            **t.broker_kill.timings(),
        }
    if spec.name == "tenant-flood":
        victim = percentiles(t.latencies.get("quiet:flood", []))["p95"]
        baseline = percentiles(t.latencies.get("quiet:baseline", []))["p95"]
        result |= {
            "victim_p95_ms": victim,
            "victim_baseline_p95_ms": baseline,
            "victim_ratio": round(victim / baseline, 2) if victim and baseline else None,
            "flood_statuses": dict(Counter(r.status.value for r in replies if r.tenant_id == "gs-flood")),
            "victim_statuses": dict(Counter(r.status.value for r in replies if r.tenant_id == "gs-quiet")),
        }
    return result
